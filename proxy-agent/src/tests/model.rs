//! Which Services and endpoints the model serves (kube-proxy semantics).

use super::*;
use crate::model::Protocol::{Tcp, Udp};
use crate::skip::SkipReason::*;

const SKIPS: &str = include_str!("../../testdata/skips.yaml");
const DUAL_STACK: &str = include_str!("../../testdata/dual-stack.yaml");
const ENDPOINTS: &str = include_str!("../../testdata/endpoints.yaml");
const TERMINATING: &str = include_str!("../../testdata/terminating.yaml");
const BAD_INPUT: &str = include_str!("../../testdata/bad-input.yaml");
const DUPLICATE: &str = include_str!("../../testdata/duplicate-frontend.yaml");

fn proxy_named(name: &str) -> Config {
    Config {
        proxy_name: Some(name.into()),
        ..Config::default()
    }
}

// ---- ports -------------------------------------------------------------

#[test]
fn cluster_has_one_frontend_per_cluster_ip_and_service_port() {
    let model = build_clean(&load(CLUSTER));
    let frontends: Vec<String> = model.frontends.keys().map(ToString::to_string).collect();
    assert_eq!(
        frontends,
        [
            "10.96.0.1:443/TCP",
            "10.96.0.10:53/TCP",
            "10.96.0.10:53/UDP",
            "10.96.0.10:9153/TCP",
            "10.96.44.201:6379/TCP",
            "10.96.120.15:80/TCP",
            "10.96.120.15:443/TCP",
        ]
    );
}

#[test]
fn dns_tcp_and_udp_on_port_53_are_two_frontends_with_their_own_port_names() {
    let model = build_clean(&load(CLUSTER));
    let coredns = ["10.244.0.3:53", "10.244.0.4:53"];
    assert_eq!(endpoints(&model, "10.96.0.10", 53, Udp).unwrap(), coredns);
    assert_eq!(endpoints(&model, "10.96.0.10", 53, Tcp).unwrap(), coredns);
    let port_name = |proto| model.frontends[&frontend("10.96.0.10", 53, proto)].service.to_string();
    assert_eq!(port_name(Udp), "kube-system/kube-dns:dns");
    assert_eq!(port_name(Tcp), "kube-system/kube-dns:dns-tcp");
}

#[test]
fn named_ports_take_the_slice_port_of_the_same_name_not_position() {
    // web's slice lists https before http; the Service lists http first.
    let model = build_clean(&load(CLUSTER));
    let pods = ["10.244.1.12", "10.244.1.13", "10.244.2.7"];
    let http: Vec<String> = pods.iter().map(|p| format!("{p}:8080")).collect();
    let https: Vec<String> = pods.iter().map(|p| format!("{p}:8443")).collect();
    assert_eq!(endpoints(&model, "10.96.120.15", 80, Tcp).unwrap(), http);
    assert_eq!(endpoints(&model, "10.96.120.15", 443, Tcp).unwrap(), https);
    assert_eq!(
        endpoints(&model, "10.96.0.10", 9153, Tcp).unwrap(),
        ["10.244.0.3:9153", "10.244.0.4:9153"]
    );
}

#[test]
fn unnamed_single_port_matches_the_unnamed_slice_port() {
    let model = build_clean(&load(CLUSTER));
    assert_eq!(
        endpoints(&model, "10.96.44.201", 6379, Tcp).unwrap(),
        ["10.244.2.9:6379"]
    );
    assert_eq!(
        model.frontends[&frontend("10.96.44.201", 6379, Tcp)]
            .service
            .to_string(),
        "default/redis"
    );
}

#[test]
fn slice_port_with_the_right_name_but_another_protocol_does_not_match() {
    // syslog moved to UDP; its slice still has only a TCP port.
    let model = build_clean(&load(ENDPOINTS));
    assert_eq!(endpoints(&model, "10.96.77.9", 514, Udp).unwrap(), Vec::<String>::new());
    assert_eq!(endpoints(&model, "10.96.77.9", 514, Tcp), None);
}

// ---- which Services ----------------------------------------------------

#[test]
fn headless_service_gets_no_frontend_and_is_not_an_error() {
    let (model, skipped) = build(&load(SKIPS), &Config::default());
    assert!(!served(&model).contains(&"default/db-headless".to_string()));
    assert!(
        model.frontends.keys().all(|f| f.port != 5432),
        "{:?}",
        model.frontends.keys()
    );
    assert_eq!(skipped, []);
}

