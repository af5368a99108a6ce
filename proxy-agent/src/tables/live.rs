//! The tables kept up to date one frontend at a time, for the frontends the
//! model says changed. Equal to [`from_model`](super::from_model) over the
//! whole model, ids included, as long as ids are handed out in the same
//! order: the frontends in order, each one's endpoints in order, new users
//! of a backend counted before old ones let go (so a backend that moves from
//! one frontend to another within one change keeps its id, as it does when
//! everything is laid out again).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use proxy_common::{maps::MAX_BACKENDS_PER_SERVICE, Backend, BackendSlotKey, ServiceKey, ServiceValue, SourceRange};

use proxy_common::maps::backend_flags;

use super::{backend_entry, identity, service_key, service_value_flags, source_ranges, Ids, Tables, SOURCE_RANGE_ALLOWED};
use crate::model::{Frontend, FrontendEntry, Model};
use crate::skip::{SkipReason, Skipped};

/// The entries an update may have changed, with what they held before it
/// (None: absent): all a diff needs, so the agent keeps no second copy of
/// the tables to diff against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeMap<ServiceKey, Option<ServiceValue>>,
    pub slots: BTreeMap<BackendSlotKey, Option<u32>>,
    pub backends: BTreeMap<u32, Option<Backend>>,
    pub source_ranges: BTreeMap<(u32, SourceRange), Option<u32>>,
}

impl Touched {
    /// `tables` (as they are after the update) as they were before it.
    pub fn revert(&self, mut tables: Tables) -> Tables {
        fn put_back<K: Ord + Copy, V: Copy>(map: &mut BTreeMap<K, V>, old: &BTreeMap<K, Option<V>>) {
            for (key, value) in old {
                match value {
                    Some(value) => drop(map.insert(*key, *value)),
                    None => drop(map.remove(key)),
                }
            }
        }
        put_back(&mut tables.services, &self.services);
        put_back(&mut tables.slots, &self.slots);
        put_back(&mut tables.backends, &self.backends);
        put_back(&mut tables.source_ranges, &self.source_ranges);
        tables
    }

    fn service(&mut self, tables: &Tables, key: ServiceKey) {
        self.services.entry(key).or_insert_with(|| tables.services.get(&key).copied());
    }
    fn slot(&mut self, tables: &Tables, key: BackendSlotKey) {
        self.slots.entry(key).or_insert_with(|| tables.slots.get(&key).copied());
    }
    fn backend(&mut self, tables: &Tables, id: u32) {
        self.backends.entry(id).or_insert_with(|| tables.backends.get(&id).copied());
    }
    fn source_range(&mut self, tables: &Tables, key: (u32, SourceRange)) {
        self.source_ranges.entry(key).or_insert_with(|| tables.source_ranges.get(&key).copied());
    }
}

/// How many frontends use a backend, and how many of them see it local or
/// terminating: its flags are those of every view, as in `from_model`.
#[derive(Clone, Copy, Debug)]
struct Users {
    identity: Backend,
    all: u32,
    local: u32,
    terminating: u32,
}

impl Users {
    fn count(&mut self, flags: u8, by: i32) {
        let add = |n: &mut u32, on: bool| {
            if on {
                *n = n.saturating_add_signed(by);
            }
        };
        add(&mut self.all, true);
        add(&mut self.local, flags & backend_flags::LOCAL != 0);
        add(&mut self.terminating, flags & backend_flags::TERMINATING != 0);
    }

    fn entry(&self) -> Backend {
        let mut flags = 0;
        if self.local > 0 {
            flags |= backend_flags::LOCAL;
        }
        if self.terminating > 0 {
            flags |= backend_flags::TERMINATING;
        }
        Backend { flags, ..self.identity }
    }
}

#[derive(Debug, Default)]
pub struct LiveTables {
    tables: Tables,
    ids: Ids,
    /// Each laid-out frontend's backends by slot, with the flags it sees.
    layouts: HashMap<ServiceKey, Vec<(u32, u8)>>,
    /// Each laid-out frontend's source range entries (keyed by its own
    /// service id, so never shared).
    ranges: HashMap<ServiceKey, Vec<(u32, SourceRange)>>,
    users: HashMap<u32, Users>,
    /// Frontends left out for having too many endpoints.
    oversized: BTreeSet<Frontend>,
}

