//! Addresses no Service may be given: the operator's externalIP allow-list,
//! and frontend and endpoint addresses traffic must never go to.

use super::*;
use crate::model::{FrontendKind::*, Protocol::Tcp};
use crate::skip::SkipReason::*;

/// `lab/odd` with these `externalIPs` and LoadBalancer ingress, and one
/// endpoint per entry of `endpoints`.
fn odd(cluster_ip: &str, external_ips: &[&str], lb: &[&str], endpoints: &[&str]) -> Snapshot {
    let list = |items: &[&str]| items.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ");
    let ingress = lb.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect::<Vec<_>>().join(", ");
    let eps = endpoints
        .iter()
        .map(|ip| format!("{{addresses: [\"{ip}\"], conditions: {{ready: true}}, nodeName: kind-worker}}"))
        .collect::<Vec<_>>()
        .join(", ");
    load(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: odd, namespace: lab}}
spec:
  type: LoadBalancer
  clusterIP: {cluster_ip}
  externalIPs: [{}]
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30800}}]
status: {{loadBalancer: {{ingress: [{ingress}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: odd-1, namespace: lab, labels: {{kubernetes.io/service-name: odd}}}}
addressType: IPv4
endpoints: [{eps}]
ports: [{{name: http, port: 8080, protocol: TCP}}]
"#,
        list(external_ips)
    ))
}

fn served(model: &Model, kind: FrontendKind, ip: &str) -> bool {
    model.frontends.contains_key(&frontend_at(kind, ip, 80, Tcp))
}

#[test]
fn external_ips_are_served_only_inside_the_operators_cidrs_when_it_names_any() {
    let snapshot = odd("10.96.80.1", &["192.0.2.80", "203.0.113.80"], &[], &["10.244.8.1"]);
    // Unset: kube-proxy's behaviour, every externalIP.
    let (model, skipped) = build(&snapshot, &Config::default());
    assert!(served(&model, ExternalIp, "192.0.2.80") && served(&model, ExternalIp, "203.0.113.80"));
    assert!(skipped.is_empty(), "{skipped:?}");
    let config = Config {
        external_ip_cidrs: vec!["192.0.2.0/24".parse().unwrap()],
        ..Config::default()
    };
    let (model, skipped) = build(&snapshot, &config);
    assert!(served(&model, ExternalIp, "192.0.2.80"));
    assert!(!served(&model, ExternalIp, "203.0.113.80"));
    assert_eq!(reasons(&skipped, "lab/odd"), [ExternalIpNotAllowed]);
    // The rest of the Service is served.
    assert!(served(&model, ClusterIp, "10.96.80.1"));
}

#[test]
fn unusable_frontend_addresses_are_left_out_and_the_usable_ones_served() {
    let bad = ["0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1"];
    let snapshot = odd("10.96.80.2", &[&bad[..], &["192.0.2.81"]].concat(), &["0.0.0.0", "198.51.100.81"], &["10.244.8.1"]);
    let (model, skipped) = build(&snapshot, &Config::default());
    for ip in bad {
        assert!(!served(&model, ExternalIp, ip), "externalIP {ip} served");
    }
    assert!(!served(&model, LoadBalancer, "0.0.0.0"));
    assert!(served(&model, ExternalIp, "192.0.2.81") && served(&model, LoadBalancer, "198.51.100.81"));
    assert_eq!(reasons(&skipped, "lab/odd"), [UnusableAddress; 5]);

    // A ClusterIP there: the Service is left out whole.
    for cluster_ip in ["127.0.0.1", "0.0.0.0", "224.0.0.5"] {
        let (model, skipped) = build(&odd(cluster_ip, &[], &[], &["10.244.8.1"]), &Config::default());
        assert!(model.frontends.is_empty(), "{cluster_ip}: {:?}", model.frontends.keys());
        assert_eq!(reasons(&skipped, "lab/odd"), [UnusableAddress], "{cluster_ip}");
    }
}

#[test]
fn endpoints_traffic_must_never_reach_are_left_out() {
    let bad = ["127.0.0.1", "0.0.0.0", "169.254.169.254", "224.0.0.1", "255.255.255.255"];
    let snapshot = odd("10.96.80.3", &[], &[], &[&bad[..], &["10.244.8.3"]].concat());
    let (model, skipped) = build(&snapshot, &Config::default());
    assert_eq!(endpoints(&model, "10.96.80.3", 80, Tcp).unwrap(), ["10.244.8.3:8080"]);
    assert_eq!(reasons(&skipped, "lab/odd:http"), [UnusableEndpointAddress; 5]);
}

#[test]
fn a_node_port_on_the_agents_own_port_is_left_out() {
    // kube-proxy's /healthz port, 10256: a NodePort there would answer a
    // load balancer's or a monitor's check of the proxy with a pod.
    let snapshot = load(
        r#"
apiVersion: v1
kind: Service
metadata: {name: sneaky, namespace: lab}
spec:
  type: NodePort
  clusterIP: 10.96.80.9
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 10256}
  - {name: admin, port: 81, protocol: TCP, targetPort: 8081, nodePort: 30809}
"#,
    );
    let config = Config {
        node_ips: vec!["172.18.0.3".parse().unwrap()],
        reserved_node_ports: vec![10256, 10249],
        ..Config::default()
    };
    let (model, skipped) = build(&snapshot, &config);
    assert_eq!(reasons(&skipped, "lab/sneaky:http"), [NodePortReserved]);
    assert!(!model.frontends.contains_key(&frontend_at(NodePort, "172.18.0.3", 10256, Tcp)));
    assert!(model.frontends.contains_key(&frontend_at(NodePort, "172.18.0.3", 30809, Tcp)));
    assert!(served(&model, ClusterIp, "10.96.80.9"));
}
