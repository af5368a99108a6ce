//! `cargo xtask bench-sync`: builds release binaries and runs the
//! control-plane benchmark (the `bench-sync` binary of the tests package,
//! where the measuring lives).

use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Smaller and shorter: sizes 1 and 1000, 50 changes each.
    #[arg(long)]
    quick: bool,
    /// Numbers of Services (10 endpoints each), comma-separated.
    #[arg(long)]
    sizes: Option<String>,
    /// Changes measured per size.
    #[arg(long)]
    changes: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure!(proxy_lab::privilege::is_root(), "the benchmark builds network namespaces and loads eBPF: run it as root");
    let status = workspace::cargo()
        .args(["build", "--quiet", "--release", "--package", "proxy-agent", "--package", "proxy-tests", "--bins"])
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("release build failed");
    }
    let release = workspace::bin_dir().with_file_name("release");
    let (default_sizes, default_changes) = if args.quick { ("1,1000", 50) } else { ("1,1000,10000", 200) };
    let status = Command::new(release.join("bench-sync"))
        .arg("--bin-dir")
        .arg(&release)
        .args(["--sizes", args.sizes.as_deref().unwrap_or(default_sizes)])
        .args(["--changes", &args.changes.unwrap_or(default_changes).to_string()])
        .status()
        .context("running bench-sync")?;
    if !status.success() {
        bail!("bench-sync failed");
    }
    Ok(())
}
