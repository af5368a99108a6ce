//! Every way users reach a Service besides pod -> ClusterIP: NodePort,
//! LoadBalancer and external IPs from the external client, with both
//! external traffic policies; pods reaching NodePorts; internal traffic
//! policy Local; hairpin; source ranges; immediate refusal. Real packets
//! through the tc programs of agents on both lab nodes.

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use common::{binaries, counter, Config, HOST_ONLY, SYNC_TIMEOUT, XDP_ON_VETHS};
use proxy_lab::manifests::ServiceSpec;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Offloads, Summary};

const LB_RANGE: &str = "10.200.0.0/24";
const EXTERNAL_IP_RANGE: &str = "10.201.0.0/24";
const TIMEOUT_MS: u32 = 1000;
const ALL_WEB: [&str; 3] = ["web-1", "web-2", "web-3"];

/// The lab with backends in web-1 (node 1), web-2 and web-3 (node 2),
/// agents on both nodes serving `services`, and the external client routing
/// LoadBalancer and external IPs to node 1.
fn lab_with(services: impl Fn(&Lab) -> Vec<ServiceSpec>) -> (Lab, Vec<proxy_lab::Agent>) {
    lab_with_config(services, &[])
}

fn lab_with_config(services: impl Fn(&Lab) -> Vec<ServiceSpec>, config: Config) -> (Lab, Vec<proxy_lab::Agent>) {
    lab_with_options(services, config, Offloads::KERNEL_DEFAULTS)
}

fn lab_with_options(services: impl Fn(&Lab) -> Vec<ServiceSpec>, config: Config, offloads: Offloads) -> (Lab, Vec<proxy_lab::Agent>) {
    let lab = Lab::with_options(binaries(), proxy_lab::lab::DEFAULT_PODS, offloads).expect("lab up");
    lab.start_backends(&ALL_WEB).expect("backends");
    for spec in services(&lab) {
        lab.write_manifest(&format!("{}.yaml", spec.name), &spec.yaml()).unwrap();
    }
    let agents: Vec<_> = (0..2).map(|n| lab.start_agent_with_config(n, &[], config).expect("agent")).collect();
    for agent in &agents {
        agent.wait_synced(1, SYNC_TIMEOUT).expect("first sync");
    }
    lab.route_via_node(&lab.client_ns, LB_RANGE, 0).unwrap();
    lab.route_via_node(&lab.client_ns, EXTERNAL_IP_RANGE, 0).unwrap();
    (lab, agents)
}

/// A Service on all three web pods.
fn web(lab: &Lab, name: &str, cluster_ip: &str) -> ServiceSpec {
    ServiceSpec::new(name, cluster_ip, 80).on_pods(lab, &ALL_WEB)
}

/// Sends `count` requests per protocol and checks the three things a user
/// sees: who answered, the source the backend saw, the source of the reply.
fn check(lab: &Lab, from_ns: &str, target: &str, answered: &[&str], backend_saw: &str) -> Vec<Summary> {
    check_protos(lab, from_ns, target, &["tcp", "udp"], answered, backend_saw)
}

fn check_protos(lab: &Lab, from_ns: &str, target: &str, protos: &[&str], answered: &[&str], backend_saw: &str) -> Vec<Summary> {
    let mut out = Vec::new();
    for &proto in protos {
        let replies = lab.requests(from_ns, proto, target, 30, TIMEOUT_MS).unwrap();
        let s = Summary::of(&replies);
        println!("{proto} {target}: {s:?}");
        assert_eq!(s.failed, 0, "{proto} {target}: {:?}\n{}", s.errors, lab.logs());
        let by: BTreeSet<&str> = s.by_backend.keys().map(String::as_str).collect();
        assert_eq!(by, answered.iter().copied().collect(), "{proto} {target} answered by {:?}", s.by_backend);
        // `a|b`: each backend saw one of these (a hairpin flow sees the
        // frontend, the others the pod).
        let allowed: BTreeSet<&str> = backend_saw.split('|').collect();
        let seen: BTreeSet<&str> = s.sources_seen.keys().map(String::as_str).collect();
        assert!(!seen.is_empty() && seen.is_subset(&allowed), "{proto} {target}: backends saw {seen:?}, want {backend_saw}");
        assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), [target], "{proto} {target}");
        out.push(s);
    }
    out
}

