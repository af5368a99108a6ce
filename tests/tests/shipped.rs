//! A node served by the agent exactly as `manifests/` ships it: rendered
//! with `kubectl kustomize`, the init container's and the agent's command,
//! arguments and environment taken from the DaemonSet (`$(VAR)` expanded
//! from the ConfigMap), with only the binary, the API server, the node's
//! name and the host paths behind its volumes swapped for the lab's. The
//! nodes are kind nodes as kindnet wires them: random `veth<hex>` devices,
//! a /32 route per pod, masquerade to anything outside the pod network,
//! each pod's processes in its own kubepods cgroup below the node's root
//! cgroup, seen through the node's cgroup namespace. Pods are created
//! before and after the agents start; a backend pod joins later.
//!
//! Every row asserts which backend answered, the source it saw and where
//! the reply came from, and prints them; then the same again with the
//! ConfigMap's SOCKET_LB_HOST_NAMESPACE_ONLY set. Needs root and kubectl.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{api_lab, binaries, SYNC_TIMEOUT};
use proxy_lab::lab::wait_until;
use proxy_lab::manifests::ServiceSpec;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Reply, Summary};

const REQUESTS: u32 = 40;
const TIMEOUT_MS: u32 = 1000;
const LB_IP: &str = "10.200.0.10";
const NODE_PORT: u16 = 30080;

/// One row of the table: a path, what answered and what was seen.
struct Row {
    path: String,
    ok: usize,
    sent: usize,
    answered: BTreeMap<String, usize>,
    seen: BTreeSet<String>,
    reply_from: BTreeSet<String>,
}

struct Table(Vec<Row>);

impl Table {
    /// Sends REQUESTS requests per protocol and checks every one was
    /// answered, by exactly `answered`, which saw `saw` (the client's
    /// address, or whatever the path rewrites it to; for host processes one
    /// of the node's addresses, `|`-separated), with the reply from
    /// `target`.
    #[allow(clippy::too_many_arguments)]
    fn check(&mut self, lab: &Lab, path: &str, from_ns: &str, protos: &[&str], target: &str, answered: &[&str], saw: &str) {
        for proto in protos {
            let replies = lab.requests(from_ns, proto, target, REQUESTS, TIMEOUT_MS).unwrap();
            self.record(lab, &format!("{path} ({proto})"), &replies, target, answered, saw);
        }
    }

    fn record(&mut self, lab: &Lab, path: &str, replies: &[Reply], target: &str, answered: &[&str], saw: &str) {
        let s = Summary::of(replies);
        let row = Row {
            path: path.to_string(),
            ok: s.sent - s.failed,
            sent: s.sent,
            answered: s.by_backend.clone(),
            seen: s.sources_seen.keys().cloned().collect(),
            reply_from: s.replies_from.keys().cloned().collect(),
        };
        println!("{}", row.line());
        assert_eq!(s.failed, 0, "{path}: {:?}\n{}", s.errors, lab.logs());
        let by: BTreeSet<&str> = s.by_backend.keys().map(String::as_str).collect();
        assert_eq!(by, answered.iter().copied().collect(), "{path}: answered by {:?}", s.by_backend);
        let allowed: BTreeSet<String> = saw.split('|').map(String::from).collect();
        assert!(!row.seen.is_empty() && row.seen.is_subset(&allowed), "{path}: backends saw {:?}, not {saw}", row.seen);
        assert_eq!(row.reply_from, BTreeSet::from([target.to_string()]), "{path}: replies from");
        self.0.push(row);
    }

    fn print(&self, mode: &str) {
        println!("\n{mode}: path | answered | who answered | source seen | reply from");
        for row in &self.0 {
            println!("{}", row.line());
        }
    }
}

