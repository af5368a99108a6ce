//! The control-plane benchmark; see `proxy_lab::bench_sync`. Run it through
//! `cargo xtask bench-sync`, which builds release binaries first; needs root.

use std::path::PathBuf;

use clap::Parser;
use proxy_lab::bench_sync::{self, Options};
use proxy_lab::Binaries;

#[derive(Parser)]
#[command(name = "bench-sync", about = "API server change -> pinned map latency, start-up sync time and agent memory")]
struct Args {
    /// Directory holding proxy-agent and the lab binaries (a release build).
    #[arg(long)]
    bin_dir: PathBuf,
    /// Cluster sizes: Services, each with one slice of `--endpoints` endpoints.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    sizes: Vec<usize>,
    /// Changes measured per size (after a few warm-up ones).
    #[arg(long, default_value_t = 200)]
    changes: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(proxy_lab::privilege::is_root(), "bench-sync builds network namespaces and loads eBPF: run it as root");
    let binaries = Binaries::in_dir(&args.bin_dir);
    let options = Options { sizes: args.sizes, changes: args.changes, endpoints_per_service: args.endpoints, seed: args.seed };
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let reports = bench_sync::run(&binaries, &options, &mut |line| eprintln!("bench-sync: {line}"))?;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("{}", bench_sync::table(&reports));
    print!("{}", bench_sync::startup_details(&reports));
    println!("load average before: {} after: {}", load_before.trim(), load_after.trim());
    Ok(())
}
