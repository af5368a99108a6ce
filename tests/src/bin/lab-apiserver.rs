//! A Kubernetes-compatible test API server for the lab: plain HTTP, in
//! memory, Services, EndpointSlices and Nodes. Prints the address it is
//! bound to on the first line of stdout (useful with `--listen 127.0.0.1:0`)
//! and logs each request to stderr.
//!
//!     lab-apiserver --listen 127.0.0.1:6443 &
//!     kubectl --server=http://127.0.0.1:6443 create --validate=false -f manifests.yaml

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use proxy_lab::apiserver::{self, Config};

#[derive(Parser)]
#[command(name = "lab-apiserver", about = "In-memory Kubernetes API server for the lab (plain HTTP)")]
struct Args {
    /// Address and port to listen on; port 0 picks a free one.
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Milliseconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 1000)]
    bookmark_interval_ms: u64,
    /// Events kept for watches resuming from a resourceVersion.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Keep the objects in this JSON file: loaded at start if it exists,
    /// rewritten after every change.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Start from the objects in this file (as `--state` writes it) and
    /// keep changes in memory only; for benchmarks, where rewriting a file
    /// of thousands of objects on every change would cost more than the
    /// change.
    #[arg(long, conflicts_with = "state")]
    initial_state: Option<PathBuf>,
    /// Do not log requests.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config {
        bookmark_interval: Duration::from_millis(args.bookmark_interval_ms.max(10)),
        history: args.history,
        log_requests: !args.quiet,
        state_file: args.state,
        initial_state: args.initial_state,
        ..Config::default()
    };
    let server = apiserver::ApiServer::new(config)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!("{addr}");
    std::io::stdout().flush()?;
    eprintln!("lab-apiserver: listening on http://{addr}");
    tokio::select! {
        _ = apiserver::serve(listener, server) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
