//! Bulk TCP through the datapath with the kernel's default offloads on
//! every veth (TSO, GSO, checksum offload), as a real node's devices have
//! them: 10 MB each way, through a NodePort from outside (DNAT and SNAT on
//! the node's device, to backends on both nodes) and through a ClusterIP
//! per packet (a pod's device). Large, partially checksummed packets must be
//! forwarded whole and translated once, never handed to the stack half
//! done. Needs root.

mod common;

use common::{binaries, Config, HOST_ONLY, SYNC_TIMEOUT, XDP_ON_VETHS};
use proxy_lab::manifests::ServiceSpec;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Offloads, Summary};

const BYTES: u64 = 10 * 1024 * 1024;
const NODE_PORT: u16 = 30080;

fn lab(config: Config) -> (Lab, Vec<proxy_lab::Agent>) {
    lab_with(config, Offloads::KERNEL_DEFAULTS)
}

fn lab_with(config: Config, offloads: Offloads) -> (Lab, Vec<proxy_lab::Agent>) {
    let lab = Lab::with_options(binaries(), proxy_lab::lab::DEFAULT_PODS, offloads).expect("lab up");
    lab.start_backends(&["web-1", "web-2", "web-3"]).unwrap();
    let mut spec = ServiceSpec::new("web", "10.96.0.10", 80).on_pods(&lab, &["web-1", "web-2", "web-3"]);
    spec.node_port = Some(NODE_PORT);
    lab.write_manifest("web.yaml", &spec.yaml()).unwrap();
    let agents: Vec<_> = (0..2).map(|n| lab.start_agent_with_config(n, &[], config).unwrap()).collect();
    for agent in &agents {
        agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    }
    (lab, agents)
}

/// `count` transfers of BYTES each way; every one completes within 5 s (a
/// stall is a trickle of retransmissions for many seconds; a transfer that
/// works takes milliseconds). Returns the slowest, in ms.
fn transfers(lab: &Lab, from_ns: &str, target: &str, count: u32) -> u64 {
    let mut slowest = 0;
    for direction in ["tcp-download", "tcp-upload"] {
        let proto = format!("{direction}={BYTES}");
        let replies = lab.requests(from_ns, &proto, target, count, 5000).unwrap();
        let s = Summary::of(&replies);
        let ms: Vec<u64> = replies.iter().map(|r| r.micros() / 1000).collect();
        println!("{direction} 10 MB x{count} via {target}: {} ok, by {:?}, ms {ms:?}", s.sent - s.failed, s.by_backend);
        assert_eq!(s.failed, 0, "{direction} via {target}: {:?}\n{}", s.errors, lab.logs());
        slowest = slowest.max(ms.into_iter().max().unwrap_or(0));
    }
    slowest
}

#[test]
fn bulk_tcp_through_a_nodeport_with_default_offloads() {
    if !require_root("bulk_tcp_through_a_nodeport_with_default_offloads") {
        return;
    }
    let (lab, _agents) = lab(&[]);
    for node in 0..2 {
        let target = format!("{}:{NODE_PORT}", lab.node_ip(node));
        let slowest = transfers(&lab, &lab.client_ns, &target, 9);
        println!("slowest 10 MB transfer through node {}'s NodePort: {slowest} ms", node + 1);
    }
}

#[test]
fn bulk_tcp_through_a_cluster_ip_with_default_offloads() {
    if !require_root("bulk_tcp_through_a_cluster_ip_with_default_offloads") {
        return;
    }
    // The socket hooks (no per-packet work), then per packet on the pod's
    // device.
    for config in [&[][..], &[HOST_ONLY]] {
        let (lab, _agents) = lab(config);
        let slowest = transfers(&lab, &lab.pod("client-a").ns, "10.96.0.10:80", 6);
        println!("agent config {config:?}: slowest 10 MB transfer through the ClusterIP: {slowest} ms");
    }
}

/// The same through the XDP fast path: frames XDP cannot finish itself go
/// up to tc untouched, whole.
#[test]
fn bulk_tcp_through_a_nodeport_with_xdp_and_default_offloads() {
    if !require_root("bulk_tcp_through_a_nodeport_with_xdp_and_default_offloads") {
        return;
    }
    // XDP belongs on NICs: the underlay as a wire between them (complete
    // checksums, MTU-sized frames); the lab's node devices are veths.
    let (lab, _agents) = lab_with(&XDP_ON_VETHS, Offloads::NIC_UNDERLAY);
    lab.enable_xdp_transmit().unwrap();
    for node in 0..2 {
        let target = format!("{}:{NODE_PORT}", lab.node_ip(node));
        let slowest = transfers(&lab, &lab.client_ns, &target, 9);
        println!("XDP: slowest 10 MB transfer through node {}'s NodePort: {slowest} ms", node + 1);
    }
}
