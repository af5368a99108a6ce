//! Host-network clients (processes in a node's namespace, in the cgroup the
//! agent hooks) reach ClusterIPs and NodePorts through socket-level load
//! balancing: connect4/sendmsg4 pick the backend, recvmsg4/getpeername4 show
//! the frontend dialled. Needs root; run with `cargo xtask test`.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use common::{answered_by, binaries, counter, SYNC_TIMEOUT};
use proxy_lab::cmd::ip;
use proxy_lab::manifests::service;
use proxy_lab::privilege::require_root;
use proxy_lab::traffic::answer_order;
use proxy_lab::{Lab, Reply, Summary};

const WEB: &str = "10.96.0.10:80";
const NODE_1_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 11);
const NODE_PORT: u16 = 30080;
/// Every way a host socket reaches a frontend: TCP (connect4 +
/// getpeername4), UDP with sendto (sendmsg4 + recvmsg4) and connected UDP
/// (connect4 + recvmsg4 + getpeername4).
const PROTOS: [&str; 3] = ["tcp", "udp", "udp-connected"];

/// Backends in web-1 (node 1), web-2 and web-3 (node 2) behind `web`, node
/// 1's agent (with `extra` flags) synced.
fn web_lab(web_yaml: impl Fn(&Lab) -> String, extra: &[&str]) -> (Lab, proxy_lab::Agent) {
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-1", "web-2", "web-3"]).expect("backends");
    lab.write_manifest("web.yaml", &web_yaml(&lab)).unwrap();
    let agent = lab.start_agent_with(0, extra).expect("agent");
    agent.wait_synced(1, SYNC_TIMEOUT).expect("first sync");
    (lab, agent)
}

fn web_service(lab: &Lab) -> String {
    let eps: Vec<_> = ["web-1", "web-2", "web-3"].iter().map(|p| (lab.pod(p).ip, true)).collect();
    service("web", "10.96.0.10", 80, &eps)
}

/// The source address node 1 picks for a packet to `dest`, as the kernel
/// would for an unbound socket.
fn node_1_source_for(lab: &Lab, dest: Ipv4Addr) -> IpAddr {
    let route = ip(&lab.nodes[0].ns, &["route", "get", &dest.to_string()]).unwrap();
    let mut fields = route.split_whitespace();
    fields.find(|f| *f == "src").expect("src in ip route get");
    fields.next().unwrap().parse().unwrap()
}

/// Every request answered, by all three pods, each reply from `target`, and
/// each backend saw the node's own address (the one the kernel picks towards
/// that pod: the underlay address for the other node's pods).
fn assert_host_reaches_every_backend(lab: &Lab, proto: &str, target: &str, replies: &[Reply]) {
    let s = Summary::of(replies);
    println!("host {proto} -> {target}: {s:?}");
    assert_eq!(s.sent, 60);
    assert_eq!(s.failed, 0, "host {proto} requests failed: {:?}\n{}", s.errors, lab.logs());
    assert_eq!(answered_by(&s), vec!["web-1", "web-2", "web-3"], "{proto}");
    assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), vec![target], "{proto}: replies not from the frontend");
    for reply in replies {
        let Reply::Ok { backend, seen_source, .. } = reply else { unreachable!() };
        let pod = lab.pod(backend);
        let expected = if pod.node == 0 { node_1_source_for(lab, pod.ip) } else { IpAddr::V4(NODE_1_IP) };
        assert_eq!(seen_source.ip(), expected, "{proto}: {backend} saw {seen_source}");
    }
}

#[test]
fn host_clients_in_the_cgroup_reach_clusterip_backends_on_both_nodes() {
    if !require_root("host_clients_in_the_cgroup_reach_clusterip_backends_on_both_nodes") {
        return;
    }
    let (lab, _agent) = web_lab(web_service, &[]);
    for proto in PROTOS {
        let before = lab.agent_command(0, &["counters"]).unwrap();
        let replies = lab.host_requests(0, proto, WEB, 60, 1000).unwrap();
        assert_host_reaches_every_backend(&lab, proto, WEB, &replies);
        // One translation per connect or datagram, done by the socket hooks:
        // no packet carried the ClusterIP, so tc translated nothing.
        let after = lab.agent_command(0, &["counters"]).unwrap();
        let translated = counter(&after, "translated") - counter(&before, "translated");
        let reversed = counter(&after, "reverse_translated") - counter(&before, "reverse_translated");
        println!("{proto}: translated {translated}, reverse_translated {reversed}");
        assert_eq!(translated, 60, "{proto}:\n{after}");
        assert!(reversed >= 60, "{proto}: reverse_translated {reversed}\n{after}");
    }
}

