//! The model kept up to date one Service at a time. [`build`](super::build)
//! recomputes every Service on every change, which at ten thousand Services
//! takes longer than a change may take to reach the datapath. Here each
//! Service's [`ServiceFragment`] is kept, a change recomputes only the
//! fragments of the Services whose objects changed, and the claims those
//! fragments touch are settled again by the same rule `build` applies: the
//! first Service in name order, and its first frontend, wins.
//!
//! The result equals `build` over the same objects (the unit tests check
//! this over random change sequences); what it adds is the set of frontends
//! whose entry changed, so the tables and the diff can stay incremental too.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use super::{
    claim, duplicate_skip, endpoints, is_duplicate, node_port_ips, object_name, service_fragment, Claim, Config,
    Frontend, Model, ServiceFragment, Slice,
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
    /// (Service, index in its fragment) and the frontend it asks for,
    /// sorted. Nearly always one entry, so a vector, not a tree (whose
    /// smallest node would be most of the memory per Service).
    by_order: Vec<((ServiceName, usize), Frontend)>,
    /// The frontend in the model for this claim.
    holder: Option<Frontend>,
}

impl Claimants {
    fn insert(&mut self, who: (ServiceName, usize), frontend: Frontend) {
        match self.by_order.binary_search_by(|(w, _)| w.cmp(&who)) {
            Ok(at) => self.by_order[at].1 = frontend,
            Err(at) => self.by_order.insert(at, (who, frontend)),
        }
    }

    fn remove(&mut self, who: &(ServiceName, usize)) {
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
        for claimants in self.claims.values() {
            let Some(holder) = claimants.holder else { continue };
            let holder = (&holder, &self.model.frontends[&holder]);
            for (who, frontend) in claimants.by_order.iter().skip(1) {
                let entry = &self.fragments[&who.0].frontends[who.1].1;
                if is_duplicate(holder, (frontend, entry)) {
                    skipped.push(duplicate_skip(entry));
                }
            }
        }
        skipped
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
                    claimants.remove(&(name.clone(), i));
                    skips_changed |= !claimants.by_order.is_empty();
                }
                touched.insert(c);
            }
        }
        if fragment != ServiceFragment::default() {
            for (i, (frontend, _)) in fragment.frontends.iter().enumerate() {
                let c = claim(frontend);
                let claimants = self.claims.entry(c).or_default();
                claimants.insert((name.clone(), i), *frontend);
                skips_changed |= claimants.by_order.len() > 1;
                touched.insert(c);
            }
            self.fragments.insert(name, fragment);
        }
        if skips_changed {
            self.skipped = None;
        }
    }

    /// Gives each touched claim to its first claimant and brings the model
    /// in line; returns the frontends whose entry changed.
    fn settle(&mut self, touched: HashSet<Claim>) -> BTreeSet<Frontend> {
        let mut changed = BTreeSet::new();
        for c in touched {
            let Some(claimants) = self.claims.get_mut(&c) else { continue };
            let winner = claimants
                .by_order
                .first()
                .map(|((name, i), frontend)| (*frontend, &self.fragments[name].frontends[*i].1));
            let old_holder = claimants.holder.take();
            if let Some(old) = old_holder {
                if winner.map(|w| w.0) != Some(old) {
                    self.model.frontends.remove(&old);
                    changed.insert(old);
                }
            }
            match winner {
                Some((frontend, entry)) => {
                    if self.model.frontends.get(&frontend) != Some(entry) {
                        self.model.frontends.insert(frontend, entry.clone());
                        changed.insert(frontend);
                    }
                    claimants.holder = Some(frontend);
                }
                None => {
                    self.claims.remove(&c);
                }
            }
        }
        changed
    }
}
