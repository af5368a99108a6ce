//! proxy-agent: the per-node agent of the eBPF service proxy.

mod agent;
mod datapath;
mod diff;
mod model;
mod skip;
mod source;
mod tables;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context;
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
enum Command {
    /// Load and attach the datapath, then keep its maps in sync with the source.
    Run(agent::RunArgs),
    /// Detach the programs and remove every pinned map and link.
    Cleanup,
    /// Print the datapath's verdict counters.
    Counters,
    /// Print the frontends and backends the maps hold.
    Services,
    /// Print the conntrack table.
    Conntrack,
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
        Command::Counters => {
            let maps = PinnedMaps::open(&layout)?;
            for (verdict, count) in maps.verdicts()? {
                println!("{:<20} {count}", verdict.name());
            }
            Ok(())
        }
        Command::Services => print_services(&layout),
        Command::Conntrack => print_conntrack(&layout),
    }
}

fn ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        proxy_common::IPPROTO_TCP => "TCP",
        proxy_common::IPPROTO_UDP => "UDP",
        _ => "?",
    }
}

fn print_services(layout: &PinLayout) -> anyhow::Result<()> {
    let maps = PinnedMaps::open(layout)?;
    let tables = maps.read_tables()?;
    println!("{:<24} {:>4} {:>6}  BACKENDS", "FRONTEND", "ID", "COUNT");
    for (key, value) in &tables.services {
        let backends: Vec<String> = (0..value.count)
            .map(|slot| {
                let slot_key = proxy_common::BackendSlotKey {
                    service_id: value.service_id,
                    slot,
                };
                match tables.slots.get(&slot_key).and_then(|id| tables.backends.get(id)) {
                    Some(b) => format!("{}:{}", ip(b.addr), u16::from_be(b.port)),
                    None => "<missing>".into(),
                }
            })
            .collect();
        let frontend = format!("{}:{}/{}", ip(key.addr), u16::from_be(key.port), proto_name(key.proto));
        println!("{frontend:<24} {:>4} {:>6}  {}", value.service_id, value.count, backends.join(" "));
    }
    Ok(())
}

fn print_conntrack(layout: &PinLayout) -> anyhow::Result<()> {
    let maps = PinnedMaps::open(layout)?;
    let mut entries = maps.conntrack_entries().context("reading conntrack")?;
    entries.sort_by_key(|(k, _)| (k.direction, k.saddr, k.sport));
    for (k, v) in entries {
        let dir = if k.direction == 0 { "original" } else { "reply" };
        println!(
            "{dir:<8} {} {}:{} -> {}:{}  nat {}:{} backend {} rev_nat {}",
            proto_name(k.proto),
            ip(k.saddr),
            u16::from_be(k.sport),
            ip(k.daddr),
            u16::from_be(k.dport),
            ip(v.nat_addr),
            u16::from_be(v.nat_port),
            v.backend_id,
            v.rev_nat_index
        );
    }
    Ok(())
}
