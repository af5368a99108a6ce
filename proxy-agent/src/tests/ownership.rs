//! Frontend ownership: a Service's ClusterIP, NodePort and LoadBalancer IP
//! are its own, an externalIP never takes one of another Service's, and
//! between equals the older Service wins, whatever the names. The attacker
//! of each case sorts first by name (namespace `aaa`), which used to decide.

use super::*;
use crate::model::{FrontendKind::*, LiveModel, Protocol::Tcp, ServiceName, ServiceObjects};
use crate::skip::SkipReason::*;

/// `default/web`: ClusterIP 10.96.70.10, NodePort 30700, LoadBalancer
/// 198.51.100.70, created first; its one endpoint 10.244.7.1.
const VICTIM: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, uid: 00000000-0000-0000-0000-00000000000a, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  type: LoadBalancer
  clusterIP: 10.96.70.10
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30700}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.70}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.7.1], conditions: {ready: true}, nodeName: kind-worker}]
ports: [{name: http, port: 8080, protocol: TCP}]
"#;

/// `aaa/evil`, created later, listing `external_ips` on port `port`; its
/// one endpoint 10.244.9.9.
fn attacker(external_ips: &[&str], port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: evil, namespace: aaa, uid: 00000000-0000-0000-0000-00000000000b, creationTimestamp: "2026-06-01T00:00:00Z"}}
spec:
  clusterIP: 10.96.70.99
  externalIPs: [{}]
  ports: [{{name: http, port: {port}, protocol: TCP, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: evil-1, namespace: aaa, labels: {{kubernetes.io/service-name: evil}}}}
addressType: IPv4
endpoints: [{{addresses: [10.244.9.9], conditions: {{ready: true}}, nodeName: kind-worker}}]
ports: [{{name: http, port: 8080, protocol: TCP}}]
"#,
        external_ips.join(", ")
    )
}

/// The model and skips from the reference build and from the live model
/// fed the same objects, which must agree.
fn both(snapshot: &Snapshot, config: &Config) -> (Model, Vec<Skipped>) {
    let (model, mut skipped) = build(snapshot, config);
    let mut live = LiveModel::default();
    live.replace_all(&snapshot.services, &to_slices(snapshot), config);
    let mut live_skipped = live.skipped().to_vec();
    assert_eq!(live.model(), &model, "the live model disagrees with the reference");
    skipped.sort_by_key(ToString::to_string);
    live_skipped.sort_by_key(ToString::to_string);
    assert_eq!(live_skipped, skipped, "the live model skips otherwise");
    (model, skipped)
}

fn to_slices(snapshot: &Snapshot) -> Vec<std::sync::Arc<crate::model::Slice>> {
    snapshot.slices.iter().map(|s| std::sync::Arc::new(crate::model::Slice::from(&**s))).collect()
}

fn owner(model: &Model, kind: FrontendKind, ip: &str, port: u16) -> Option<String> {
    model.frontends.get(&frontend_at(kind, ip, port, Tcp)).map(|e| e.service.to_string())
}

#[test]
fn an_external_ip_never_takes_another_services_cluster_ip_node_port_or_load_balancer_ip() {
    let config = on_node("kind-worker");
    for (stolen, port) in [("10.96.70.10", 80), ("172.18.0.3", 30700), ("198.51.100.70", 80)] {
        let snapshot = load_all(&[VICTIM, &attacker(&[stolen, "192.0.2.70"], port)]);
        let (model, skipped) = both(&snapshot, &config);
        assert_eq!(owner(&model, ClusterIp, "10.96.70.10", 80).as_deref(), Some("default/web:http"), "{stolen}");
        assert_eq!(owner(&model, NodePort, "172.18.0.3", 30700).as_deref(), Some("default/web:http"), "{stolen}");
        assert_eq!(owner(&model, LoadBalancer, "198.51.100.70", 80).as_deref(), Some("default/web:http"), "{stolen}");
        assert_eq!(owner(&model, ExternalIp, stolen, port), None, "{stolen}: the externalIP was programmed");
        assert_eq!(
            skipped.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["aaa/evil:http (external_ip_conflict, held by default/web:http)"],
            "{stolen}"
        );
        // Its other externalIP, its own ClusterIP: served.
        assert_eq!(owner(&model, ExternalIp, "192.0.2.70", port).as_deref(), Some("aaa/evil:http"), "{stolen}");
        assert_eq!(owner(&model, ClusterIp, "10.96.70.99", port).as_deref(), Some("aaa/evil:http"), "{stolen}");
    }
}

