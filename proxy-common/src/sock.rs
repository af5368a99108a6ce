//! Map layout of the socket-level load balancer (cgroup connect4, sendmsg4,
//! recvmsg4, getpeername4 hooks).
//!
//! A socket in the hooked cgroup that dials a frontend has its destination
//! rewritten to a backend before any packet exists. So that the application
//! still sees the address it dialled (in `recvfrom` and `getpeername`), the
//! hook records, per socket and backend, which frontend the backend stands
//! for; the reverse hooks rewrite the backend address back from it.

use core::mem::size_of;

/// Name of the pinned map; the agent and the programs must agree on it.
pub const SOCK_REV_NAT_MAP: &str = "SOCK_REV_NAT";

/// One entry per (socket, backend) a socket was sent to; LRU, so entries of
/// closed sockets age out by themselves.
pub const MAX_SOCK_REV_NAT: u32 = 262_144;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockRevNatKey {
    /// `bpf_get_socket_cookie`: unique per socket for the kernel's lifetime.
    pub cookie: u64,
    /// Backend IPv4 address, network byte order.
    pub backend_addr: u32,
    /// Backend port, network byte order.
    pub backend_port: u16,
    pub pad: u16,
}

impl SockRevNatKey {
    /// All fields in network byte order but the cookie.
    pub const fn new(cookie: u64, backend_addr: u32, backend_port: u16) -> Self {
        SockRevNatKey { cookie, backend_addr, backend_port, pad: 0 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatValue {
    /// The frontend the socket dialled, network byte order.
    pub frontend_addr: u32,
    pub frontend_port: u16,
    pub pad: u16,
}

/// An unconnected UDP socket sends each datagram with its own destination,
/// so the backend is chosen per `sendto`. This map keeps the socket's first
/// choice per frontend, so all its datagrams to a frontend go to one backend,
/// as conntrack keeps them for kube-proxy.
pub const SOCK_FLOWS_MAP: &str = "SOCK_FLOWS";
pub const MAX_SOCK_FLOWS: u32 = 262_144;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockFlowKey {
    pub cookie: u64,
    /// The frontend dialled, network byte order.
    pub frontend_addr: u32,
    pub frontend_port: u16,
    pub proto: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockFlowValue {
    pub backend_id: u32,
    /// The frontend's at the time of the choice: a frontend removed and made
    /// again (new index) does not inherit the old choice.
    pub rev_nat_index: u32,
}

const _: () = assert!(size_of::<SockRevNatKey>() == 16);
const _: () = assert!(size_of::<SockRevNatValue>() == 8);
const _: () = assert!(size_of::<SockFlowKey>() == 16);
const _: () = assert!(size_of::<SockFlowValue>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers only, padding spelled out as fields.
    unsafe impl aya::Pod for super::SockRevNatKey {}
    unsafe impl aya::Pod for super::SockRevNatValue {}
    unsafe impl aya::Pod for super::SockFlowKey {}
    unsafe impl aya::Pod for super::SockFlowValue {}
}
