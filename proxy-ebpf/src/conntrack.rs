//! Connection tracking: the same backend for every packet of a flow, and the
//! way back for its replies.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use proxy_common::{
    conntrack::LAST_SEEN_GRANULARITY_NS, Backend, CtDirection, CtKey, CtValue, ServiceValue,
};

use crate::maps::CONNTRACK;
use crate::packet::Flow;

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// The conntrack key of this packet's tuple, looked up as `direction`.
#[inline(always)]
pub fn ct_key(flow: &Flow, direction: CtDirection) -> CtKey {
    CtKey::new(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto, direction)
}

/// The entry of a flow sent to this frontend before.
#[inline(always)]
pub fn ct4_lookup_original(key: &CtKey, svc: &ServiceValue) -> Option<*mut CtValue> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    if unsafe { (*entry).rev_nat_index } != svc.rev_nat_index {
        return None;
    }
    Some(entry)
}

/// Reply entry for a packet coming back from a backend.
#[inline(always)]
pub fn ct4_lookup_reply(key: &CtKey) -> Option<CtValue> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    touch(entry, now_ns());
    Some(unsafe { *entry })
}

/// Moves `last_seen_ns` forward when it is more than the granularity old;
/// true when it did. Writing it on every packet would cost a store per packet
/// for nothing.
#[inline(always)]
fn touch(entry: *mut CtValue, now: u64) -> bool {
    unsafe {
        if now.wrapping_sub((*entry).last_seen_ns) <= LAST_SEEN_GRANULARITY_NS {
            return false;
        }
        (*entry).last_seen_ns = now;
    }
    true
}

/// A packet of a known flow. Once per granularity, when its timestamp moves,
/// the reply entry is checked too and written back if the LRU evicted it
/// (the two directions are evicted independently).
#[inline(always)]
pub fn ct4_refresh(entry: *mut CtValue, orig: &CtKey, backend: &Backend) -> Result<(), i64> {
    let now = now_ns();
    if !touch(entry, now) {
        return Ok(());
    }
    let reply = orig.reply_after_dnat(backend.addr, backend.port);
    if unsafe { CONNTRACK.get(&reply) }.is_some() {
        return Ok(());
    }
    let (backend_id, rev_nat_index) = unsafe { ((*entry).backend_id, (*entry).rev_nat_index) };
    insert(&reply, &reply_value(orig, backend_id, rev_nat_index, now))
}

/// Records both directions of a new flow (or of one moved off a removed
/// backend).
#[inline(always)]
pub fn ct4_create(orig: &CtKey, svc: &ServiceValue, backend_id: u32, backend: &Backend) -> Result<(), i64> {
    let now = now_ns();
    let fwd = CtValue {
        backend_id,
        rev_nat_index: svc.rev_nat_index,
        nat_addr: backend.addr,
        nat_port: backend.port,
        flags: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    insert(orig, &fwd)?;
    let reply = orig.reply_after_dnat(backend.addr, backend.port);
    insert(&reply, &reply_value(orig, backend_id, svc.rev_nat_index, now))
}

/// The reply entry puts the frontend the client dialled back as the source.
#[inline(always)]
fn reply_value(orig: &CtKey, backend_id: u32, rev_nat_index: u32, now: u64) -> CtValue {
    CtValue {
        backend_id,
        rev_nat_index,
        nat_addr: orig.daddr,
        nat_port: orig.dport,
        flags: 0,
        created_ns: now,
        last_seen_ns: now,
    }
}

#[inline(always)]
fn insert(key: &CtKey, value: &CtValue) -> Result<(), i64> {
    CONNTRACK.insert(key, value, BPF_ANY as u64).map_err(|e| e as i64)
}
