//! The fewest map writes that turn the old tables into the new ones, in an
//! order that never lets a packet follow a frontend to a missing slot or a slot
//! to a missing backend: backends, then slots, then services are written;
//! services, then slots, then backends are removed. Source ranges are written
//! before the services that check them and removed after, so a frontend that
//! has ranges never meets an empty list: the check fails closed. Source ranges are written
//! before the services that check them and removed after, so a frontend that
//! has ranges never meets an empty list: the check fails closed.

use std::collections::BTreeMap;

use proxy_common::{Backend, BackendSlotKey, ServiceKey, ServiceValue, SourceRange};

use crate::tables::{Tables, Touched};

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

/// Every key of both tables.
pub fn diff(old: &Tables, new: &Tables) -> Vec<Op> {
    let mut ops = Vec::new();
    puts(|k| old.backends.get(k), &new.backends, new.backends.keys(), Op::PutBackend, &mut ops);
    puts(|k| old.slots.get(k), &new.slots, new.slots.keys(), Op::PutSlot, &mut ops);
    puts(|k| old.source_ranges.get(k), &new.source_ranges, new.source_ranges.keys(), put_range, &mut ops);
    puts(|k| old.services.get(k), &new.services, new.services.keys(), Op::PutService, &mut ops);
    deletes(&new.services, old.services.keys(), Op::DeleteService, &mut ops);
    deletes(&new.source_ranges, old.source_ranges.keys(), delete_range, &mut ops);
    deletes(&new.slots, old.slots.keys(), Op::DeleteSlot, &mut ops);
    deletes(&new.backends, old.backends.keys(), Op::DeleteBackend, &mut ops);
    ops
}

/// Only the `touched` entries, from what they held before: the same ops as
/// [`diff`] when nothing else changed, at the cost of the change rather
/// than of the tables.
pub fn diff_touched(touched: &Touched, new: &Tables) -> Vec<Op> {
    let mut ops = Vec::new();
    puts(|k| touched.backends[k].as_ref(), &new.backends, touched.backends.keys(), Op::PutBackend, &mut ops);
    puts(|k| touched.slots[k].as_ref(), &new.slots, touched.slots.keys(), Op::PutSlot, &mut ops);
    let ranges = &touched.source_ranges;
    puts(|k| ranges[k].as_ref(), &new.source_ranges, ranges.keys(), put_range, &mut ops);
    puts(|k| touched.services[k].as_ref(), &new.services, touched.services.keys(), Op::PutService, &mut ops);
    deletes(&new.services, existed(&touched.services), Op::DeleteService, &mut ops);
    deletes(&new.source_ranges, existed(ranges), delete_range, &mut ops);
    deletes(&new.slots, existed(&touched.slots), Op::DeleteSlot, &mut ops);
    deletes(&new.backends, existed(&touched.backends), Op::DeleteBackend, &mut ops);
    ops
}

fn put_range((len, range): (u32, SourceRange), _allowed: u32) -> Op {
    Op::PutSourceRange(len, range)
}

fn delete_range((len, range): (u32, SourceRange)) -> Op {
    Op::DeleteSourceRange(len, range)
}

/// The touched keys that held something before.
fn existed<K, V>(touched: &BTreeMap<K, Option<V>>) -> impl Iterator<Item = &K> {
    touched.iter().filter(|(_, old)| old.is_some()).map(|(key, _)| key)
}

/// Puts for the `keys` whose new value is not the old one.
fn puts<'a, K: Ord + Copy + 'a, V: PartialEq + Copy + 'a>(
    old: impl Fn(&K) -> Option<&'a V>,
    new: &BTreeMap<K, V>,
    keys: impl Iterator<Item = &'a K>,
    op: fn(K, V) -> Op,
    ops: &mut Vec<Op>,
) {
    for key in keys {
        if let Some(value) = new.get(key) {
            if old(key) != Some(value) {
                ops.push(op(*key, *value));
            }
        }
    }
}

/// Deletes for the `keys` (each present before) that the new tables lack.
fn deletes<'a, K: Ord + Copy + 'a, V>(
    new: &BTreeMap<K, V>,
    keys: impl Iterator<Item = &'a K>,
    op: fn(K) -> Op,
    ops: &mut Vec<Op>,
) {
    for key in keys {
        if !new.contains_key(key) {
            ops.push(op(*key));
        }
    }
}
