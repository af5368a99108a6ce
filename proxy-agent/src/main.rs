//! proxy-agent: the per-node agent of the eBPF service proxy.

mod agent;
mod attacher;
mod attachments;
mod conntrack_gc;
mod datapath;
mod datapath_config;
mod diff;
mod inspect;
mod model;
mod port_protection;
mod skip;
mod source;
mod stale_sockets;
mod tables;
mod telemetry;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use datapath::{PinLayout, PinnedMaps};

#[derive(Parser)]
#[command(version, about = "eBPF replacement for kube-proxy: node agent")]
struct Cli {
    /// Where bpffs is (or will be) mounted; pins go in an `ebpf-proxy` directory below it.
    #[arg(long, global = true, default_value = "/sys/fs/bpf", env = "PROXY_BPFFS")]
    bpffs: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, at start
enum Command {
    /// Load and attach the datapath, then keep its maps in sync with the source.
    Run(agent::RunArgs),
    /// Detach the programs and remove every pinned map and link.
    Cleanup,
    /// Prepare the node, then exit (the DaemonSet's init container, which
    /// alone has CAP_SYS_ADMIN): mount bpffs at `--bpffs` unless one is
    /// there, and make `--cgroup-root` a cgroup2 mount of the host's root
    /// cgroup, mounted from the host's cgroup namespace.
    PrepareNode {
        #[arg(long, default_value = agent::DEFAULT_CGROUP_ROOT)]
        cgroup_root: PathBuf,
        /// The host's cgroup namespace (the host's `/proc/1/ns/cgroup`,
        /// mounted into the container).
        #[arg(long, default_value = "/hostproc/1/ns/cgroup")]
        host_cgroupns: PathBuf,
    },
    /// Print the datapath's verdict counters.
    Counters,
    /// Print what the pinned maps hold (frontends and their backends,
    /// backends by id, tracked flows) or where the programs are attached.
    List {
        what: inspect::What,
        /// Print at most this many conntrack flows.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    let layout = PinLayout::new(&cli.bpffs);
    match cli.command {
        Command::Run(args) => {
            agent::tune_allocator();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(agent::run(&cli.bpffs, layout, args))
        }
        Command::Cleanup => datapath::cleanup(&layout),
        Command::PrepareNode { cgroup_root, host_cgroupns } => {
            // Without bpffs the agent cannot run at all: that fails the
            // init container. Without the cgroup2 mount it still serves
            // everything but host sockets, and says so in /healthz: an init
            // container failing over it would leave the node with nothing.
            datapath::ensure_bpffs(&cli.bpffs)?;
            if let Err(error) = datapath::prepare_cgroup_root(&cgroup_root, &host_cgroupns) {
                tracing::error!(error = format!("{error:#}"), "no cgroup2 for the socket hooks; the agent will report it");
            }
            Ok(())
        }
        Command::Counters => {
            let maps = PinnedMaps::open(&layout)?;
            for (verdict, count) in maps.verdicts()? {
                println!("{:<20} {count}", verdict.name());
            }
            Ok(())
        }
        Command::List { what, limit } => inspect::list(&layout, what, limit),
    }
}
