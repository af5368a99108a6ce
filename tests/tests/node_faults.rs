//! What the agent does when the node is not as it expects: pod devices its
//! patterns do not match, devices that vanish while it attaches, no cgroup2
//! for the socket hooks, another party's programs on the same devices,
//! kube-proxy or a second agent on the node. Each time: a clear log line,
//! a metric or the reason in `/healthz`, and everything else still served;
//! nobody else's programs touched, no exit. Agents start from the rendered
//! DaemonSet. Needs root.

mod common;

use std::time::Duration;

use common::{binaries, http_get, sample, SYNC_TIMEOUT};
use proxy_lab::cmd::ip;
use proxy_lab::foreign_prog::{attach_in, Position};
use proxy_lab::lab::wait_until;
use proxy_lab::manifests::ServiceSpec;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Summary};

const WEB: &str = "10.96.0.10:80";
const NODE_PORT: u16 = 30080;

/// Backends web-1 (node 1), web-2 and web-3 (node 2) behind `web`, with a
/// NodePort.
fn lab() -> Lab {
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-1", "web-2", "web-3"]).unwrap();
    let mut spec = ServiceSpec::new("web", "10.96.0.10", 80).on_pods(&lab, &["web-1", "web-2", "web-3"]);
    spec.node_port = Some(NODE_PORT);
    lab.write_manifest("web.yaml", &spec.yaml()).unwrap();
    lab
}

fn healthz(lab: &Lab) -> (u16, String) {
    http_get(&lab.nodes[0].ns, "http://127.0.0.1:10256/healthz").unwrap()
}

fn metrics(lab: &Lab) -> String {
    http_get(&lab.nodes[0].ns, "http://127.0.0.1:10249/metrics").unwrap().1
}

fn all_answered(lab: &Lab, ns: &str, proto: &str, target: &str, who: &[&str]) {
    // 30: all three backends answer but with a chance of 3 x (2/3)^30.
    let s = Summary::of(&lab.requests(ns, proto, target, 30, 1000).unwrap());
    println!("{proto} {target}: {} of {} answered, by {:?}", s.sent - s.failed, s.sent, s.by_backend);
    assert_eq!(s.failed, 0, "{proto} {target}: {:?}\n{}", s.errors, lab.logs());
    assert_eq!(common::answered_by(&s), who, "{proto} {target}");
}

/// A CNI that names its devices otherwise than the patterns say: its pods'
/// devices get no programs. The node says so (503, with the endpoint and
/// the device), and what works without them still works: pods' sockets
/// through the socket hooks. Given patterns that match, it serves all.
#[test]
fn pod_devices_no_pattern_matches_make_the_node_unready_not_dark() {
    if !require_root("pod_devices_no_pattern_matches_make_the_node_unready_not_dark") {
        return;
    }
    let lab = lab();
    let agent = lab.start_agent_with_config(0, &[], &[("POD_DEVICE_PATTERNS", "cali*")]).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let web1 = lab.pod("web-1");
    let (status, body) = healthz(&lab);
    println!("healthz {status}: {body}");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&format!("local endpoint {} is behind device {}, which has no programs", web1.ip, web1.host_if)), "{body}");
    let m = metrics(&lab);
    assert_eq!(sample(&m, "ebpf_proxy_attached_devices{role=\"pod\"}"), 0.0);
    assert_eq!(sample(&m, "ebpf_proxy_attached_devices{role=\"node\"}"), 1.0);
    assert_eq!(sample(&m, "ebpf_proxy_datapath_problems"), 1.0);
    assert!(agent.own_log().contains("datapath cannot serve everything"), "{}", agent.own_log());
    all_answered(&lab, &lab.pod("client-a").ns, "tcp", WEB, &["web-1", "web-2", "web-3"]);
    agent.stop().unwrap();

    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let (status, body) = healthz(&lab);
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&metrics(&lab), "ebpf_proxy_datapath_problems"), 0.0);
    let np = format!("{}:{NODE_PORT}", lab.node_ip(0));
    all_answered(&lab, &lab.client_ns, "tcp", &np, &["web-1", "web-2", "web-3"]);
}

