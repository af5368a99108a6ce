//! Invalid values in the newer Service fields: each is reported with its own
//! reason, and only what it spoils is left out.

use k8s_openapi::api::core::v1::ServicePort;

use super::*;
use crate::model::{FrontendKind::*, Protocol::Tcp, MAX_SERVICE_PORTS};
use crate::skip::SkipReason::*;

const BAD: &str = include_str!("../../testdata/bad-frontends.yaml");

fn bad_on(node: &str) -> (Model, Vec<Skipped>) {
    build(&load(BAD), &on_node(node))
}

#[test]
fn every_bad_field_is_reported_once_with_its_own_label() {
    let (_, skipped) = bad_on("kind-worker2");
    let mut got: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "lab/bad-external (invalid_external_ip)",
            "lab/bad-lb (invalid_load_balancer_ip)",
            "lab/lb-bad-hc (health_check_node_port_out_of_range)",
            "lab/lb-no-hc (missing_health_check_node_port)",
            "lab/np-dup-b:http (duplicate_frontend, held by lab/np-dup-a:http)",
            "lab/np-missing:http (missing_node_port)",
            "lab/np-too-big:http (node_port_out_of_range)",
            "lab/policy-typo (invalid_traffic_policy)",
            "lab/sticky-long (affinity_timeout_out_of_range)",
            "lab/sticky-typo (unsupported_session_affinity)",
            "lab/sticky-zero (affinity_timeout_out_of_range)",
        ]
    );
}

#[test]
fn node_port_out_of_range_loses_only_that_ports_node_port() {
    let (model, skipped) = bad_on("kind-worker");
    assert_eq!(reasons(&skipped, "lab/np-too-big:http"), [NodePortOutOfRange]);
    assert_eq!(
        frontends_of(&model, "lab/np-too-big"),
        [
            "10.96.60.1:80/TCP",
            "10.96.60.1:9000/TCP",
            "172.18.0.3:30601/TCP (NodePort)",
            "203.0.113.10:30601/TCP (NodePort)",
        ]
    );
    assert_eq!(endpoints(&model, "10.96.60.1", 80, Tcp).unwrap(), ["10.244.6.1:8080"]);
}

#[test]
fn node_port_service_without_a_node_port_keeps_its_cluster_ip() {
    let (model, skipped) = bad_on("kind-worker");
    assert_eq!(reasons(&skipped, "lab/np-missing:http"), [MissingNodePort]);
    assert_eq!(frontends_of(&model, "lab/np-missing"), ["10.96.60.2:80/TCP"]);
}

#[test]
fn invalid_external_ip_is_left_out_and_the_valid_one_served() {
    let (model, skipped) = bad_on("kind-worker");
    assert_eq!(reasons(&skipped, "lab/bad-external"), [InvalidExternalIp]);
    assert_eq!(
        frontends_of(&model, "lab/bad-external"),
        ["10.96.60.3:80/TCP", "192.0.2.61:80/TCP (ExternalIP)"]
    );
}

#[test]
fn invalid_load_balancer_ip_is_left_out_and_the_valid_one_served() {
    let (model, skipped) = bad_on("kind-worker");
    assert_eq!(reasons(&skipped, "lab/bad-lb"), [InvalidLoadBalancerIp]);
    assert!(model
        .frontends
        .contains_key(&frontend_at(LoadBalancer, "198.51.100.60", 80, Tcp)));
}

#[test]
fn affinity_timeout_out_of_range_or_unknown_affinity_leaves_the_service_out() {
    let (model, skipped) = bad_on("kind-worker");
    assert_eq!(reasons(&skipped, "lab/sticky-zero"), [AffinityTimeoutOutOfRange]);
    assert_eq!(reasons(&skipped, "lab/sticky-long"), [AffinityTimeoutOutOfRange]);
    assert_eq!(reasons(&skipped, "lab/sticky-typo"), [UnsupportedSessionAffinity]);
    let served = served(&model);
    for name in ["lab/sticky-zero", "lab/sticky-long", "lab/sticky-typo"] {
        assert!(!served.contains(&name.to_string()), "{name} served");
    }
}

#[test]
fn misspelt_traffic_policy_leaves_the_service_out() {
    // `local` would otherwise silently mean Cluster (and SNAT).
    let (model, skipped) = bad_on("kind-worker");
    assert_eq!(reasons(&skipped, "lab/policy-typo"), [InvalidTrafficPolicy]);
    assert!(!served(&model).contains(&"lab/policy-typo".to_string()));
}

#[test]
fn bad_or_missing_health_check_port_is_reported_and_the_service_served_without_one() {
    let (model, skipped) = bad_on("kind-worker");
    assert_eq!(reasons(&skipped, "lab/lb-no-hc"), [MissingHealthCheckNodePort]);
    assert_eq!(reasons(&skipped, "lab/lb-bad-hc"), [HealthCheckNodePortOutOfRange]);
    for lb in ["198.51.100.61", "198.51.100.62"] {
        let entry = &model.frontends[&frontend_at(LoadBalancer, lb, 80, Tcp)];
        assert!(entry.external_policy_local, "{lb}");
        assert_eq!(entry.health_check_node_port, None, "{lb}");
    }
}

#[test]
fn node_port_claimed_twice_goes_to_the_first_service_by_name() {
    let (model, skipped) = bad_on("kind-worker");
    // One report per node address the loser would have listened on.
    assert_eq!(
        reasons(&skipped, "lab/np-dup-b:http"),
        [DuplicateFrontend, DuplicateFrontend]
    );
    let owner = &model.frontends[&frontend_at(NodePort, "172.18.0.3", 30999, Tcp)];
    assert_eq!(owner.service.to_string(), "lab/np-dup-a:http");
    assert_eq!(frontends_of(&model, "lab/np-dup-b"), ["10.96.60.12:80/TCP"]);
}

fn widen(snapshot: &mut crate::source::Snapshot, ports: usize) {
    let wide = super::service_mut(snapshot, "wide");
    let list = wide.spec.as_mut().unwrap().ports.as_mut().unwrap();
    let first: ServicePort = list[0].clone();
    *list = (0..ports)
        .map(|i| ServicePort {
            name: Some(format!("p{i}")),
            port: 10_000 + i as i32,
            ..first.clone()
        })
        .collect();
}

#[test]
fn service_with_a_huge_port_list_is_left_out_whole() {
    let mut snapshot = load(BAD);
    widen(&mut snapshot, MAX_SERVICE_PORTS + 1);
    let (model, skipped) = build(&snapshot, &Config::default());
    assert_eq!(reasons(&skipped, "lab/wide"), [TooManyPorts]);
    assert_eq!(frontends_of(&model, "lab/wide"), Vec::<String>::new());

    widen(&mut snapshot, MAX_SERVICE_PORTS);
    let (model, skipped) = build(&snapshot, &Config::default());
    assert_eq!(reasons(&skipped, "lab/wide"), []);
    assert_eq!(frontends_of(&model, "lab/wide").len(), MAX_SERVICE_PORTS);
}