#[test]
fn host_process_outside_the_cgroup_is_not_translated() {
    if !require_root("host_process_outside_the_cgroup_is_not_translated") {
        return;
    }
    let (lab, _agent) = web_lab(web_service, &[]);
    let node = &lab.nodes[0].ns;
    let before = lab.agent_command(0, &["counters"]).unwrap();
    // Same namespace, not in the cgroup: the ClusterIP is an address with no
    // route, as it would be with no proxy at all.
    let s = Summary::of(&lab.requests(node, "tcp", WEB, 5, 1000).unwrap());
    println!("outside the cgroup -> {WEB}: {s:?}");
    assert_eq!(s.failed, 5, "translated outside the cgroup: {s:?}");
    assert!(s.errors.keys().all(|e| e.contains("unreachable")), "{:?}", s.errors);
    // ...while the pods themselves are reachable from it.
    let direct = format!("{}:8080", lab.pod("web-2").ip);
    let s = Summary::of(&lab.requests(node, "tcp", &direct, 5, 1000).unwrap());
    assert_eq!(s.failed, 0, "{:?}", s.errors);
    assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), vec![&direct]);
    let after = lab.agent_command(0, &["counters"]).unwrap();
    assert_eq!(counter(&after, "translated"), counter(&before, "translated"), "{after}");
}

/// The `web` Service as type NodePort, node port 30080 on both its ports.
fn web_node_port_service(lab: &Lab) -> String {
    web_service(lab)
        .replace("type: ClusterIP", "type: NodePort")
        .replace("targetPort: 8080\n", &format!("targetPort: 8080\n    nodePort: {NODE_PORT}\n"))
}

#[test]
fn host_clients_reach_a_nodeport_on_their_own_node_address() {
    if !require_root("host_clients_reach_a_nodeport_on_their_own_node_address") {
        return;
    }
    let (lab, _agent) = web_lab(web_node_port_service, &["--node-ip", &NODE_1_IP.to_string()]);
    let services = lab.agent_command(0, &["list", "services"]).unwrap();
    let target = format!("{NODE_1_IP}:{NODE_PORT}");
    assert!(services.lines().any(|l| l.contains(&target) && l.contains("NodePort")), "no NodePort frontend:\n{services}");
    for proto in PROTOS {
        let replies = lab.host_requests(0, proto, &target, 60, 1000).unwrap();
        assert_host_reaches_every_backend(&lab, proto, &target, &replies);
    }
}

#[test]
fn host_connect_to_a_service_without_endpoints_is_refused_at_once() {
    if !require_root("host_connect_to_a_service_without_endpoints_is_refused_at_once") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.write_manifest("empty.yaml", &service("empty", "10.96.0.40", 80, &[])).unwrap();
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    // A timeout would take the client's 3 s per request.
    for proto in PROTOS {
        let started = Instant::now();
        let replies = lab.host_requests(0, proto, "10.96.0.40:80", 5, 3000).unwrap();
        let s = Summary::of(&replies);
        let slowest_us = replies.iter().map(|r| match r {
            Reply::Err { micros, .. } => *micros,
            Reply::Ok { .. } => panic!("{proto}: answered without endpoints: {r:?}"),
        });
        let slowest_us = slowest_us.max().unwrap();
        println!("{proto}: refused {:?}, slowest {slowest_us} us, 5 requests in {:?}", s.errors, started.elapsed());
        assert_eq!(s.failed, 5);
        assert!(s.errors.keys().all(|e| e.contains("refused")), "{proto}: {:?}", s.errors);
        assert!(slowest_us < 1_000_000, "{proto}: refusal took {slowest_us} us");
    }
    let counters = lab.agent_command(0, &["counters"]).unwrap();
    assert_eq!(counter(&counters, "no_backend"), 15, "{counters}");
}

