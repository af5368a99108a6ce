//! The endpoints a Service's EndpointSlices list for one of its ports, each
//! address once (kube-proxy's endpointslicecache.go).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::slice::Slice;
use super::{valid_port, Config, Endpoint, Protocol};
use crate::skip::SkipReason;

/// One endpoint with everything traffic policy and topology look at.
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub local: bool,
    /// `hints.forZones[].name`; empty when the endpoint has no zone hint.
    pub zone_hints: BTreeSet<String>,
    /// `hints.forNodes[].name`; empty when the endpoint has no node hint.
    pub node_hints: BTreeSet<String>,
}

impl Candidate {
    /// Usable only through the terminating fallback.
    pub fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            ip: self.ip,
            port: self.port,
            local: self.local,
            terminating: self.terminating && !self.ready,
        }
    }

    /// Which copy of an address listed twice wins: kube-proxy favours the
    /// local one; between equals, the more usable one (kube-proxy's choice
    /// there depends on map order, so any is as right, and this one is
    /// stable).
    fn rank(&self) -> (bool, bool, bool) {
        (self.local, self.ready, self.serving_terminating())
    }
}

/// IPv4 slices by the namespace and name of the Service they belong to,
/// each Service's in name order.
pub(super) fn index_slices(slices: &[Arc<Slice>]) -> HashMap<(&str, &str), Vec<&Slice>> {
    let mut by_service: HashMap<(&str, &str), Vec<&Slice>> = HashMap::new();
    for slice in slices {
        if let Some(service) = owner(slice) {
            by_service.entry(service).or_default().push(slice);
        }
    }
    for slices in by_service.values_mut() {
        sort_slices(slices);
    }
    by_service
}

/// The namespace and name of the Service an IPv4 slice belongs to (by its
/// `kubernetes.io/service-name` label); None for slices the model ignores.
pub fn owner(slice: &Slice) -> Option<(&str, &str)> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let service = slice.service.as_deref()?;
    Some((slice.metadata.namespace.as_deref().unwrap_or("default"), service))
}

/// The order a Service's slices are read in, so that the same endpoints
/// come out whatever order the source lists them in.
pub(super) fn sort_slices(slices: &mut [&Slice]) {
    slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
}

fn is_local(node_name: Option<&str>, config: &Config) -> bool {
    matches!((node_name, config.node_name.as_deref()), (Some(a), Some(b)) if !b.is_empty() && a == b)
}

/// Every endpoint of one Service port, ready or not, sorted by address. A
/// slice port matches by name and protocol. An address listed in two slices,
/// as during a slice hand-over, counts once.
pub(super) fn collect(
    slices: &[&Slice],
    port_name: &str,
    proto: Protocol,
    config: &Config,
    skip: &mut dyn FnMut(SkipReason),
) -> Vec<Candidate> {
    let mut by_address: BTreeMap<(Ipv4Addr, u16), Candidate> = BTreeMap::new();
    for slice in slices {
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name && Protocol::parse(p.protocol.as_deref()).ok() == Some(proto)
        });
        let Some(port) = port else { continue };
        let Some(port) = port.port.and_then(valid_port) else {
            skip(SkipReason::EndpointPortOutOfRange);
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            // Consumers use the first address only (EndpointSlice API).
            let Some(addr) = &ep.address else { continue };
            let Ok(ip) = addr.parse::<Ipv4Addr>() else {
                skip(SkipReason::InvalidEndpointAddress);
                continue;
            };
            if !usable_endpoint(ip) {
                skip(SkipReason::UnusableEndpointAddress);
                continue;
            }
            // The API's defaults for unset conditions: ready and serving
            // true, terminating false.
            let cond = ep.conditions.as_ref();
            let hints = ep.hints.as_ref();
            let candidate = Candidate {
                ip,
                port,
                ready: cond.and_then(|c| c.ready).unwrap_or(true),
                serving: cond.and_then(|c| c.serving).unwrap_or(true),
                terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
                local: is_local(ep.node_name.as_deref(), config),
                zone_hints: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.clone()).collect())
                    .unwrap_or_default(),
                node_hints: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|n| n.iter().map(|n| n.name.clone()).collect())
                    .unwrap_or_default(),
            };
            match by_address.get(&(ip, port)) {
                Some(kept) if kept.rank() >= candidate.rank() => {}
                _ => {
                    by_address.insert((ip, port), candidate);
                }
            }
        }
    }
    by_address.into_values().collect()
}

/// kube-proxy's `LocalReadyEndpoints`, which its health check server
/// reports: ready endpoints on this node, as distinct addresses over every
/// port of the Service (10.0.0.1:80 and 10.0.0.1:443 are one endpoint).
pub(super) fn local_ready_count(slices: &[&Slice], config: &Config) -> u32 {
    let mut local = BTreeSet::new();
    for slice in slices {
        if !slice
            .ports
            .iter()
            .flatten()
            .any(|p| p.port.and_then(valid_port).is_some())
        {
            continue;
        }
        for ep in slice.endpoints.iter().flatten() {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready || !is_local(ep.node_name.as_deref(), config) {
                continue;
            }
            if let Some(ip) = ep.address.as_ref().and_then(|a| a.parse::<Ipv4Addr>().ok()) {
                local.insert(ip);
            }
        }
    }
    local.len() as u32
}

/// Whether traffic may be sent to an endpoint at `ip`: not the unspecified
/// or broadcast address, a multicast group, loopback (the node itself) or
/// link-local (a cloud's metadata server, 169.254.169.254, among others).
/// An EndpointSlice is written by whoever may write one, not only by the
/// controller.
pub fn usable_endpoint(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() || ip.is_link_local())
}