impl LiveTables {
    /// Ids as the pinned maps hold them (see [`Ids::adopt`]).
    pub fn new(ids: Ids) -> Self {
        LiveTables {
            ids,
            ..LiveTables::default()
        }
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Lays out the whole model again; ids no entry uses any more are
    /// forgotten, as `from_model` does. Returns the tables before, for a
    /// diff of every entry.
    pub fn replace_all(&mut self, model: &Model) -> Tables {
        let ids = std::mem::take(&mut self.ids);
        let old = std::mem::replace(self, LiveTables::new(ids)).tables;
        for (frontend, entry) in &model.frontends {
            self.lay_out(frontend, entry, None);
        }
        for (backend_id, users) in &self.users {
            self.tables.backends.insert(*backend_id, users.entry());
        }
        self.ids.retain(&self.tables);
        old
    }

    /// Brings the entries of `changed` frontends in line with `model`.
    pub fn update(&mut self, model: &Model, changed: &BTreeSet<Frontend>) -> Touched {
        let mut touched = Touched::default();
        let old: Vec<(ServiceKey, Option<Vec<(u32, u8)>>)> = changed
            .iter()
            .map(|f| {
                let key = service_key(f);
                (key, self.layouts.remove(&key))
            })
            .collect();
        let old_ranges: Vec<(u32, SourceRange)> = changed
            .iter()
            .filter_map(|f| self.ranges.remove(&service_key(f)))
            .flatten()
            .collect();
        for frontend in changed {
            if let Some(entry) = model.frontends.get(frontend) {
                self.lay_out(frontend, entry, Some(&mut touched));
            } else {
                self.oversized.remove(frontend);
            }
        }
        let kept: HashSet<&(u32, SourceRange)> =
            changed.iter().filter_map(|f| self.ranges.get(&service_key(f))).flatten().collect();
        let dropped: Vec<_> = old_ranges.into_iter().filter(|r| !kept.contains(r)).collect();
        for range in dropped {
            touched.source_range(&self.tables, range);
            self.tables.source_ranges.remove(&range);
        }
        for (key, layout) in old {
            let Some(layout) = layout else { continue };
            let service_id = self.ids.services[&key];
            let kept = self.layouts.get(&key).map_or(0, Vec::len);
            for (slot, (backend_id, flags)) in layout.iter().enumerate() {
                if let Some(users) = self.users.get_mut(backend_id) {
                    users.count(*flags, -1);
                }
                touched.backend(&self.tables, *backend_id);
                if slot >= kept {
                    let slot = BackendSlotKey {
                        service_id,
                        slot: slot as u32,
                    };
                    touched.slot(&self.tables, slot);
                    self.tables.slots.remove(&slot);
                }
            }
            if !self.layouts.contains_key(&key) {
                touched.service(&self.tables, key);
                self.tables.services.remove(&key);
                self.ids.forget_service(&key);
            }
        }
        for backend_id in touched.backends.keys() {
            let Some(users) = self.users.get(backend_id) else { continue };
            if users.all == 0 {
                self.ids.forget_backend(&users.identity);
                self.users.remove(backend_id);
                self.tables.backends.remove(backend_id);
            } else {
                self.tables.backends.insert(*backend_id, users.entry());
            }
        }
        touched
    }

    /// Writes one frontend's service value and slots and counts it as a
    /// user of its backends (whose entries the caller writes).
    fn lay_out(&mut self, frontend: &Frontend, entry: &FrontendEntry, mut touched: Option<&mut Touched>) {
        self.oversized.remove(frontend);
        if entry.endpoints.len() > MAX_BACKENDS_PER_SERVICE as usize {
            self.oversized.insert(*frontend);
            return;
        }
        let key = service_key(frontend);
        let service_id = self.ids.service(key);
        let mut layout = Vec::with_capacity(entry.endpoints.len());
        for (slot, endpoint) in entry.endpoints.iter().enumerate() {
            let backend = backend_entry(endpoint, frontend.proto);
            let backend_id = self.ids.backend(backend);
            self.users
                .entry(backend_id)
                .or_insert(Users {
                    identity: identity(&backend),
                    all: 0,
                    local: 0,
                    terminating: 0,
                })
                .count(backend.flags, 1);
            let slot = BackendSlotKey {
                service_id,
                slot: slot as u32,
            };
            if let Some(touched) = touched.as_deref_mut() {
                touched.slot(&self.tables, slot);
                touched.backend(&self.tables, backend_id);
            }
            self.tables.slots.insert(slot, backend_id);
            layout.push((backend_id, backend.flags));
        }
        let (flags, affinity_timeout_s) = service_value_flags(frontend, entry);
        let value = ServiceValue {
            service_id,
            count: layout.len() as u32,
            rev_nat_index: service_id,
            flags,
            affinity_timeout_s,
        };
        let ranges = source_ranges(service_id, entry);
        if let Some(touched) = touched {
            touched.service(&self.tables, key);
            for range in &ranges {
                touched.source_range(&self.tables, *range);
            }
        }
        for range in &ranges {
            self.tables.source_ranges.insert(*range, SOURCE_RANGE_ALLOWED);
        }
        if !ranges.is_empty() {
            self.ranges.insert(key, ranges);
        }
        self.tables.services.insert(key, value);
        self.layouts.insert(key, layout);
    }

    /// Frontends left out for having more endpoints than a service may hold.
    pub fn skipped(&self, model: &Model) -> Vec<Skipped> {
        self.oversized
            .iter()
            .filter_map(|f| model.frontends.get(f))
            .map(|entry| Skipped {
                object: entry.service.to_string(),
                reason: SkipReason::TooManyEndpoints,
                held_by: None,
            })
            .collect()
    }
}
