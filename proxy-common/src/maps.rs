//! Service and backend map layouts.
//!
//! A frontend (VIP, port, protocol) maps to a [`ServiceValue`] that holds the
//! service id and how many backend slots it has. Slots `0..count` of that id
//! live in the slot map and name backend ids; backends live in their own map so
//! that a backend shared by many frontends is written once. The agent writes in
//! the order backends -> slots -> service and removes in the reverse order, so a
//! packet never follows a frontend to a slot or backend that is not there.

use core::mem::size_of;

/// Names of the pinned maps; the agent and the programs must agree on them.
pub const SERVICES_MAP: &str = "SERVICES";
pub const BACKEND_SLOTS_MAP: &str = "BACKEND_SLOTS";
pub const BACKENDS_MAP: &str = "BACKENDS";
pub const CONNTRACK_MAP: &str = "CONNTRACK";
pub const VERDICTS_MAP: &str = "VERDICTS";

pub const MAX_SERVICES: u32 = 65_536;
pub const MAX_BACKEND_SLOTS: u32 = 262_144;
pub const MAX_BACKENDS: u32 = 131_072;
pub const MAX_CONNTRACK: u32 = 262_144;
/// More than this many endpoints behind one frontend is refused by the agent;
/// kube-proxy has no such limit, but EndpointSlices cap at 1000 per slice and
/// no real Service comes close to this.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 16_384;

/// Which kind of address a frontend listens on. Part of the key so a NodePort
/// and a ClusterIP on the same address and port can never collide.
pub mod scope {
    pub const CLUSTER_IP: u8 = 0;
    pub const NODE_PORT: u8 = 1;
    pub const EXTERNAL: u8 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend IPv4 address, network byte order.
    pub addr: u32,
    /// Frontend port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    pub service_id: u32,
    /// Number of slots `0..count` in the slot map; 0 means "no usable endpoint".
    pub count: u32,
    /// Kept in conntrack so replies are translated back to this frontend.
    pub rev_nat_index: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendSlotKey {
    pub service_id: u32,
    pub slot: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Backend IPv4 address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

const _: () = assert!(size_of::<ServiceKey>() == 8);
const _: () = assert!(size_of::<ServiceValue>() == 16);
const _: () = assert!(size_of::<BackendSlotKey>() == 8);
const _: () = assert!(size_of::<Backend>() == 8);