#[test]
fn external_name_service_gets_no_frontend_and_is_not_an_error() {
    let (model, skipped) = build(&load(SKIPS), &Config::default());
    assert!(!served(&model).contains(&"default/external-db".to_string()));
    // It has no clusterIP; only its type may explain the silence.
    assert_eq!(reasons(&skipped, "default/external-db"), []);
}

#[test]
fn service_proxy_name_label_hands_the_service_to_the_named_proxy() {
    let snapshot = load(SKIPS);
    // metrics-gw is labelled other-proxy, edge is labelled ebpf-proxy.
    let (unnamed, _) = build(&snapshot, &Config::default());
    assert_eq!(served(&unnamed), ["default/frontend"]);

    let (ours, _) = build(&snapshot, &proxy_named("ebpf-proxy"));
    assert_eq!(served(&ours), ["default/edge", "default/frontend"]);
    assert_eq!(endpoints(&ours, "10.96.90.2", 80, Tcp).unwrap(), ["10.244.1.52:8080"]);

    let (other, _) = build(&snapshot, &proxy_named("other-proxy"));
    assert_eq!(served(&other), ["default/frontend", "default/metrics-gw"]);
}

#[test]
fn headless_label_on_the_service_skips_it_despite_its_cluster_ip() {
    let (model, skipped) = build(&load(SKIPS), &proxy_named("ebpf-proxy"));
    assert_eq!(endpoints(&model, "10.96.90.3", 5432, Tcp), None);
    assert_eq!(endpoints(&model, "10.96.90.4", 80, Tcp).unwrap(), ["10.244.1.54:8080"]);
    assert_eq!(skipped, []);
}

// ---- cluster IPs -------------------------------------------------------

#[test]
fn cluster_ips_win_over_cluster_ip_for_an_ipv6_primary_service() {
    let model = build_clean(&load(DUAL_STACK));
    // clusterIP is the IPv6 address; the IPv4 one is only in clusterIPs.
    assert_eq!(
        endpoints(&model, "10.96.201.20", 80, Tcp).unwrap(),
        ["10.244.2.80:8080"]
    );
}

#[test]
fn dual_stack_service_serves_its_ipv4_address_from_the_ipv4_slice_only() {
    let model = build_clean(&load(DUAL_STACK));
    let web_ds: Vec<String> = model
        .frontends
        .iter()
        .filter(|(_, e)| e.service.name == "web-ds")
        .map(|(f, _)| f.to_string())
        .collect();
    assert_eq!(web_ds, ["10.96.200.10:80/TCP"]);
    assert_eq!(
        endpoints(&model, "10.96.200.10", 80, Tcp).unwrap(),
        ["10.244.1.70:8080"]
    );
}

#[test]
fn ipv6_single_stack_service_is_neither_served_nor_reported() {
    let (model, skipped) = build(&load(DUAL_STACK), &Config::default());
    assert!(!served(&model).contains(&"default/v6-only".to_string()));
    assert_eq!(skipped, []);
}

#[test]
fn manifest_with_only_cluster_ip_and_no_protocol_is_served_as_tcp() {
    let model = build_clean(&load(DUAL_STACK));
    assert_eq!(
        endpoints(&model, "10.96.202.30", 80, Tcp).unwrap(),
        ["10.244.1.90:8080"]
    );
}

// ---- endpoints ---------------------------------------------------------

#[test]
fn ready_true_or_unset_is_usable_and_ready_false_is_not() {
    let model = build_clean(&load(ENDPOINTS));
    let cart = endpoints(&model, "10.96.77.7", 80, Tcp).unwrap();
    assert!(cart.contains(&"10.244.1.20:8080".into()), "ready: true");
    assert!(cart.contains(&"10.244.1.21:8080".into()), "conditions: {{}}");
    assert!(!cart.contains(&"10.244.2.22:8080".into()), "ready: false");
}

#[test]
fn address_listed_in_two_slices_counts_once() {
    let model = build_clean(&load(ENDPOINTS));
    let cart = endpoints(&model, "10.96.77.7", 80, Tcp).unwrap();
    assert_eq!(
        cart,
        [
            "10.244.1.20:8080",
            "10.244.1.21:8080",
            "10.244.2.23:8080",
            "10.244.3.30:8080"
        ]
    );
}

