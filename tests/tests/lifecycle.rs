//! The agent's life: manifests changing under it, SIGTERM, restart, cleanup.
//! Needs root; run with `cargo xtask test`.

mod common;

use std::time::Instant;

use common::{answered_by, binaries, SYNC_TIMEOUT};
use proxy_lab::manifests::service;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Summary};

const TARGET: &str = "10.96.0.10:80";

fn lab_with_web(backends: &[&str]) -> Lab {
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-1", "web-2", "web-3"]).unwrap();
    write_web(&lab, backends);
    lab
}

fn write_web(lab: &Lab, backends: &[&str]) {
    let eps: Vec<_> = backends.iter().map(|p| (lab.pod(p).ip, true)).collect();
    lab.write_manifest("web.yaml", &service("web", "10.96.0.10", 80, &eps)).unwrap();
}

fn send(lab: &Lab, proto: &str, count: u32) -> Summary {
    let replies = lab.requests(&lab.pod("client-a").ns, proto, TARGET, count, 1000).unwrap();
    Summary::of(&replies)
}

#[test]
fn endpoint_changes_in_the_manifests_take_effect() {
    if !require_root("endpoint_changes_in_the_manifests_take_effect") {
        return;
    }
    let lab = lab_with_web(&["web-1", "web-2", "web-3"]);
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    assert_eq!(answered_by(&send(&lab, "tcp", 60)), vec!["web-1", "web-2", "web-3"]);

    // web-2 goes away: no new connection may reach it.
    let changed = Instant::now();
    write_web(&lab, &["web-1", "web-3"]);
    agent.wait_synced(2, SYNC_TIMEOUT).unwrap();
    println!("removal synced {} ms after the manifest changed", changed.elapsed().as_millis());
    for proto in ["tcp", "udp"] {
        let s = send(&lab, proto, 60);
        assert_eq!(s.failed, 0, "{proto}: {:?}", s.errors);
        assert_eq!(answered_by(&s), vec!["web-1", "web-3"], "{proto} after removal");
    }

    // And comes back.
    write_web(&lab, &["web-1", "web-2", "web-3"]);
    agent.wait_synced(3, SYNC_TIMEOUT).unwrap();
    let s = send(&lab, "tcp", 60);
    assert_eq!(s.failed, 0);
    assert_eq!(answered_by(&s), vec!["web-1", "web-2", "web-3"]);
}

/// A pod's UDP flow (one socket, a datagram every 20 ms, as a resolver
/// keeps one) whose endpoint leaves the Service moves to a live endpoint at
/// its next datagram, with no datagram lost: the stale-conntrack outage
/// kube-proxy users know from DNS does not happen. Both pods keep running,
/// so only the datapath can tell the removed endpoint from the live one.
#[test]
fn a_pods_udp_flow_moves_when_its_endpoint_leaves() {
    if !require_root("a_pods_udp_flow_moves_when_its_endpoint_leaves") {
        return;
    }
    for (proto, removed, kept) in [("udp-keep", "web-2", "web-3"), ("udp-connected-keep", "web-3", "web-2")] {
        let lab = lab_with_web(&[removed]);
        let agent = lab.start_agent(0).unwrap();
        agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
        let flow = lab.requests_in_background(&lab.pod("client-a").ns, proto, TARGET, 100, 1000, 20).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        write_web(&lab, &[kept]);
        agent.wait_synced(2, SYNC_TIMEOUT).unwrap();
        let replies = flow.wait().unwrap();
        let s = Summary::of(&replies);
        println!("{proto} across the endpoint change: {:?}, failed {}", s.by_backend, s.failed);
        assert_eq!(s.failed, 0, "{proto}: {:?}", s.errors);
        let order: Vec<&str> = replies.iter().filter_map(proxy_lab::Reply::backend).collect();
        let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!((order.first(), order.last(), switches), (Some(&removed), Some(&kept), 1), "{proto}: {order:?}");
        assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), [TARGET], "{proto}");
    }
}

/// An established TCP connection stays with its backend when that endpoint
/// leaves the Service, as kube-proxy's conntrack keeps it: the pod may
/// still be finishing its requests (a readiness probe failing under load, a
/// rolling update's graceful shutdown). New connections go to the live
/// endpoint only. Both when the endpoint turns not ready and when it is
/// removed from the slice outright. Pods served per packet, where
/// conntrack decides it (a socket the hooks connected talks to its backend
/// directly, whatever the maps say later).
#[test]
fn an_established_tcp_connection_outlives_its_endpoint_leaving() {
    if !require_root("an_established_tcp_connection_outlives_its_endpoint_leaving") {
        return;
    }
    let lab = lab_with_web(&["web-2"]);
    let agent = lab.start_agent_with_config(0, &[], &[common::HOST_ONLY]).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let (web2, web3) = (lab.pod("web-2").ip, lab.pod("web-3").ip);
    let leavings: [(&str, Vec<(std::net::Ipv4Addr, bool)>); 2] =
        [("not ready", vec![(web2, false), (web3, true)]), ("removed", vec![(web3, true)])];
    for (generation, (how, endpoints)) in (2..).zip(leavings) {
        lab.write_manifest("web.yaml", &service("web", "10.96.0.10", 80, &[(web2, true)])).unwrap();
        agent.wait_synced(2 * generation - 2, SYNC_TIMEOUT).unwrap();
        let flow = lab.requests_in_background(&lab.pod("client-a").ns, "tcp-keep", TARGET, 40, 1000, 50).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        lab.write_manifest("web.yaml", &service("web", "10.96.0.10", 80, &endpoints)).unwrap();
        agent.wait_synced(2 * generation - 1, SYNC_TIMEOUT).unwrap();
        let kept = Summary::of(&flow.wait().unwrap());
        println!("web-2 {how}: the connection was answered by {:?}, failed {}", kept.by_backend, kept.failed);
        assert_eq!(kept.failed, 0, "web-2 {how}: {:?}", kept.errors);
        assert_eq!(answered_by(&kept), vec!["web-2"], "web-2 {how}");
        let fresh = send(&lab, "tcp", 20);
        assert_eq!((fresh.failed, answered_by(&fresh)), (0, vec!["web-3"]), "new connections with web-2 {how}");
    }
}

