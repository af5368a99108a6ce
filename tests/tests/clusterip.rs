//! ClusterIP with real packets: a client pod dials a ClusterIP in the lab and
//! its node's agent translates to pods on both nodes: at the socket
//! (default) or per packet on the pod's device (host-namespace-only mode,
//! and what conntrack's own tests use).
//! Needs root; run with `cargo xtask test`.

mod common;

use std::collections::BTreeSet;

use common::{binaries, counter, Config, HOST_ONLY, SYNC_TIMEOUT};
use proxy_lab::cmd::sysctl;
use proxy_lab::manifests::service;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Summary};

const WEB_IP: &str = "10.96.0.10";
const WEB_PORT: u16 = 80;

/// A lab with backends in web-1 (node 1), web-2 and web-3 (node 2), the `web`
/// Service on all three, and node 1's agent (with `config`) synced.
fn web_lab(config: Config) -> (Lab, proxy_lab::Agent) {
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-1", "web-2", "web-3"]).expect("backends");
    let eps: Vec<_> = ["web-1", "web-2", "web-3"].iter().map(|p| (lab.pod(p).ip, true)).collect();
    lab.write_manifest("web.yaml", &service("web", WEB_IP, WEB_PORT, &eps)).unwrap();
    let agent = lab.start_agent_with_config(0, &[], config).expect("agent");
    agent.wait_synced(1, SYNC_TIMEOUT).expect("first sync");
    (lab, agent)
}

/// In both modes: the socket hooks (default) and per packet.
fn assert_reaches_every_backend(proto: &str) {
    for config in [&[][..], &[HOST_ONLY]] {
        println!("{proto}, agent config {config:?}");
        assert_reaches_every_backend_with(proto, config);
    }
}

fn assert_reaches_every_backend_with(proto: &str, config: Config) {
    let (lab, _agent) = web_lab(config);
    let client = lab.pod("client-a");
    let target = format!("{WEB_IP}:{WEB_PORT}");
    let replies = lab.requests(&client.ns, proto, &target, 60, 1000).unwrap();
    let s = Summary::of(&replies);
    println!("{proto}: {s:?}");
    assert_eq!(s.failed, 0, "{proto} requests failed: {:?}\n{}", s.errors, lab.logs());
    assert_eq!(s.sent, 60);
    let answered: BTreeSet<&str> = s.by_backend.keys().map(String::as_str).collect();
    assert_eq!(answered, BTreeSet::from(["web-1", "web-2", "web-3"]), "by backend: {:?}", s.by_backend);
    // Replies come back from the address the client dialled...
    assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), vec![&target]);
    // ...and the backends saw the client pod's own address.
    assert_eq!(s.sources_seen.keys().collect::<Vec<_>>(), vec![&client.ip.to_string()]);

    let counters = lab.agent_command(0, &["counters"]).unwrap();
    let translated = counter(&counters, "translated");
    let reversed = counter(&counters, "reverse_translated");
    assert!(translated >= 60, "translated counter {translated}:\n{counters}");
    assert!(reversed >= 60, "reverse_translated counter {reversed}:\n{counters}");
}

#[test]
fn tcp_clusterip_reaches_every_backend_and_keeps_addresses() {
    if require_root("tcp_clusterip_reaches_every_backend_and_keeps_addresses") {
        assert_reaches_every_backend("tcp");
    }
}

#[test]
fn udp_clusterip_reaches_every_backend_and_keeps_addresses() {
    if require_root("udp_clusterip_reaches_every_backend_and_keeps_addresses") {
        assert_reaches_every_backend("udp");
    }
}

/// Every backend on the other node: the packet crosses the underlay already
/// translated, and the reply is translated back on the way in.
#[test]
fn backends_only_on_the_other_node() {
    if !require_root("backends_only_on_the_other_node") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-2", "web-3"]).unwrap();
    let eps = [(lab.pod("web-2").ip, true), (lab.pod("web-3").ip, true)];
    lab.write_manifest("remote.yaml", &service("remote", "10.96.0.30", 8000, &eps)).unwrap();
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let client = lab.pod("client-a");
    for proto in ["tcp", "udp"] {
        let s = Summary::of(&lab.requests(&client.ns, proto, "10.96.0.30:8000", 30, 1000).unwrap());
        println!("{proto}: {s:?}");
        assert_eq!(s.failed, 0, "{proto}: {:?}\n{}", s.errors, lab.logs());
        assert_eq!(common::answered_by(&s), vec!["web-2", "web-3"]);
        assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), vec!["10.96.0.30:8000"]);
        assert_eq!(s.sources_seen.keys().collect::<Vec<_>>(), vec![&client.ip.to_string()]);
    }
}