/// Pod devices made and deleted at once, 80 of them, while the agent
/// follows the node's devices: some vanish before or during their attach.
/// The agent stays up and healthy and keeps no pin of any of them.
#[test]
fn devices_that_vanish_while_being_attached_leave_nothing_behind() {
    if !require_root("devices_that_vanish_while_being_attached_leave_nothing_behind") {
        return;
    }
    let lab = lab();
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let node = &lab.nodes[0].ns;
    let batch = lab.dir.join("flap.batch");
    let mut commands = String::new();
    // Each made and deleted at once, then 40 made together and deleted
    // together: the agent meets devices gone before, during and after
    // their attach.
    for i in 0..40 {
        commands.push_str(&format!("link add vethdead{i:04} type veth peer name peerdead{i:04}\nlink del vethdead{i:04}\n"));
    }
    for i in 40..80 {
        commands.push_str(&format!("link add vethdead{i:04} type veth peer name peerdead{i:04}\n"));
    }
    for i in 40..80 {
        commands.push_str(&format!("link del vethdead{i:04}\n"));
    }
    std::fs::write(&batch, commands).unwrap();
    ip(node, &["-batch", &batch.to_string_lossy()]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(std::path::Path::new(&format!("/proc/{}", agent.pid())).exists(), "agent exited:\n{}", agent.own_log());
    let attachments = lab.agent_command(0, &["list", "attachments"]).unwrap();
    assert!(!attachments.contains("vethdead") && !attachments.contains("gone"), "{attachments}");
    let pins: Vec<String> = std::fs::read_dir(lab.nodes[0].bpffs().join("ebpf-proxy/links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(pins.iter().all(|p| !p.contains("vethdead")), "{pins:?}");
    wait_until(Duration::from_secs(3), || healthz(&lab).0 == 200).unwrap_or_else(|_| panic!("{:?}", healthz(&lab)));
    let m = metrics(&lab);
    println!(
        "80 devices made and deleted: {} attaches failed, {} pod devices attached after",
        sample(&m, "ebpf_proxy_attach_failures_total"),
        sample(&m, "ebpf_proxy_attached_devices{role=\"pod\"}")
    );
    assert_eq!(sample(&m, "ebpf_proxy_attached_devices{role=\"pod\"}"), 2.0, "node 1's pods: client-a and web-1");
    all_answered(&lab, &lab.pod("client-a").ns, "udp-connected", WEB, &["web-1", "web-2", "web-3"]);
}

/// No cgroup2 can be mounted for the socket hooks (here: the init container
/// finds no host cgroup namespace to mount it from). The init container
/// logs it and lets the agent start; the agent serves pods per packet, and
/// NodePorts, and reports the missing hooks; host processes go unserved.
#[test]
fn without_a_cgroup2_for_the_socket_hooks_the_rest_is_served() {
    if !require_root("without_a_cgroup2_for_the_socket_hooks_the_rest_is_served") {
        return;
    }
    let lab = lab();
    lab.break_cgroup_namespace(0).unwrap();
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let (status, body) = healthz(&lab);
    println!("healthz {status}: {body}");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("socket hooks not attached to cgroup") && body.contains("is not a cgroup2 mount"), "{body}");
    assert_eq!(sample(&metrics(&lab), "ebpf_proxy_socket_lb_attached"), 0.0);
    let client = lab.pod("client-a").ns.clone();
    for proto in ["tcp", "udp", "udp-connected"] {
        all_answered(&lab, &client, proto, WEB, &["web-1", "web-2", "web-3"]);
    }
    let np = format!("{}:{NODE_PORT}", lab.node_ip(0));
    all_answered(&lab, &lab.client_ns, "tcp", &np, &["web-1", "web-2", "web-3"]);
    let s = Summary::of(&lab.host_requests(0, "tcp", WEB, 3, 500).unwrap());
    assert_eq!(s.failed, 3, "host sockets have no hooks: {s:?}");
}

/// Another party's tc programs on a pod's device (as a CNI's), one attached
/// before the agent started and one after it: both keep seeing that pod's
/// packets, the agent's program between them still translates, and its
/// cleanup leaves them attached.
#[test]
fn other_programs_on_pod_devices_keep_running_before_and_after_ours() {
    if !require_root("other_programs_on_pod_devices_keep_running_before_and_after_ours") {
        return;
    }
    let lab = lab();
    let node = lab.nodes[0].ns.clone();
    let web1 = lab.pod("web-1").clone();
    let first = attach_in(&node, &web1.host_if, false, Position::First).unwrap();
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let last = attach_in(&node, &web1.host_if, false, Position::Last).unwrap();
    // NodePort flows answered by web-1 are restored by our program on its
    // device, behind the first program; pod-to-pod traffic is not ours and
    // goes on to the last.
    let np = format!("{}:{NODE_PORT}", lab.node_ip(0));
    all_answered(&lab, &lab.client_ns, "tcp", &np, &["web-1", "web-2", "web-3"]);
    let direct = format!("{}:8080", web1.ip);
    all_answered(&lab, &lab.pod("client-a").ns, "tcp", &direct, &["web-1"]);
    let (seen_first, seen_last) = (first.count().unwrap(), last.count().unwrap());
    println!("web-1's device: the program before ours saw {seen_first} packets, the one after {seen_last}");
    assert!(seen_first >= 100, "{seen_first}");
    assert!(seen_last >= 80, "{seen_last}: 20 direct connections' replies must pass through");

    agent.stop().unwrap();
    lab.agent_command(0, &["cleanup"]).unwrap();
    all_answered(&lab, &lab.pod("client-a").ns, "tcp", &direct, &["web-1"]);
    assert!(first.count().unwrap() > seen_first && last.count().unwrap() > seen_last, "cleanup took another party's programs away");
}

/// A second agent on a node (two DaemonSets, or a rollout that starts the
/// new pod before the old one is gone) waits, saying why, instead of
/// fighting the first over the maps, and takes over when it exits.
#[test]
fn a_second_agent_waits_for_the_first_and_takes_over() {
    if !require_root("a_second_agent_waits_for_the_first_and_takes_over") {
        return;
    }
    let lab = lab();
    let first = lab.start_agent(0).unwrap();
    first.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let second = lab.start_agent(0).unwrap();
    wait_until(Duration::from_secs(5), || second.own_log().contains("another agent is serving this node from the same pins; waiting for it to exit"))
        .unwrap_or_else(|_| panic!("{}", second.own_log()));
    assert_eq!(second.generations(), 0, "the second agent synced beside the first:\n{}", second.own_log());
    all_answered(&lab, &lab.pod("client-a").ns, "tcp", WEB, &["web-1", "web-2", "web-3"]);
    first.stop().unwrap();
    second.wait_synced(1, SYNC_TIMEOUT).unwrap();
    assert!(second.own_log().contains("taking over"), "{}", second.own_log());
    let np = format!("{}:{NODE_PORT}", lab.node_ip(0));
    all_answered(&lab, &lab.client_ns, "tcp", &np, &["web-1", "web-2", "web-3"]);
    // Its health server gets kube-proxy's port once the first agent let go.
    wait_until(Duration::from_secs(8), || http_get(&lab.nodes[0].ns, "http://127.0.0.1:10256/healthz").is_ok_and(|(s, _)| s == 200))
        .unwrap_or_else(|_| panic!("{}", second.own_log()));
}

/// kube-proxy still running on the node holds its health port: the agent
/// says that kube-proxy is the likely holder (both would translate
/// Services), keeps trying for the port, and serves meanwhile.
#[test]
fn kube_proxys_port_taken_is_named_and_the_agent_serves() {
    if !require_root("kube_proxys_port_taken_is_named_and_the_agent_serves") {
        return;
    }
    let lab = lab();
    // Stands in for kube-proxy's /healthz on the node.
    let mut holder = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.nodes[0].ns, "python3", "-m", "http.server", "--bind", "0.0.0.0", "10256"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(5), || http_get(&lab.nodes[0].ns, "http://127.0.0.1:10256/").is_ok()).unwrap();
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let said = wait_until(Duration::from_secs(3), || agent.own_log().contains("is kube-proxy (or another service proxy) running on this node?"));
    let _ = holder.kill();
    let _ = holder.wait();
    said.unwrap_or_else(|_| panic!("{}", agent.own_log()));
    all_answered(&lab, &lab.pod("client-a").ns, "tcp", WEB, &["web-1", "web-2", "web-3"]);
}
