//! Which endpoints each kind of traffic may use on this node: kube-proxy's
//! `CategorizeEndpoints` and `topologyModeFromHints` (pkg/proxy/topology.go).

use super::endpoints::Candidate;
use super::{Config, Endpoint};

/// The endpoint lists of one Service port, as seen from this node.
pub(super) struct Chosen {
    /// For Cluster traffic policy: ready endpoints, narrowed by topology
    /// hints when they apply; when none is ready anywhere, the serving and
    /// terminating ones (without topology).
    pub cluster: Vec<Endpoint>,
    /// For Local traffic policy: ready endpoints on this node; when none is,
    /// serving and terminating ones on this node.
    pub local: Vec<Endpoint>,
    /// Some endpoint is usable somewhere in the cluster (kube-proxy's
    /// `hasAnyEndpoints`): an empty Local list then means "drop", not
    /// "refuse".
    pub has_any: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopologyMode {
    /// No topology: every ready endpoint.
    None,
    /// `PreferSameNode` (KEP-3015): endpoints hinted for this node.
    SameNode,
    /// `PreferSameZone` / `PreferClose` / topology-aware hints: endpoints
    /// hinted for this node's zone.
    SameZone,
}

/// Both lists are computed whatever the policies; the caller takes the one
/// each frontend's policy names. kube-proxy computes only the ones a
/// Service uses, with the same result for those.
pub(super) fn categorize(candidates: &[Candidate], config: &Config) -> Chosen {
    let node = config.node_name.as_deref().filter(|n| !n.is_empty());
    let zone = config.node_zone.as_deref().filter(|z| !z.is_empty());
    let mode = topology_mode(candidates, node, zone);

    let pick = |keep: &dyn Fn(&Candidate) -> bool| -> Vec<Endpoint> {
        candidates.iter().filter(|c| keep(c)).map(Candidate::endpoint).collect()
    };

    let mut cluster = pick(&|c| c.ready && available_for_topology(c, mode, node, zone));
    if cluster.is_empty() {
        // No ready endpoint anywhere (topology is only used when one is
        // hinted for here). Best effort, so topology is ignored.
        cluster = pick(&|c| c.serving_terminating());
    }

    let mut local = pick(&|c| c.local && c.ready);
    if local.is_empty() {
        local = pick(&|c| c.local && c.serving_terminating());
    }

    let has_any = candidates.iter().any(|c| c.ready || c.serving_terminating());
    Chosen {
        cluster,
        local,
        has_any,
    }
}

/// Hints are used only when every ready endpoint carries one of the kind
/// and at least one names this node (or zone); otherwise they are ignored
/// and every ready endpoint is used. Node hints win over zone hints
/// (kube-proxy with the PreferSameTrafficDistribution gate, on by default
/// since 1.34). Terminating endpoints' hints are not looked at.
fn topology_mode(candidates: &[Candidate], node: Option<&str>, zone: Option<&str>) -> TopologyMode {
    let ready: Vec<&Candidate> = candidates.iter().filter(|c| c.ready).collect();
    if ready.is_empty() {
        return TopologyMode::None;
    }
    let all_have_node_hints = ready.iter().all(|c| !c.node_hints.is_empty());
    let one_for_node = node.is_some_and(|n| ready.iter().any(|c| c.node_hints.contains(n)));
    if all_have_node_hints && one_for_node {
        return TopologyMode::SameNode;
    }
    let all_have_zone_hints = ready.iter().all(|c| !c.zone_hints.is_empty());
    let one_for_zone = zone.is_some_and(|z| ready.iter().any(|c| c.zone_hints.contains(z)));
    if all_have_zone_hints && one_for_zone {
        return TopologyMode::SameZone;
    }
    TopologyMode::None
}

fn available_for_topology(c: &Candidate, mode: TopologyMode, node: Option<&str>, zone: Option<&str>) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => node.is_some_and(|n| c.node_hints.contains(n)),
        TopologyMode::SameZone => zone.is_some_and(|z| c.zone_hints.contains(z)),
    }
}