/// A Service whose only endpoint is not ready gets no traffic through to any
/// pod, and the datapath counts why.
#[test]
fn service_without_usable_endpoint_is_counted_as_no_backend() {
    if !require_root("service_without_usable_endpoint_is_counted_as_no_backend") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-1"]).unwrap();
    let eps = [(lab.pod("web-1").ip, false)];
    lab.write_manifest("down.yaml", &service("down", "10.96.0.40", 80, &eps)).unwrap();
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let client = lab.pod("client-a");
    let s = Summary::of(&lab.requests(&client.ns, "udp", "10.96.0.40:80", 5, 200).unwrap());
    assert_eq!(s.failed, 5, "a not-ready endpoint answered: {s:?}");
    let counters = lab.agent_command(0, &["counters"]).unwrap();
    assert_eq!(counter(&counters, "no_backend"), 5, "{counters}");
    assert_eq!(counter(&counters, "translated"), 0, "{counters}");
}

/// Every packet of a flow goes to the backend its first packet went to:
/// conntrack, not a new random pick per packet (pods served per packet).
#[test]
fn each_flow_sticks_to_one_backend() {
    if !require_root("each_flow_sticks_to_one_backend") {
        return;
    }
    let (lab, _agent) = web_lab(&[HOST_ONLY]);
    let client = lab.pod("client-a");
    let target = format!("{WEB_IP}:{WEB_PORT}");
    let mut first_backends = BTreeSet::new();
    for proto in ["tcp-keep", "udp-keep"] {
        for _ in 0..6 {
            let s = Summary::of(&lab.requests(&client.ns, proto, &target, 20, 1000).unwrap());
            assert_eq!(s.failed, 0, "{proto}: {:?}", s.errors);
            assert_eq!(s.by_backend.len(), 1, "{proto}: one flow answered by {:?}", s.by_backend);
            first_backends.extend(s.by_backend.into_keys());
        }
    }
    // With 12 flows over 3 backends, all on one backend would mean the choice
    // is not random (chance: 3 * (1/3)^12).
    assert!(first_backends.len() > 1, "every flow went to {first_backends:?}");
}

/// A client that reuses its ports quickly (`tcp_tw_reuse`, as busy clients
/// and the benchmark run) dials 20 Services that share two backends, in
/// rounds of 1.5 s: one Service, then all of them round robin. A port that
/// carried a connection to one Service comes back for another Service or the
/// same one, and so may the backend: the new connection must get its own
/// translation both ways (a SYN on a closed flow's entry is a new flow; a
/// reply tuple taken over by another flow is reclaimed). Before that, every
/// round after the first lost connections to timeouts. Pods are served per
/// packet here: the socket hooks would never let a packet carry a ClusterIP.
#[test]
fn connections_on_reused_client_ports_are_never_misrouted() {
    if !require_root("connections_on_reused_client_ports_are_never_misrouted") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-2", "web-3"]).unwrap();
    let eps = [(lab.pod("web-2").ip, true), (lab.pod("web-3").ip, true)];
    let services: Vec<String> = (0..20).map(|i| service(&format!("s{i}"), &format!("10.96.0.{}", 100 + i), 80, &eps)).collect();
    lab.write_manifest("shared.yaml", &services.join("---\n")).unwrap();
    let agent = lab.start_agent_with_config(0, &[], &[HOST_ONLY]).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    let client = lab.pod("client-a").ns.clone();
    sysctl(&client, "net.ipv4.tcp_tw_reuse", "1").unwrap();
    sysctl(&client, "net.ipv4.ip_local_port_range", "1024 65000").unwrap();
    let all: Vec<String> = (0..20).map(|i| format!("10.96.0.{}:80", 100 + i)).collect();
    let all = all.join(",");
    for round in 0..6 {
        let targets = if round % 2 == 0 { "10.96.0.119:80" } else { all.as_str() };
        let out = lab.command_in(&client, env!("CARGO_BIN_EXE_bench-client")).unwrap().args(["connect", targets, "1500", "1000"]).output().unwrap();
        assert!(out.status.success(), "bench-client: {}", String::from_utf8_lossy(&out.stderr));
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("round {round}: {}", out.trim());
        let field = |key: &str| out.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or_default().to_string();
        assert_eq!(field("err="), "0", "round {round}: {out}");
        assert!(field("ok=").parse::<u64>().unwrap() > 100, "round {round}: {out}");
    }
}
