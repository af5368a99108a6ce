//! The model kept up to date one Service at a time. [`build`](super::build)
//! recomputes every Service on every change, which at ten thousand Services
//! takes longer than a change may take to reach the datapath. Here each
//! Service's [`ServiceFragment`] is kept, a change recomputes only the
//! fragments of the Services whose objects changed, and the claims those
//! fragments touch are settled again by the same rule `build` applies (see
//! [`Claimant`]): owned addresses before externalIPs, then the older
//! Service, then its name, then its first frontend; and an externalIP never
//! shadows another Service's ClusterIP or NodePort.
//!
//! The result equals `build` over the same objects (the unit tests check
//! this over random change sequences); what it adds is the set of frontends
//! whose entry changed, so the tables and the diff can stay incremental too.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use super::{
    claim, claimant, conflict_skip, endpoints, external_claim, is_duplicate, node_port_ips, object_name, owned_claims,
    service_fragment, shadow_skip, shadows, Claim, Claimant, Config, Frontend, FrontendEntry, FrontendKind, Model, ServiceFragment, Slice,
};
use crate::skip::Skipped;

/// A Service's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn of(svc: &Service) -> Self {
        let (namespace, name) = object_name(&svc.metadata);
        ServiceName { namespace, name }
    }
}

/// A Service's objects as the source holds them now: the Service (None once
/// deleted) and the EndpointSlices labelled with its name.
pub struct ServiceObjects {
    pub name: ServiceName,
    pub service: Option<Arc<Service>>,
    pub slices: Vec<Arc<Slice>>,
}

/// Who asks for one claim, in the order that decides who gets it.
#[derive(Debug, Default)]
struct Claimants {
    /// Who (see [`Claimant`]) and the frontend it asks for, sorted. Nearly
    /// always one entry, so a vector, not a tree (whose smallest node would
    /// be most of the memory per Service).
    by_order: Vec<(Claimant, Frontend)>,
    /// The frontend in the model for this claim.
    holder: Option<Frontend>,
}

impl Claimants {
    fn insert(&mut self, who: Claimant, frontend: Frontend) {
        match self.by_order.binary_search_by(|(w, _)| w.cmp(&who)) {
            Ok(at) => self.by_order[at].1 = frontend,
            Err(at) => self.by_order.insert(at, (who, frontend)),
        }
    }

    fn remove(&mut self, who: &Claimant) {
        if let Ok(at) = self.by_order.binary_search_by(|(w, _)| w.cmp(who)) {
            self.by_order.remove(at);
        }
    }
}

#[derive(Debug, Default)]
pub struct LiveModel {
    config: Config,
    node_port_ips: Vec<Ipv4Addr>,
    fragments: HashMap<ServiceName, ServiceFragment>,
    claims: HashMap<Claim, Claimants>,
    model: Model,
    /// [`LiveModel::skipped`] as last collected; None once a change may
    /// have changed it. Most changes concern Services with nothing
    /// skipped, and collecting means visiting every Service.
    skipped: Option<Vec<Skipped>>,
}

impl LiveModel {
    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How many Services ask for at least one frontend: counted over the
    /// per-Service fragments, without visiting every frontend's strings.
    pub fn services_with_frontends(&self) -> usize {
        self.fragments.values().filter(|f| !f.frontends.is_empty()).count()
    }