#[test]
fn dataplane_outlives_the_agent_and_a_restart_adopts_it() {
    if !require_root("dataplane_outlives_the_agent_and_a_restart_adopts_it") {
        return;
    }
    let lab = lab_with_web(&["web-1", "web-2", "web-3"]);
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let before = lab.agent_command(0, &["list", "services"]).unwrap();
    // One TCP connection and one UDP flow, a request every 20 ms, across the
    // agent's stop and restart.
    let client = lab.pod("client-a").ns.clone();
    let long_tcp = lab.requests_in_background(&client, "tcp-keep", TARGET, 150, 1000, 20).unwrap();
    let long_udp = lab.requests_in_background(&client, "udp-keep", TARGET, 150, 1000, 20).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    agent.stop().unwrap();

    // No agent running: the pinned programs and maps keep serving.
    for proto in ["tcp", "udp"] {
        let s = send(&lab, proto, 60);
        assert_eq!(s.failed, 0, "{proto} with the agent stopped: {:?}", s.errors);
        assert_eq!(answered_by(&s), vec!["web-1", "web-2", "web-3"]);
    }

    // A new agent adopts what is pinned: same ids, nothing rewritten.
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let log = agent.own_log();
    assert!(log.contains("replaced program on existing tc link"), "{log}");
    assert!(log.contains("adopted pinned datapath state services=2 backends=6"), "{log}");
    assert!(log.contains("ops=0"), "restarted agent rewrote maps:\n{log}");
    assert_eq!(lab.agent_command(0, &["list", "services"]).unwrap(), before);
    let s = send(&lab, "tcp", 60);
    assert_eq!(s.failed, 0);
    assert_eq!(answered_by(&s), vec!["web-1", "web-2", "web-3"]);

    for (name, flow) in [("tcp", long_tcp), ("udp", long_udp)] {
        let s = Summary::of(&flow.wait().unwrap());
        println!("long-lived {name} flow across stop and restart: {s:?}");
        assert_eq!(s.sent, 150);
        assert_eq!(s.failed, 0, "long-lived {name} flow lost requests: {:?}", s.errors);
        assert_eq!(s.by_backend.len(), 1, "long-lived {name} flow changed backend: {:?}", s.by_backend);
    }
}

#[test]
fn cleanup_removes_programs_and_maps() {
    if !require_root("cleanup_removes_programs_and_maps") {
        return;
    }
    let lab = lab_with_web(&["web-1"]);
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    assert_eq!(send(&lab, "udp", 5).failed, 0);
    agent.stop().unwrap();

    lab.agent_command(0, &["cleanup"]).unwrap();
    let pins = lab.nodes[0].bpffs().join("ebpf-proxy");
    assert!(!pins.exists(), "{} still exists", pins.display());
    // Nothing translates any more: the ClusterIP is just an unrouted address.
    let s = send(&lab, "udp", 5);
    assert_eq!(s.failed, 5, "still translated after cleanup: {s:?}");
    assert!(lab.agent_command(0, &["counters"]).is_err(), "counters still readable after cleanup");
}

/// An upgrade whose build changed a map's layout: the pinned map of the old
/// layout is replaced, the new programs go in only once the new maps are
/// filled, and traffic flows.
#[test]
fn an_upgrade_replaces_pinned_maps_of_an_older_layout() {
    if !require_root("an_upgrade_replaces_pinned_maps_of_an_older_layout") {
        return;
    }
    let lab = lab_with_web(&["web-1", "web-2", "web-3"]);
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    assert_eq!(send(&lab, "tcp", 30).failed, 0);
    agent.stop().unwrap();

    // What an older build left: a conntrack map with 32-byte values.
    let pin = lab.nodes[0].bpffs().join("ebpf-proxy/maps/CONNTRACK");
    std::fs::remove_file(&pin).unwrap();
    let pin_text = pin.to_string_lossy().into_owned();
    let made = std::process::Command::new("bpftool")
        .args(["map", "create", &pin_text, "type", "lru_hash", "key", "16", "value", "32", "entries", "1024", "name", "CONNTRACK"])
        .status()
        .unwrap();
    assert!(made.success(), "bpftool map create failed");

    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let log = agent.own_log();
    assert!(log.contains("pinned map has another layout") && log.contains("CONNTRACK"), "{log}");
    let s = send(&lab, "tcp", 60);
    assert_eq!((s.failed, answered_by(&s)), (0, vec!["web-1", "web-2", "web-3"]), "{:?}", s.errors);
    let show = std::process::Command::new("bpftool").args(["map", "show", "pinned", &pin_text]).output().unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("value 40B"), "the new layout: {show}");
}