/// Requests that must all go unanswered (dropped, so they time out).
fn check_dropped(lab: &Lab, from_ns: &str, target: &str) {
    for proto in ["tcp", "udp"] {
        let s = Summary::of(&lab.requests(from_ns, proto, target, 3, 300).unwrap());
        assert_eq!(s.failed, 3, "{proto} {target} answered: {s:?}");
        assert!(
            s.errors.keys().all(|e| !e.contains("refused")),
            "{proto} {target}: dropped traffic must not be refused: {:?}",
            s.errors
        );
    }
}

fn counters(lab: &Lab, node: usize) -> String {
    lab.agent_command(node, &["counters"]).unwrap()
}

#[test]
fn nodeport_cluster_policy_reaches_every_backend_from_outside() {
    if !require_root("nodeport_cluster_policy_reaches_every_backend_from_outside") {
        return;
    }
    let (lab, _agents) = lab_with(|lab| {
        let mut np = web(lab, "np", "10.96.1.10");
        np.node_port = Some(30080);
        vec![np]
    });
    // Backends on either node answer through either node's NodePort; they
    // see the node's address (SNAT), the client sees the NodePort.
    for node in 0..2 {
        let node_ip = lab.node_ip(node).to_string();
        check(&lab, &lab.client_ns, &format!("{node_ip}:30080"), &ALL_WEB, &node_ip);
    }
    // Pods reach NodePorts too, on their own node and on the other one.
    let client_a = lab.pod("client-a");
    let node1 = lab.node_ip(0);
    check(&lab, &client_a.ns, &format!("{node1}:30080"), &ALL_WEB, &client_a.ip.to_string());
    let client_b = lab.pod("client-b");
    check(&lab, &client_b.ns, &format!("{node1}:30080"), &ALL_WEB, &node1.to_string());
}

#[test]
fn nodeport_local_policy_keeps_the_client_address_and_drops_without_local_endpoints() {
    if !require_root("nodeport_local_policy_keeps_the_client_address_and_drops_without_local_endpoints") {
        return;
    }
    let (lab, _agents) = lab_with(|lab| {
        let mut local = web(lab, "np-local", "10.96.1.11");
        local.node_port = Some(30081);
        local.external_local = true;
        let mut remote_only = ServiceSpec::new("np-remote", "10.96.1.12", 80)
            .endpoint(lab.pod("web-2").ip, "node-2")
            .endpoint(lab.pod("web-3").ip, "node-2");
        remote_only.node_port = Some(30082);
        remote_only.external_local = true;
        vec![local, remote_only]
    });
    let client = "10.100.0.100";
    let (node1, node2) = (lab.node_ip(0), lab.node_ip(1));
    check(&lab, &lab.client_ns, &format!("{node1}:30081"), &["web-1"], client);
    check(&lab, &lab.client_ns, &format!("{node2}:30081"), &["web-2", "web-3"], client);
    check(&lab, &lab.client_ns, &format!("{node2}:30082"), &["web-2", "web-3"], client);
    check_dropped(&lab, &lab.client_ns, &format!("{node1}:30082"));
    let c = counters(&lab, 0);
    assert_eq!(counter(&c, "no_local_backend"), 6, "{c}");
}

