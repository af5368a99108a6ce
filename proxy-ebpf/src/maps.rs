//! The maps, pinned by name so the dataplane outlives the agent and a new
//! agent adopts what the old one wrote.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use proxy_common::{
    maps::{AffinityKey, AffinityValue, MAX_AFFINITY, MAX_BACKENDS, MAX_BACKEND_SLOTS, MAX_CONNTRACK, MAX_CONNTRACK_NEW, MAX_SERVICES, MAX_SOURCE_RANGES},
    Backend, BackendSlotKey, CtKey, CtValue, DatapathConfig, ServiceKey, ServiceValue, SourceRange, Verdict,
};

#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "BACKEND_SLOTS")]
pub static BACKEND_SLOTS: HashMap<BackendSlotKey, u32> = HashMap::pinned(MAX_BACKEND_SLOTS, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(MAX_BACKENDS, 0);

/// Flows that have shown they are established (see `conntrack`).
#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CONNTRACK, 0);

/// Flows not yet established: where a flood of new flows churns.
#[map(name = "CONNTRACK_NEW")]
pub static CONNTRACK_NEW: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CONNTRACK_NEW, 0);

#[map(name = "VERDICTS")]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::pinned(Verdict::COUNT, 0);

#[inline(always)]
pub fn count(verdict: Verdict) {
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict.index()) {
        // Per-CPU slot: no other writer, a plain add is enough.
        unsafe { *counter += 1 };
    }
}

#[map(name = "CONFIG")]
pub static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// `loadBalancerSourceRanges` per LoadBalancer frontend (by service id).
#[map(name = "SOURCE_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u32> = LpmTrie::pinned(MAX_SOURCE_RANGES, 0);

/// `sessionAffinity: ClientIP` per frontend and client.
#[map(name = "AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(MAX_AFFINITY, 0);

/// What the agent configured; all zero (no SNAT address, no service range)
/// until it has.
#[inline(always)]
pub fn config() -> DatapathConfig {
    CONFIG.get(0).copied().unwrap_or_default()
}

/// Socket-level load balancing: (socket, backend) -> the frontend it stands
/// for, so `recvfrom` and `getpeername` show the address the socket dialled.
#[map(name = "SOCK_REV_NAT")]
pub static SOCK_REV_NAT: LruHashMap<proxy_common::sock::SockRevNatKey, proxy_common::sock::SockRevNatValue> =
    LruHashMap::pinned(proxy_common::sock::MAX_SOCK_REV_NAT, 0);

/// Unconnected UDP sockets: (socket, frontend) -> the backend its first
/// datagram went to, so later ones follow it.
#[map(name = "SOCK_FLOWS")]
pub static SOCK_FLOWS: LruHashMap<proxy_common::sock::SockFlowKey, proxy_common::sock::SockFlowValue> =
    LruHashMap::pinned(proxy_common::sock::MAX_SOCK_FLOWS, 0);

/// Refusals sent per client, for rate-limiting them (see
/// `proxy_common::ratelimit`).
#[map(name = "REFUSALS")]
pub static REFUSALS: LruHashMap<u32, proxy_common::ratelimit::RefusalBucket> =
    LruHashMap::pinned(proxy_common::ratelimit::MAX_REFUSAL_CLIENTS, 0);

/// The ports of fragmented datagrams, from their first fragment.
#[map(name = "FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<proxy_common::frag::FragKey, proxy_common::frag::FragPorts> =
    LruHashMap::pinned(proxy_common::frag::MAX_FRAGMENTED_DATAGRAMS, 0);

/// Programs the tc entry points hand rare packets to (a tail call), so that
/// the verifier walks them once on their own instead of inside every entry
/// point: the slots are `proxy_common::tail::*`, filled by the agent.
#[map(name = "TAIL_CALLS")]
pub static TAIL_CALLS: ProgramArray = ProgramArray::pinned(proxy_common::tail::SLOTS, 0);
