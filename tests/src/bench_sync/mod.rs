//! The control-plane benchmark (`cargo xtask bench-sync`): how long the
//! agent takes, following the lab API server, to program a cluster of N
//! Services at start-up, how much memory it holds doing so, and how long a
//! change takes from the API server committing it to the pinned map
//! holding it.
//!
//! For each size: a fresh lab (two nodes, no pods), the API server started
//! on a generated state file ([`objects`]), the agent started on node-1.
//! - Start-up: from spawning the agent to its log line for the first sync
//!   (written after the last map write returned), polled every
//!   millisecond; the map contents are then counted to check that every
//!   entry is there.
//! - Memory: VmHWM (peak) and VmRSS of the agent from /proc.
//! - Changes: one at a time, an EndpointSlice merge patch replacing one
//!   endpoint of a random Service with a new address. t0 is the commit time
//!   the API server returns with its answer (CLOCK_MONOTONIC, same clock
//!   here); the end is the first poll of the pinned maps (service -> slots
//!   -> backends, as the datapath reads them) that finds the new address.
//!   Polling starts when the answer arrives and repeats every
//!   [`POLL_INTERVAL`].

pub mod client;
pub mod objects;
pub mod probe;
pub mod stats;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::apiserver::monotonic_ns;
use crate::lab::{Agent, Binaries, Lab};
use client::ApiClient;
use probe::Probe;
use stats::{number, status_kib, Spread};

pub const POLL_INTERVAL: Duration = Duration::from_micros(100);
/// A change not in the maps by then counts as missed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Changes made first and not counted: the first touches of cold code and
/// memory in every process involved.
pub const WARM_UP: usize = 5;
/// Quiet time after the first sync before memory is read.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct Options {
    pub sizes: Vec<usize>,
    pub changes: usize,
    pub endpoints_per_service: usize,
    pub seed: u64,
}

/// The figures for one size.
#[derive(Clone, Debug, Default)]
pub struct SizeReport {
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Agent spawned -> first sync logged (maps programmed).
    pub startup: Duration,
    /// What the agent logged: when its initial list was complete (since
    /// the agent began), and its first sync's planning and total time.
    pub initial_list: Option<Duration>,
    pub first_sync_plan: Option<Duration>,
    pub first_sync: Option<Duration>,
    /// Entries in the service, slot and backend maps after start-up.
    pub map_entries: (usize, usize, usize),
    /// Syncs the agent had made by then: 1 unless something woke it.
    pub syncs_at_startup: u64,
    pub hwm_kib_startup: u64,
    pub rss_kib_startup: u64,
    pub hwm_kib_end: u64,
    pub rss_kib_end: u64,
    /// API server commit -> pinned map, per change.
    pub latencies: Vec<Duration>,
    /// API server commit -> its answer read here.
    pub answers: Vec<Duration>,
    /// The agent's own time per incremental sync (its `elapsed_us`).
    pub agent_syncs: Vec<Duration>,
    pub missed: usize,
}

