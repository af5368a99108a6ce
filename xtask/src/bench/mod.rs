//! `cargo xtask bench`: this project against kube-proxy's iptables and
//! nftables modes and against no Service at all, side by side in one lab,
//! modes interleaved run by run so the machine's noise falls on all of them.
//! Writes a markdown table of ratios, a CSV of every sample and a chart to
//! `target/bench-results/<timestamp>/`.

mod chart;
mod lab_setup;
mod modes;
mod report;
mod stats;
mod workloads;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use proxy_lab::kube_proxy_rules::{Cluster, SyntheticSpec};

use crate::workspace;
use modes::Mode;
use stats::{Metric, Samples};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A short run (about 2 minutes): smaller N and shorter workloads.
    #[arg(long)]
    quick: bool,
    /// Numbers of Services to measure at (comma-separated).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Runs per mode and size; each figure is the median of these.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Endpoints of every Service that is not a target.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
}

/// How long each workload runs, per run and mode.
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    pub connect: Duration,
    pub udp: Duration,
    pub keepalive_requests: u64,
    /// Stop starting new runs past this; the table says how many ran.
    pub budget: Duration,
}

const FULL_SIZES: &[usize] = &[1, 1_000, 10_000];
/// kube-proxy's modes take minutes to load 10,000 Services; the quick run
/// stops at 1,000 and says so.
const QUICK_SIZES: &[usize] = &[1, 100, 1_000];

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    ensure!(proxy_lab::privilege::is_root(), "the benchmark builds network namespaces and loads eBPF: run it as root");
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let sizes = args.sizes.clone().unwrap_or_else(|| if args.quick { QUICK_SIZES } else { FULL_SIZES }.to_vec());
    let durations = if args.quick {
        Durations {
            connect: Duration::from_millis(300),
            udp: Duration::from_millis(300),
            keepalive_requests: 300,
            budget: Duration::from_secs(110),
        }
    } else {
        Durations {
            connect: Duration::from_millis(600),
            udp: Duration::from_millis(600),
            keepalive_requests: 1_000,
            budget: Duration::from_secs(570),
        }
    };
    let out_dir = results_dir()?;
    println!("bench: sizes {sizes:?}, {} runs, {} endpoints per Service; results in {}", args.runs, args.endpoints, out_dir.display());
    if args.quick && args.sizes.is_none() {
        println!("bench: quick run: N scaled down to {QUICK_SIZES:?} (the full run measures {FULL_SIZES:?})");
    }

    workspace::build_release()?;
    let bins = workspace::release_binaries();
    let lab = lab_setup::BenchLab::up(&bins)?;
    let started = Instant::now();
    let mut samples = Samples::default();
    let end = started + durations.budget;
    // Largest first: it needs the most time (kube-proxy's modes take
    // minutes to load 10,000 Services), the smaller sizes fit after it.
    let mut order = sizes.clone();
    order.sort_unstable_by(|a, b| b.cmp(a));
    for (i, &n) in order.iter().enumerate() {
        let cluster = Cluster::synthetic(&SyntheticSpec {
            services: n,
            endpoints_per_service: args.endpoints,
            target_endpoints: lab.backend_ips(),
            spare_endpoint: Some(lab.spare_ip()),
            random_position: random_position(n),
        });
        let budget = Budget {
            end,
            sizes_after: order.len() - i - 1,
        };
        measure_size(&lab, &cluster, n, args.runs, &durations, &budget, &mut samples)?;
    }
    let total = started.elapsed();
    drop(lab);

    let machine = report::Machine::describe();
    let table = report::markdown(&samples, &sizes, &machine, total, args.quick);
    std::fs::write(out_dir.join("results.md"), &table)?;
    std::fs::write(out_dir.join("samples.csv"), samples.csv())?;
    chart::draw(&samples, &sizes, &out_dir.join("chart.png"))?;
    println!("\n{table}");
    println!("bench: measured in {:.0} s; wrote {}/results.md, samples.csv, chart.png", total.as_secs_f64(), out_dir.display());
    Ok(())
}

