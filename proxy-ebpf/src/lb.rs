//! Service lookup and backend selection.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
};
use proxy_common::{
    maps::{scope, service_flags, AffinityKey, AffinityValue},
    select::slot_for,
    Backend, BackendSlotKey, ServiceKey, ServiceValue, SourceRange,
};

use crate::maps::{AFFINITY, BACKENDS, BACKEND_SLOTS, SERVICES, SOURCE_RANGES};
use crate::packet::Flow;

/// Where a packet entered the node, which decides the frontends it may use
/// and whether its source is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// From a pod on this node: ClusterIPs first, and also NodePorts and
    /// external addresses, without SNAT.
    Pod,
    /// From outside the node: NodePorts and external addresses only.
    External,
}

/// A frontend a packet is addressed to.
#[derive(Clone, Copy)]
pub struct Frontend {
    pub svc: ServiceValue,
    pub scope: u8,
}

/// The frontend this packet is addressed to, if any, among those its role
/// may use. From outside, ClusterIPs only when `external_cluster_ip`.
#[inline(always)]
pub fn lb4_lookup_service(flow: &Flow, role: Role, external_cluster_ip: bool) -> Option<Frontend> {
    let mut key = ServiceKey {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.proto,
        scope: scope::CLUSTER_IP,
    };
    if role == Role::Pod || external_cluster_ip {
        if let Some(svc) = lb4_lookup(&key) {
            return Some(Frontend { svc, scope: key.scope });
        }
    }
    for s in [scope::NODE_PORT, scope::EXTERNAL] {
        key.scope = s;
        if let Some(svc) = lb4_lookup(&key) {
            return Some(Frontend { svc, scope: s });
        }
    }
    None
}

/// The frontend with exactly this key (address, port, protocol, scope).
#[inline(always)]
pub fn lb4_lookup(key: &ServiceKey) -> Option<ServiceValue> {
    unsafe { SERVICES.get(key) }.copied()
}

/// `loadBalancerSourceRanges`: true unless the frontend has ranges and
/// `saddr` is in none of them.
#[inline(always)]
pub fn lb4_source_allowed(svc: &ServiceValue, saddr: u32) -> bool {
    if svc.flags & service_flags::SOURCE_RANGES == 0 {
        return true;
    }
    let key = Key::new(
        SourceRange::trie_prefix_len(32),
        SourceRange {
            service_id_be: svc.service_id.to_be(),
            addr: saddr,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

#[inline(always)]
pub fn lb4_lookup_backend(backend_id: u32) -> Option<Backend> {
    unsafe { BACKENDS.get(&backend_id) }.copied()
}

/// Picks one of the service's backends at random. `None` when it has none, or
/// when the agent is half-way through shrinking it and the slot is gone.
#[inline(always)]
pub fn lb4_select_backend(svc: &ServiceValue) -> Option<(u32, Backend)> {
    let slot = slot_for(unsafe { bpf_get_prandom_u32() }, svc.count)?;
    lb4_slot_backend(svc, slot)
}

#[inline(always)]
fn lb4_slot_backend(svc: &ServiceValue, slot: u32) -> Option<(u32, Backend)> {
    let key = BackendSlotKey {
        service_id: svc.service_id,
        slot,
    };
    let backend_id = *unsafe { BACKEND_SLOTS.get(&key) }?;
    lb4_lookup_backend(backend_id).map(|b| (backend_id, b))
}

/// The backend for a new flow from `client`: with `sessionAffinity:
/// ClientIP`, the one this client last used while it is within the timeout
/// and still in the frontend's slots; otherwise a random one, remembered for
/// next time.
#[inline(always)]
pub fn lb4_select_backend_for(svc: &ServiceValue, client: u32) -> Option<(u32, Backend)> {
    if svc.flags & service_flags::SESSION_AFFINITY == 0 {
        return lb4_select_backend(svc);
    }
    let key = AffinityKey {
        service_id: svc.service_id,
        client,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = svc.affinity_timeout_s as u64 * 1_000_000_000;
    let mut chosen = None;
    if let Some(entry) = unsafe { AFFINITY.get(&key) } {
        if now.wrapping_sub(entry.last_used_ns) < timeout_ns && entry.slot < svc.count {
            if let Some((id, backend)) = lb4_slot_backend(svc, entry.slot) {
                if id == entry.backend_id {
                    chosen = Some((entry.slot, id, backend));
                }
            }
        }
    }
    let (slot, id, backend) = match chosen {
        Some(c) => c,
        None => {
            let slot = slot_for(unsafe { bpf_get_prandom_u32() }, svc.count)?;
            let (id, backend) = lb4_slot_backend(svc, slot)?;
            (slot, id, backend)
        }
    };
    let value = AffinityValue {
        backend_id: id,
        slot,
        last_used_ns: now,
    };
    // Best effort: a failed write only costs the next flow its stickiness.
    let _ = AFFINITY.insert(&key, &value, BPF_ANY as u64);
    Some((id, backend))
}
