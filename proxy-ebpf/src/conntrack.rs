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

/// The backend id this flow was sent to before, for the same frontend.
#[inline(always)]
pub fn ct4_lookup_original(key: &CtKey, svc: &ServiceValue) -> Option<u32> {
    let entry = unsafe { CONNTRACK.get(key) }?;
    if entry.rev_nat_index != svc.rev_nat_index {
        return None;
    }
    Some(entry.backend_id)
}

/// Reply entry for a packet coming back from a backend.
#[inline(always)]
pub fn ct4_lookup_reply(key: &CtKey) -> Option<CtValue> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    let now = now_ns();
    unsafe {
        if now.wrapping_sub((*entry).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            (*entry).last_seen_ns = now;
        }
        Some(*entry)
    }
}

/// Records (or refreshes) both directions of a translated flow. Both are
/// written on every new flow and checked on every original-direction packet:
/// the LRU may evict one direction without the other.
#[inline(always)]
pub fn ct4_track(
    orig: &CtKey,
    svc: &ServiceValue,
    backend_id: u32,
    backend: &Backend,
    is_new: bool,
) -> Result<(), i64> {
    let now = now_ns();
    let reply = orig.reply_after_dnat(backend.addr, backend.port);
    if !is_new {
        if let Some(entry) = CONNTRACK.get_ptr_mut(orig) {
            let stale = unsafe { now.wrapping_sub((*entry).last_seen_ns) } > LAST_SEEN_GRANULARITY_NS;
            let reply_present = unsafe { CONNTRACK.get(&reply) }.is_some();
            if !stale && reply_present {
                return Ok(());
            }
            unsafe { (*entry).last_seen_ns = now };
        }
    }
    let fwd = CtValue {
        backend_id,
        rev_nat_index: svc.rev_nat_index,
        nat_addr: backend.addr,
        nat_port: backend.port,
        flags: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    let rev = CtValue {
        backend_id,
        rev_nat_index: svc.rev_nat_index,
        nat_addr: orig.daddr,
        nat_port: orig.dport,
        flags: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    if is_new {
        CONNTRACK.insert(orig, &fwd, BPF_ANY as u64).map_err(|e| e as i64)?;
    }
    CONNTRACK.insert(&reply, &rev, BPF_ANY as u64).map_err(|e| e as i64)?;
    Ok(())
}
