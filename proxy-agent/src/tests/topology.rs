//! Topology hints (zone and node) as kube-proxy applies them: only when
//! every ready endpoint has one and one names this node or zone.

use super::*;
use crate::model::{FrontendKind::NodePort, Protocol::Tcp};

const TOPOLOGY: &str = include_str!("../../testdata/topology.yaml");

fn with(snapshot: &crate::source::Snapshot, config: &Config) -> Model {
    let (model, skipped) = build(snapshot, config);
    assert_eq!(skipped, []);
    model
}

fn on(node: &str) -> Model {
    with(&load(TOPOLOGY), &on_node(node))
}

fn somewhere(zone: Option<&str>) -> Config {
    Config {
        node_name: Some("kind-worker9".into()),
        node_zone: zone.map(Into::into),
        ..Config::default()
    }
}

fn catalog(model: &Model) -> Vec<String> {
    endpoints(model, "10.96.50.10", 80, Tcp).unwrap()
}

const CATALOG_READY: [&str; 3] = ["10.244.1.30:8080", "10.244.2.30:8080", "10.244.3.30:8080"];

#[test]
fn zone_hints_keep_cluster_traffic_in_this_nodes_zone() {
    assert_eq!(catalog(&on("kind-worker")), ["10.244.1.30:8080"]);
    assert_eq!(catalog(&on("kind-worker2")), ["10.244.2.30:8080"]);
    assert_eq!(catalog(&on("kind-worker3")), ["10.244.3.30:8080"]);
}

#[test]
fn zone_hints_apply_to_external_traffic_with_cluster_policy_too() {
    let a = on("kind-worker");
    assert_eq!(
        endpoints_at(&a, NodePort, "172.18.0.3", 30200, Tcp).unwrap(),
        ["10.244.1.30:8080"]
    );
}

#[test]
fn no_hint_for_this_zone_or_no_zone_label_means_every_ready_endpoint() {
    let snapshot = load(TOPOLOGY);
    assert_eq!(catalog(&with(&snapshot, &somewhere(Some("eu-west-1d")))), CATALOG_READY);
    assert_eq!(catalog(&with(&snapshot, &somewhere(None))), CATALOG_READY);
}

#[test]
fn one_ready_endpoint_without_a_hint_disables_hints_for_everyone() {
    // search's pod on kind-worker3 has no hint yet.
    let all = ["10.244.1.40:8080", "10.244.2.40:8080", "10.244.3.40:8080"];
    assert_eq!(endpoints(&on("kind-worker"), "10.96.50.20", 80, Tcp).unwrap(), all);
}

#[test]
fn hints_of_endpoints_that_are_not_ready_are_not_looked_at() {
    // catalog's terminating pod has no hint, yet hints apply (above). And
    // when the pod hinted for eu-west-1a stops being ready, no ready pod is
    // hinted for that zone, so kind-worker uses every ready pod.
    let mut snapshot = load(TOPOLOGY);
    let pod = &mut slice_mut(&mut snapshot, "shop", "catalog-t6y7u")
        .endpoints
        .as_mut()
        .unwrap()[0];
    assert_eq!(pod.addresses, ["10.244.1.30"]);
    let conditions = pod.conditions.as_mut().unwrap();
    conditions.ready = Some(false);
    conditions.serving = Some(false);
    assert_eq!(
        catalog(&with(&snapshot, &on_node("kind-worker"))),
        ["10.244.2.30:8080", "10.244.3.30:8080"]
    );
    assert_eq!(
        catalog(&with(&snapshot, &on_node("kind-worker2"))),
        ["10.244.2.30:8080"]
    );
}

#[test]
fn terminating_fallback_ignores_topology() {
    // Every ready pod is gone; only kind-worker's terminating pod serves,
    // and every zone uses it.
    let mut snapshot = load(TOPOLOGY);
    slice_mut(&mut snapshot, "shop", "catalog-t6y7u")
        .endpoints
        .as_mut()
        .unwrap()
        .retain(|e| e.addresses[0] == "10.244.1.31");
    for node in ["kind-worker", "kind-worker2", "kind-worker3"] {
        assert_eq!(
            catalog(&with(&snapshot, &on_node(node))),
            ["10.244.1.31:8080"],
            "{node}"
        );
    }
}

#[test]
fn node_hints_keep_traffic_on_this_node_and_win_over_zone_hints() {
    let reviews = |model: &Model| endpoints(model, "10.96.50.30", 9080, Tcp).unwrap();
    // kind-worker4's pod is hinted for eu-west-1a too, but not for this node.
    assert_eq!(reviews(&on("kind-worker")), ["10.244.1.50:9080"]);
    assert_eq!(reviews(&on("kind-worker2")), ["10.244.2.50:9080", "10.244.2.51:9080"]);
}

#[test]
fn node_without_a_node_hint_falls_back_to_zone_hints_then_to_all() {
    let reviews = |config: &Config| endpoints(&with(&load(TOPOLOGY), config), "10.96.50.30", 9080, Tcp).unwrap();
    // Another node in eu-west-1a: no pod is hinted for it by name.
    assert_eq!(
        reviews(&somewhere(Some("eu-west-1a"))),
        ["10.244.1.50:9080", "10.244.4.50:9080"]
    );
    // kind-worker3's zone has no hint either.
    assert_eq!(
        reviews(&on_node("kind-worker3")),
        [
            "10.244.1.50:9080",
            "10.244.2.50:9080",
            "10.244.2.51:9080",
            "10.244.4.50:9080"
        ]
    );
}

#[test]
fn internal_policy_local_wins_over_hints() {
    // Each ratings pod is hinted for the other pod's zone; Local ignores that.
    assert_eq!(
        endpoints(&on("kind-worker"), "10.96.50.40", 80, Tcp).unwrap(),
        ["10.244.1.60:8080"]
    );
    assert_eq!(
        endpoints(&on("kind-worker2"), "10.96.50.40", 80, Tcp).unwrap(),
        ["10.244.2.60:8080"]
    );
}
