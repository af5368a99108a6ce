//! The fewest map writes that turn the old tables into the new ones, in an
//! order that never lets a packet follow a frontend to a missing slot or a slot
//! to a missing backend: backends, then slots, then services are written;
//! services, then slots, then backends are removed.

use std::collections::BTreeMap;

use proxy_common::{Backend, BackendSlotKey, ServiceKey, ServiceValue};

use crate::tables::{Tables, Touched};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, Backend),
    PutSlot(BackendSlotKey, u32),
    PutService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    DeleteSlot(BackendSlotKey),
    DeleteBackend(u32),
}

/// Every key of both tables.
pub fn diff(old: &Tables, new: &Tables) -> Vec<Op> {
    let mut ops = Vec::new();
    puts(&old.backends, &new.backends, new.backends.keys(), Op::PutBackend, &mut ops);
    puts(&old.slots, &new.slots, new.slots.keys(), Op::PutSlot, &mut ops);
    puts(&old.services, &new.services, new.services.keys(), Op::PutService, &mut ops);
    deletes(&old.services, &new.services, old.services.keys(), Op::DeleteService, &mut ops);
    deletes(&old.slots, &new.slots, old.slots.keys(), Op::DeleteSlot, &mut ops);
    deletes(&old.backends, &new.backends, old.backends.keys(), Op::DeleteBackend, &mut ops);
    ops
}

/// Only the `touched` keys: the same ops as [`diff`] when nothing else
/// differs, at the cost of the change rather than of the tables.
pub fn diff_touched(old: &Tables, new: &Tables, touched: &Touched) -> Vec<Op> {
    let mut ops = Vec::new();
    puts(&old.backends, &new.backends, touched.backends.iter(), Op::PutBackend, &mut ops);
    puts(&old.slots, &new.slots, touched.slots.iter(), Op::PutSlot, &mut ops);
    puts(&old.services, &new.services, touched.services.iter(), Op::PutService, &mut ops);
    deletes(&old.services, &new.services, touched.services.iter(), Op::DeleteService, &mut ops);
    deletes(&old.slots, &new.slots, touched.slots.iter(), Op::DeleteSlot, &mut ops);
    deletes(&old.backends, &new.backends, touched.backends.iter(), Op::DeleteBackend, &mut ops);
    ops
}

fn puts<'a, K: Ord + Copy + 'a, V: PartialEq + Copy>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    keys: impl Iterator<Item = &'a K>,
    op: fn(K, V) -> Op,
    ops: &mut Vec<Op>,
) {
    for key in keys {
        if let Some(value) = new.get(key) {
            if old.get(key) != Some(value) {
                ops.push(op(*key, *value));
            }
        }
    }
}

fn deletes<'a, K: Ord + Copy + 'a, V>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    keys: impl Iterator<Item = &'a K>,
    op: fn(K) -> Op,
    ops: &mut Vec<Op>,
) {
    for key in keys {
        if old.contains_key(key) && !new.contains_key(key) {
            ops.push(op(*key));
        }
    }
}

impl Tables {
    /// What the maps hold after `op` succeeded.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::PutBackend(id, backend) => drop(self.backends.insert(*id, *backend)),
            Op::PutSlot(key, id) => drop(self.slots.insert(*key, *id)),
            Op::PutService(key, value) => drop(self.services.insert(*key, *value)),
            Op::DeleteService(key) => drop(self.services.remove(key)),
            Op::DeleteSlot(key) => drop(self.slots.remove(key)),
            Op::DeleteBackend(id) => drop(self.backends.remove(id)),
        }
    }
}
