//! ClusterIP with real packets: a client pod dials a ClusterIP in the lab and
//! the tc program on its node translates to pods on both nodes.
//! Needs root; run with `cargo xtask test`.

use std::collections::BTreeSet;
use std::time::Duration;

use proxy_lab::manifests::service;
use proxy_lab::privilege::require_root;
use proxy_lab::{Binaries, Lab, Summary};

const WEB_IP: &str = "10.96.0.10";
const WEB_PORT: u16 = 80;
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

fn binaries() -> Binaries {
    // proxy-agent comes from another package of the workspace: it sits next
    // to this test's own binaries in the target directory.
    let mut b = Binaries::in_dir(std::path::Path::new(env!("CARGO_BIN_EXE_lab-backend")).parent().unwrap());
    if let Ok(agent) = std::env::var("PROXY_AGENT_BIN") {
        b.agent = agent.into();
    }
    b.backend = env!("CARGO_BIN_EXE_lab-backend").into();
    b.client = env!("CARGO_BIN_EXE_lab-client").into();
    b
}

/// A lab with backends in web-1 (node 1), web-2 and web-3 (node 2), the `web`
/// Service on all three, and node 1's agent synced.
fn web_lab() -> (Lab, proxy_lab::Agent) {
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&["web-1", "web-2", "web-3"]).expect("backends");
    let eps: Vec<_> = ["web-1", "web-2", "web-3"].iter().map(|p| (lab.pod(p).ip, true)).collect();
    lab.write_manifest("web.yaml", &service("web", WEB_IP, WEB_PORT, &eps)).unwrap();
    let agent = lab.start_agent(0).expect("agent");
    agent.wait_synced(1, SYNC_TIMEOUT).expect("first sync");
    (lab, agent)
}

fn assert_reaches_every_backend(proto: &str) {
    let (lab, _agent) = web_lab();
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

fn counter(output: &str, name: &str) -> u64 {
    output
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no counter {name} in {output}"))
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