/// The socket hooks live in pinned links like the tc programs: they keep
/// serving with no agent, a restarted agent swaps its programs in place, and
/// `cleanup` detaches them.
#[test]
fn socket_hooks_survive_agent_restart_and_cleanup_removes_them() {
    if !require_root("socket_hooks_survive_agent_restart_and_cleanup_removes_them") {
        return;
    }
    let (lab, agent) = web_lab(web_service, &[]);
    let served = |when: &str| {
        let s = Summary::of(&lab.host_requests(0, "tcp", WEB, 30, 1000).unwrap());
        println!("{when}: {s:?}");
        assert_eq!(s.failed, 0, "{when}: {:?}", s.errors);
        assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), vec![WEB], "{when}");
        answered_by(&s).into_iter().map(String::from).collect::<BTreeSet<_>>()
    };
    served("first agent");
    agent.stop().unwrap();
    served("no agent running");

    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let replaced = agent.own_log().matches("replaced program on existing cgroup link").count();
    assert_eq!(replaced, 4, "{}", agent.own_log());
    assert_eq!(served("restarted agent").len(), 3);
    agent.stop().unwrap();

    lab.agent_command(0, &["cleanup"]).unwrap();
    let s = Summary::of(&lab.host_requests(0, "tcp", WEB, 5, 1000).unwrap());
    assert_eq!(s.failed, 5, "still translated after cleanup: {s:?}");
}

/// An unconnected UDP socket (one `sendto` per request) keeps its backend
/// for every datagram to the frontend, as a conntrack entry would keep it.
#[test]
fn host_udp_socket_sticks_to_one_backend() {
    if !require_root("host_udp_socket_sticks_to_one_backend") {
        return;
    }
    let (lab, _agent) = web_lab(web_service, &[]);
    let mut first_backends = BTreeSet::new();
    for _ in 0..10 {
        let s = Summary::of(&lab.host_requests(0, "udp-keep", WEB, 10, 1000).unwrap());
        assert_eq!(s.failed, 0, "{:?}", s.errors);
        assert_eq!(s.by_backend.len(), 1, "one socket answered by {:?}", s.by_backend);
        assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), vec![WEB]);
        first_backends.extend(s.by_backend.into_keys());
    }
    println!("10 sockets went to {first_backends:?}");
    // All ten on one of three backends by chance: 3 * (1/3)^10 = 0.005 %.
    assert!(first_backends.len() > 1, "every socket went to {first_backends:?}");
}

/// `sessionAffinity: ClientIP` holds for host clients: the node is one
/// client, so every new connection or socket from it to a Service port goes
/// to one backend, while a Service without affinity spreads the same traffic.
#[test]
fn host_clients_keep_session_affinity() {
    if !require_root("host_clients_keep_session_affinity") {
        return;
    }
    let sticky_and_plain = |lab: &Lab| {
        let mut sticky = proxy_lab::manifests::ServiceSpec::new("sticky", "10.96.0.10", 80);
        for pod in ["web-1", "web-2", "web-3"] {
            sticky = sticky.endpoint(lab.pod(pod).ip, &lab.nodes[lab.pod(pod).node].name);
        }
        sticky.session_affinity = Some(10800);
        let mut plain = sticky.clone();
        plain.name = "plain".into();
        plain.cluster_ip = "10.96.0.11".into();
        plain.session_affinity = None;
        format!("{}---\n{}", sticky.yaml(), plain.yaml())
    };
    let (lab, _agent) = web_lab(sticky_and_plain, &[]);
    // Affinity is per Service port, and port 80/TCP and 80/UDP are two: UDP
    // sockets, connected or not, share one backend, TCP may have another.
    for protos in [&["tcp"][..], &["udp", "udp-connected"]] {
        let mut sticky_backends = BTreeSet::new();
        for proto in protos {
            let s = Summary::of(&lab.host_requests(0, proto, WEB, 30, 1000).unwrap());
            println!("{proto} to the sticky Service: {:?}", s.by_backend);
            assert_eq!(s.failed, 0, "{proto}: {:?}", s.errors);
            assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), vec![WEB], "{proto}");
            sticky_backends.extend(s.by_backend.into_keys());
        }
        assert_eq!(sticky_backends.len(), 1, "new {protos:?} host flows spread over {sticky_backends:?} despite ClientIP affinity");
    }
    let s = Summary::of(&lab.host_requests(0, "tcp", "10.96.0.11:80", 30, 1000).unwrap());
    println!("tcp to the plain Service: {:?}", s.by_backend);
    // One backend for 30 connections by chance: 3 * (1/3)^30.
    assert!(s.by_backend.len() > 1, "no affinity, yet one backend: {:?}", s.by_backend);
}