#[test]
fn load_balancer_and_external_ips_with_source_ranges() {
    if !require_root("load_balancer_and_external_ips_with_source_ranges") {
        return;
    }
    let (lab, _agents) = lab_with(|lab| {
        let mut lb = web(lab, "lb", "10.96.1.20");
        lb.node_port = Some(30083);
        lb.load_balancer_ips = vec!["10.200.0.10".into()];
        lb.external_ips = vec!["10.201.0.10".into()];
        let mut allowed = web(lab, "lb-allowed", "10.96.1.21");
        allowed.load_balancer_ips = vec!["10.200.0.11".into()];
        allowed.source_ranges = vec!["10.100.0.0/24".into(), "192.0.2.0/24".into()];
        let mut denied = web(lab, "lb-denied", "10.96.1.22");
        denied.load_balancer_ips = vec!["10.200.0.12".into()];
        denied.source_ranges = vec!["192.0.2.0/24".into()];
        let mut local = web(lab, "lb-local", "10.96.1.23");
        local.load_balancer_ips = vec!["10.200.0.13".into()];
        local.external_local = true;
        local.health_check_node_port = Some(32000);
        vec![lb, allowed, denied, local]
    });
    let node1 = lab.node_ip(0).to_string();
    check(&lab, &lab.client_ns, "10.200.0.10:80", &ALL_WEB, &node1);
    check(&lab, &lab.client_ns, "10.201.0.10:80", &ALL_WEB, &node1);
    check(&lab, &lab.client_ns, "10.200.0.11:80", &ALL_WEB, &node1);
    check(&lab, &lab.client_ns, "10.200.0.13:80", &["web-1"], "10.100.0.100");
    check_dropped(&lab, &lab.client_ns, "10.200.0.12:80");
    // Pods on either node reach the LoadBalancer and external IPs through
    // their own node, keeping their address.
    for pod in ["client-a", "client-b"] {
        let p = lab.pod(pod);
        check(&lab, &p.ns, "10.200.0.10:80", &ALL_WEB, &p.ip.to_string());
        check(&lab, &p.ns, "10.201.0.10:80", &ALL_WEB, &p.ip.to_string());
    }
    let c = counters(&lab, 0);
    assert_eq!(counter(&c, "source_denied"), 6, "{c}");
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    if !require_root("internal_traffic_policy_local_uses_only_this_nodes_endpoints") {
        return;
    }
    let (lab, _agents) = lab_with(|lab| {
        let mut itp = web(lab, "itp", "10.96.1.30");
        itp.internal_local = true;
        let mut remote_only = ServiceSpec::new("itp-remote", "10.96.1.31", 80).endpoint(lab.pod("web-2").ip, "node-2");
        remote_only.internal_local = true;
        vec![itp, remote_only]
    });
    let a = lab.pod("client-a");
    let b = lab.pod("client-b");
    check(&lab, &a.ns, "10.96.1.30:80", &["web-1"], &a.ip.to_string());
    check(&lab, &b.ns, "10.96.1.30:80", &["web-2", "web-3"], &b.ip.to_string());
    check(&lab, &b.ns, "10.96.1.31:80", &["web-2"], &b.ip.to_string());
    check_dropped(&lab, &a.ns, "10.96.1.31:80");
    let c = counters(&lab, 0);
    assert_eq!(counter(&c, "no_local_backend"), 6, "{c}");
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    if !require_root("a_pod_reaches_itself_through_its_service") {
        return;
    }
    let (lab, _agents) = lab_with(|lab| {
        let mut spec = ServiceSpec::new("self", "10.96.1.40", 80).endpoint(lab.pod("web-1").ip, "node-1");
        spec.node_port = Some(30084);
        vec![spec]
    });
    let web1 = lab.pod("web-1");
    let own = web1.ip.to_string();
    let node1 = lab.node_ip(0).to_string();
    // TCP and UDP sendto: the socket hooks connect the pod straight to
    // itself, and no packet leaves it; it sees its own address, as with
    // Cilium's socket LB.
    check_protos(&lab, &web1.ns, "10.96.1.40:80", &["tcp", "udp"], &["web-1"], &own);
    check_protos(&lab, &web1.ns, &format!("{node1}:30084"), &["tcp", "udp"], &["web-1"], &own);
    // A connected UDP socket goes per packet: masqueraded as the frontend,
    // since the pod would drop a packet from itself.
    check_protos(&lab, &web1.ns, "10.96.1.40:80", &["udp-connected"], &["web-1"], "10.96.1.40");
    check_protos(&lab, &web1.ns, &format!("{node1}:30084"), &["udp-connected"], &["web-1"], &node1);
}