#[test]
fn a_service_may_list_its_own_addresses_as_external_ips() {
    // kube-proxy serves it; nothing is taken from anyone.
    let snapshot = load_all(&[&VICTIM.replacen("ports: [{name: http", "externalIPs: [10.96.70.10, 198.51.100.70]\n  ports: [{name: http", 1)]);
    let (model, skipped) = both(&snapshot, &on_node("kind-worker"));
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(owner(&model, ExternalIp, "10.96.70.10", 80).as_deref(), Some("default/web:http"));
}

#[test]
fn between_two_load_balancers_on_one_address_the_older_service_wins_whatever_the_names() {
    let lb = |namespace: &str, created: &str| {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: lb, namespace: {namespace}, uid: uid-{namespace}, creationTimestamp: "{created}"}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.71.{}
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: {}}}]
status: {{loadBalancer: {{ingress: [{{ip: 198.51.100.71}}]}}}}
"#,
            if namespace == "aaa" { 1 } else { 2 },
            if namespace == "aaa" { 30711 } else { 30712 }
        )
    };
    for (aaa_created, zzz_created, winner, loser) in [
        ("2026-06-01T00:00:00Z", "2026-01-01T00:00:00Z", "zzz/lb:http", "aaa/lb:http"),
        ("2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z", "aaa/lb:http", "zzz/lb:http"),
    ] {
        let snapshot = load_all(&[&lb("aaa", aaa_created), &lb("zzz", zzz_created)]);
        let (model, skipped) = both(&snapshot, &Config::default());
        assert_eq!(owner(&model, LoadBalancer, "198.51.100.71", 80).as_deref(), Some(winner));
        assert_eq!(
            skipped.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [format!("{loser} (duplicate_frontend, held by {winner})")]
        );
    }
}

#[test]
fn the_owner_of_an_address_gets_it_back_from_an_external_ip_as_the_live_model_changes() {
    // The attacker first, alone: its externalIP on 10.96.70.10:80 is served.
    // Then the Service that owns that ClusterIP appears: the externalIP goes.
    // Then it is deleted: the externalIP is served again.
    let config = Config::default();
    let attack = load(&attacker(&["10.96.70.10"], 80));
    let victim = load(VICTIM);
    let mut live = LiveModel::default();
    live.replace_all(&attack.services, &to_slices(&attack), &config);
    assert_eq!(owner(live.model(), ExternalIp, "10.96.70.10", 80).as_deref(), Some("aaa/evil:http"));

    let web = ServiceName::new("default", "web");
    let objects = |present: bool| ServiceObjects {
        name: web.clone(),
        service: present.then(|| victim.services[0].clone()),
        slices: to_slices(&victim),
    };
    let changed = live.update(&[objects(true)]);
    assert!(changed.contains(&frontend_at(ExternalIp, "10.96.70.10", 80, Tcp)), "{changed:?}");
    assert_eq!(owner(live.model(), ExternalIp, "10.96.70.10", 80), None);
    assert_eq!(owner(live.model(), ClusterIp, "10.96.70.10", 80).as_deref(), Some("default/web:http"));
    assert_eq!(reasons(live.skipped(), "aaa/evil:http"), [ExternalIpConflict]);

    live.update(&[objects(false)]);
    assert_eq!(owner(live.model(), ExternalIp, "10.96.70.10", 80).as_deref(), Some("aaa/evil:http"));
    assert!(live.skipped().is_empty(), "{:?}", live.skipped());
}