#[test]
fn address_listed_in_two_slices_keeps_its_local_and_most_usable_copy() {
    // kube-proxy favours the copy that names this node; between equals it
    // keeps whichever its map yields, so the ready one is as right and stable.
    // cart-abcde sorts first; its copy of 10.244.1.20 goes stale.
    let on_kind_worker = Config {
        node_name: Some("kind-worker".into()),
        ..Config::default()
    };
    let pod_20 = |stale: &dyn Fn(&mut Endpoint)| {
        let mut snapshot = load(ENDPOINTS);
        let copy = &mut slice_mut(&mut snapshot, "shop", "cart-abcde")
            .endpoints
            .as_mut()
            .unwrap()[0];
        assert_eq!(copy.addresses, ["10.244.1.20"]);
        stale(copy);
        let (model, _) = build(&snapshot, &on_kind_worker);
        let cart = &model.frontends[&frontend("10.96.77.7", 80, Tcp)];
        cart.endpoints
            .iter()
            .find(|e| e.ip == Ipv4Addr::new(10, 244, 1, 20))
            .copied()
    };
    let no_node = pod_20(&|e| e.node_name = None).expect("listed");
    assert!(no_node.local, "the copy naming this node wins");
    let not_ready = pod_20(&|e| {
        let conditions = e.conditions.as_mut().unwrap();
        conditions.ready = Some(false);
        conditions.serving = Some(false);
    });
    assert!(
        not_ready.is_some_and(|p| p.local && !p.terminating),
        "the ready copy wins"
    );
}

#[test]
fn only_the_first_address_of_an_endpoint_is_used() {
    let model = build_clean(&load(ENDPOINTS));
    let cart = endpoints(&model, "10.96.77.7", 80, Tcp).unwrap();
    assert!(cart.contains(&"10.244.2.23:8080".into()));
    assert!(!cart.contains(&"10.244.2.99:8080".into()));
}

#[test]
fn slices_of_another_namespace_or_of_address_type_ipv6_are_ignored() {
    // Both namespaces have a Service `cart` and a slice labelled `cart`;
    // shop also has an IPv6 slice, which would be an invalid IPv4 address.
    let (model, skipped) = build(&load(ENDPOINTS), &Config::default());
    let shop = endpoints(&model, "10.96.77.7", 80, Tcp).unwrap();
    assert!(!shop.contains(&"10.244.9.9:8080".into()));
    assert_eq!(endpoints(&model, "10.96.77.8", 80, Tcp).unwrap(), ["10.244.9.9:8080"]);
    assert_eq!(skipped, []);
}

#[test]
fn terminating_endpoints_are_not_used_while_a_ready_one_exists() {
    let model = build_clean(&load(TERMINATING));
    assert_eq!(endpoints(&model, "10.96.88.1", 80, Tcp).unwrap(), ["10.244.2.41:8080"]);
}

#[test]
fn serving_terminating_endpoints_are_used_when_none_is_ready() {
    let model = build_clean(&load(TERMINATING));
    // .50 serves while terminating; .51 has stopped serving.
    assert_eq!(endpoints(&model, "10.96.88.2", 80, Tcp).unwrap(), ["10.244.1.50:8080"]);
}

#[test]
fn unset_serving_means_serving_for_the_terminating_fallback() {
    // EndpointConditions: "serving ... A nil value should be interpreted as
    // true"; kube-proxy reads it so.
    let model = build_clean(&load(TERMINATING));
    assert_eq!(endpoints(&model, "10.96.88.3", 80, Tcp).unwrap(), ["10.244.3.60:8080"]);
}

#[test]
fn service_whose_pods_are_all_starting_keeps_an_empty_frontend() {
    // Present with no endpoints, so the datapath can refuse at once.
    let model = build_clean(&load(TERMINATING));
    assert_eq!(endpoints(&model, "10.96.88.4", 80, Tcp).unwrap(), Vec::<String>::new());
}

// ---- bad input ---------------------------------------------------------

fn bad_input() -> (Model, Vec<Skipped>) {
    build(&load(BAD_INPUT), &Config::default())
}

#[test]
fn every_bad_object_is_reported_once_with_its_reason() {
    let (_, skipped) = bad_input();
    let mut got: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "lab/bad-endpoint-port:http (endpoint_port_out_of_range)",
            "lab/bad-endpoint:http (invalid_endpoint_address)",
            "lab/bad-ip (invalid_cluster_ip)",
            "lab/port-too-big:http (port_out_of_range)",
            "lab/port-zero:http (port_out_of_range)",
            "lab/sip:sip-sctp (unsupported_protocol)",
        ]
    );
}

