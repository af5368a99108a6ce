//! Frontends beyond the ClusterIP: NodePorts on the node's addresses,
//! LoadBalancer ingress IPs and external IPs, and their map scopes.

use super::*;
use crate::model::{Cidr, FrontendKind::*, Protocol::Tcp, Protocol::Udp};
use crate::tables::{from_model, Ids};

const FRONTENDS: &str = include_str!("../../testdata/frontends.yaml");

fn on(node: &str) -> Model {
    let (model, skipped) = build(&load(FRONTENDS), &on_node(node));
    assert_eq!(skipped, []);
    model
}

fn with_nodeport_addresses(cidrs: &[&str]) -> Model {
    let config = Config {
        nodeport_addresses: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        ..on_node("kind-worker")
    };
    build(&load(FRONTENDS), &config).0
}

// ---- node identity -----------------------------------------------------

#[test]
fn node_config_takes_the_zone_label_and_ipv4_internal_and_external_addresses() {
    let (zone, ips) = node_config_from(&nodes()[0]);
    // Not the IPv6 InternalIP, not the Hostname.
    assert_eq!(zone.as_deref(), Some("eu-west-1a"));
    assert_eq!(ips, [Ipv4Addr::new(172, 18, 0, 3), Ipv4Addr::new(203, 0, 113, 10)]);
    let (zone, ips) = node_config_from(&nodes()[1]);
    assert_eq!(zone.as_deref(), Some("eu-west-1b"));
    assert_eq!(ips, [Ipv4Addr::new(172, 18, 0, 4)]);
    assert_eq!(node_config_from(&Node::default()), (None, vec![]));
}

#[test]
fn cidr_parses_as_kube_proxy_does_and_matches_by_prefix() {
    let net: Cidr = "172.18.0.7/16".parse().unwrap();
    assert_eq!(net.to_string(), "172.18.0.0/16");
    assert!(net.contains(Ipv4Addr::new(172, 18, 255, 1)));
    assert!(!net.contains(Ipv4Addr::new(172, 19, 0, 1)));
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains(Ipv4Addr::new(203, 0, 113, 10)));
    let one: Cidr = "127.0.0.1/32".parse().unwrap();
    assert!(one.contains(Ipv4Addr::LOCALHOST) && !one.contains(Ipv4Addr::new(127, 0, 0, 2)));
    for bad in [
        "172.18.0.0",
        "172.18.0.0/33",
        "172.18.0.0/",
        "172.18.0/16",
        "fd00::/8",
        "10.0.0.0/+8",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad}");
    }
}

// ---- NodePort ----------------------------------------------------------

#[test]
fn node_port_listens_on_each_node_address_and_never_on_loopback() {
    assert_eq!(
        frontends_of(&on("kind-worker"), "shop/storefront"),
        [
            "10.96.10.10:80/TCP",
            "172.18.0.3:30080/TCP (NodePort)",
            "203.0.113.10:30080/TCP (NodePort)",
        ]
    );
    assert_eq!(
        frontends_of(&on("kind-worker2"), "shop/storefront"),
        ["10.96.10.10:80/TCP", "172.18.0.4:30080/TCP (NodePort)"]
    );
}

#[test]
fn node_port_reaches_every_endpoint_from_every_node_with_cluster_policy() {
    let both = ["10.244.1.10:8080", "10.244.2.10:8080"];
    let a = on("kind-worker");
    assert_eq!(endpoints_at(&a, NodePort, "172.18.0.3", 30080, Tcp).unwrap(), both);
    assert_eq!(endpoints_at(&a, NodePort, "203.0.113.10", 30080, Tcp).unwrap(), both);
    // kind-worker3 holds neither pod.
    let c = on("kind-worker3");
    assert_eq!(endpoints_at(&c, NodePort, "172.18.0.5", 30080, Tcp).unwrap(), both);
    assert!(!c.frontends[&frontend_at(NodePort, "172.18.0.5", 30080, Tcp)].external_policy_local);
}

#[test]
fn nodeport_addresses_choose_which_node_addresses_listen() {
    let listening = |cidrs: &[&str]| -> Vec<String> {
        with_nodeport_addresses(cidrs)
            .frontends
            .keys()
            .filter(|f| f.kind == NodePort && f.port == 30080)
            .map(|f| f.ip.to_string())
            .collect()
    };
    assert_eq!(listening(&["172.18.0.0/16"]), ["172.18.0.3"]);
    assert_eq!(listening(&["0.0.0.0/0"]), ["172.18.0.3", "203.0.113.10"]);
    assert_eq!(listening(&["10.0.0.0/8"]), Vec::<String>::new());
    // Loopback only when asked for by name (CVE-2020-8558).
    assert_eq!(listening(&["127.0.0.0/8"]), ["127.0.0.1"]);
    assert_eq!(
        listening(&["127.0.0.1/32", "203.0.113.0/24"]),
        ["127.0.0.1", "203.0.113.10"]
    );
}