/// A host flow of `proto` (one socket, a request every 20 ms) to `web`
/// while its only endpoint changes from web-2 to web-3; the lab (kept for
/// its agent's metrics and logs) and the replies, in order.
fn host_flow_across_endpoint_change(proto: &str) -> (Lab, proxy_lab::Agent, Vec<Reply>) {
    let only = |pod: &'static str| move |lab: &Lab| service("web", "10.96.0.10", 80, &[(lab.pod(pod).ip, true)]);
    let (lab, agent) = web_lab(only("web-2"), &[]);
    let flow = lab.host_requests_in_background(0, proto, WEB, 100, 1000, 20).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let changed = Instant::now();
    lab.write_manifest("web.yaml", &only("web-3")(&lab)).unwrap();
    agent.wait_synced(2, SYNC_TIMEOUT).unwrap();
    println!("{proto}: endpoint change synced in {} ms", changed.elapsed().as_millis());
    let replies = flow.wait().unwrap();
    (lab, agent, replies)
}

/// When the endpoint a UDP socket's datagrams go to is removed, the next
/// datagram goes to a live one: no stale flow (the classic DNS outage).
#[test]
fn host_udp_flow_moves_when_its_endpoint_goes_away() {
    if !require_root("host_udp_flow_moves_when_its_endpoint_goes_away") {
        return;
    }
    let (_lab, _agent, replies) = host_flow_across_endpoint_change("udp-keep");
    let s = Summary::of(&replies);
    println!("flow across the endpoint change: {s:?}");
    assert_eq!(s.failed, 0, "{:?}", s.errors);
    assert_eq!(answered_by(&s), vec!["web-2", "web-3"]);
    let backends = answer_order(&replies);
    assert_eq!(backends.first(), Some(&"web-2"));
    assert_eq!(backends.last(), Some(&"web-3"));
    let switches = backends.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(switches, 1, "the flow went back and forth: {backends:?}");
    assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), vec![WEB]);
}

/// A connected UDP socket (connect4 chose its backend once) whose backend
/// leaves the Service is aborted by the agent, so the application's next
/// socket goes to a live backend: the socket-level counterpart of kube-proxy
/// deleting a removed endpoint's UDP conntrack entries. The client reopens
/// its socket after an error, as resolvers do.
#[test]
fn host_connected_udp_socket_leaves_a_removed_endpoint() {
    if !require_root("host_connected_udp_socket_leaves_a_removed_endpoint") {
        return;
    }
    let (lab, _agent, replies) = host_flow_across_endpoint_change("udp-connected-keep");
    let s = Summary::of(&replies);
    println!("connected socket across the endpoint change: {:?}, errors {:?}", s.by_backend, s.errors);
    let order = answer_order(&replies);
    assert_eq!(order.first(), Some(&"web-2"));
    assert_eq!(order.last(), Some(&"web-3"), "the socket stayed on the removed endpoint: {order:?}");
    // One error, where the aborted socket was replaced; no going back.
    assert!(s.failed <= 1, "{:?}", s.errors);
    assert!(
        s.errors.keys().all(|e| e.contains("abort") || e.contains("Destination_address_required")),
        "{:?}",
        s.errors
    );
    let web3_from = order.iter().position(|b| *b == "web-3").unwrap();
    assert!(order[web3_from..].iter().all(|b| *b == "web-3"), "{order:?}");
    assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), vec![WEB]);
    let metrics = proxy_lab::cmd::in_ns(&lab.nodes[0].ns, &["curl", "-sS", "--max-time", "2", "http://127.0.0.1:10249/metrics"]).unwrap();
    let aborted = metrics.lines().find(|l| l.starts_with("ebpf_proxy_stale_udp_sockets_aborted_total "));
    assert_eq!(aborted, Some("ebpf_proxy_stale_udp_sockets_aborted_total 1"), "{metrics}");
}