impl Row {
    fn line(&self) -> String {
        let who: Vec<String> = self.answered.iter().map(|(b, n)| format!("{b} x{n}")).collect();
        format!(
            "| {} | {}/{} | {} | {} | {} |",
            self.path,
            self.ok,
            self.sent,
            who.join(", "),
            self.seen.iter().cloned().collect::<Vec<_>>().join(", "),
            self.reply_from.iter().cloned().collect::<Vec<_>>().join(", "),
        )
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The cluster's Services, as a kind cluster would hold them.
fn web(lab: &Lab, pods: &[&str]) -> String {
    let mut spec = ServiceSpec::new("web", "10.96.0.10", 80).on_pods(lab, pods);
    spec.node_port = Some(NODE_PORT);
    spec.load_balancer_ips = vec![LB_IP.into()];
    spec.yaml()
}

/// DNS-shaped: port 53, TCP and UDP, its pods on node 2 only (as CoreDNS
/// often is, from the node's point of view).
fn dns(lab: &Lab, pods: &[&str]) -> String {
    ServiceSpec::new("kube-dns", "10.96.0.53", 53).on_pods(lab, pods).yaml()
}

/// `default/kubernetes`: its endpoint is outside the pod network (the
/// control plane's address), so kindnet masquerades what goes there.
fn kubernetes(lab: &Lab) -> String {
    let mut spec = ServiceSpec::new("kubernetes", "10.96.0.1", 443);
    spec.endpoints.push(proxy_lab::manifests::EndpointSpec {
        addr: lab.api_addr().ip().to_string().parse().unwrap(),
        node: None,
        ready: true,
    });
    spec.yaml()
}

/// A Service whose own pod dials it.
fn hairpin(lab: &Lab) -> String {
    let p = lab.pod("web-1");
    ServiceSpec::new("self", "10.96.0.40", 80).endpoint(p.ip, "node-1").yaml()
}

fn node_served_as_shipped(config: &[(&str, &str)], host_only: bool) {
    let mut lab = Lab::up(binaries()).expect("lab up");
    let _api = lab.start_apiserver().expect("API server");
    lab.register_nodes().unwrap();
    lab.start_backends(&["web-1", "web-2", "web-3"]).unwrap();
    lab.start_backend_in(&lab.control_plane_ns.clone(), "control-plane").unwrap();
    for yaml in [web(&lab, &["web-1", "web-2", "web-3"]), dns(&lab, &["web-2", "web-3"]), kubernetes(&lab), hairpin(&lab)] {
        lab.kubectl_apply(&yaml).unwrap();
    }
    let agents: Vec<_> = (0..2).map(|n| lab.start_agent_on_api_with_config(n, config).unwrap()).collect();
    for agent in &agents {
        agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    }
    lab.route_via_node(&lab.client_ns, "10.200.0.0/24", 0).unwrap();
    let mut table = Table(Vec::new());
    let node1 = lab.node_ip(0).to_string();
    let client_a = lab.pod("client-a").clone();
    let a_ip = client_a.ip.to_string();
    let all = ["tcp", "udp", "udp-connected"];
    let webs = ["web-1", "web-2", "web-3"];

    table.check(&lab, "pod -> ClusterIP", &client_a.ns, &all, "10.96.0.10:80", &webs, &a_ip);
    table.check(&lab, "pod -> DNS Service", &client_a.ns, &all, "10.96.0.53:53", &["web-2", "web-3"], &a_ip);
    // kindnet masquerades what leaves for the control plane: the endpoint
    // sees the node, as with kube-proxy.
    table.check(&lab, "pod -> default/kubernetes", &client_a.ns, &all, "10.96.0.1:443", &["control-plane"], &node1);
    // The node's own source towards each backend, as the kernel picks it:
    // its underlay address for the other node's pods, its pods' gateway
    // address for its own.
    let node1_sources = format!("{node1}|10.244.1.1");
    for proto in all {
        let replies = lab.host_requests(0, proto, "10.96.0.10:80", REQUESTS, TIMEOUT_MS).unwrap();
        table.record(&lab, &format!("host process -> ClusterIP ({proto})"), &replies, "10.96.0.10:80", &webs, &node1_sources);
    }
    // From outside, every backend through either node, the same node's
    // included: SNATed to the node the client reached.
    let np = format!("{node1}:{NODE_PORT}");
    table.check(&lab, "outside -> NodePort via node-1", &lab.client_ns, &["tcp", "udp"], &np, &webs, &node1);
    let node2 = lab.node_ip(1).to_string();
    let np2 = format!("{node2}:{NODE_PORT}");
    table.check(&lab, "outside -> NodePort via node-2", &lab.client_ns, &["tcp", "udp"], &np2, &webs, &node2);
    let lb = format!("{LB_IP}:80");
    table.check(&lab, "outside -> LoadBalancer IP", &lab.client_ns, &["tcp", "udp"], &lb, &webs, &node1);

    // A pod reaching its own Service.
    let web1 = lab.pod("web-1").clone();
    let own = web1.ip.to_string();
    if host_only {
        table.check(&lab, "pod -> own Service (hairpin)", &web1.ns, &all, "10.96.0.40:80", &["web-1"], "10.96.0.40");
    } else {
        // Socket LB connects TCP and UDP sendto straight to itself; its
        // connected UDP goes per packet, masqueraded as the frontend.
        table.check(&lab, "pod -> own Service (hairpin)", &web1.ns, &["tcp", "udp"], "10.96.0.40:80", &["web-1"], &own);
        table.check(&lab, "pod -> own Service (hairpin)", &web1.ns, &["udp-connected"], "10.96.0.40:80", &["web-1"], "10.96.0.40");
    }

    // A client pod created after the agents: its first requests are served.
    let created = Instant::now();
    lab.add_pod("client-c", 0).unwrap();
    let veth = lab.pod("client-c").host_if.clone();
    let added_in = created.elapsed();
    wait_until(Duration::from_secs(5), || {
        lab.agent_command(0, &["list", "attachments"]).is_ok_and(|out| out.contains(&veth))
    })
    .expect("the new pod's device was not attached");
    println!("client-c: pod wired in {} ms, its device {veth} attached {} ms after creation began", added_in.as_millis(), created.elapsed().as_millis());
    let client_c = lab.pod("client-c").clone();
    table.check(&lab, "pod created after the agent -> ClusterIP", &client_c.ns, &all, "10.96.0.10:80", &webs, &client_c.ip.to_string());

    // A backend pod scheduled on node 1 later, added to the Service: its
    // share of NodePort traffic through node 1, where its replies must be
    // restored on its own new device.
    lab.add_pod("web-4", 0).unwrap();
    lab.start_backends(&["web-4"]).unwrap();
    lab.kubectl_apply(&web(&lab, &["web-1", "web-2", "web-3", "web-4"])).unwrap();
    let four = ["web-1", "web-2", "web-3", "web-4"];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let s = Summary::of(&lab.requests(&lab.client_ns, "tcp", &np, 12, TIMEOUT_MS).unwrap());
        if s.by_backend.contains_key("web-4") {
            break;
        }
    }
    table.check(&lab, "outside -> NodePort, backend pod added later", &lab.client_ns, &["tcp", "udp"], &np, &four, &node1);
    table.check(&lab, "pod -> ClusterIP, backend pod added later", &client_a.ns, &all, "10.96.0.10:80", &four, &a_ip);

    table.print(if host_only { "host-namespace-only mode" } else { "default mode" });
    let health = lab.agent_command(0, &["list", "attachments"]).unwrap();
    println!("\nnode-1's attachments:\n{health}");
    drop(agents);
}

#[test]
fn a_node_is_served_as_shipped() {
    if require_root("a_node_is_served_as_shipped") {
        node_served_as_shipped(&[], false);
    }
}

#[test]
fn a_node_is_served_as_shipped_in_host_namespace_only_mode() {
    if require_root("a_node_is_served_as_shipped_in_host_namespace_only_mode") {
        node_served_as_shipped(&[("SOCKET_LB_HOST_NAMESPACE_ONLY", "true")], true);
    }
}

/// A pod's connected UDP socket (glibc's resolver uses one), sending every
/// 50 ms while its endpoint leaves the Service: replies come from a live
/// endpoint within a second, whether the endpoint's pod stays or is deleted.
#[test]
fn a_pods_connected_udp_socket_follows_its_endpoint_leaving() {
    if !require_root("a_pods_connected_udp_socket_follows_its_endpoint_leaving") {
        return;
    }
    let mut lab = Lab::up(binaries()).expect("lab up");
    let _api = lab.start_apiserver().expect("API server");
    lab.register_nodes().unwrap();
    lab.start_backends(&["web-1", "web-2", "web-3"]).unwrap();
    lab.kubectl_apply(&dns(&lab, &["web-2"])).unwrap();
    let agents: Vec<_> = (0..2).map(|n| lab.start_agent_on_api(n).unwrap()).collect();
    for agent in &agents {
        agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    }
    let client = lab.pod("client-a").ns.clone();
    for (case, from, to, delete_pod) in [("pod kept", "web-2", "web-3", false), ("pod deleted", "web-3", "web-1", true)] {
        // 60 datagrams, one every 50 ms, on one connected socket.
        let flow = lab.requests_in_background(&client, "udp-connected-keep", "10.96.0.53:53", 60, 500, 50).unwrap();
        std::thread::sleep(Duration::from_millis(800));
        // The change: the pod goes (its deletion begins), and the endpoint
        // controller's update reaches the API server.
        let change_began = unix_ms();
        if delete_pod {
            lab.remove_pod(from).unwrap();
        }
        lab.kubectl_apply(&dns(&lab, &[to])).unwrap();
        let api_changed = unix_ms();
        let replies = flow.wait().unwrap();
        let before: Vec<&Reply> = replies.iter().filter(|r| r.at_ms() < change_began).collect();
        assert!(!before.is_empty() && before.iter().all(|r| r.backend() == Some(from)), "{case}: before the change {before:?}");
        let first_live = replies
            .iter()
            .find(|r| r.backend() == Some(to))
            .unwrap_or_else(|| panic!("{case}: {to} never answered: {replies:?}\n{}", lab.logs()));
        // From the moment the API server holds the change: what the agent
        // and datapath add (a datagram in flight to a deleted pod is lost
        // whatever the proxy, and waits out the client's 500 ms timeout).
        let moved_ms = (first_live.at_ms() + first_live.micros() / 1000).saturating_sub(api_changed);
        let after_move: Vec<_> = replies.iter().filter(|r| r.at_ms() >= first_live.at_ms()).collect();
        let stale = after_move.iter().filter(|r| r.backend() == Some(from)).count();
        let lost = replies.iter().filter(|r| r.backend().is_none()).count();
        println!(
            "{case}: {from} -> {to}: first reply from {to} {moved_ms} ms after the API server had the change ({} ms for the change itself); {lost} of {} requests lost, {stale} answered by {from} after",
            api_changed - change_began,
            replies.len()
        );
        assert!(moved_ms < 1000, "{case}: moved after {moved_ms} ms");
        assert_eq!(stale, 0, "{case}: {from} answered after {to} did");
        assert!(after_move.iter().all(|r| r.backend() == Some(to)), "{case}: {after_move:?}");
    }
}

/// A pod's source port used first by a connected UDP socket to one Service
/// (translated per packet, tracked) and then by UDP sockets to another
/// Service on the same backends (translated by the socket hooks, untracked):
/// the old flow's reply entry must not put the first Service's address on
/// the new flow's replies. A CI run caught it once by chance: one reply of
/// 40 "from" the DNS Service's address.
#[test]
fn a_reused_source_port_never_gets_another_flows_frontend() {
    if !require_root("a_reused_source_port_never_gets_another_flows_frontend") {
        return;
    }
    let (lab, _api) = api_lab(&["web-1", "web-2", "web-3"]);
    lab.kubectl_apply(&web(&lab, &["web-2"])).unwrap();
    lab.kubectl_apply(&dns(&lab, &["web-2"])).unwrap();
    let agent = lab.start_agent_on_api(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let client = lab.pod("client-a");
    let first = lab.requests_from_port(&client.ns, "udp-connected", "10.96.0.53:53", 1, TIMEOUT_MS, 40001).unwrap();
    assert_eq!(Summary::of(&first).failed, 0, "{first:?}");
    for proto in ["udp", "udp-connected"] {
        let replies = lab.requests_from_port(&client.ns, proto, "10.96.0.10:80", 20, TIMEOUT_MS, 40001).unwrap();
        let s = Summary::of(&replies);
        println!("{proto} to 10.96.0.10:80 from port 40001 after a flow to 10.96.0.53:53: {s:?}");
        assert_eq!(s.failed, 0, "{proto}: {:?}", s.errors);
        assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), vec!["10.96.0.10:80"], "{proto}");
    }
}