/// Host-namespace-only mode: pods are served per packet, so every hairpin
/// flow is masqueraded as the frontend (kube-proxy's behaviour).
#[test]
fn hairpin_in_host_namespace_only_mode_is_masqueraded_as_the_frontend() {
    if !require_root("hairpin_in_host_namespace_only_mode_is_masqueraded_as_the_frontend") {
        return;
    }
    let services = |lab: &Lab| {
        let mut spec = ServiceSpec::new("self", "10.96.1.40", 80).endpoint(lab.pod("web-1").ip, "node-1");
        spec.node_port = Some(30084);
        vec![spec]
    };
    let (lab, _agents) = lab_with_config(services, &[HOST_ONLY]);
    let web1 = lab.pod("web-1");
    let node1 = lab.node_ip(0).to_string();
    let all = ["tcp", "udp", "udp-connected"];
    check_protos(&lab, &web1.ns, "10.96.1.40:80", &all, &["web-1"], "10.96.1.40");
    check_protos(&lab, &web1.ns, &format!("{node1}:30084"), &all, &["web-1"], &node1);
}

/// A client sending datagram after datagram to a Service without endpoints
/// gets port unreachables at the kernel's own rate for ICMP errors (a burst
/// of 6, then one a second), not one per datagram: they cost the node as
/// much as the datagrams, and a spoofed flood would turn them on a victim.
/// The rest are dropped and counted; resets are not limited (netfilter's
/// REJECT does not limit them either).
#[test]
fn port_unreachables_are_rate_limited_per_client() {
    if !require_root("port_unreachables_are_rate_limited_per_client") {
        return;
    }
    let (lab, _agents) = lab_with(|_| {
        let mut empty = ServiceSpec::new("empty", "10.96.1.50", 80);
        empty.node_port = Some(30090);
        vec![empty]
    });
    let target = format!("{}:30090", lab.node_ip(0));
    let started = Instant::now();
    let replies = lab.requests(&lab.client_ns, "udp-connected", &target, 500, 3).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let s = Summary::of(&replies);
    let refused: usize = s.errors.iter().filter(|(e, _)| e.to_lowercase().contains("refused")).map(|(_, n)| n).sum();
    let c = counters(&lab, 0);
    let limited = counter(&c, "refusal_rate_limited");
    println!("500 datagrams in {seconds:.1} s: {refused} refused, {limited} dropped by the rate limit; {:?}", s.errors);
    assert_eq!(s.failed, 500, "{s:?}");
    assert!(refused >= 6 && refused as f64 <= 7.0 + seconds, "{refused} refusals in {seconds:.1} s");
    assert_eq!(limited as usize + refused, 500, "{c}");
    assert_eq!(counter(&c, "no_backend") as usize, refused, "{c}");
    // Resets are not limited.
    let s = Summary::of(&lab.requests(&lab.client_ns, "tcp", &target, 20, 1000).unwrap());
    assert_eq!(s.errors.iter().filter(|(e, _)| e.to_lowercase().contains("refused")).map(|(_, n)| n).sum::<usize>(), 20, "{s:?}");
}

