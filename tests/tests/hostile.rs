//! Services written to take other Services' traffic, as a user with create
//! rights on Services could write them, through the lab's API server with
//! kubectl: the agent keeps every address with its owner. Needs root and
//! kubectl.

mod common;

use std::time::Duration;

use common::{api_lab, binaries, http_get, sample, SYNC_TIMEOUT};
use proxy_lab::manifests::ServiceSpec;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Summary};

const LB_IP: &str = "10.200.0.50";

/// `default/web` (LoadBalancer 10.200.0.50, pods web-1 and web-2) exists;
/// then `aaa/evil` (which sorts first by name, which used to decide) lists
/// 10.200.0.50 as an externalIP, on the same port, with web-3 behind it.
/// The external client's TCP and UDP requests to 10.200.0.50 all reach
/// web-1 or web-2; the agent reports the attacker's frontend as
/// `external_ip_conflict`, naming the owner, and counts it. Before, all of
/// them reached web-3.
#[test]
fn an_external_ip_cannot_take_another_services_load_balancer_ip() {
    if !require_root("an_external_ip_cannot_take_another_services_load_balancer_ip") {
        return;
    }
    let (lab, _api) = api_lab(&["web-1", "web-2", "web-3"]);
    let mut web = ServiceSpec::new("web", "10.96.0.10", 80).on_pods(&lab, &["web-1", "web-2"]);
    web.node_port = Some(30080);
    web.load_balancer_ips = vec![LB_IP.into()];
    lab.kubectl_apply(&web.yaml()).unwrap();
    // Creation times have a resolution of a second.
    std::thread::sleep(Duration::from_millis(1100));
    let mut evil = ServiceSpec::new("evil", "10.96.0.66", 80).on_pods(&lab, &["web-3"]);
    evil.external_ips = vec![LB_IP.into()];
    lab.kubectl_apply(&evil.yaml().replace("namespace: default", "namespace: aaa")).unwrap();

    let agents: Vec<_> = (0..2).map(|n| lab.start_agent_on_api(n).expect("agent")).collect();
    for agent in &agents {
        agent.wait_synced(1, SYNC_TIMEOUT).expect("first sync");
    }
    lab.route_via_node(&lab.client_ns, "10.200.0.0/24", 0).unwrap();
    let target = format!("{LB_IP}:80");
    for proto in ["tcp", "udp"] {
        let s = Summary::of(&lab.requests(&lab.client_ns, proto, &target, 30, 1000).unwrap());
        println!("{proto} {target}: {s:?}");
        assert_eq!(s.failed, 0, "{proto}: {:?}\n{}", s.errors, lab.logs());
        let answered: Vec<&str> = s.by_backend.keys().map(String::as_str).collect();
        assert_eq!(answered, ["web-1", "web-2"], "{proto}: the externalIP took the LoadBalancer IP");
    }
    let log = agents[0].own_log();
    let line = log.lines().find(|l| l.contains("external_ip_conflict")).unwrap_or_else(|| panic!("no conflict logged:\n{log}"));
    assert!(line.contains("aaa/evil") && line.contains("default/web"), "{line}");
    let (_, metrics) = http_get(&lab.nodes[0].ns, "http://127.0.0.1:10249/metrics").unwrap();
    // The TCP and the UDP port.
    assert_eq!(sample(&metrics, "ebpf_proxy_skipped_objects{reason=\"external_ip_conflict\"}"), 2.0, "{metrics}");
}

/// With the ConfigMap's EXTERNAL_IP_CIDRS set to 10.201.0.0/24, a Service
/// listing 10.200.0.60 and 10.201.0.60 as externalIPs is served on the
/// second only: the external client's requests to the first get no
/// backend's answer, and the agent reports `external_ip_not_allowed`.
#[test]
fn external_ips_outside_the_operators_cidrs_are_not_served() {
    if !require_root("external_ips_outside_the_operators_cidrs_are_not_served") {
        return;
    }
    let (lab, _api) = api_lab(&["web-3"]);
    let mut svc = ServiceSpec::new("ext", "10.96.0.61", 80).on_pods(&lab, &["web-3"]);
    svc.external_ips = vec!["10.200.0.60".into(), "10.201.0.60".into()];
    lab.kubectl_apply(&svc.yaml()).unwrap();
    let agent = lab.start_agent_on_api_with_config(0, &[("EXTERNAL_IP_CIDRS", "10.201.0.0/24")]).expect("agent");
    agent.wait_synced(1, SYNC_TIMEOUT).expect("first sync");
    for range in ["10.200.0.0/24", "10.201.0.0/24"] {
        lab.route_via_node(&lab.client_ns, range, 0).unwrap();
    }
    for proto in ["tcp", "udp"] {
        let allowed = Summary::of(&lab.requests(&lab.client_ns, proto, "10.201.0.60:80", 10, 1000).unwrap());
        assert_eq!((allowed.failed, allowed.by_backend.keys().map(String::as_str).collect::<Vec<_>>()), (0, vec!["web-3"]), "{proto}: {allowed:?}");
        let refused = Summary::of(&lab.requests(&lab.client_ns, proto, "10.200.0.60:80", 5, 300).unwrap());
        println!("{proto} to the address outside the CIDRs: {refused:?}");
        assert_eq!(refused.failed, 5, "{proto}: an externalIP outside EXTERNAL_IP_CIDRS answered: {refused:?}");
    }
    let (_, metrics) = http_get(&lab.nodes[0].ns, "http://127.0.0.1:10249/metrics").unwrap();
    assert_eq!(sample(&metrics, "ebpf_proxy_skipped_objects{reason=\"external_ip_not_allowed\"}"), 1.0, "{metrics}");
}

/// A Service whose nodePort is 10256, the agent's own /healthz port (a
/// manifest directory, unlike the API server, does not keep nodePorts in
/// their range): from outside, the node's /healthz still answers, not the
/// Service's pod, and the agent reports `node_port_reserved`.
#[test]
fn a_node_port_cannot_take_the_agents_health_port() {
    if !require_root("a_node_port_cannot_take_the_agents_health_port") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-3"]).unwrap();
    let mut svc = ServiceSpec::new("sneaky", "10.96.0.62", 80).on_pods(&lab, &["web-3"]);
    svc.node_port = Some(10256);
    lab.write_manifest("sneaky.yaml", &svc.yaml()).unwrap();
    let agent = lab.start_agent(0).expect("agent");
    agent.wait_synced(1, SYNC_TIMEOUT).expect("first sync");
    let url = format!("http://{}:10256/healthz", lab.node_ip(0));
    let (status, body) = http_get(&lab.client_ns, &url).unwrap();
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not the agent's /healthz: {body}"));
    assert_eq!(health["healthy"], true, "{body}");
    let (_, metrics) = http_get(&lab.nodes[0].ns, "http://127.0.0.1:10249/metrics").unwrap();
    // The TCP and the UDP port.
    assert_eq!(sample(&metrics, "ebpf_proxy_skipped_objects{reason=\"node_port_reserved\"}"), 2.0, "{metrics}");
}
