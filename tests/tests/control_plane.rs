//! The agent on the Kubernetes API: kubectl changes Services and
//! EndpointSlices on the lab's API server, and real packets show the result.
//! Needs root (and kubectl); run with `cargo xtask test`.

mod common;

use std::time::{Duration, Instant};

use common::{answered_by, binaries, SYNC_TIMEOUT};
use proxy_lab::manifests::service;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Summary};

const TARGET: &str = "10.96.0.10:80";
const CONVERGE: Duration = Duration::from_secs(10);

fn web(lab: &Lab, ready: &[(&str, bool)]) -> String {
    let eps: Vec<_> = ready.iter().map(|(p, r)| (lab.pod(p).ip, *r)).collect();
    service("web", "10.96.0.10", 80, &eps)
}

fn send(lab: &Lab, from: &str, proto: &str, count: u32) -> Summary {
    Summary::of(&lab.requests(&lab.pod(from).ns, proto, TARGET, count, 1000).unwrap())
}

/// Sends small batches until `done` holds for one; returns how long it took.
fn wait_for_traffic(lab: &Lab, from: &str, what: &str, done: impl Fn(&Summary) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        // TCP: a refusal (a reset) ends a request at once. (Port
        // unreachables are rate-limited per client, as the kernel's own.)
        let s = Summary::of(&lab.requests(&lab.pod(from).ns, "tcp", TARGET, 12, 200).unwrap());
        if done(&s) {
            return started.elapsed();
        }
        assert!(started.elapsed() < CONVERGE, "{what}: not seen within {CONVERGE:?}; last batch {s:?}\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lab_on_api() -> (Lab, proxy_lab::control_plane::ApiServer) {
    let lab = Lab::up(binaries()).expect("lab up");
    let api = lab.start_apiserver().expect("API server");
    lab.register_nodes().expect("nodes");
    lab.start_backends(&["web-1", "web-2", "web-3"]).unwrap();
    (lab, api)
}

#[test]
fn kubectl_changes_reach_the_datapath() {
    if !require_root("kubectl_changes_reach_the_datapath") {
        return;
    }
    let (lab, _api) = lab_on_api();
    let agent = lab.start_agent_on_api(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();

    lab.kubectl(&["create", "--validate=false", "-f", "-"], Some(&web(&lab, &[("web-1", true)]))).unwrap();
    let took = wait_for_traffic(&lab, "client-a", "new Service", |s| s.failed == 0);
    println!("Service created -> traffic flows: {} ms", took.as_millis());
    let s = send(&lab, "client-a", "tcp", 30);
    assert_eq!((s.failed, answered_by(&s)), (0, vec!["web-1"]));

    lab.kubectl(&["replace", "--validate=false", "-f", "-"], Some(&web(&lab, &[("web-1", true), ("web-2", true)]))).unwrap();
    let took = wait_for_traffic(&lab, "client-a", "added endpoint", |s| s.by_backend.contains_key("web-2"));
    println!("endpoint added -> new pod answers: {} ms", took.as_millis());
    let s = send(&lab, "client-a", "tcp", 60);
    assert_eq!((s.failed, answered_by(&s)), (0, vec!["web-1", "web-2"]));

    let not_ready = web(&lab, &[("web-1", false), ("web-2", true)]);
    lab.kubectl(&["replace", "--validate=false", "-f", "-"], Some(&not_ready)).unwrap();
    let took = wait_for_traffic(&lab, "client-a", "endpoint not ready", |s| answered_by(s) == vec!["web-2"] && s.failed == 0);
    println!("endpoint not ready -> no new connections to it: {} ms", took.as_millis());
    let s = send(&lab, "client-a", "tcp", 60);
    assert_eq!((s.failed, answered_by(&s)), (0, vec!["web-2"]));

    // Deleted: its ClusterIP is an unallocated address of the service range
    // now, and the datapath refuses connections to it at once.
    lab.kubectl(&["delete", "service", "web", "-n", "default"], None).unwrap();
    let took = wait_for_traffic(&lab, "client-a", "Service deleted", |s| s.failed == s.sent);
    println!("Service deleted -> requests fail: {} ms", took.as_millis());
    for proto in ["tcp", "udp-connected"] {
        let replies = lab.requests(&lab.pod("client-a").ns, proto, TARGET, 4, 2000).unwrap();
        let s = Summary::of(&replies);
        assert_eq!(s.failed, 4, "a deleted Service still answered: {s:?}");
        assert!(s.errors.keys().all(|e| e.to_lowercase().contains("refused")), "{proto}: not refused: {:?}", s.errors);
        let slowest = proxy_lab::traffic::slowest_micros(&replies);
        println!("Service deleted -> {proto} refused, slowest of 4 in {slowest} µs (client timeout 2 s)");
        assert!(slowest < 1_000_000, "{proto}: refusal took {slowest} µs");
    }
}

#[test]
fn agents_keep_serving_while_the_api_server_is_down_and_converge_after() {
    if !require_root("agents_keep_serving_while_the_api_server_is_down_and_converge_after") {
        return;
    }
    let (lab, api) = lab_on_api();
    lab.kubectl(&["create", "--validate=false", "-f", "-"], Some(&web(&lab, &[("web-1", true), ("web-3", true)]))).unwrap();
    let agents = [lab.start_agent_on_api(0).unwrap(), lab.start_agent_on_api(1).unwrap()];
    for agent in &agents {
        agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    }
    for from in ["client-a", "client-b"] {
        let s = send(&lab, from, "tcp", 30);
        assert_eq!((s.failed, answered_by(&s)), (0, vec!["web-1", "web-3"]), "from {from}");
    }

    api.kill();
    std::thread::sleep(Duration::from_millis(500));
    for from in ["client-a", "client-b"] {
        let s = send(&lab, from, "tcp", 30);
        assert_eq!((s.failed, answered_by(&s)), (0, vec!["web-1", "web-3"]), "from {from} with the API server down");
    }

    let _api = lab.start_apiserver().unwrap();
    lab.kubectl(&["replace", "--validate=false", "-f", "-"], Some(&web(&lab, &[("web-2", true)]))).unwrap();
    for from in ["client-a", "client-b"] {
        let took = wait_for_traffic(&lab, from, "change after API restart", |s| answered_by(s) == vec!["web-2"] && s.failed == 0);
        println!("{from}: converged {} ms after the change", took.as_millis());
    }
}

#[test]
fn agent_restart_under_load_fails_no_request() {
    if !require_root("agent_restart_under_load_fails_no_request") {
        return;
    }
    let (lab, _api) = lab_on_api();
    lab.kubectl(&["create", "--validate=false", "-f", "-"], Some(&web(&lab, &[("web-1", true), ("web-2", true), ("web-3", true)]))).unwrap();
    let agent = lab.start_agent_on_api(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    wait_for_traffic(&lab, "client-a", "initial sync", |s| s.failed == 0 && s.by_backend.len() == 3);

    // New connections and datagrams every 10 ms for 3 s, across the restart.
    let ns = lab.pod("client-a").ns.clone();
    let tcp = lab.requests_in_background(&ns, "tcp", TARGET, 300, 1000, 10).unwrap();
    let udp = lab.requests_in_background(&ns, "udp", TARGET, 300, 1000, 10).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    agent.stop().unwrap();
    let agent = lab.start_agent_on_api(0).unwrap();
    agent.wait_synced(1, SYNC_TIMEOUT).unwrap();
    assert!(agent.own_log().contains("ops=0"), "restarted agent rewrote maps:\n{}", agent.own_log());
    for (proto, flow) in [("tcp", tcp), ("udp", udp)] {
        let s = Summary::of(&flow.wait().unwrap());
        println!("{proto} across the restart: {} sent, {} failed, answered by {:?}", s.sent, s.failed, s.by_backend);
        assert_eq!(s.sent, 300);
        assert_eq!(s.failed, 0, "{proto}: {:?}", s.errors);
    }
}
