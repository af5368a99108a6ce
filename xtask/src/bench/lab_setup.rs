//! The lab the benchmark runs in. Each mode gets a node of its own, with a
//! client pod, all alike; the target Services' backends sit on one more
//! node, so every path crosses the underlay the same way. All modes stay
//! programmed while the traffic of one mode runs: a run switches modes by
//! switching client, not by reprogramming (kube-proxy's iptables mode
//! takes minutes to load 10,000 Services).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context;
use proxy_lab::cmd::{ip, sysctl};
use proxy_lab::lab::BACKEND_PORT;
use proxy_lab::{Binaries, Lab};

use super::modes::Mode;

pub const BACKENDS: &[&str] = &["web-1", "web-2", "web-3"];
/// Swapped in for a target's endpoint by the endpoint-change measurement
/// at N = 1, where the target is the only Service to change.
pub const SPARE: &str = "web-4";
const BACKEND_NODE: usize = 1;

/// The node a mode is programmed into, and its client pod there.
pub fn placement(mode: Mode) -> (usize, &'static str) {
    match mode {
        Mode::Iptables => (0, "cl-iptables"),
        Mode::Nftables => (2, "cl-nftables"),
        Mode::Agent => (3, "cl-agent"),
        Mode::Direct => (4, "cl-direct"),
    }
}

pub struct BenchLab {
    pub lab: Lab,
    pub client: PathBuf,
}

impl BenchLab {
    pub fn up(bins: &Binaries) -> anyhow::Result<BenchLab> {
        let mut pods: Vec<(&str, usize)> = BACKENDS.iter().chain([&SPARE]).map(|b| (*b, BACKEND_NODE)).collect();
        for mode in Mode::ALL {
            let (node, pod) = placement(mode);
            pods.push((pod, node));
        }
        let lab = Lab::with_pods(bins.clone(), &pods).context("building the lab")?;
        lab.start_backends(&[BACKENDS, &[SPARE]].concat())?;
        let mut clients: Vec<String> = Mode::ALL.iter().map(|m| lab.pod(placement(*m).1).ns.clone()).collect();
        clients.push(lab.client_ns.clone());
        for ns in &clients {
            // Thousands of short connections a second: reuse TIME_WAIT
            // ports instead of running out of them between runs.
            sysctl(ns, "net.ipv4.tcp_tw_reuse", "1")?;
            sysctl(ns, "net.ipv4.ip_local_port_range", "1024 65000")?;
        }
        // The direct baseline: the external client reaches the backends
        // through the direct node, as NodePort traffic goes through a node.
        let via = lab.nodes[placement(Mode::Direct).0].underlay_ip.to_string();
        let backend_net = format!("10.244.{}.0/24", lab.nodes[BACKEND_NODE].pod_net);
        ip(&lab.client_ns, &["route", "add", &backend_net, "via", &via])?;
        let client = bins.agent.with_file_name("bench-client");
        anyhow::ensure!(client.exists(), "{} is missing", client.display());
        Ok(BenchLab { lab, client })
    }

    pub fn backend_ips(&self) -> Vec<Ipv4Addr> {
        BACKENDS.iter().map(|b| self.lab.pod(b).ip).collect()
    }

    pub fn spare_ip(&self) -> Ipv4Addr {
        self.lab.pod(SPARE).ip
    }

    pub fn backend_targets(&self) -> Vec<String> {
        self.backend_ips().iter().map(|ip| format!("{ip}:{BACKEND_PORT}")).collect()
    }

    pub fn node_ns(&self, mode: Mode) -> &str {
        &self.lab.nodes[placement(mode).0].ns
    }

    pub fn node_ip(&self, mode: Mode) -> Ipv4Addr {
        self.lab.nodes[placement(mode).0].underlay_ip
    }

    pub fn client_ns(&self, mode: Mode) -> &str {
        &self.lab.pod(placement(mode).1).ns
    }
}
