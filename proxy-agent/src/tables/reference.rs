//! The whole model laid out at once: the reference the tests hold
//! [`super::LiveTables`] to.

use proxy_common::{maps::MAX_BACKENDS_PER_SERVICE, BackendSlotKey, ServiceValue};

use super::*;
use crate::model::Model;
use crate::skip::{SkipReason, Skipped};

/// Lays the model out as map entries. A frontend with more endpoints than a
/// service may hold is left out whole (and reported) rather than truncated.
///
/// The agent keeps the same tables up to date with [`LiveTables`]; this
/// whole-model version is the reference the tests hold it to.
pub fn from_model(model: &Model, ids: &mut Ids) -> (Tables, Vec<Skipped>) {
    let mut tables = Tables::default();
    let mut skipped = Vec::new();
    for (frontend, entry) in &model.frontends {
        if entry.endpoints.len() > MAX_BACKENDS_PER_SERVICE as usize {
            skipped.push(Skipped {
                object: entry.service.to_string(),
                reason: SkipReason::TooManyEndpoints,
                held_by: None,
            });
            continue;
        }
        let key = service_key(frontend);
        let service_id = ids.service(key);
        for (slot, endpoint) in entry.endpoints.iter().enumerate() {
            let backend = backend_entry(endpoint, frontend.proto);
            let backend_id = ids.backend(backend);
            // Two Services' slices could disagree on one endpoint while they
            // catch up; the flags of every view are kept.
            tables
                .backends
                .entry(backend_id)
                .and_modify(|b| b.flags |= backend.flags)
                .or_insert(backend);
            tables.slots.insert(
                BackendSlotKey {
                    service_id,
                    slot: slot as u32,
                },
                backend_id,
            );
        }
        let (flags, affinity_timeout_s) = service_value_flags(frontend, entry);
        for range in source_ranges(service_id, entry) {
            tables.source_ranges.insert(range, SOURCE_RANGE_ALLOWED);
        }
        tables.services.insert(
            key,
            ServiceValue {
                service_id,
                count: entry.endpoints.len() as u32,
                rev_nat_index: service_id,
                flags,
                affinity_timeout_s,
            },
        );
    }
    ids.retain(&tables);
    (tables, skipped)
}
