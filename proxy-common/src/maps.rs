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
pub const CONNTRACK_NEW_MAP: &str = "CONNTRACK_NEW";
pub const VERDICTS_MAP: &str = "VERDICTS";
pub const SOURCE_RANGES_MAP: &str = "SOURCE_RANGES";
pub const AFFINITY_MAP: &str = "AFFINITY";

pub const MAX_SERVICES: u32 = 65_536;
pub const MAX_BACKEND_SLOTS: u32 = 262_144;
pub const MAX_BACKENDS: u32 = 131_072;
/// Established flows' entries, two per flow.
pub const MAX_CONNTRACK: u32 = 262_144;
/// New flows' entries (two per flow), until they show they are established:
/// a flood of new flows churns here and leaves established flows alone.
pub const MAX_CONNTRACK_NEW: u32 = 131_072;
pub const MAX_SOURCE_RANGES: u32 = 16_384;
pub const MAX_AFFINITY: u32 = 65_536;
/// More than this many endpoints behind one frontend is refused by the agent;
/// kube-proxy has no such limit, but EndpointSlices cap at 1000 per slice and
/// no real Service comes close to this.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 16_384;

/// Which kind of address a frontend listens on. Part of the key so a NodePort
/// and a ClusterIP on the same address and port can never collide.
pub mod scope {
    pub const CLUSTER_IP: u8 = 0;
    /// `spec.ports[].nodePort` on one of this node's addresses.
    pub const NODE_PORT: u8 = 1;
    /// Addresses outside the cluster's own: LoadBalancer ingress IPs and
    /// `spec.externalIPs` alike. They share a scope because a packet to such
    /// an address is looked up once, whichever field listed it; what differs
    /// between them (`loadBalancerSourceRanges` applies to LB IPs only) is a
    /// per-frontend property and belongs in [`super::ServiceValue::flags`].
    pub const EXTERNAL: u8 = 2;

    /// The scopes a host socket can dial, in the order the socket hooks
    /// look them up (most common first); the agent's check of which
    /// sockets a backend still serves must follow the same order.
    pub const SOCKET_LOOKUP_ORDER: [u8; 3] = [CLUSTER_IP, NODE_PORT, EXTERNAL];
}

/// Bits of [`ServiceValue::flags`].
pub mod service_flags {
    /// `sessionAffinity: ClientIP`: a client keeps its backend for
    /// [`super::ServiceValue::affinity_timeout_s`] seconds.
    pub const SESSION_AFFINITY: u32 = 1 << 0;
    /// `externalTrafficPolicy: Local` on a NodePort, LoadBalancer or external
    /// IP frontend: only this node's endpoints are in the slots, and the
    /// client's source address is kept (no SNAT).
    pub const EXTERNAL_LOCAL: u32 = 1 << 1;
    /// `internalTrafficPolicy: Local` on a ClusterIP frontend: only this
    /// node's endpoints are in the slots.
    pub const INTERNAL_LOCAL: u32 = 1 << 2;
    /// `count` is 0 only because the traffic policy is Local and no endpoint
    /// is on this node, while the Service has endpoints elsewhere: kube-proxy
    /// drops such packets instead of refusing them.
    pub const NO_LOCAL_ENDPOINTS: u32 = 1 << 3;
    /// A LoadBalancer frontend with `loadBalancerSourceRanges`: only
    /// sources inside one of the service's entries in the source range map
    /// may use it.
    pub const SOURCE_RANGES: u32 = 1 << 4;
}

/// Bits of [`Backend::flags`]. They describe the endpoint, so they are the
/// same for every frontend that uses the backend.
pub mod backend_flags {
    /// The endpoint runs on this node.
    pub const LOCAL: u8 = 1 << 0;
    /// The endpoint is terminating (serving, used only as a fallback).
    pub const TERMINATING: u8 = 1 << 1;
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
    /// [`service_flags`] bits.
    pub flags: u32,
    /// Session affinity timeout in seconds (1..=86400) when
    /// [`service_flags::SESSION_AFFINITY`] is set, else 0.
    pub affinity_timeout_s: u32,
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
    /// [`backend_flags`] bits.
    pub flags: u8,
}

/// The data of a longest-prefix-match key in the source range map: a
/// frontend's service id, then a client network. The prefix length always
/// covers the whole id (32 bits) plus the network's own prefix, so ranges of
/// one frontend never match another's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    /// Service id, big-endian so that its bits come first in the trie.
    pub service_id_be: u32,
    /// Client address or network, network byte order.
    pub addr: u32,
}

impl SourceRange {
    /// Prefix length of an entry for a network of `prefix_len` bits.
    pub const fn trie_prefix_len(prefix_len: u8) -> u32 {
        32 + prefix_len as u32
    }
}

/// `sessionAffinity: ClientIP`: which backend a client of a frontend was
/// last sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    /// Client address, network byte order.
    pub client: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// The slot the backend was in, so a later flow checks in O(1) that the
    /// frontend still has it.
    pub slot: u32,
    /// When a flow last started through this entry.
    pub last_used_ns: u64,
}

const _: () = assert!(size_of::<AffinityKey>() == 8);
const _: () = assert!(size_of::<AffinityValue>() == 16);
const _: () = assert!(size_of::<ServiceKey>() == 8);
const _: () = assert!(size_of::<SourceRange>() == 8);
const _: () = assert!(size_of::<ServiceValue>() == 20);
const _: () = assert!(size_of::<BackendSlotKey>() == 8);
const _: () = assert!(size_of::<Backend>() == 8);
