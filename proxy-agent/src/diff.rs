//! The fewest map writes that turn the old tables into the new ones, in an
//! order that never lets a packet follow a frontend to a missing slot or a slot
//! to a missing backend: backends, then slots, then services are written;
//! services, then slots, then backends are removed.

use proxy_common::{Backend, BackendSlotKey, ServiceKey, ServiceValue};

use crate::tables::Tables;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, Backend),
    PutSlot(BackendSlotKey, u32),
    PutService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
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
