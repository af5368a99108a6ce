//! What operators see of a running agent: Prometheus metrics and probes
//! scraped from inside the node, checked against the traffic the test sent,
//! and the healthCheckNodePort servers as a cloud load balancer probes them
//! from outside the node. Needs root; run with `cargo xtask test`.

mod common;

use std::time::Duration;

use common::{binaries, counter, http_get, sample, HOST_ONLY, SYNC_TIMEOUT};
use proxy_lab::cmd::{in_ns, sysctl};
use proxy_lab::lab::wait_until;
use proxy_lab::manifests::service;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Summary};

const REQUESTS: u32 = 60;

/// Status and body of `GET url`, from namespace `ns`.
/// A Service the model must refuse: its cluster IP is not an address.
const BAD_SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: broken
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 10.96.0.999
  ports:
  - {port: 80, protocol: TCP, targetPort: 8080}
"#;

#[test]
fn metrics_and_probes_match_the_traffic_sent() {
    if !require_root("metrics_and_probes_match_the_traffic_sent") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-1", "web-2", "web-3"]).unwrap();
    let eps: Vec<_> = ["web-1", "web-2", "web-3"].iter().map(|p| (lab.pod(p).ip, true)).collect();
    lab.write_manifest("web.yaml", &service("web", "10.96.0.10", 80, &eps)).unwrap();
    lab.write_manifest("broken.yaml", BAD_SERVICE).unwrap();
    // Pods served per packet, so every connection is tracked.
    let agent = lab.start_agent_with_config(0, &[], &[HOST_ONLY]).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let node = lab.nodes[0].ns.clone();

    let s = Summary::of(&lab.requests(&lab.pod("client-a").ns, "tcp", "10.96.0.10:80", REQUESTS, 1000).unwrap());
    assert_eq!(s.failed, 0, "{:?}", s.errors);

    let (status, metrics) = http_get(&node, "http://127.0.0.1:10249/metrics").unwrap();
    // Read straight after the scrape, with no traffic in between.
    let counters = lab.agent_command(0, &["counters"]).unwrap();
    let conntrack = lab.agent_command(0, &["list", "conntrack"]).unwrap();
    println!("{metrics}\n{counters}\n{conntrack}");
    assert_eq!(status, 200);

    // Verdicts: every request's packets were translated both ways, and the
    // scrape reads the same per-CPU map as `counters`.
    let translated = sample(&metrics, "ebpf_proxy_datapath_verdicts_total{verdict=\"translated\"}");
    let reversed = sample(&metrics, "ebpf_proxy_datapath_verdicts_total{verdict=\"reverse_translated\"}");
    assert!(translated >= f64::from(REQUESTS), "translated {translated} < {REQUESTS} requests");
    assert!(reversed >= f64::from(REQUESTS), "reverse_translated {reversed} < {REQUESTS} requests");
    assert_eq!(translated as u64, counter(&counters, "translated"));
    assert_eq!(reversed as u64, counter(&counters, "reverse_translated"));
    assert_eq!(sample(&metrics, "ebpf_proxy_datapath_verdicts_total{verdict=\"no_backend\"}"), 0.0);

    // What the manifests define: one good Service with a TCP and a UDP
    // frontend over three pods (a backend per pod and protocol), one refused.
    assert_eq!(sample(&metrics, "ebpf_proxy_services"), 1.0);
    assert_eq!(sample(&metrics, "ebpf_proxy_frontends"), 2.0);
    assert_eq!(sample(&metrics, "ebpf_proxy_backends"), 6.0);
    // How full each map is, over its capacity (Cilium's bpf_map_pressure).
    assert_eq!(sample(&metrics, "ebpf_proxy_map_pressure{map=\"SERVICES\"}"), 2.0 / 65_536.0);
    assert_eq!(sample(&metrics, "ebpf_proxy_map_pressure{map=\"BACKENDS\"}"), 6.0 / 131_072.0);
    assert_eq!(sample(&metrics, "ebpf_proxy_skipped_objects{reason=\"invalid_cluster_ip\"}"), 1.0);
    assert_eq!(sample(&metrics, "ebpf_proxy_skip_events_total{reason=\"invalid_cluster_ip\"}"), 1.0);
    assert_eq!(sample(&metrics, "ebpf_proxy_map_write_failures_total"), 0.0);
    let syncs = sample(&metrics, "ebpf_proxy_syncs_total{result=\"success\"}");
    assert!(syncs >= 1.0 && syncs as u64 <= agent.generations(), "{syncs} successful syncs");
    assert_eq!(sample(&metrics, "ebpf_proxy_sync_duration_seconds_count"), agent.generations() as f64);

    // Conntrack: two entries per connection, as `list conntrack` shows them.
    let summary = conntrack.lines().find(|l| l.ends_with(" entries")).expect("conntrack summary line");
    let fields: Vec<&str> = summary.split_whitespace().collect();
    let (flows, entries): (u64, u64) = (fields[0].parse().unwrap(), fields[2].parse().unwrap());
    assert_eq!(flows, u64::from(REQUESTS), "{summary}");
    let established = sample(&metrics, "ebpf_proxy_conntrack_entries{table=\"established\"}") as u64;
    let new = sample(&metrics, "ebpf_proxy_conntrack_entries{table=\"new\"}") as u64;
    assert_eq!(established + new, entries, "established {established} + new {new}");
    // Each connection completed its handshake: moved to the established table.
    assert_eq!(established, entries, "established {established} + new {new}");
    assert_eq!(entries, 2 * flows, "every flow has its reply entry: {summary}");

    // Probes: healthy after a sync, with kube-proxy's body; reachable from
    // outside the node, while metrics stay on the node's loopback.
    let (status, body) = http_get(&node, "http://127.0.0.1:10256/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["healthy"], true, "{body}");
    assert!(health["lastUpdated"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    assert!(health["currentTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    let (status, _) = http_get(&lab.client_ns, "http://10.100.0.11:10256/livez").unwrap();
    assert_eq!(status, 200);
    assert!(
        http_get(&lab.client_ns, "http://10.100.0.11:10249/metrics").is_err(),
        "metrics answered on the node's underlay address"
    );
}

/// Flows and conntrack entries, from the summary line of `list conntrack`.
fn conntrack_size(lab: &Lab) -> (u64, u64) {
    let out = lab.agent_command(0, &["list", "conntrack"]).unwrap();
    let summary = out.lines().find(|l| l.ends_with(" entries")).map(str::to_string).unwrap_or_default();
    let fields: Vec<&str> = summary.split_whitespace().collect();
    match fields.as_slice() {
        [flows, _, entries, ..] => (flows.parse().unwrap_or(0), entries.parse().unwrap_or(0)),
        _ => (0, 0),
    }
}

/// The agent deletes the conntrack entries of flows that are over, so the
/// map does not sit full of closed connections waiting for the LRU to evict
/// them (and evicting live ones with them), while a live flow keeps its
/// entries and its backend.
#[test]
fn conntrack_of_closed_connections_is_collected_and_live_flows_are_kept() {
    if !require_root("conntrack_of_closed_connections_is_collected_and_live_flows_are_kept") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-1", "web-2", "web-3"]).unwrap();
    let eps: Vec<_> = ["web-1", "web-2", "web-3"].iter().map(|p| (lab.pod(p).ip, true)).collect();
    lab.write_manifest("web.yaml", &service("web", "10.96.0.10", 80, &eps)).unwrap();
    // Pods served per packet, so their connections are tracked.
    let agent = lab.start_agent_with_config(0, &[], &[("CONNTRACK_GC_INTERVAL", "1"), HOST_ONLY]).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let client = lab.pod("client-a").ns.clone();
    // A live flow: one connection, a request every 200 ms for 20 s.
    let live = lab.requests_in_background(&client, "tcp-keep", "10.96.0.10:80", 100, 1000, 200).unwrap();
    let s = Summary::of(&lab.requests(&client, "tcp", "10.96.0.10:80", 50, 1000).unwrap());
    assert_eq!(s.failed, 0, "{:?}", s.errors);
    let closed_at = std::time::Instant::now();
    let (flows, entries) = conntrack_size(&lab);
    println!("after 50 connections: {flows} flows, {entries} entries");
    assert_eq!((flows, entries), (51, 102), "50 closed connections and the live one");
    // Closed flows are over 10 s after their FIN; a pass a second.
    wait_until(Duration::from_secs(14), || conntrack_size(&lab) == (1, 2)).unwrap_or_else(|e| panic!("{e}: {:?} left", conntrack_size(&lab)));
    println!("collected {} ms after the connections closed", closed_at.elapsed().as_millis());
    // Over 10 s after a flow's last packet, and the last packets went within
    // the second before `closed_at`.
    assert!(closed_at.elapsed() >= Duration::from_secs(9), "flows collected before they were over");
    let replies = live.wait().unwrap();
    let kept = Summary::of(&replies);
    assert_eq!(kept.failed, 0, "the live flow broke: {:?}", kept.errors);
    assert_eq!(kept.by_backend.len(), 1, "the live flow changed backend: {:?}", kept.by_backend);
    let (_, metrics) = http_get(&lab.nodes[0].ns, "http://127.0.0.1:10249/metrics").unwrap();
    assert_eq!(sample(&metrics, "ebpf_proxy_conntrack_gc_deleted_total"), 100.0);
}

/// Where the NodePort and SNAT port ranges meet the node's ephemeral range,
/// the agent reserves them, so the kernel never gives a local connection a
/// port whose replies the datapath would take; with protection off it only
/// warns.
#[test]
fn port_ranges_the_datapath_answers_for_are_kept_from_local_sockets() {
    if !require_root("port_ranges_the_datapath_answers_for_are_kept_from_local_sockets") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-2"]).unwrap();
    let eps = [(lab.pod("web-2").ip, true)];
    lab.write_manifest("web.yaml", &service("web", "10.96.0.10", 80, &eps)).unwrap();
    let reserved = |node: usize| in_ns(&lab.nodes[node].ns, &["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]).unwrap().trim().to_string();
    // An ephemeral range of 3,000 ports that both of ours meet: NodePorts
    // (30000-32767) and, here, SNAT ports 32900-32999; 132 ports stay free.
    for node in &lab.nodes {
        sysctl(&node.ns, "net.ipv4.ip_local_port_range", "30000 32999").unwrap();
    }
    let protected = lab.start_agent_with_config(0, &[], &[("SNAT_PORT_RANGE", "32900-32999")]).unwrap();
    let unprotected = lab.start_agent_with_config(1, &[], &[("SNAT_PORT_RANGE", "32900-32999"), ("PROTECT_PORT_RANGES", "false")]).unwrap();
    protected.wait_synced(1, SYNC_TIMEOUT).unwrap();
    unprotected.wait_synced(1, SYNC_TIMEOUT).unwrap();
    assert_eq!(reserved(0), "30000-32767,32900-32999");
    assert_eq!(reserved(1), "", "reserved with protection off");
    assert!(unprotected.own_log().contains("the kernel's ephemeral port range overlaps"), "{}", unprotected.own_log());

    // 100 connections from node 1 itself all get one of the 132 free ports
    // (the kernel would otherwise draw from all 3,000).
    let direct = format!("{}:8080", lab.pod("web-2").ip);
    let replies = lab.requests(&lab.nodes[0].ns, "tcp", &direct, 100, 1000).unwrap();
    let ports: Vec<u16> = replies.iter().filter_map(|r| r.seen_source()).map(|s| s.port()).collect();
    assert_eq!(ports.len(), 100, "{replies:?}");
    let outside: Vec<&u16> = ports.iter().filter(|p| !(32768..=32899).contains(*p)).collect();
    assert!(outside.is_empty(), "local connections got reserved ports {outside:?}");
    println!("100 local connections on ports {}..={}", ports.iter().min().unwrap(), ports.iter().max().unwrap());
}

#[test]
fn bind_address_flags_move_the_servers() {
    if !require_root("bind_address_flags_move_the_servers") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    let agent = lab
        .start_agent_with_config(1, &[], &[("METRICS_BIND_ADDRESS", "0.0.0.0:9100"), ("HEALTHZ_BIND_ADDRESS", "127.0.0.1:9101")])
        .unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let node = &lab.nodes[1].ns;
    let (status, metrics) = http_get(&lab.client_ns, "http://10.100.0.12:9100/metrics").unwrap();
    assert_eq!(status, 200);
    assert_eq!(sample(&metrics, "ebpf_proxy_frontends"), 0.0);
    assert_eq!(http_get(node, "http://127.0.0.1:9101/healthz").unwrap().0, 200);
    assert!(http_get(node, "http://127.0.0.1:10256/healthz").is_err(), "default healthz port still open");
    assert!(http_get(node, "http://127.0.0.1:10249/metrics").is_err(), "default metrics port still open");
}

const HC_PORT: u16 = 32100;

/// A LoadBalancer Service with `externalTrafficPolicy: Local` and endpoints
/// on the given pods, each with its node's name.
fn local_lb(lab: &Lab, pods: &[&str]) -> String {
    let mut eps = String::new();
    for p in pods {
        let pod = lab.pod(p);
        let node = &lab.nodes[pod.node].name;
        eps.push_str(&format!("- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n  nodeName: {node}\n", pod.ip));
    }
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: lb, namespace: shop}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.50
  externalTrafficPolicy: Local
  healthCheckNodePort: {HC_PORT}
  ports:
  - {{port: 80, protocol: TCP, targetPort: 8080, nodePort: 30050}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: lb-x1
  namespace: shop
  labels: {{kubernetes.io/service-name: lb}}
addressType: IPv4
ports:
- {{port: 8080, protocol: TCP}}
endpoints:
{eps}"#
    )
}

/// What a load balancer's probe of `node`'s health check port gets.
fn probe(lab: &Lab, node: usize) -> anyhow::Result<(u16, serde_json::Value)> {
    let url = format!("http://{}:{HC_PORT}/", lab.nodes[node].underlay_ip);
    let (status, body) = http_get(&lab.client_ns, &url)?;
    Ok((status, serde_json::from_str(&body)?))
}

fn expect_probe(lab: &Lab, node: usize, status: u16, local: u64) {
    let mut last = None;
    let reached = wait_until(Duration::from_secs(5), || {
        last = probe(lab, node).ok();
        last.as_ref().is_some_and(|(s, b)| *s == status && b["localEndpoints"] == local)
    });
    assert!(reached.is_ok(), "node-{}: wanted {status} with {local} local endpoints, got {last:?}", node + 1);
    let (_, body) = last.unwrap();
    assert_eq!(body["service"], serde_json::json!({"namespace": "shop", "name": "lb"}));
    assert_eq!(body["serviceProxyHealthy"], true);
}

#[test]
fn health_check_node_port_reports_local_endpoints() {
    if !require_root("health_check_node_port_reports_local_endpoints") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    // Endpoints only on node-2 at first.
    lab.write_manifest("lb.yaml", &local_lb(&lab, &["web-2", "web-3"])).unwrap();
    let agents: Vec<_> = (0..2).map(|n| lab.start_agent(n).unwrap()).collect();
    for a in &agents {
        a.wait_synced(1, SYNC_TIMEOUT).unwrap();
    }
    expect_probe(&lab, 0, 503, 0);
    expect_probe(&lab, 1, 200, 2);

    // A pod on node-1 becomes an endpoint: its probe turns healthy.
    lab.write_manifest("lb.yaml", &local_lb(&lab, &["web-1", "web-2", "web-3"])).unwrap();
    agents[0].wait_synced(2, SYNC_TIMEOUT).unwrap();
    expect_probe(&lab, 0, 200, 1);
    expect_probe(&lab, 1, 200, 2);

    // The Service goes away: so does its health check server.
    std::fs::remove_file(lab.manifests.join("lb.yaml")).unwrap();
    agents[0].wait_synced(3, SYNC_TIMEOUT).unwrap();
    let closed = wait_until(Duration::from_secs(5), || probe(&lab, 0).is_err());
    assert!(closed.is_ok(), "health check port still answers: {:?}", probe(&lab, 0));
}

/// With NODEPORT_ADDRESSES set to the underlay, the health check server
/// listens there only, as kube-proxy binds it: a load balancer's probe gets
/// its answer, and the node's address on the pods' network (which
/// `0.0.0.0` would also have answered on) refuses the connection.
#[test]
fn health_check_node_port_listens_where_node_ports_are_served() {
    if !require_root("health_check_node_port_listens_where_node_ports_are_served") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.write_manifest("lb.yaml", &local_lb(&lab, &["web-1"])).unwrap();
    let agent = lab.start_agent_with_config(0, &[], &[("NODEPORT_ADDRESSES", "10.100.0.0/24")]).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    expect_probe(&lab, 0, 200, 1);
    // From a pod on the node, to the node's address on the pods' network.
    let pod = lab.pod("client-a");
    let gateway = format!("http://10.244.{}.1:{HC_PORT}/", lab.nodes[0].pod_net);
    let on_pod_network = http_get(&pod.ns, &gateway);
    assert!(on_pod_network.is_err(), "the health check answered on {gateway}: {on_pod_network:?}");
    let on_node = http_get(&pod.ns, &format!("http://{}:{HC_PORT}/", lab.nodes[0].underlay_ip));
    assert!(on_node.is_ok(), "{on_node:?}");
}

/// CapEff of exactly CAP_NET_ADMIN (12), CAP_PERFMON (38) and CAP_BPF (39).
const DAEMONSET_CAP_EFF: &str = "000000c000001000";

/// The lab runs every agent as the DaemonSet does: the init container's
/// command with full privileges (it mounts bpffs and the node's cgroup2),
/// then the agent with every capability but those the container adds
/// (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN) dropped from its bounding set, as a
/// container runtime does. It loads, attaches, syncs and translates; and
/// without CAP_SYS_ADMIN it could not have done the init container's work,
/// which is why that exists. (Dropping any one of the three makes loading
/// fail: map creation without CAP_BPF, the tc program without
/// CAP_NET_ADMIN, the verifier without CAP_PERFMON.)
#[test]
fn agent_needs_only_the_daemonsets_capabilities() {
    if !require_root("agent_needs_only_the_daemonsets_capabilities") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-1", "web-2", "web-3"]).unwrap();
    let eps: Vec<_> = ["web-1", "web-2", "web-3"].iter().map(|p| (lab.pod(p).ip, true)).collect();
    lab.write_manifest("web.yaml", &service("web", "10.96.0.10", 80, &eps)).unwrap();
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let caps = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert_eq!(caps.split_whitespace().nth(1), Some(DAEMONSET_CAP_EFF), "agent ran with {caps}");
    // The init container's work needs CAP_SYS_ADMIN: with the agent's
    // capabilities it is refused (on node 2, which no init has prepared).
    let host = &lab.nodes[1].host_root;
    let denied = proxy_lab::cmd::run(
        "setpriv",
        &[
            "--bounding-set=-all,+bpf,+perfmon,+net_admin",
            "--",
            &binaries().agent.to_string_lossy(),
            &format!("--bpffs={}", host.join("sys/fs/bpf").display()),
            "prepare-node",
            &format!("--cgroup-root={}", host.join("run/ebpf-proxy/cgroupv2").display()),
            &format!("--host-cgroupns={}", host.join("proc/1/ns/cgroup").display()),
        ],
    );
    assert!(denied.is_err(), "prepared a node without CAP_SYS_ADMIN: {denied:?}");
    for proto in ["tcp", "udp", "udp-connected"] {
        let s = Summary::of(&lab.requests(&lab.pod("client-a").ns, proto, "10.96.0.10:80", 30, 1000).unwrap());
        assert_eq!(s.failed, 0, "{proto}: {:?}\n{}", s.errors, agent.own_log());
        assert_eq!(common::answered_by(&s), vec!["web-1", "web-2", "web-3"], "{proto}");
    }
    assert_eq!(http_get(&lab.nodes[0].ns, "http://127.0.0.1:10256/healthz").unwrap().0, 200);
}

