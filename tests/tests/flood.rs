//! Established flows survive a flood of new flows that overflows conntrack:
//! new flows are tracked apart from established ones until they show they
//! are established, so the flood churns only its own table. Real packets
//! through the agents of both lab nodes, started as the DaemonSet starts
//! them.

mod common;

use std::time::{Duration, Instant};

use common::{binaries, counter, SYNC_TIMEOUT};
use proxy_lab::cmd::ip;
use proxy_lab::manifests::ServiceSpec;
use proxy_lab::privilege::require_root;
use proxy_lab::{Lab, Summary};

const ALL_WEB: [&str; 3] = ["web-1", "web-2", "web-3"];
/// New flows: more than three times what the established table has room
/// for (262,144 entries, two per flow).
const FLOOD_FLOWS: u32 = 480_000;
/// From 24 more addresses of the external client, 20,000 ports each
/// (10000-29999: not ports the client's own sockets use, which would read
/// the flood's replies as theirs).
fn flood_sources() -> Vec<String> {
    (101..125).map(|i| format!("10.100.0.{i}")).collect()
}

/// Ten TCP connections and ten UDP streams through a NodePort (SNATed, to
/// three backends on both nodes) each make a request every 12 s. Between
/// their second and third request, while they are idle, 480,000
/// one-datagram flows (960,000 entries against the established table's
/// 262,144) from other addresses of the client go through another NodePort
/// of node 1 (`externalTrafficPolicy: Local`, unSNATed, so the flood is not
/// bounded by SNAT tuples). Every request of every connection and stream is
/// answered, each connection and stream by the one backend it had: none
/// lost its entries. With one table for all flows, the same flood broke
/// connections ("Transport endpoint is not connected", answered by another
/// backend); a flood of 160,000 flows did not, the kernel's LRU keeping
/// entries that were looked up more than once.
#[test]
fn established_flows_survive_a_flood_of_new_flows() {
    if !require_root("established_flows_survive_a_flood_of_new_flows") {
        return;
    }
    let lab = Lab::up(binaries()).expect("lab up");
    lab.start_backends(&ALL_WEB).expect("backends");
    let mut np = ServiceSpec::new("np", "10.96.1.10", 80).on_pods(&lab, &ALL_WEB);
    np.node_port = Some(30080);
    lab.write_manifest("np.yaml", &np.yaml()).unwrap();
    let mut flooded = ServiceSpec::new("flooded", "10.96.1.11", 80).on_pods(&lab, &["web-1"]);
    flooded.node_port = Some(30081);
    flooded.external_local = true;
    lab.write_manifest("flooded.yaml", &flooded.yaml()).unwrap();
    let agents: Vec<_> = (0..2).map(|n| lab.start_agent(n).expect("agent")).collect();
    for agent in &agents {
        agent.wait_synced(1, SYNC_TIMEOUT).expect("first sync");
    }
    for source in flood_sources() {
        ip(&lab.client_ns, &["addr", "add", &format!("{source}/24"), "dev", "eth0"]).unwrap();
    }
    let target = format!("{}:30080", lab.node_ip(0));

    let started = Instant::now();
    let established: Vec<_> = ["tcp-keep", "udp-keep"]
        .iter()
        .flat_map(|proto| std::iter::repeat_n(*proto, 10))
        .map(|proto| (proto, lab.requests_in_background(&lab.client_ns, proto, &target, 4, 1000, 12_000).unwrap()))
        .collect();
    // After the second requests (at 12 s): every flow has shown it is
    // established (a UDP stream by its second datagram).
    std::thread::sleep(Duration::from_millis(13_000));
    let translated_before = counter(&lab.agent_command(0, &["counters"]).unwrap(), "translated");
    let flood_started = started.elapsed();
    let mut flood = lab.command_in(&lab.client_ns, binaries().client).unwrap();
    flood
        .args(["udp-flood", &format!("{}:30081", lab.node_ip(0)), &FLOOD_FLOWS.to_string(), "0"])
        .env("LAB_CLIENT_SOURCES", flood_sources().join(","));
    let out = flood.output().unwrap();
    let flood_ended = started.elapsed();
    let c = lab.agent_command(0, &["counters"]).unwrap();
    let new_flows = counter(&c, "translated") - translated_before;
    println!(
        "flood from {flood_started:?} to {flood_ended:?}: {} ; {new_flows} new flows translated on node 1",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    println!("{c}");

    assert!(new_flows >= u64::from(FLOOD_FLOWS) * 9 / 10, "the flood was not translated: {new_flows} new flows");
    assert!(flood_ended < Duration::from_secs(24), "the flood ran past the established flows' third request");

    for (proto, run) in established {
        let replies = run.wait().unwrap();
        let s = Summary::of(&replies);
        assert_eq!(s.failed, 0, "{proto}: {:?} (answered by {:?})\n{}", s.errors, s.by_backend, lab.logs());
        assert_eq!(s.by_backend.len(), 1, "{proto}: moved between backends: {:?}", s.by_backend);
        assert_eq!(s.replies_from.keys().collect::<Vec<_>>(), [&target], "{proto}");
        assert_eq!(s.sent, 4, "{proto}");
    }
}
