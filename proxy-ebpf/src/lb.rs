//! Service lookup and backend selection.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use proxy_common::{
    maps::scope, select::slot_for, Backend, BackendSlotKey, ServiceKey, ServiceValue,
};

use crate::maps::{BACKENDS, BACKEND_SLOTS, SERVICES};
use crate::packet::Flow;

/// The frontend this packet is addressed to, if any.
#[inline(always)]
pub fn lb4_lookup_service(flow: &Flow) -> Option<ServiceValue> {
    lb4_lookup(&ServiceKey {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.proto,
        scope: scope::CLUSTER_IP,
    })
}

/// The frontend with exactly this key (address, port, protocol, scope).
#[inline(always)]
pub fn lb4_lookup(key: &ServiceKey) -> Option<ServiceValue> {
    unsafe { SERVICES.get(key) }.copied()
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
    let key = BackendSlotKey {
        service_id: svc.service_id,
        slot,
    };
    let backend_id = *unsafe { BACKEND_SLOTS.get(&key) }?;
    lb4_lookup_backend(backend_id).map(|b| (backend_id, b))
}