#[test]
fn no_endpoint_and_unallocated_addresses_are_refused_at_once() {
    if !require_root("no_endpoint_and_unallocated_addresses_are_refused_at_once") {
        return;
    }
    let (lab, _agents) = lab_with(|_| {
        let mut empty = ServiceSpec::new("empty", "10.96.1.50", 80);
        empty.node_port = Some(30090);
        vec![empty]
    });
    let client = lab.pod("client-a");
    let node1 = lab.node_ip(0);
    let cases = [
        (client.ns.as_str(), "10.96.1.50:80".to_string()),
        (client.ns.as_str(), "10.96.9.99:80".to_string()), // no Service has it
        (client.ns.as_str(), "10.96.1.50:81".to_string()), // a port the Service lacks
        (lab.client_ns.as_str(), format!("{node1}:30090")),
    ];
    let mut refused = 0;
    for (ns, target) in &cases {
        // A connected UDP socket, as DNS resolvers use: only those are told
        // of ICMP errors. Two per target: port unreachables are limited to
        // a burst of 6 per client, as the kernel limits them (see the next
        // test), and client-a asks three times.
        for (proto, count) in [("tcp", 5), ("udp-connected", 2)] {
            // A generous timeout: a refusal must come long before it.
            let started = Instant::now();
            let replies = lab.requests(ns, proto, target, count, 3000).unwrap();
            let elapsed = started.elapsed();
            let slowest_us = proxy_lab::traffic::slowest_micros(&replies);
            let s = Summary::of(&replies);
            assert_eq!(s.failed, count as usize, "{proto} {target}: {s:?}");
            assert!(
                s.errors.keys().all(|e| e.to_lowercase().contains("refused")),
                "{proto} {target}: {:?}",
                s.errors
            );
            println!("{proto} {target}: {count} refused, slowest {slowest_us} µs, all in {elapsed:?} (client timeout 3 s each)");
            assert!(elapsed.as_millis() < 2000, "{proto} {target}: refusals took {elapsed:?}");
            refused += u64::from(count);
        }
    }
    let c = counters(&lab, 0);
    assert_eq!(counter(&c, "no_backend"), refused, "{c}");
}

#[test]
fn xdp_serves_nodeports_and_load_balancers_before_the_stack() {
    if !require_root("xdp_serves_nodeports_and_load_balancers_before_the_stack") {
        return;
    }
    let services = |lab: &Lab| {
        let mut np = web(lab, "np", "10.96.1.10");
        np.node_port = Some(30080);
        let mut local = web(lab, "np-local", "10.96.1.11");
        local.node_port = Some(30081);
        local.external_local = true;
        let mut lb = web(lab, "lb", "10.96.1.20");
        lb.load_balancer_ips = vec!["10.200.0.10".into()];
        let mut denied = web(lab, "lb-denied", "10.96.1.22");
        denied.load_balancer_ips = vec!["10.200.0.12".into()];
        denied.source_ranges = vec!["192.0.2.0/24".into()];
        vec![np, local, lb, denied]
    };
    // The underlay as a wire between NICs (complete checksums), where XDP
    // belongs; the lab's node devices are veths, hence --xdp-on-veth.
    let (lab, _agents) = lab_with_options(services, &XDP_ON_VETHS, Offloads::NIC_UNDERLAY);
    lab.enable_xdp_transmit().unwrap();
    let (node1, node2) = (lab.node_ip(0).to_string(), lab.node_ip(1).to_string());
    // Warm the nodes' neighbour tables, so the XDP FIB lookups resolve; the
    // first packets of a path may go through tc while they fill in.
    for target in [format!("{node1}:30080"), format!("{node2}:30080")] {
        let _ = lab.requests(&lab.client_ns, "tcp", &target, 10, TIMEOUT_MS).unwrap();
    }
    let xdp_counts = |node| {
        let c = counters(&lab, node);
        (counter(&c, "xdp_translated"), counter(&c, "xdp_reverse_translated"))
    };
    for (node, ip) in [(0, &node1), (1, &node2)] {
        let before = xdp_counts(node);
        let summaries = check(&lab, &lab.client_ns, &format!("{ip}:30080"), &ALL_WEB, ip);
        let after = xdp_counts(node);
        // Every request's packets toward the backend went through XDP (30
        // TCP connections, several packets each, and 30 datagrams); replies
        // through XDP are those from the other node's backends (local ones
        // come back through the pod's device and tc).
        let remote_answers: usize = summaries
            .iter()
            .flat_map(|s| &s.by_backend)
            .filter(|(pod, _)| lab.pod(pod).node != node)
            .map(|(_, n)| n)
            .sum();
        println!("node {node}: XDP translated {} packets, reverse {} ({remote_answers} remote answers)", after.0 - before.0, after.1 - before.1);
        assert!(after.0 - before.0 >= 60, "node {node}: only {} packets translated by XDP", after.0 - before.0);
        assert!(after.1 - before.1 >= remote_answers as u64, "node {node}: XDP reverse-translated {}", after.1 - before.1);
    }
    check(&lab, &lab.client_ns, &format!("{node1}:30081"), &["web-1"], "10.100.0.100");
    check(&lab, &lab.client_ns, "10.200.0.10:80", &ALL_WEB, &node1);
    check_dropped(&lab, &lab.client_ns, "10.200.0.12:80");
    let c = counters(&lab, 0);
    println!("node-1 with XDP:\n{c}");
    assert_eq!(counter(&c, "source_denied"), 6, "{c}");
}

