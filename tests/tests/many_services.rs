//! Many Services at once: the agent writes long runs of map entries in
//! batches (one bpf() call per run) and removes them the same way; the
//! datapath must then hold exactly what the manifests say. Needs root; run
//! with `cargo xtask test`.

mod common;

use common::{answered_by, binaries, SYNC_TIMEOUT};
use proxy_lab::manifests::service;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Summary};

const PODS: [&str; 3] = ["web-1", "web-2", "web-3"];

fn vip(i: usize) -> String {
    format!("10.96.1.{}", i + 1)
}

/// Services 0..count, each with all three pods.
fn write_services(lab: &Lab, count: usize) {
    let eps: Vec<_> = PODS.iter().map(|p| (lab.pod(p).ip, true)).collect();
    let all: Vec<String> = (0..count).map(|i| service(&format!("many-{i}"), &vip(i), 80, &eps)).collect();
    lab.write_manifest("many.yaml", &all.join("---\n")).unwrap();
}

fn send(lab: &Lab, i: usize, proto: &str) -> Summary {
    let target = format!("{}:80", vip(i));
    Summary::of(&lab.requests(&lab.pod("client-a").ns, proto, &target, 30, 1000).unwrap())
}

/// Frontends in the service map whose every slot names a backend.
fn frontends(lab: &Lab) -> Vec<String> {
    let out = lab.agent_command(0, &["list", "services"]).unwrap();
    assert!(!out.contains("<missing>"), "a slot without its backend:\n{out}");
    // A frontend's first row names it; its further slots' rows start blank.
    out.lines().skip(1).filter(|l| !l.starts_with(' ')).filter_map(|l| l.split_whitespace().next()).map(String::from).collect()
}

#[test]
fn forty_services_are_written_and_thirty_removed_in_batches() {
    if !require_root("forty_services_are_written_and_thirty_removed_in_batches") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&PODS).unwrap();
    // 80 frontends (TCP and UDP) and 240 slots: runs long enough to batch.
    write_services(&lab, 40);
    let agent = lab.start_agent(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    assert_eq!(frontends(&lab).len(), 80);
    for i in [0, 17, 39] {
        for proto in ["tcp", "udp"] {
            let s = send(&lab, i, proto);
            assert_eq!((s.failed, answered_by(&s)), (0, PODS.to_vec()), "Service {i} {proto}");
        }
    }

    // 60 frontends and 180 slots go in one change.
    write_services(&lab, 10);
    agent.wait_synced(2, SYNC_TIMEOUT).unwrap();
    let left = frontends(&lab);
    assert_eq!(left.len(), 20, "{left:?}");
    assert!(left.iter().all(|f| (0..10).any(|i| f.starts_with(&format!("{}:", vip(i))))), "{left:?}");
    let s = send(&lab, 9, "tcp");
    assert_eq!((s.failed, answered_by(&s)), (0, PODS.to_vec()));
    // Refused (a reset ends each request at once; port unreachables are
    // rate-limited per client, as the kernel's own).
    let s = send(&lab, 39, "tcp");
    assert_eq!((s.sent, s.failed), (30, 30), "a removed Service still answered: {s:?}");
    assert!(s.errors.keys().all(|e| e.to_lowercase().contains("refused")), "{:?}", s.errors);
}