#[test]
fn default_config_knows_no_node_address_so_no_node_port() {
    let model = build_clean(&load(FRONTENDS));
    assert!(model.frontends.keys().all(|f| f.kind != NodePort));
    assert!(model
        .frontends
        .contains_key(&frontend_at(LoadBalancer, "198.51.100.10", 53, Udp)));
    assert!(model
        .frontends
        .contains_key(&frontend_at(ExternalIp, "192.0.2.50", 8443, Tcp)));
}

#[test]
fn tcp_and_udp_on_one_node_port_are_two_frontends_with_their_own_ports() {
    let model = on("kind-worker2");
    let pods = |port| vec![format!("10.244.1.53:{port}"), format!("10.244.3.53:{port}")];
    assert_eq!(
        endpoints_at(&model, NodePort, "172.18.0.4", 31053, Udp).unwrap(),
        pods(5353)
    );
    assert_eq!(
        endpoints_at(&model, NodePort, "172.18.0.4", 31053, Tcp).unwrap(),
        pods(5353)
    );
    let name = |proto| {
        model.frontends[&frontend_at(NodePort, "172.18.0.4", 31053, proto)]
            .service
            .to_string()
    };
    assert_eq!(name(Udp), "edge/dns-public:dns-udp");
    assert_eq!(name(Tcp), "edge/dns-public:dns-tcp");
}

// ---- LoadBalancer and external IPs ---------------------------------------

#[test]
fn load_balancer_serves_its_vip_mode_ipv4_ingress_only() {
    // .11 is ipMode: Proxy, one entry is a hostname, one IPv6.
    let model = on("kind-worker");
    let lb: Vec<String> = model
        .frontends
        .keys()
        .filter(|f| f.kind == LoadBalancer && f.ip.octets()[..3] == [198, 51, 100])
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lb,
        [
            "198.51.100.10:53/TCP (LoadBalancer)",
            "198.51.100.10:53/UDP (LoadBalancer)",
            "198.51.100.20:9090/TCP (LoadBalancer)",
            "198.51.100.30:443/TCP (LoadBalancer)",
        ]
    );
    assert_eq!(
        endpoints_at(&model, LoadBalancer, "198.51.100.10", 53, Udp).unwrap(),
        ["10.244.1.53:5353", "10.244.3.53:5353"]
    );
}

#[test]
fn load_balancer_without_node_ports_has_no_node_port_frontend() {
    // allocateLoadBalancerNodePorts: false, so its port has no nodePort.
    assert_eq!(
        frontends_of(&on("kind-worker"), "shop/internal-lb"),
        ["10.96.10.70:9090/TCP", "198.51.100.20:9090/TCP (LoadBalancer)"]
    );
}

#[test]
fn external_ips_are_served_on_the_service_port_and_ipv6_ones_ignored() {
    let model = on("kind-worker");
    assert_eq!(
        frontends_of(&model, "shop/legacy-api"),
        ["10.96.10.60:8443/TCP", "192.0.2.50:8443/TCP (ExternalIP)"]
    );
    assert_eq!(
        endpoints_at(&model, ExternalIp, "192.0.2.50", 8443, Tcp).unwrap(),
        ["10.244.2.60:8443"]
    );
}

#[test]
fn address_listed_as_ingress_and_as_external_ip_of_one_service_is_one_frontend() {
    let model = on("kind-worker2");
    assert_eq!(
        frontends_of(&model, "shop/gateway"),
        [
            "10.96.10.30:443/TCP",
            "172.18.0.4:30443/TCP (NodePort)",
            "198.51.100.30:443/TCP (LoadBalancer)",
        ]
    );
}

// ---- map keys ------------------------------------------------------------

#[test]
fn each_frontend_kind_is_keyed_in_its_scope_and_resolves_to_its_endpoints() {
    let model = on("kind-worker");
    let (tables, skipped) = from_model(&model, &mut Ids::default());
    assert_eq!(skipped, []);
    assert_eq!(tables.services.len(), model.frontends.len());
    check_invariant(&tables).unwrap();
    let storefront = ["10.244.1.10:8080", "10.244.2.10:8080"];
    let node_port = key_in(scope::NODE_PORT, [172, 18, 0, 3], 30080, TCP);
    assert_eq!(resolve(&tables, &node_port).unwrap(), storefront);
    // The same address and port as a ClusterIP key is another frontend.
    assert_eq!(resolve(&tables, &key([172, 18, 0, 3], 30080, TCP)), None);
    let lb = key_in(scope::EXTERNAL, [198, 51, 100, 10], 53, UDP);
    assert_eq!(resolve(&tables, &lb).unwrap(), ["10.244.1.53:5353", "10.244.3.53:5353"]);
    let external_ip = key_in(scope::EXTERNAL, [192, 0, 2, 50], 8443, TCP);
    assert_eq!(resolve(&tables, &external_ip).unwrap(), ["10.244.2.60:8443"]);
    assert_eq!(resolve(&tables, &key([10, 96, 10, 10], 80, TCP)).unwrap(), storefront);
}
