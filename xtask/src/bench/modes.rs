//! The four ways a packet gets to a backend, each programmed into its own
//! lab node: no Service (direct to a pod), kube-proxy's iptables and
//! nftables modes (the kernel state they create), and this project's agent
//! and datapath.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proxy_lab::kube_proxy_rules::cluster::{self, Cluster};
use proxy_lab::kube_proxy_rules::{iptables, nftables};
use proxy_lab::Agent;

use super::lab_setup::{placement, BenchLab};
use super::workloads::{self, Outcome};
use super::Durations;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    Direct,
    Iptables,
    Nftables,
    Agent,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Agent, Mode::Iptables, Mode::Nftables, Mode::Direct];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Agent => "this project",
        }
    }
}

/// What one run of one mode's traffic measured.
#[derive(Debug, Default)]
pub struct Traffic {
    pub connect_last: Outcome,
    pub connect_random: Outcome,
    pub keepalive: Outcome,
    pub udp_nodeport: Outcome,
    pub tcp_nodeport: Outcome,
}

impl Traffic {
    pub fn summary(&self) -> String {
        let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}"));
        format!(
            "conn/s last {} random {}  keep-alive p50/p99 {}/{} µs  UDP NodePort/s {}  TCP NodePort conn/s {}",
            f(self.connect_last.value),
            f(self.connect_random.value),
            f(self.keepalive.value),
            f(self.keepalive.second),
            f(self.udp_nodeport.value),
            f(self.tcp_nodeport.value),
        )
    }
}

/// Runs every workload against `mode`'s node, which must be programmed.
pub fn traffic(lab: &BenchLab, mode: Mode, cluster: &Cluster, d: &Durations) -> anyhow::Result<Traffic> {
    check_reachable(lab, mode, cluster)?;
    let client_ns = lab.client_ns(mode);
    let last = cluster.find(cluster::TARGET_LAST).context("no last target")?;
    let (last_targets, udp_targets, tcp_node_port_targets) = match mode {
        Mode::Direct => (lab.backend_targets(), lab.backend_targets(), lab.backend_targets()),
        _ => (
            vec![format!("{}:{}", last.cluster_ip, cluster::HTTP_PORT)],
            vec![format!("{}:{}", lab.node_ip(mode), cluster::TARGET_NODE_PORTS[0].1)],
            vec![format!("{}:{}", lab.node_ip(mode), cluster::TARGET_NODE_PORTS[0].0)],
        ),
    };
    let connect_last = workloads::rate(lab, client_ns, "connect", &last_targets, d.connect)?;
    let connect_random = match (mode, cluster.find(cluster::TARGET_RANDOM)) {
        (Mode::Direct, _) | (_, None) => connect_last,
        (_, Some(random)) => workloads::rate(lab, client_ns, "connect", &[format!("{}:{}", random.cluster_ip, cluster::HTTP_PORT)], d.connect)?,
    };
    Ok(Traffic {
        connect_last,
        connect_random,
        keepalive: workloads::keepalive(lab, client_ns, &last_targets[0], d.keepalive_requests)?,
        udp_nodeport: workloads::rate(lab, &lab.lab.client_ns, "udp", &udp_targets, d.udp)?,
        // New connections from outside: SNATed to the node (Cluster
        // policy), the path whose ports a closed connection holds.
        tcp_nodeport: workloads::rate(lab, &lab.lab.client_ns, "connect", &tcp_node_port_targets, d.connect)?,
    })
}

/// A few requests through the last target's ClusterIP must be answered
/// before anything is measured: a mode that does not serve ClusterIPs is a
/// broken benchmark, not a slow mode.
fn check_reachable(lab: &BenchLab, mode: Mode, cluster: &Cluster) -> anyhow::Result<()> {
    let target = match mode {
        Mode::Direct => lab.backend_targets()[0].clone(),
        _ => format!("{}:{}", cluster.find(cluster::TARGET_LAST).unwrap().cluster_ip, cluster::HTTP_PORT),
    };
    let replies = lab.lab.requests(lab.client_ns(mode), "tcp", &target, 5, 1000)?;
    let ok = replies.iter().filter(|r| matches!(r, proxy_lab::Reply::Ok { .. })).count();
    if ok < 5 {
        bail!("{}: only {ok}/5 requests to {target} answered: {replies:?}\n{}", mode.label(), lab.lab.logs());
    }
    Ok(())
}

/// A mode programmed into its node, with what it needs to change an
/// endpoint and to go away again.
pub struct Deployed {
    pub mode: Mode,
    agent: Option<Agent>,
    agent_syncs: u64,
    changes: u32,
}

const MANIFEST: &str = "bench.yaml";

impl Deployed {
    /// Programs `cluster` into the mode's empty node; returns how long
    /// programming took (None for direct, which has nothing to program).
    pub fn program(lab: &BenchLab, mode: Mode, cluster: &Cluster) -> anyhow::Result<(Deployed, Option<Duration>)> {
        let mut d = Deployed {
            mode,
            agent: None,
            agent_syncs: 0,
            changes: 0,
        };
        let took = match mode {
            Mode::Direct => None,
            Mode::Iptables => {
                // kube-proxy creates its chains and the jumps into them
                // with single iptables calls, then restores the rest.
                for args in iptables::jump_commands() {
                    let mut argv = vec!["-w".to_string()];
                    argv.extend(args);
                    in_node(lab, mode, IPTABLES, &argv.iter().map(String::as_str).collect::<Vec<_>>(), None)?;
                }
                Some(restore(lab, &iptables::full_restore(cluster))?)
            }
            Mode::Nftables => Some(nft(lab, &nftables::full_transaction(cluster))?),
            Mode::Agent => {
                lab.lab.write_manifest(MANIFEST, &cluster.manifests())?;
                let node_ip = lab.node_ip(mode).to_string();
                let agent = lab.lab.start_agent_with(placement(mode).0, &["--node-ip", &node_ip, "--poll-ms", "20"])?;
                agent.wait_synced(1, Duration::from_secs(300))?;
                d.agent_syncs = 1;
                let took = sync_time(&agent, 1)?;
                d.agent = Some(agent);
                Some(took)
            }
        };
        Ok((d, took))
    }

