//! The whole model built at once from every Service and EndpointSlice: the
//! reference the tests hold [`super::LiveModel`] to. The agent itself only
//! keeps the model up to date one Service at a time.

use std::collections::{BTreeMap, HashSet};
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
    let mut skipped = Vec::new();
    // Every frontend asked for, by claim, in the order that decides who
    // gets it (see `Claimant`).
    let mut claims: BTreeMap<Claim, Vec<(Claimant, Frontend, FrontendEntry)>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for svc in services {
        let (namespace, name) = object_name(&svc.metadata);
        // A name listed twice (a manifest directory can) counts once.
        if !seen.insert((namespace.clone(), name.clone())) {
            continue;
        }
        let svc_slices = slices_by_service
            .get(&(namespace.as_str(), name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let fragment = service_fragment(svc, svc_slices, config, &node_port_ips);
        skipped.extend(fragment.skipped);
        for (i, (frontend, entry)) in fragment.frontends.into_iter().enumerate() {
            let who = claimant(&frontend, &fragment.age, &namespace, &name, i);
            claims.entry(claim(&frontend)).or_default().push((who, frontend, entry));
        }
    }
    for list in claims.values_mut() {
        list.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let owner = |c: &Claim| claims.get(c).and_then(|l| l.first()).map(|(_, _, entry)| entry);
    let mut model = Model::default();
    for (c, list) in &claims {
        let mut holder: Option<(&Frontend, &FrontendEntry)> = None;
        for item in list {
            let (_, frontend, entry) = item;
            let shadowed = owned_claims(c).iter().filter_map(owner).find(|o| shadows(frontend, &entry.service, o));
            if let Some(o) = shadowed {
                skipped.push(shadow_skip(entry, o));
                continue;
            }
            match holder {
                None => {
                    model.frontends.insert(*frontend, entry.clone());
                    holder = Some((frontend, entry));
                }
                Some(h) => {
                    if is_duplicate(h, (frontend, entry)) {
                        skipped.push(conflict_skip(h, (frontend, entry)));
                    }
                }
            }
        }
    }
    (model, skipped)
}
