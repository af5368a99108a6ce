//! Orchestration only: toolchain set-up, builds, the lab demo, test runs.

mod bench_sync;
mod bench;
mod demo;
mod e2e_kind;
mod image;
mod manifests;
mod setup;
mod workspace;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "ebpf-proxy developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what builds and tests need (rust-src, bpf-linker, Debian packages). Idempotent.
    Setup,
    /// Build the agent (with its embedded eBPF object) and the lab programs.
    Build,
    /// Run every test: unit tests and the privileged lab tests (as root).
    Test {
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Start the lab, run the agent on the example manifests, send traffic, print what answered.
    Demo,
    /// Benchmark against kube-proxy's iptables and nftables modes (as root; not part of `test`).
    Bench(bench::BenchArgs),
    /// Remove lab namespaces and mounts left by killed runs.
    LabClean,
    /// Render manifests/ and validate every manifest against the Kubernetes schemas, offline.
    Manifests,
    /// Build the agent's container image (needs docker or podman; exits 2 without).
    Image,
    /// kind cluster without kube-proxy: install, check ClusterIP, NodePort, LoadBalancer
    /// and an endpoint change, delete (needs a container engine and internet; exits 2 without).
    E2eKind,
    /// Control-plane benchmark: API change -> pinned map latency, start-up sync, agent memory (root).
    BenchSync(bench_sync::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build => {
            setup::run()?;
            workspace::build()
        }
        Command::Test { args } => {
            setup::run()?;
            manifests::check()?;
            workspace::build()?;
            workspace::test(&args)
        }
        Command::Demo => {
            setup::run()?;
            workspace::build()?;
            demo::run()
        }
        Command::Manifests => {
            setup::run()?;
            manifests::check()
        }
        Command::Image => image::run(),
        Command::E2eKind => e2e_kind::run_e2e(),
        Command::BenchSync(args) => {
            setup::run()?;
            bench_sync::run(args)
        }
        Command::Bench(args) => {
            setup::run()?;
            bench::run(args)
        }
        Command::LabClean => {
            proxy_lab::lab::remove_stale_labs();
            println!("lab namespaces left: {:?}", proxy_lab::lab::lab_namespaces());
            Ok(())
        }
    }
}