    /// One endpoint of one idle Service replaced, as a rolling update does,
    /// written the way the mode writes it; the time that takes. The next
    /// change starts from the Services as programmed, so each is one
    /// endpoint away from the state in the kernel.
    pub fn change_endpoint(&mut self, lab: &BenchLab, cluster: &Cluster) -> anyhow::Result<Option<Duration>> {
        self.changes += 1;
        let index = cluster.change_candidate();
        // Alternate between a new address and the original one.
        let (before, after) = if self.changes % 2 == 1 {
            let mut after = cluster.clone();
            after.replace_first_endpoint(index, self.changes);
            (cluster.clone(), after)
        } else {
            let mut before = cluster.clone();
            before.replace_first_endpoint(index, self.changes - 1);
            (before, cluster.clone())
        };
        let removed = before.services[index].endpoints[0];
        let service = &after.services[index];
        Ok(match self.mode {
            Mode::Direct => None,
            Mode::Iptables => {
                let stale = iptables::stale_chains_to_delete(&after, service, removed);
                Some(restore(lab, &iptables::partial_restore(&after, &[index], &stale))?)
            }
            Mode::Nftables => {
                let stale = nftables::stale_endpoint_chains(service, removed);
                let took = nft(lab, &nftables::partial_transaction(&after, &[index], &stale))?;
                // kube-proxy deletes flushed chains a second later, in a
                // transaction of their own (not timed).
                in_node(lab, self.mode, "nft", &["-f", "-"], Some(&stale.iter().map(|c| format!("delete chain {} {c}\n", nftables::TABLE)).collect::<String>()))?;
                Some(took)
            }
            Mode::Agent => {
                let agent = self.agent.as_ref().context("agent not running")?;
                lab.lab.write_manifest(MANIFEST, &after.manifests())?;
                self.agent_syncs += 1;
                agent.wait_synced(self.agent_syncs, Duration::from_secs(300))?;
                Some(sync_time(agent, self.agent_syncs)?)
            }
        })
    }

    /// Leaves the node as the lab made it.
    pub fn remove(&mut self, lab: &BenchLab) -> anyhow::Result<()> {
        match self.mode {
            Mode::Direct => Ok(()),
            Mode::Iptables => {
                for table in ["nat", "filter"] {
                    in_node(lab, self.mode, IPTABLES, &["-w", "-t", table, "-F"], None)?;
                    in_node(lab, self.mode, IPTABLES, &["-w", "-t", table, "-X"], None)?;
                }
                Ok(())
            }
            Mode::Nftables => in_node(lab, self.mode, "nft", &["delete", "table", "ip", "kube-proxy"], None).map(|_| ()),
            Mode::Agent => {
                if let Some(agent) = self.agent.take() {
                    agent.stop()?;
                }
                lab.lab.agent_command(placement(self.mode).0, &["cleanup"])?;
                let _ = std::fs::remove_file(lab.lab.manifests.join(MANIFEST));
                Ok(())
            }
        }
    }
}

/// kube-proxy's iptables backend here: legacy. The nft backend
/// (iptables-nft-restore) had not finished loading 10,000 Services after
/// 12 minutes on the benchmark machine, which no run can wait for;
/// kube-proxy uses legacy wherever the host's iptables does.
pub const IPTABLES: &str = "iptables-legacy";
const IPTABLES_RESTORE: &str = "iptables-legacy-restore";

/// Runs a program in the mode's node namespace (nsenter: no /sys
/// remount, so the process starts about as fast as kube-proxy's own exec),
/// with `input` on its stdin; returns how long it ran.
fn in_node(lab: &BenchLab, mode: Mode, program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<Duration> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", lab.node_ns(mode)))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("running {program}"))?;
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(took)
}

/// `iptables-restore` as kube-proxy calls it.
fn restore(lab: &BenchLab, rules: &str) -> anyhow::Result<Duration> {
    in_node(lab, Mode::Iptables, IPTABLES_RESTORE, &["-w", "5", "--noflush", "--counters"], Some(rules))
}

/// `nft -f -`, as knftables runs a transaction.
fn nft(lab: &BenchLab, transaction: &str) -> anyhow::Result<Duration> {
    in_node(lab, Mode::Nftables, "nft", &["-f", "-"], Some(transaction))
}

/// The agent's own measure of sync `generation`: model, diff and map
/// writes (reading the manifest files comes before and is not included).
fn sync_time(agent: &Agent, generation: u64) -> anyhow::Result<Duration> {
    let log = agent.own_log();
    let line = log
        .lines()
        .find(|l| l.contains(" synced ") && l.contains(&format!("generation={generation} ")))
        .with_context(|| format!("no sync {generation} in the agent log:\n{log}"))?;
    let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse::<u64>().ok());
    if field("failed=").unwrap_or(0) > 0 {
        bail!("agent sync {generation} had failed map writes: {line}");
    }
    let micros = field("elapsed_us=").with_context(|| format!("no elapsed_us in {line}"))?;
    Ok(Duration::from_micros(micros))
}
