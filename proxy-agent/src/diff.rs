//! The fewest map writes that turn the old tables into the new ones, in an
//! order that never lets a packet follow a frontend to a missing slot or a slot
//! to a missing backend: backends, then slots, then services are written;
//! services, then slots, then backends are removed. Source ranges are written
//! before the services that check them and removed after, so a frontend that
//! has ranges never meets an empty list: the check fails closed.

use proxy_common::{Backend, BackendSlotKey, ServiceKey, ServiceValue, SourceRange};

use crate::tables::Tables;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, Backend),
    PutSlot(BackendSlotKey, u32),
    PutSourceRange(u32, SourceRange),
    PutService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    DeleteSourceRange(u32, SourceRange),
    DeleteSlot(BackendSlotKey),
    DeleteBackend(u32),
}

pub fn diff(old: &Tables, new: &Tables) -> Vec<Op> {
    let mut ops = Vec::new();
    for (id, backend) in &new.backends {
        if old.backends.get(id) != Some(backend) {
            ops.push(Op::PutBackend(*id, *backend));
        }
    }
    for (key, backend_id) in &new.slots {
        if old.slots.get(key) != Some(backend_id) {
            ops.push(Op::PutSlot(*key, *backend_id));
        }
    }
    for range in new.source_ranges.difference(&old.source_ranges) {
        ops.push(Op::PutSourceRange(range.0, range.1));
    }
    for (key, value) in &new.services {
        if old.services.get(key) != Some(value) {
            ops.push(Op::PutService(*key, *value));
        }
    }
    for key in old.services.keys() {
        if !new.services.contains_key(key) {
            ops.push(Op::DeleteService(*key));
        }
    }
    for range in old.source_ranges.difference(&new.source_ranges) {
        ops.push(Op::DeleteSourceRange(range.0, range.1));
    }
    for key in old.slots.keys() {
        if !new.slots.contains_key(key) {
            ops.push(Op::DeleteSlot(*key));
        }
    }
    for id in old.backends.keys() {
        if !new.backends.contains_key(id) {
            ops.push(Op::DeleteBackend(*id));
        }
    }
    ops
}