#[test]
fn session_affinity_keeps_each_client_on_one_backend_until_the_timeout() {
    if !require_root("session_affinity_keeps_each_client_on_one_backend_until_the_timeout") {
        return;
    }
    let (lab, _agents) = lab_with(|lab| {
        let mut sticky = web(lab, "sticky", "10.96.1.60");
        sticky.session_affinity = Some(10800);
        sticky.node_port = Some(30085);
        let mut short = web(lab, "short", "10.96.1.61");
        short.session_affinity = Some(1);
        vec![sticky, short, web(lab, "plain", "10.96.1.62")]
    });
    let node1 = lab.node_ip(0);
    let clients = [
        (lab.pod("client-a").ns.clone(), "10.96.1.60:80".to_string()),
        (lab.pod("client-b").ns.clone(), "10.96.1.60:80".to_string()),
        (lab.client_ns.clone(), format!("{node1}:30085")),
    ];
    // Every request is a new connection (or a new UDP socket): conntrack
    // cannot be what keeps them together, only the affinity.
    for (ns, target) in &clients {
        for proto in ["tcp", "udp"] {
            let s = Summary::of(&lab.requests(ns, proto, target, 30, TIMEOUT_MS).unwrap());
            assert_eq!(s.failed, 0, "{proto} {target}: {:?}", s.errors);
            assert_eq!(s.by_backend.len(), 1, "{proto} {target} from {ns}: {:?}", s.by_backend);
        }
    }
    // Without affinity the same client spreads (chance of one backend for
    // 30 requests over 3: 3 * (1/3)^30).
    let a = lab.pod("client-a");
    let s = Summary::of(&lab.requests(&a.ns, "tcp", "10.96.1.62:80", 30, TIMEOUT_MS).unwrap());
    assert!(s.by_backend.len() > 1, "no affinity, yet one backend: {:?}", s.by_backend);
    // A 1 s timeout with requests 1.2 s apart: each picks afresh (chance of
    // one backend for 8 requests: (1/3)^7).
    let s = Summary::of(&lab.requests_in_background(&a.ns, "tcp", "10.96.1.61:80", 8, TIMEOUT_MS, 1200).unwrap().wait().unwrap());
    assert_eq!(s.failed, 0, "{:?}", s.errors);
    assert!(s.by_backend.len() > 1, "affinity outlived its 1 s timeout: {:?}", s.by_backend);
}

/// ClusterIPs routed to a node from outside the cluster: not served by
/// default (as Cilium; NodePorts, LoadBalancer IPs and externalIPs are for
/// the outside), served and SNATed to the node with EXTERNAL_CLUSTER_IP
/// (kube-proxy's behaviour).
#[test]
fn cluster_ips_from_outside_only_when_the_config_says_so() {
    if !require_root("cluster_ips_from_outside_only_when_the_config_says_so") {
        return;
    }
    let services = |lab: &Lab| vec![web(lab, "web", "10.96.1.10")];
    let (lab, agents) = lab_with(services);
    lab.route_via_node(&lab.client_ns, "10.96.0.0/16", 0).unwrap();
    for proto in ["tcp", "udp"] {
        let s = Summary::of(&lab.requests(&lab.client_ns, proto, "10.96.1.10:80", 3, 300).unwrap());
        println!("{proto} from outside, default: {s:?}");
        assert_eq!(s.failed, 3, "{proto}: a ClusterIP answered from outside: {s:?}");
    }
    drop(agents);
    let agents: Vec<_> = (0..2).map(|n| lab.start_agent_with_config(n, &[], &[("EXTERNAL_CLUSTER_IP", "true")]).unwrap()).collect();
    for agent in &agents {
        agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    }
    let node1 = lab.node_ip(0).to_string();
    check(&lab, &lab.client_ns, "10.96.1.10:80", &ALL_WEB, &node1);
}