/// One size: every mode programmed into its node (timed), then runs of
/// traffic and an endpoint change per mode, modes interleaved; then more
/// programming-from-empty samples while time allows.
fn measure_size(
    lab: &lab_setup::BenchLab,
    cluster: &Cluster,
    n: usize,
    runs: usize,
    durations: &Durations,
    budget: &Budget,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let size_started = Instant::now();
    let mut deployed = Vec::new();
    let mut program_cost = std::collections::BTreeMap::new();
    for mode in Mode::ALL {
        let t = Instant::now();
        let (d, took) = with_progress(&format!("N={n} {:<12} programming", mode.label()), || modes::Deployed::program(lab, mode, cluster))
            .with_context(|| format!("N={n}: programming {}", mode.label()))?;
        println!("bench: N={n} {:<12} programmed in {}", mode.label(), ms(took));
        samples.add(n, mode, Metric::Program, took.map(millis));
        program_cost.insert(mode, t.elapsed());
        deployed.push(d);
    }
    let programmed = size_started.elapsed();
    let mut round = Duration::ZERO;
    for run in 0..runs {
        // Each smaller size still to come: its runs, and programming that
        // takes a fraction of this size's (it grows with N).
        let reserve = (programmed / 5 + round * runs as u32) * budget.sizes_after as u32;
        if run > 0 && !budget.fits(round + reserve) {
            println!("bench: N={n}: time budget reached after {run} runs");
            break;
        }
        let round_started = Instant::now();
        // A B C D, then B C D A, ...: interleaved, and no mode always first.
        for k in 0..deployed.len() {
            let d = &mut deployed[(run + k) % Mode::ALL.len()];
            let t = modes::traffic(lab, d.mode, cluster, durations).with_context(|| format!("N={n} run {}: {}", run + 1, d.mode.label()))?;
            let change = d.change_endpoint(lab, cluster).with_context(|| format!("N={n}: endpoint change, {}", d.mode.label()))?;
            println!("bench: N={n} run {}/{runs} {:<12} {}  endpoint change {}", run + 1, d.mode.label(), t.summary(), ms(change));
            samples.add_traffic(n, d.mode, &t);
            samples.add(n, d.mode, Metric::EndpointChange, change.map(millis));
        }
        round = round.max(round_started.elapsed());
    }
    let reserve = (programmed / 5 + round * runs as u32) * budget.sizes_after as u32;
    // Programming from empty again, as long as another round fits.
    let mut extra = 1;
    while extra < runs {
        let mut any = false;
        for k in 0..deployed.len() {
            let i = (extra + k) % deployed.len();
            let mode = deployed[i].mode;
            // Removing costs about what programming did.
            if mode == Mode::Direct || !budget.fits(program_cost[&mode] * 2 + reserve) {
                continue;
            }
            deployed[i].remove(lab)?;
            let (d, took) = modes::Deployed::program(lab, mode, cluster)?;
            samples.add(n, mode, Metric::Program, took.map(millis));
            deployed[i] = d;
            any = true;
        }
        if !any {
            break;
        }
        extra += 1;
    }
    for mut d in deployed {
        d.remove(lab)?;
    }
    Ok(())
}

/// Runs `work`, printing `what` and the time so far every 15 s until it is
/// done: programming 10,000 Services takes kube-proxy's modes minutes.
fn with_progress<T>(what: &str, work: impl FnOnce() -> T) -> T {
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut next = Duration::from_secs(15);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if started.elapsed() >= next {
                    println!("bench: {what}: {} s so far", started.elapsed().as_secs());
                    next += Duration::from_secs(15);
                }
            }
        });
        let out = work();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    })
}

/// The run's end, and how many sizes are still to be measured.
struct Budget {
    end: Instant,
    sizes_after: usize,
}

impl Budget {
    fn fits(&self, cost: Duration) -> bool {
        Instant::now() + cost < self.end
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("n/a".into(), |d| format!("{:.1} ms", millis(d)))
}

/// A position for the second target that is neither first nor last,
/// different from run to run of the benchmark.
fn random_position(n: usize) -> Option<usize> {
    if n < 2 {
        return None;
    }
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(7) as usize;
    Some(if n == 2 { 0 } else { seed % (n - 2) + 1 })
}

fn results_dir() -> anyhow::Result<PathBuf> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let stamp = report::utc_stamp(secs);
    let dir = workspace::target_dir().join("bench-results").join(stamp);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
