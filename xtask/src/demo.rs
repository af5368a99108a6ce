//! `cargo xtask demo`: the lab, one agent per node on the example manifests,
//! traffic from a pod on each node, and a table of who answered.

use std::time::Instant;

use anyhow::{ensure, Context};
use proxy_lab::{lab, Binaries, Lab, Summary};

use crate::workspace;

const MANIFESTS: &str = "manifests/lab/services.yaml";
const REQUESTS: u32 = 60;

const POD_CLIENTS: &[&str] = &["client-a", "client-b"];
/// The external client's namespace, as the rows name it.
const OUTSIDE: &str = "outside";

/// (Service, frontend, protocols, clients) exercised; they match the manifests.
const FRONTENDS: &[(&str, &str, &[&str], &[&str])] = &[
    ("default/web", "10.96.0.10:80", &["tcp", "udp"], POD_CLIENTS),
    ("kube-system/dns", "10.96.0.53:53", &["udp", "udp-connected", "tcp"], POD_CLIENTS),
    ("default/api", "10.96.0.20:443", &["tcp"], POD_CLIENTS),
    ("default/web", "10.100.0.11:30080", &["tcp", "udp"], &[OUTSIDE]),
    ("default/web", "10.100.0.12:30080", &["tcp", "udp"], &[OUTSIDE]),
    ("default/web", "10.200.0.10:80", &["tcp", "udp"], &[OUTSIDE]),
];
/// An address of the service range that no Service holds.
const UNALLOCATED: &str = "10.96.0.99:80";