/// `--xdp` on a node whose device is a veth (a kind node's eth0): frames may
/// arrive with partial checksums, which XDP cannot see and would break, so
/// the agent says so and leaves the device to tc, which serves it.
#[test]
fn xdp_stays_off_veths_unless_told_their_checksums_are_complete() {
    if !require_root("xdp_stays_off_veths_unless_told_their_checksums_are_complete") {
        return;
    }
    let services = |lab: &Lab| {
        let mut np = web(lab, "np", "10.96.1.10");
        np.node_port = Some(30080);
        vec![np]
    };
    let (lab, agents) = lab_with_config(services, &[("XDP", "true")]);
    lab.enable_xdp_transmit().unwrap();
    assert!(agents[0].own_log().contains("XDP not attached: the device is a veth"), "{}", agents[0].own_log());
    let attachments = lab.agent_command(0, &["list", "attachments"]).unwrap();
    assert!(!attachments.contains("xdp"), "{attachments}");
    let node1 = lab.node_ip(0).to_string();
    check(&lab, &lab.client_ns, &format!("{node1}:30080"), &ALL_WEB, &node1);
    assert_eq!(counter(&counters(&lab, 0), "xdp_translated"), 0);
}

/// Every veth computes and verifies full checksums (offloads off): each
/// rewrite's incremental checksum update must be exact, or the packet is
/// dropped by its receiver. Pods per packet (ClusterIP, hairpin), outside
/// through NodePorts to backends on both nodes (DNAT and SNAT), through tc
/// and through XDP.
#[test]
fn every_rewrite_leaves_checksums_exact() {
    if !require_root("every_rewrite_leaves_checksums_exact") {
        return;
    }
    let services = |lab: &Lab| {
        let mut np = web(lab, "np", "10.96.1.10");
        np.node_port = Some(30080);
        vec![np]
    };
    let node1 = |lab: &Lab| lab.node_ip(0).to_string();
    let with_xdp = [HOST_ONLY, XDP_ON_VETHS[0], XDP_ON_VETHS[1]];
    for config in [&[HOST_ONLY][..], &with_xdp] {
        let (lab, _agents) = lab_with_options(services, config, Offloads::NONE);
        if config.contains(&("XDP", "true")) {
            lab.enable_xdp_transmit().unwrap();
        }
        let client = lab.pod("client-a");
        check_protos(&lab, &client.ns, "10.96.1.10:80", &["tcp", "udp", "udp-connected"], &ALL_WEB, &client.ip.to_string());
        check(&lab, &lab.client_ns, &format!("{}:30080", node1(&lab)), &ALL_WEB, &node1(&lab));
        check_protos(&lab, &lab.pod("web-1").ns, "10.96.1.10:80", &["tcp"], &["web-1", "web-2", "web-3"], "10.96.1.10|10.244.1.11");
    }
}

