//! The whole model built at once from every Service and EndpointSlice: the
//! reference the tests hold [`super::LiveModel`] to. The agent itself only
//! keeps the model up to date one Service at a time.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::*;

/// Builds the model. Objects, or parts of them, that cannot be served are
/// reported in the second value and left out; everything else is served.
///
/// The agent keeps the same model up to date with [`LiveModel`], one
/// Service at a time; this whole-world version is the reference the tests
/// hold it to.
pub fn build(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>], config: &Config) -> (Model, Vec<Skipped>) {
    let slices: Vec<Arc<Slice>> = slices.iter().map(|s| Arc::new(Slice::from(&**s))).collect();
    let slices_by_service = endpoints::index_slices(&slices);
    let node_port_ips = node::node_port_ips(config);
    let mut builder = Builder::default();

    // Sorted so that, when two Services claim the same frontend, the same one
    // wins on every node and every restart.
    let mut services: Vec<&Service> = services.iter().map(|s| &**s).collect();
    services.sort_by_cached_key(|s| object_name(&s.metadata));

    for svc in services {
        let (namespace, name) = object_name(&svc.metadata);
        let svc_slices = slices_by_service
            .get(&(namespace.as_str(), name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let fragment = service_fragment(svc, svc_slices, config, &node_port_ips);
        builder.skipped.extend(fragment.skipped);
        for (frontend, entry) in fragment.frontends {
            builder.insert(frontend, entry);
        }
    }
    (builder.model, builder.skipped)
}

#[derive(Default)]
struct Builder {
    model: Model,
    skipped: Vec<Skipped>,
    /// Who holds each claim.
    claims: HashMap<Claim, Frontend>,
}

impl Builder {
    /// Adds a frontend unless an earlier one holds its claim.
    fn insert(&mut self, frontend: Frontend, entry: FrontendEntry) {
        let claim = claim(&frontend);
        if let Some(holder) = self.claims.get(&claim) {
            if is_duplicate((holder, &self.model.frontends[holder]), (&frontend, &entry)) {
                self.skipped.push(duplicate_skip(&entry));
            }
            return;
        }
        self.claims.insert(claim, frontend);
        self.model.frontends.insert(frontend, entry);
    }
}