    /// Starts over from every object the source holds, for `config`.
    /// Returns every frontend that was or is in the model.
    pub fn replace_all(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<Slice>],
        config: &Config,
    ) -> BTreeSet<Frontend> {
        let old = std::mem::take(self);
        self.config = config.clone();
        self.node_port_ips = node_port_ips(config);
        let slices_by_service = endpoints::index_slices(slices);
        let mut touched = HashSet::new();
        for svc in services {
            let name = ServiceName::of(svc);
            // A name listed twice (a manifest directory can) counts once.
            if self.fragments.contains_key(&name) {
                continue;
            }
            let svc_slices = slices_by_service
                .get(&(name.namespace.as_str(), name.name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let fragment = service_fragment(svc, svc_slices, config, &self.node_port_ips);
            self.set_fragment(name, fragment, &mut touched);
        }
        let mut changed = self.settle(touched);
        changed.extend(old.model.frontends.into_keys());
        changed
    }

    /// Recomputes the named Services from their objects as they are now.
    /// Returns the frontends whose entry was added, changed or removed.
    pub fn update(&mut self, changed: &[ServiceObjects]) -> BTreeSet<Frontend> {
        let mut touched = HashSet::new();
        for objects in changed {
            let mut slices: Vec<&Slice> = objects
                .slices
                .iter()
                .map(|s| &**s)
                .filter(|s| endpoints::owner(s) == Some((&objects.name.namespace, &objects.name.name)))
                .collect();
            endpoints::sort_slices(&mut slices);
            let fragment = match &objects.service {
                Some(svc) => service_fragment(svc, &slices, &self.config, &self.node_port_ips),
                None => ServiceFragment::default(),
            };
            self.set_fragment(objects.name.clone(), fragment, &mut touched);
        }
        self.settle(touched)
    }

    /// Everything left out, in no particular order.
    pub fn skipped(&mut self) -> &[Skipped] {
        if self.skipped.is_none() {
            self.skipped = Some(self.collect_skipped());
        }
        self.skipped.as_deref().unwrap_or_default()
    }

    fn collect_skipped(&self) -> Vec<Skipped> {
        let mut skipped: Vec<Skipped> = self.fragments.values().flat_map(|f| f.skipped.iter().cloned()).collect();
        for (c, claimants) in &self.claims {
            if claimants.by_order.len() < 2 && claimants.holder.is_some() {
                continue;
            }
            let holder = claimants.holder.map(|h| (h, &self.model.frontends[&h]));
            // The holder is the first claimant that shadows nothing.
            let mut held = false;
            for (who, frontend) in &claimants.by_order {
                let entry = self.entry_of(who);
                if let Some(owner) = self.shadowed_by(c, frontend, entry) {
                    skipped.push(shadow_skip(entry, owner));
                    continue;
                }
                let Some((holder, holder_entry)) = holder else { continue };
                if !held {
                    held = true;
                    continue;
                }
                if is_duplicate((&holder, holder_entry), (frontend, entry)) {
                    skipped.push(conflict_skip((&holder, holder_entry), (frontend, entry)));
                }
            }
        }
        skipped
    }

    /// The entry a claimant asks for.
    fn entry_of(&self, who: &Claimant) -> &FrontendEntry {
        let (namespace, name) = &who.2;
        &self.fragments[&ServiceName::new(namespace, name)].frontends[who.3].1
    }

    /// The entry of another Service whose ClusterIP or NodePort `frontend`,
    /// an externalIP, would shadow (see [`super::shadows`]).
    fn shadowed_by(&self, c: &Claim, frontend: &Frontend, entry: &FrontendEntry) -> Option<&FrontendEntry> {
        if frontend.kind != FrontendKind::ExternalIp {
            return None;
        }
        owned_claims(c)
            .iter()
            .filter_map(|o| self.claims.get(o)?.by_order.first())
            .map(|(who, _)| self.entry_of(who))
            .find(|owner| shadows(frontend, &entry.service, owner))
    }

    /// Replaces one Service's fragment (an empty one removes it), noting
    /// the claims whose claimants changed.
    fn set_fragment(&mut self, name: ServiceName, fragment: ServiceFragment, touched: &mut HashSet<Claim>) {
        // Skips change with a fragment that has some, or with a claim that
        // has (or had) more than one claimant.
        let mut skips_changed = !fragment.skipped.is_empty();
        if let Some(old) = self.fragments.remove(&name) {
            skips_changed |= !old.skipped.is_empty();
            for (i, (frontend, _)) in old.frontends.iter().enumerate() {
                let c = claim(frontend);
                if let Some(claimants) = self.claims.get_mut(&c) {
                    claimants.remove(&claimant(frontend, &old.age, &name.namespace, &name.name, i));
                    // An externalIP may have been reported as a conflict.
                    skips_changed |= !claimants.by_order.is_empty() || frontend.kind == FrontendKind::ExternalIp;
                }
                touch(touched, c);
            }
        }
        if !fragment.is_empty() {
            for (i, (frontend, _)) in fragment.frontends.iter().enumerate() {
                let c = claim(frontend);
                let claimants = self.claims.entry(c).or_default();
                claimants.insert(claimant(frontend, &fragment.age, &name.namespace, &name.name, i), *frontend);
                skips_changed |= claimants.by_order.len() > 1 || frontend.kind == FrontendKind::ExternalIp;
                touch(touched, c);
            }
            self.fragments.insert(name, fragment);
        }
        if skips_changed {
            self.skipped = None;
        }
    }

    /// Gives each touched claim to its first claimant that shadows no other
    /// Service's address, and brings the model in line; returns the
    /// frontends whose entry changed.
    fn settle(&mut self, touched: HashSet<Claim>) -> BTreeSet<Frontend> {
        let mut changed = BTreeSet::new();
        for c in touched {
            let Some(claimants) = self.claims.get(&c) else { continue };
            if claimants.by_order.is_empty() {
                if let Some(old) = claimants.holder {
                    self.model.frontends.remove(&old);
                    changed.insert(old);
                }
                self.claims.remove(&c);
                continue;
            }
            // Whether an externalIP is shadowed depends on other claims:
            // what is skipped may change with any of them.
            if claimants.by_order.iter().any(|(_, f)| f.kind == FrontendKind::ExternalIp) {
                self.skipped = None;
            }
            let winner = claimants
                .by_order
                .iter()
                .map(|(who, frontend)| (*frontend, self.entry_of(who)))
                .find(|(frontend, entry)| self.shadowed_by(&c, frontend, entry).is_none())
                .map(|(frontend, entry)| (frontend, entry.clone()));
            let claimants = self.claims.get_mut(&c).expect("looked up above");
            let old_holder = claimants.holder.take();
            claimants.holder = winner.as_ref().map(|(frontend, _)| *frontend);
            if let Some(old) = old_holder {
                if winner.as_ref().map(|w| w.0) != Some(old) {
                    self.model.frontends.remove(&old);
                    changed.insert(old);
                }
            }
            if let Some((frontend, entry)) = winner {
                if self.model.frontends.get(&frontend) != Some(&entry) {
                    self.model.frontends.insert(frontend, entry);
                    changed.insert(frontend);
                }
            }
        }
        changed
    }
}

/// Notes a claim to settle again, and with an owned one the external claim
/// of the same address, port and protocol, whose externalIPs it may shadow.
fn touch(touched: &mut HashSet<Claim>, c: Claim) {
    touched.insert(c);
    let external = external_claim(&c);
    if external != c {
        touched.insert(external);
    }
}
