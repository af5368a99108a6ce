//! The node's own sockets, asked of the kernel: whether one of them holds a
//! tuple a SNATed flow is about to take.
//!
//! A SNATed flow leaves as `node:port -> backend`. If a socket of the node
//! already talks to that backend from that port (or is bound to the port,
//! for UDP, or listening on it, for TCP), the backend would see one tuple
//! for two flows, and the replies of one would be translated for the other.
//! The kernel's socket tables are the truth on this, and they are asked with
//! the tuple of a packet coming back: `backend -> node:port`.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple},
    helpers::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    EbpfContext,
};
use proxy_common::IPPROTO_TCP;

/// The network namespace of the device the packet is on: the node's, for
/// the external devices where SNAT happens.
const CURRENT_NETNS: u64 = u32::MAX as u64;

/// Who, among the node's sockets, would take a packet `remote -> local`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Nobody,
    /// The socket the caller named (the sender of the packet at hand).
    That,
    Another,
}

/// Whether a socket of the node would take a packet `remote -> local`
/// (addresses and ports in network byte order): an established or
/// closing TCP connection or a listener on `local`, or a UDP socket bound
/// to it.
#[inline(always)]
pub fn node_socket_holds<C: EbpfContext>(ctx: &C, proto: u8, remote: (u32, u16), local: (u32, u16)) -> bool {
    holder(ctx, proto, remote, local, core::ptr::null()) != Holder::Nobody
}

/// [`node_socket_holds`], telling whether the holder is `that` socket.
#[inline(always)]
pub fn holder<C: EbpfContext>(ctx: &C, proto: u8, remote: (u32, u16), local: (u32, u16), that: *const bpf_sock) -> Holder {
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = remote.0;
    tuple.__bindgen_anon_1.ipv4.sport = remote.1;
    tuple.__bindgen_anon_1.ipv4.daddr = local.0;
    tuple.__bindgen_anon_1.ipv4.dport = local.1;
    let size = core::mem::size_of_val(unsafe { &tuple.__bindgen_anon_1.ipv4 }) as u32;
    // SAFETY: the helpers read `size` bytes of the tuple on the stack; a
    // socket they return holds a reference, released before returning.
    unsafe {
        let sk = if proto == IPPROTO_TCP {
            // skc: TIME_WAIT and request sockets too.
            bpf_skc_lookup_tcp(ctx.as_ptr(), &mut tuple, size, CURRENT_NETNS, 0)
        } else {
            bpf_sk_lookup_udp(ctx.as_ptr(), &mut tuple, size, CURRENT_NETNS, 0)
        };
        if sk.is_null() {
            return Holder::Nobody;
        }
        let same = sk as *const bpf_sock == that;
        bpf_sk_release(sk as *mut _);
        if same {
            Holder::That
        } else {
            Holder::Another
        }
    }
}
