//! Traffic policies, the per-category terminating fallback, session affinity
//! and the health check port, in the model and as map flags.

use proxy_common::maps::{backend_flags, service_flags};

use super::*;
use crate::diff::{diff, Op};
use crate::model::{FrontendEntry, FrontendKind::*, Protocol::Tcp, Protocol::Udp};
use crate::tables::{from_model, Ids};

const POLICY: &str = include_str!("../../testdata/traffic-policy.yaml");

fn on(node: &str) -> Model {
    let (model, skipped) = build(&load(POLICY), &on_node(node));
    assert_eq!(skipped, []);
    model
}

fn entry<'a>(model: &'a Model, kind: FrontendKind, ip: &str, port: u16, proto: Protocol) -> &'a FrontendEntry {
    &model.frontends[&frontend_at(kind, ip, port, proto)]
}

fn tables_on(node: &str) -> Tables {
    let (tables, skipped) = from_model(&on(node), &mut Ids::default());
    assert_eq!(skipped, []);
    check_invariant(&tables).unwrap();
    tables
}

fn backend_flags_of(tables: &Tables, ip: [u8; 4], port: u16) -> u8 {
    let wanted = (u32::from_ne_bytes(ip), port.to_be());
    tables
        .backends
        .values()
        .find(|b| (b.addr, b.port) == wanted)
        .unwrap_or_else(|| panic!("no backend {ip:?}:{port}"))
        .flags
}

// ---- externalTrafficPolicy: Local -----------------------------------------

#[test]
fn external_policy_local_sends_external_traffic_to_this_nodes_endpoints_only() {
    let a = on("kind-worker");
    let local_a = ["10.244.1.80:80"];
    assert_eq!(
        endpoints_at(&a, LoadBalancer, "198.51.100.40", 80, Tcp).unwrap(),
        local_a
    );
    assert_eq!(endpoints_at(&a, NodePort, "172.18.0.3", 30800, Tcp).unwrap(), local_a);
    assert_eq!(endpoints_at(&a, NodePort, "203.0.113.10", 30800, Tcp).unwrap(), local_a);
    let b = on("kind-worker2");
    assert_eq!(
        endpoints_at(&b, LoadBalancer, "198.51.100.40", 80, Tcp).unwrap(),
        ["10.244.2.80:80", "10.244.2.81:80"]
    );
    let lb = entry(&a, LoadBalancer, "198.51.100.40", 443, Tcp);
    assert!(lb.external_policy_local && !lb.internal_policy_local);
    assert!(lb.endpoints.iter().all(|e| e.local));
}

#[test]
fn external_policy_local_leaves_cluster_ip_traffic_to_every_endpoint() {
    let all = ["10.244.1.80:80", "10.244.2.80:80", "10.244.2.81:80"];
    for node in ["kind-worker", "kind-worker2", "kind-worker3"] {
        assert_eq!(endpoints(&on(node), "10.96.20.10", 80, Tcp).unwrap(), all, "{node}");
    }
}

#[test]
fn external_policy_local_with_no_local_endpoint_drops_instead_of_refusing() {
    let c = on("kind-worker3");
    let lb = entry(&c, LoadBalancer, "198.51.100.40", 80, Tcp);
    assert_eq!(lb.endpoints, []);
    assert!(lb.no_local_endpoints, "the Service has endpoints elsewhere");
    let node_port = entry(&c, NodePort, "172.18.0.5", 30800, Tcp);
    assert_eq!(node_port.endpoints, []);
    assert!(node_port.no_local_endpoints);
    assert!(!entry(&c, ClusterIp, "10.96.20.10", 80, Tcp).no_local_endpoints);
}

#[test]
fn load_balancer_with_local_policy_carries_its_health_check_port_and_local_count() {
    // Two pods on kind-worker2, counted once each over both ports.
    for (node, count) in [("kind-worker", 1), ("kind-worker2", 2), ("kind-worker3", 0)] {
        let model = on(node);
        let nginx: Vec<&FrontendEntry> = model
            .frontends
            .values()
            .filter(|e| e.service.name == "ingress-nginx-controller")
            .collect();
        assert!(nginx.len() >= 6, "{node}: ClusterIP, NodePort and LB for both ports");
        for e in nginx {
            assert_eq!(e.health_check_node_port, Some(32001), "{node}");
            assert_eq!(e.local_endpoint_count, count, "{node}");
        }
    }
    // A NodePort Service has no health check port, whatever its policy.
    let a = on("kind-worker");
    assert_eq!(
        entry(&a, NodePort, "172.18.0.3", 30514, Udp).health_check_node_port,
        None
    );
    assert_eq!(entry(&a, ClusterIp, "10.96.0.20", 53, Udp).health_check_node_port, None);
}