/// Runs every size in turn; `progress` gets one line per step.
pub fn run(binaries: &Binaries, options: &Options, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<SizeReport>> {
    let mut reports = Vec::new();
    for &services in &options.sizes {
        let report = run_size(binaries, options, services, progress).with_context(|| format!("{services} Services"))?;
        progress(&format!(
            "{services} Services: start-up {} ms, commit->map p50 {} ms p99 {} ms, VmHWM {} MiB",
            stats::ms(report.startup),
            stats::ms(Spread::of(&report.latencies).p50),
            stats::ms(Spread::of(&report.latencies).p99),
            report.hwm_kib_end / 1024
        ));
        reports.push(report);
    }
    Ok(reports)
}

fn run_size(
    binaries: &Binaries,
    options: &Options,
    services: usize,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<SizeReport> {
    let per_service = options.endpoints_per_service;
    let lab = Lab::with_pods(binaries.clone(), &[]).context("building the lab")?;
    let nodes: Vec<(String, Ipv4Addr)> = lab.nodes.iter().map(|n| (n.name.clone(), n.underlay_ip)).collect();
    let state_path = lab.dir.join("bench-state.json");
    std::fs::write(&state_path, serde_json::to_vec(&objects::state(services, per_service, &nodes))?)?;
    let _api = lab.start_apiserver_from(&state_path)?;
    progress(&format!("{services} Services x {per_service} endpoints: API server up in lab {}", lab.id));

    let spawned = Instant::now();
    let agent = lab.start_agent_on_api(0)?;
    let first = wait_for_line(&agent, " synced generation=1 ", STARTUP_TIMEOUT)?;
    let startup = spawned.elapsed();
    let mut report = SizeReport {
        services,
        endpoints_per_service: per_service,
        startup,
        initial_list: agent
            .own_log()
            .lines()
            .find(|l| l.contains("initial list complete"))
            .and_then(|l| number(l, "since_start_ms"))
            .map(Duration::from_millis),
        first_sync_plan: number(&first, "plan_us").map(Duration::from_micros),
        first_sync: number(&first, "elapsed_us").map(Duration::from_micros),
        ..SizeReport::default()
    };
    // Memory once the first sync is over and nothing else is going on.
    std::thread::sleep(SETTLE);
    (report.hwm_kib_startup, report.rss_kib_startup) = memory(&agent)?;
    report.syncs_at_startup = agent.generations();

    let probe = Probe::open(&probe::maps_dir(&lab.nodes[0].bpffs()))?;
    report.map_entries = probe.counts();
    let want = (services, services * per_service, services * per_service);
    ensure!(report.map_entries == want, "maps hold {:?} entries after start-up, want {want:?}", report.map_entries);

    let mut client = ApiClient::connect_in(&lab.control_plane_ns, lab.api_addr())?;
    let mut rng = Rng(options.seed | 1);
    let mut current: HashMap<usize, Vec<Ipv4Addr>> = HashMap::new();
    let synced_before = agent.generations();
    for k in 0..WARM_UP + options.changes {
        let i = rng.below(services);
        let addresses = current.entry(i).or_insert_with(|| objects::endpoints(i, per_service));
        let new = objects::fresh_endpoint(k);
        addresses[rng.below(per_service)] = new;
        let written = client.merge_patch(&objects::slice_path(i), &objects::endpoints_patch(addresses))?;
        ensure!(written.status == 200, "patch of {} answered {}", objects::slice_name(i), written.status);
        let committed = written.committed_ns.context("the API server sent no commit time")?;
        let seen = wait_in_maps(&probe, objects::cluster_ip(i), new, committed);
        if k >= WARM_UP {
            report.answers.push(Duration::from_nanos(written.answered_ns.saturating_sub(committed)));
            match seen {
                Some(at) => report.latencies.push(Duration::from_nanos(at - committed)),
                None => report.missed += 1,
            }
        }
        // Idle between changes, so each is measured alone, not coalesced.
        std::thread::sleep(Duration::from_millis(10 + rng.below(10) as u64));
    }
    // The agent's own figures for the counted changes' syncs.
    report.agent_syncs = agent
        .own_log()
        .lines()
        .filter(|l| l.contains(" synced ") && number(l, "generation").is_some_and(|g| g > synced_before + WARM_UP as u64))
        .filter_map(|l| number(l, "elapsed_us"))
        .map(Duration::from_micros)
        .collect();
    (report.hwm_kib_end, report.rss_kib_end) = memory(&agent)?;
    agent.stop()?;
    Ok(report)
}

/// CLOCK_MONOTONIC ns of the first poll that finds `address` behind the
/// ClusterIP of `vip`; None if it does not show up in time.
fn wait_in_maps(probe: &Probe, vip: Ipv4Addr, address: Ipv4Addr, committed_ns: u64) -> Option<u64> {
    let deadline = committed_ns + CHANGE_TIMEOUT.as_nanos() as u64;
    loop {
        if probe.backends_of(vip, objects::PORT).contains(&address) {
            return Some(monotonic_ns());
        }
        if monotonic_ns() > deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The first line of the agent's log containing `needle`, polled every
/// millisecond.
fn wait_for_line(agent: &Agent, needle: &str, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = agent.own_log().lines().find(|l| l.contains(needle)) {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            bail!("agent did not log {needle:?} within {timeout:?}; log:\n{}", agent.own_log());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// VmHWM and VmRSS of the agent, in KiB.
fn memory(agent: &Agent) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
    let field = |key| status_kib(&status, key).with_context(|| format!("no {key} in /proc status"));
    Ok((field("VmHWM")?, field("VmRSS")?))
}

/// xorshift64*: the same changes on every run with one seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

/// The results as a Markdown table.
pub fn table(reports: &[SizeReport]) -> String {
    let mut out = String::from(
        "| Services x endpoints | changes | commit->map p50 ms | p99 ms | max ms | agent sync p50 ms | p99 ms | start-up ms | VmHWM MiB | VmRSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let latency = Spread::of(&r.latencies);
        let agent = Spread::of(&r.agent_syncs);
        let changes = if r.missed > 0 { format!("{} ({} missed)", r.latencies.len(), r.missed) } else { r.latencies.len().to_string() };
        out.push_str(&format!(
            "| {} x {} | {changes} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |\n",
            r.services,
            r.endpoints_per_service,
            stats::ms(latency.p50),
            stats::ms(latency.p99),
            stats::ms(latency.max),
            stats::ms(agent.p50),
            stats::ms(agent.p99),
            r.startup.as_millis(),
            r.hwm_kib_end as f64 / 1024.0,
            r.rss_kib_end as f64 / 1024.0,
        ));
    }
    out
}

/// Start-up details, one line per size.
pub fn startup_details(reports: &[SizeReport]) -> String {
    let ms = |d: Option<Duration>| d.map_or("?".into(), |d| d.as_millis().to_string());
    reports
        .iter()
        .map(|r| {
            format!(
                "{} Services: spawn->synced {} ms (agent: list complete {} ms after it began, then first sync {} ms of which planning {} ms); \
                 maps {:?} (services, slots, backends); {} sync(s) in the first 0.5 s; then VmHWM {:.1} MiB VmRSS {:.1} MiB; \
                 API commit->answer p50 {} ms\n",
                r.services,
                r.startup.as_millis(),
                ms(r.initial_list),
                ms(r.first_sync),
                ms(r.first_sync_plan),
                r.map_entries,
                r.syncs_at_startup,
                r.hwm_kib_startup as f64 / 1024.0,
                r.rss_kib_startup as f64 / 1024.0,
                stats::ms(Spread::of(&r.answers).p50),
            )
        })
        .collect()
}
