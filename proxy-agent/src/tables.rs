//! The model as the exact entries the service, slot and backend maps must
//! hold, with ids that stay stable across syncs and agent restarts (conntrack
//! entries name backends by id).

use std::collections::{BTreeMap, HashMap, HashSet};

use proxy_common::{
    maps::{scope, MAX_BACKENDS_PER_SERVICE},
    Backend, BackendSlotKey, ServiceKey, ServiceValue,
};

use crate::model::{Endpoint, Frontend, FrontendKind, Model, Protocol};
use crate::skip::{SkipReason, Skipped};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub slots: BTreeMap<BackendSlotKey, u32>,
    pub backends: BTreeMap<u32, Backend>,
}

/// Hands out service and backend ids. Freed ids are not handed out again
/// until the counter wraps, so a conntrack entry that still names an old
/// backend id cannot silently land on a different backend.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    services: HashMap<ServiceKey, u32>,
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
            ids.backends.insert(*backend, *id);
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
        if let Some(id) = self.backends.get(&backend) {
            return *id;
        }
        let id = next_free(&mut self.next_backend, &self.used_backends);
        self.used_backends.insert(id);
        self.backends.insert(backend, id);
        id
    }

    /// Forgets ids that the new tables no longer use.
    fn retain(&mut self, tables: &Tables) {
        self.services.retain(|k, _| tables.services.contains_key(k));
        self.backends.retain(|_, id| tables.backends.contains_key(id));
        self.used_services = self.services.values().copied().collect();
        self.used_backends = self.backends.values().copied().collect();
    }
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
        },
    }
}

pub fn backend_entry(endpoint: &Endpoint, proto: Protocol) -> Backend {
    Backend {
        addr: u32::from_ne_bytes(endpoint.ip.octets()),
        port: endpoint.port.to_be(),
        proto: proto.number(),
        flags: 0,
    }
}

/// Lays the model out as map entries. A frontend with more endpoints than a
/// service may hold is left out whole (and reported) rather than truncated.
pub fn from_model(model: &Model, ids: &mut Ids) -> (Tables, Vec<Skipped>) {
    let mut tables = Tables::default();
    let mut skipped = Vec::new();
    for (frontend, entry) in &model.frontends {
        if entry.endpoints.len() > MAX_BACKENDS_PER_SERVICE as usize {
            skipped.push(Skipped {
                object: entry.service.to_string(),
                reason: SkipReason::TooManyEndpoints,
            });
            continue;
        }
        let key = service_key(frontend);
        let service_id = ids.service(key);
        for (slot, endpoint) in entry.endpoints.iter().enumerate() {
            let backend = backend_entry(endpoint, frontend.proto);
            let backend_id = ids.backend(backend);
            tables.backends.insert(backend_id, backend);
            tables.slots.insert(
                BackendSlotKey {
                    service_id,
                    slot: slot as u32,
                },
                backend_id,
            );
        }
        tables.services.insert(
            key,
            ServiceValue {
                service_id,
                count: entry.endpoints.len() as u32,
                rev_nat_index: service_id,
                flags: 0,
            },
        );
    }
    ids.retain(&tables);
    (tables, skipped)
}