#[test]
fn external_policy_means_nothing_on_a_service_not_reachable_from_outside() {
    // kube-proxy's ExternalPolicyLocal: a plain ClusterIP Service (no
    // externalIPs) has no external traffic to keep local.
    let mut snapshot = load(POLICY);
    let store = super::service_mut(&mut snapshot, "session-store");
    store.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    let (model, _) = build(&snapshot, &on_node("kind-worker3"));
    let e = entry(&model, ClusterIp, "10.96.40.1", 6379, Tcp);
    assert!(!e.external_policy_local);
    assert_eq!(e.endpoints.len(), 2);
}

// ---- internalTrafficPolicy: Local -----------------------------------------

#[test]
fn internal_policy_local_sends_cluster_ip_traffic_to_this_nodes_endpoint() {
    assert_eq!(
        endpoints(&on("kind-worker"), "10.96.0.20", 53, Udp).unwrap(),
        ["10.244.1.5:53"]
    );
    assert_eq!(
        endpoints(&on("kind-worker2"), "10.96.0.20", 53, Tcp).unwrap(),
        ["10.244.2.5:53"]
    );
    let a = on("kind-worker");
    let dns = entry(&a, ClusterIp, "10.96.0.20", 53, Udp);
    assert!(dns.internal_policy_local && !dns.external_policy_local);
}

#[test]
fn internal_policy_local_with_no_local_endpoint_drops() {
    let c = on("kind-worker3");
    let dns = entry(&c, ClusterIp, "10.96.0.20", 53, Udp);
    assert_eq!(dns.endpoints, []);
    assert!(dns.no_local_endpoints);
}

#[test]
fn unknown_node_has_no_local_endpoint() {
    // Config::default() names no node: every Local frontend is empty.
    let (model, _) = build(&load(POLICY), &Config::default());
    assert_eq!(endpoints(&model, "10.96.0.20", 53, Udp).unwrap(), Vec::<String>::new());
    assert!(model.frontends.values().all(|e| e.local_endpoint_count == 0));
}

// ---- terminating fallback per category --------------------------------------

#[test]
fn local_category_falls_back_to_a_local_terminating_endpoint_though_a_remote_one_is_ready() {
    let a = on("kind-worker");
    let syslog = entry(&a, NodePort, "172.18.0.3", 30514, Udp);
    assert_eq!(syslog.endpoints.len(), 1);
    let only = syslog.endpoints[0];
    assert_eq!((only.ip.to_string(), only.port), ("10.244.1.90".into(), 5514));
    assert!(only.local && only.terminating);
    // Cluster traffic has a ready endpoint, so no fallback there.
    assert_eq!(endpoints(&a, "10.96.30.14", 514, Udp).unwrap(), ["10.244.2.90:5514"]);
    // kind-worker2 has its own ready pod.
    assert_eq!(
        endpoints_at(&on("kind-worker2"), NodePort, "172.18.0.4", 30514, Udp).unwrap(),
        ["10.244.2.90:5514"]
    );
}

// ---- session affinity -------------------------------------------------------

#[test]
fn client_ip_affinity_records_its_timeout_and_defaults_to_three_hours() {
    let a = on("kind-worker");
    assert_eq!(
        entry(&a, ClusterIp, "10.96.40.1", 6379, Tcp).session_affinity,
        Some(600)
    );
    assert_eq!(
        entry(&a, ClusterIp, "10.96.40.2", 80, Tcp).session_affinity,
        Some(10_800)
    );
    assert_eq!(entry(&a, ClusterIp, "10.96.20.10", 80, Tcp).session_affinity, None);
}

// ---- map flags --------------------------------------------------------------

#[test]
fn policy_and_affinity_flags_are_set_on_the_frontends_they_govern() {
    let a = tables_on("kind-worker");
    let value = |k: ServiceKey| a.services[&k];
    let np = value(key_in(scope::NODE_PORT, [172, 18, 0, 3], 30800, TCP));
    assert_eq!((np.flags, np.count), (service_flags::EXTERNAL_LOCAL, 1));
    let lb = value(key_in(scope::EXTERNAL, [198, 51, 100, 40], 443, TCP));
    assert_eq!((lb.flags, lb.count), (service_flags::EXTERNAL_LOCAL, 1));
    // The ClusterIP of the same Service is not governed by the external policy.
    assert_eq!(value(key([10, 96, 20, 10], 80, TCP)).flags, 0);
    assert_eq!(
        value(key([10, 96, 0, 20], 53, UDP)).flags,
        service_flags::INTERNAL_LOCAL
    );

    let sticky = value(key([10, 96, 40, 1], 6379, TCP));
    assert_eq!(
        (sticky.flags, sticky.affinity_timeout_s),
        (service_flags::SESSION_AFFINITY, 600)
    );
    assert_eq!(value(key([10, 96, 40, 2], 80, TCP)).affinity_timeout_s, 10_800);
    assert_eq!(value(key([10, 96, 20, 10], 80, TCP)).affinity_timeout_s, 0);
}