#[test]
fn invalid_cluster_ip_and_out_of_range_ports_get_no_frontend() {
    let (model, skipped) = bad_input();
    assert_eq!(reasons(&skipped, "lab/bad-ip"), [InvalidClusterIp]);
    assert_eq!(reasons(&skipped, "lab/port-zero:http"), [PortOutOfRange]);
    assert_eq!(reasons(&skipped, "lab/port-too-big:http"), [PortOutOfRange]);
    let served = served(&model);
    for name in ["lab/bad-ip", "lab/port-zero", "lab/port-too-big"] {
        assert!(!served.contains(&name.to_string()), "{name} served");
    }
}

#[test]
fn sctp_port_is_skipped_while_the_udp_port_of_the_same_service_works() {
    let (model, skipped) = bad_input();
    assert_eq!(reasons(&skipped, "lab/sip:sip-sctp"), [UnsupportedProtocol]);
    assert_eq!(endpoints(&model, "10.96.30.4", 5060, Udp).unwrap(), ["10.244.4.4:5060"]);
    assert_eq!(endpoints(&model, "10.96.30.4", 5060, Tcp), None);
}

#[test]
fn invalid_endpoint_address_is_skipped_and_its_neighbours_kept() {
    let (model, skipped) = bad_input();
    assert_eq!(reasons(&skipped, "lab/bad-endpoint:http"), [InvalidEndpointAddress]);
    assert_eq!(endpoints(&model, "10.96.30.5", 80, Tcp).unwrap(), ["10.244.5.10:8080"]);
}

#[test]
fn endpoint_port_out_of_range_leaves_the_frontend_without_endpoints() {
    let (model, skipped) = bad_input();
    assert_eq!(
        reasons(&skipped, "lab/bad-endpoint-port:http"),
        [EndpointPortOutOfRange]
    );
    assert_eq!(endpoints(&model, "10.96.30.6", 80, Tcp).unwrap(), Vec::<String>::new());
}

#[test]
fn healthy_service_is_served_exactly_as_without_bad_neighbours() {
    let (model, _) = bad_input();
    let mut alone = load(BAD_INPUT);
    alone.services.retain(|s| s.metadata.name.as_deref() == Some("healthy"));
    alone
        .slices
        .retain(|s| s.metadata.name.as_deref() == Some("healthy-m2n3b"));
    let alone = build_clean(&alone);
    let healthy = frontend("10.96.30.7", 80, Tcp);
    assert_eq!(model.frontends.get(&healthy), alone.frontends.get(&healthy));
    assert_eq!(endpoints(&model, "10.96.30.7", 80, Tcp).unwrap(), ["10.244.7.10:8080"]);
}

// ---- determinism -------------------------------------------------------

#[test]
fn duplicate_frontend_goes_to_the_same_service_whatever_the_input_order() {
    let snapshot = load(DUPLICATE);
    let mut reversed = snapshot.clone();
    reversed.services.reverse();
    reversed.slices.reverse();
    let (model, skipped) = build(&snapshot, &Config::default());
    assert_eq!(build(&reversed, &Config::default()), (model.clone(), skipped.clone()));

    // billing sorts before checkout, though listed after it.
    assert_eq!(
        model.frontends[&frontend("10.96.50.50", 80, Tcp)].service.to_string(),
        "default/billing:http"
    );
    assert_eq!(
        endpoints(&model, "10.96.50.50", 80, Tcp).unwrap(),
        ["10.244.1.100:8080"]
    );
    // The loser keeps its other port.
    assert_eq!(
        endpoints(&model, "10.96.50.50", 9090, Tcp).unwrap(),
        ["10.244.2.200:9090"]
    );
    assert_eq!(
        skipped,
        [Skipped::port("default", "checkout", "http", DuplicateFrontend).held_by("default/billing:http")]
    );
}

#[test]
fn model_does_not_depend_on_object_order() {
    let snapshot = load_all(&[CLUSTER, ENDPOINTS, TERMINATING, DUAL_STACK]);
    let expected = build_clean(&snapshot);
    let mut shuffled = snapshot.clone();
    shuffled.services.reverse();
    shuffled.slices.rotate_left(3);
    assert_eq!(build_clean(&shuffled), expected);
}