/// A backend's ICMP port unreachable for a translated UDP flow reaches the
/// client as the frontend's, quoting the client's own datagram, so its
/// connected socket fails at once with ECONNREFUSED instead of waiting for
/// a timeout: from outside through a NodePort (SNAT) and from a pod
/// through a ClusterIP (a connected UDP socket goes per packet).
#[test]
fn a_backends_port_unreachable_reaches_the_client_translated() {
    if !require_root("a_backends_port_unreachable_reaches_the_client_translated") {
        return;
    }
    let (lab, _agents) = lab_with(|lab| {
        let mut closed = web(lab, "closed", "10.96.1.60");
        closed.node_port = Some(30095);
        // Nothing listens there: each backend answers port unreachable.
        closed.target_port = Some(9999);
        vec![closed]
    });
    let node1 = lab.node_ip(0);
    for (ns, target) in [(lab.client_ns.clone(), format!("{node1}:30095")), (lab.pod("client-a").ns.clone(), "10.96.1.60:80".to_string())] {
        let started = Instant::now();
        let replies = lab.requests(&ns, "udp-connected", &target, 5, 2000).unwrap();
        let s = Summary::of(&replies);
        let refused: usize = s.errors.iter().filter(|(e, _)| e.to_lowercase().contains("refused")).map(|(_, n)| n).sum();
        println!(
            "udp-connected {target}: {refused}/5 refused, slowest {} µs, all in {:?}",
            proxy_lab::traffic::slowest_micros(&replies),
            started.elapsed()
        );
        assert_eq!(refused, 5, "{target}: {s:?}");
    }
    let translated: u64 = (0..2).map(|n| counter(&counters(&lab, n), "icmp_error_translated")).sum();
    assert!(translated >= 10, "icmp_error_translated {translated}");
}

/// Path MTU discovery through a NodePort: a client behind a 1,280-byte link
/// downloads 1 MB through either node's NodePort. The backend's full-size
/// packets cannot cross that link; the router's "fragmentation needed",
/// sent to the NodePort address, must reach the backend quoting its own
/// packet, or the download stalls for good.
#[test]
fn path_mtu_discovery_works_through_a_nodeport() {
    if !require_root("path_mtu_discovery_works_through_a_nodeport") {
        return;
    }
    let (lab, _agents) = lab_with(|lab| {
        let mut np = web(lab, "np", "10.96.1.10");
        np.node_port = Some(30080);
        vec![np]
    });
    let far = lab.add_client_behind_narrow_link(1280).unwrap();
    for node in 0..2 {
        let target = format!("{}:30080", lab.node_ip(node));
        // 24: every backend (local and remote) answers but with a chance
        // of 3 x (2/3)^24.
        let replies = lab.requests(&far, "tcp-download=1048576", &target, 24, 5000).unwrap();
        let s = Summary::of(&replies);
        let ms: Vec<u64> = replies.iter().map(|r| r.micros() / 1000).collect();
        println!("1 MB through {target} behind a 1280-byte link: {} of 24, by {:?}, ms {ms:?}", s.sent - s.failed, s.by_backend);
        assert_eq!(s.failed, 0, "{target}: {:?}", s.errors);
        assert_eq!(answered_by_all(&s), ALL_WEB.len(), "{target}: {:?}", s.by_backend);
    }
    let translated = counter(&counters(&lab, 0), "icmp_error_translated");
    println!("node 1 translated {translated} ICMP errors");
    assert!(translated > 0);
}

fn answered_by_all(s: &Summary) -> usize {
    s.by_backend.len()
}

/// A 4,000-byte UDP datagram, fragmented, each way: from outside through a
/// NodePort (to backends on both nodes, SNATed), from a pod through a
/// ClusterIP on a connected socket (per packet). Only the first fragment
/// has the ports; the datapath gives them to the rest, so every fragment
/// reaches the backend and the answer's fragments reach the client.
#[test]
fn fragmented_datagrams_are_translated_whole() {
    if !require_root("fragmented_datagrams_are_translated_whole") {
        return;
    }
    let (lab, _agents) = lab_with(|lab| {
        let mut np = web(lab, "np", "10.96.1.10");
        np.node_port = Some(30080);
        vec![np]
    });
    let node1 = lab.node_ip(0).to_string();
    let client = lab.pod("client-a");
    for (ns, proto, target, saw) in [
        (lab.client_ns.clone(), "udp-connected-big=4000", format!("{node1}:30080"), node1.clone()),
        (lab.client_ns.clone(), "udp-big=4000", format!("{node1}:30080"), node1.clone()),
        (client.ns.clone(), "udp-connected-big=4000", "10.96.1.10:80".to_string(), client.ip.to_string()),
    ] {
        check_protos(&lab, &ns, &target, &[proto], &ALL_WEB, &saw);
    }
}