#[test]
fn empty_local_frontend_is_flagged_to_drop() {
    let c = tables_on("kind-worker3");
    let dns = c.services[&key([10, 96, 0, 20], 53, UDP)];
    assert_eq!(dns.count, 0);
    assert_eq!(
        dns.flags,
        service_flags::INTERNAL_LOCAL | service_flags::NO_LOCAL_ENDPOINTS
    );
    let lb = c.services[&key_in(scope::EXTERNAL, [198, 51, 100, 40], 80, TCP)];
    assert_eq!(
        lb.flags,
        service_flags::EXTERNAL_LOCAL | service_flags::NO_LOCAL_ENDPOINTS
    );
}

#[test]
fn local_frontend_of_a_service_with_no_usable_endpoint_anywhere_refuses() {
    // Every node-local-dns pod is still starting: nothing to keep local, so
    // this is "no endpoint" (refuse at once), not "none here" (drop).
    let mut snapshot = load(POLICY);
    for pod in slice_mut(&mut snapshot, "kube-system", "node-local-dns-z2x3c")
        .endpoints
        .as_mut()
        .unwrap()
    {
        let conditions = pod.conditions.as_mut().unwrap();
        conditions.ready = Some(false);
        conditions.serving = Some(false);
    }
    let (model, _) = build(&snapshot, &on_node("kind-worker"));
    let dns = entry(&model, ClusterIp, "10.96.0.20", 53, Udp);
    assert_eq!((dns.endpoints.len(), dns.no_local_endpoints), (0, false));
    let (tables, _) = from_model(&model, &mut Ids::default());
    assert_eq!(
        tables.services[&key([10, 96, 0, 20], 53, UDP)].flags,
        service_flags::INTERNAL_LOCAL
    );
}

#[test]
fn backends_are_flagged_local_and_terminating_from_this_nodes_view() {
    let a = tables_on("kind-worker");
    assert_eq!(backend_flags_of(&a, [10, 244, 1, 80], 80), backend_flags::LOCAL);
    assert_eq!(backend_flags_of(&a, [10, 244, 2, 80], 80), 0);
    assert_eq!(
        backend_flags_of(&a, [10, 244, 1, 90], 5514),
        backend_flags::LOCAL | backend_flags::TERMINATING
    );
    let b = tables_on("kind-worker2");
    assert_eq!(backend_flags_of(&b, [10, 244, 1, 80], 80), 0);
    assert_eq!(backend_flags_of(&b, [10, 244, 2, 80], 80), backend_flags::LOCAL);
}

#[test]
fn endpoint_that_starts_terminating_keeps_its_backend_id() {
    // cart-sticky's only pod, on kind-worker3, is being deleted: it stays in
    // use through the fallback, and existing connections name its id.
    let config = on_node("kind-worker3");
    let mut snapshot = load(POLICY);
    let mut ids = Ids::default();
    let (before, _) = from_model(&build(&snapshot, &config).0, &mut ids);
    let pod = &mut slice_mut(&mut snapshot, "shop", "cart-sticky-1")
        .endpoints
        .as_mut()
        .unwrap()[0];
    let conditions = pod.conditions.as_mut().unwrap();
    conditions.ready = Some(false);
    conditions.serving = Some(true);
    conditions.terminating = Some(true);
    let (after, _) = from_model(&build(&snapshot, &config).0, &mut ids);

    let cart = key([10, 96, 40, 2], 80, TCP);
    assert_eq!(resolve(&after, &cart).unwrap(), ["10.244.3.100:8080"]);
    let slot = BackendSlotKey {
        service_id: after.services[&cart].service_id,
        slot: 0,
    };
    let id = before.slots[&slot];
    assert_eq!(after.slots[&slot], id);
    assert_eq!(
        after.backends[&id].flags,
        backend_flags::LOCAL | backend_flags::TERMINATING
    );
    assert_eq!(diff(&before, &after), [Op::PutBackend(id, after.backends[&id])]);
}
