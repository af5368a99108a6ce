//! The model as the exact entries the service, slot and backend maps must
//! hold, with ids that stay stable across syncs and agent restarts (conntrack
//! entries name backends by id).

mod live;
#[cfg(test)]
mod reference;
#[cfg(test)]
pub use reference::from_model;

use std::collections::{BTreeMap, HashMap, HashSet};

use proxy_common::{
    maps::{backend_flags, scope, service_flags},
    Backend, BackendSlotKey, ServiceKey, ServiceValue, SourceRange,
};

use crate::model::{Endpoint, Frontend, FrontendEntry, FrontendKind, Protocol};

pub use live::{LiveTables, Touched};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub slots: BTreeMap<BackendSlotKey, u32>,
    pub backends: BTreeMap<u32, Backend>,
    /// `loadBalancerSourceRanges` entries: (trie prefix length, key data)
    /// -> the trie's value, always [`SOURCE_RANGE_ALLOWED`]. A map rather
    /// than a set, so the diff treats it like the other tables.
    pub source_ranges: BTreeMap<(u32, SourceRange), u32>,
}

/// Hands out service and backend ids. Freed ids are not handed out again
/// until the counter wraps, so a conntrack entry that still names an old
/// backend id cannot silently land on a different backend. A backend's id
/// belongs to its address, port and protocol, not its flags: an endpoint that
/// starts terminating keeps its id, so connections to it keep working.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    services: HashMap<ServiceKey, u32>,
    /// Keyed by [`identity`].
    backends: HashMap<Backend, u32>,
    used_services: HashSet<u32>,
    used_backends: HashSet<u32>,
    next_service: u32,
    next_backend: u32,
}

impl Ids {
    /// Seeds the allocator from what is already in the maps, so a restarted
    /// agent keeps every id its predecessor gave out.
    pub fn adopt(tables: &Tables) -> Self {
        let mut ids = Ids::default();
        for (key, value) in &tables.services {
            ids.services.insert(*key, value.service_id);
            ids.used_services.insert(value.service_id);
            ids.next_service = ids.next_service.max(value.service_id);
        }
        for (id, backend) in &tables.backends {
            ids.backends.insert(identity(backend), *id);
            ids.used_backends.insert(*id);
            ids.next_backend = ids.next_backend.max(*id);
        }
        ids
    }

    fn service(&mut self, key: ServiceKey) -> u32 {
        if let Some(id) = self.services.get(&key) {
            return *id;
        }
        let id = next_free(&mut self.next_service, &self.used_services);
        self.used_services.insert(id);
        self.services.insert(key, id);
        id
    }

    fn backend(&mut self, backend: Backend) -> u32 {
        let key = identity(&backend);
        if let Some(id) = self.backends.get(&key) {
            return *id;
        }
        let id = next_free(&mut self.next_backend, &self.used_backends);
        self.used_backends.insert(id);
        self.backends.insert(key, id);
        id
    }

    fn forget_service(&mut self, key: &ServiceKey) {
        if let Some(id) = self.services.remove(key) {
            self.used_services.remove(&id);
        }
    }

    /// `backend` as [`identity`] gives it.
    fn forget_backend(&mut self, backend: &Backend) {
        if let Some(id) = self.backends.remove(backend) {
            self.used_backends.remove(&id);
        }
    }

    /// Forgets ids that the new tables no longer use.
    fn retain(&mut self, tables: &Tables) {
        self.services.retain(|k, _| tables.services.contains_key(k));
        self.backends.retain(|_, id| tables.backends.contains_key(id));
        self.used_services = self.services.values().copied().collect();
        self.used_backends = self.backends.values().copied().collect();
    }
}

/// What a backend id stands for: the backend without its flags.
fn identity(backend: &Backend) -> Backend {
    Backend { flags: 0, ..*backend }
}

/// Id 0 is never used, so a zeroed value can never pass for a real one.
fn next_free(counter: &mut u32, in_use: &HashSet<u32>) -> u32 {
    loop {
        *counter = counter.wrapping_add(1);
        if *counter != 0 && !in_use.contains(counter) {
            return *counter;
        }
    }
}

pub fn service_key(frontend: &Frontend) -> ServiceKey {
    ServiceKey {
        addr: u32::from_ne_bytes(frontend.ip.octets()),
        port: frontend.port.to_be(),
        proto: frontend.proto.number(),
        scope: match frontend.kind {
            FrontendKind::ClusterIp => scope::CLUSTER_IP,
            FrontendKind::NodePort => scope::NODE_PORT,
            FrontendKind::LoadBalancer | FrontendKind::ExternalIp => scope::EXTERNAL,
        },
    }
}

pub fn backend_entry(endpoint: &Endpoint, proto: Protocol) -> Backend {
    let mut flags = 0;
    if endpoint.local {
        flags |= backend_flags::LOCAL;
    }
    if endpoint.terminating {
        flags |= backend_flags::TERMINATING;
    }
    Backend {
        addr: u32::from_ne_bytes(endpoint.ip.octets()),
        port: endpoint.port.to_be(),
        proto: proto.number(),
        flags,
    }
}

/// The service value's flags and affinity timeout. A policy flag is set only
/// on the kind of frontend the policy governs.
pub fn service_value_flags(frontend: &Frontend, entry: &FrontendEntry) -> (u32, u32) {
    let mut flags = 0;
    let mut timeout = 0;
    if let Some(seconds) = entry.session_affinity {
        flags |= service_flags::SESSION_AFFINITY;
        timeout = seconds;
    }
    let policy_local = if frontend.kind.is_external() {
        if entry.external_policy_local {
            flags |= service_flags::EXTERNAL_LOCAL;
        }
        entry.external_policy_local
    } else {
        if entry.internal_policy_local {
            flags |= service_flags::INTERNAL_LOCAL;
        }
        entry.internal_policy_local
    };
    if policy_local && entry.no_local_endpoints {
        flags |= service_flags::NO_LOCAL_ENDPOINTS;
    }
    if entry.source_ranges.is_some() {
        flags |= service_flags::SOURCE_RANGES;
    }
    (flags, timeout)
}

/// The value of every source range entry: the trie only answers "in a range".
pub const SOURCE_RANGE_ALLOWED: u32 = 1;

/// The source range map keys admitting the frontend's
/// `loadBalancerSourceRanges` to it.
pub fn source_ranges(service_id: u32, entry: &FrontendEntry) -> Vec<(u32, SourceRange)> {
    let Some(ranges) = &entry.source_ranges else {
        return Vec::new();
    };
    ranges
        .iter()
        .map(|cidr| {
            (
                SourceRange::trie_prefix_len(cidr.prefix_len()),
                SourceRange {
                    service_id_be: service_id.to_be(),
                    addr: u32::from_ne_bytes(cidr.network().octets()),
                },
            )
        })
        .collect()
}