pub fn run() -> anyhow::Result<()> {
    ensure!(proxy_lab::privilege::is_root(), "the demo builds network namespaces and loads eBPF: run it as root");
    let started = Instant::now();
    let binaries = Binaries::in_dir(&workspace::bin_dir());
    let lab = Lab::up(binaries).context("building the lab")?;
    println!("lab {}: nodes {}, pods {}", lab.id, lab.nodes.len(), lab_pods(&lab));
    for (name, ip) in [("client-a", "10.244.1.10"), ("web-1", "10.244.1.11"), ("web-2", "10.244.2.10"), ("web-3", "10.244.2.11"), ("client-b", "10.244.2.12")] {
        ensure!(lab.pod(name).ip.to_string() == ip, "lab address of {name} drifted from {MANIFESTS}");
    }
    lab.start_backends(&["web-1", "web-2", "web-3"])?;
    let yaml = std::fs::read_to_string(workspace::root().join(MANIFESTS))?;
    lab.write_manifest("services.yaml", &yaml)?;
    let agents: Vec<_> = (0..lab.nodes.len()).map(|n| lab.start_agent(n)).collect::<anyhow::Result<_>>()?;
    for agent in &agents {
        agent.wait_synced(1, std::time::Duration::from_secs(10))?;
    }
    lab.route_via_node(&lab.client_ns, "10.200.0.0/24", 0)?;
    println!(
        "agents started on {} nodes as manifests/ starts them (the rendered DaemonSet's init container, then the agent's command, args and ConfigMap environment, with its three capabilities), synced; sending {REQUESTS} requests per row, each a new connection or socket\n",
        agents.len()
    );

    println!(
        "{:<16} {:<17} {:<9} {:<5} {:>6}  {:<26} {:<12} {:<17} {:>6} {:>6}",
        "SERVICE", "FRONTEND", "FROM", "PROTO", "OK", "ANSWERED BY", "BACKEND SAW", "REPLY FROM", "p50µs", "p99µs"
    );
    let mut all_ok = true;
    for (service, frontend, protos, clients) in FRONTENDS {
        for from in *clients {
            let ns = if *from == OUTSIDE { lab.client_ns.clone() } else { lab.pod(from).ns.clone() };
            for proto in *protos {
                let replies = lab.requests(&ns, proto, frontend, REQUESTS, 1000)?;
                let s = Summary::of(&replies);
                all_ok &= s.failed == 0;
                let backends = s.by_backend.iter().map(|(b, n)| format!("{b}:{n}")).collect::<Vec<_>>().join(" ");
                let from_addrs = s.replies_from.keys().cloned().collect::<Vec<_>>().join(",");
                let seen = s.sources_seen.keys().cloned().collect::<Vec<_>>().join(",");
                println!(
                    "{:<16} {:<17} {:<9} {:<5} {:>6}  {:<26} {:<12} {:<17} {:>6} {:>6}",
                    service,
                    frontend,
                    from,
                    proto.to_uppercase().replace("UDP-CONNECTED", "UDP-C"),
                    format!("{}/{}", s.sent - s.failed, s.sent),
                    backends,
                    seen,
                    from_addrs,
                    s.percentile(50.0).map_or("-".into(), |v| v.to_string()),
                    s.percentile(99.0).map_or("-".into(), |v| v.to_string()),
                );
            }
        }
    }
    println!("\nANSWERED BY: pod name each backend answered with; BACKEND SAW: the source address it saw;");
    println!("REPLY FROM: the source of the replies the client got. api lists web-3 as not ready. UDP-C: a connected UDP socket.");
    println!("From outside, web's NodePort and LoadBalancer traffic is SNATed to the node it entered (externalTrafficPolicy: Cluster).");
    let refused = refusals(&lab)?;
    all_ok &= refused;
    println!("\nnode-1 `proxy-agent list services`:\n{}", lab.agent_command(0, &["list", "services"])?);
    println!("node-1 `proxy-agent list attachments` (the node's root cgroup, its eth0, each pod's veth):\n{}", lab.agent_command(0, &["list", "attachments"])?);
    for (n, node) in lab.nodes.iter().enumerate() {
        let counters = lab.agent_command(n, &["counters"])?;
        let line = counters.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join("=")).collect::<Vec<_>>().join(" ");
        println!("{} datapath verdicts: {line}", node.name);
    }
    for agent in agents {
        agent.stop()?;
    }
    let pin_dirs: Vec<_> = lab.nodes.iter().map(|n| n.bpffs()).collect();
    drop(lab);

    let left_ns = lab::lab_namespaces();
    let left_pins: Vec<_> = pin_dirs.iter().filter(|p| p.exists()).collect();
    println!(
        "\ntorn down in {:.1} s total: lab namespaces left: {}; pin directories left: {}",
        started.elapsed().as_secs_f64(),
        if left_ns.is_empty() { "none".to_string() } else { left_ns.join(" ") },
        if left_pins.is_empty() { "none".to_string() } else { format!("{left_pins:?}") },
    );
    ensure!(all_ok, "some requests failed");
    ensure!(left_ns.is_empty() && left_pins.is_empty(), "the demo left something behind");
    Ok(())
}

/// Requests to an unallocated service address: refused at once, not left to
/// time out.
fn refusals(lab: &Lab) -> anyhow::Result<bool> {
    let mut ok = true;
    for proto in ["tcp", "udp-connected"] {
        let replies = lab.requests(&lab.pod("client-a").ns, proto, UNALLOCATED, 5, 1000)?;
        let s = Summary::of(&replies);
        let refused = s.errors.iter().filter(|(e, _)| e.to_lowercase().contains("refused")).map(|(_, n)| n).sum::<usize>();
        let slowest = proxy_lab::traffic::slowest_micros(&replies);
        println!(
            "{UNALLOCATED} (no such Service) from client-a {}: {refused}/5 refused, slowest in {} µs (client timeout 1 s)",
            proto.to_uppercase(),
            slowest
        );
        ok &= refused == 5;
    }
    Ok(ok)
}

fn lab_pods(lab: &Lab) -> String {
    lab.pods
        .iter()
        .map(|p| format!("{}({} {})", p.name, lab.nodes[p.node].name, p.ip))
        .collect::<Vec<_>>()
        .join(" ")
}
