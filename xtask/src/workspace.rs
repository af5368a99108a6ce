//! Paths and cargo invocations.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// The debug profile's output directory.
pub fn bin_dir() -> PathBuf {
    target_dir().join("debug")
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root()).env("PATH", crate::setup::path_with_cargo_bin());
    cmd
}

pub fn build() -> anyhow::Result<()> {
    let status = cargo()
        .args(["build", "--quiet", "--package", "proxy-agent", "--package", "proxy-tests", "--bins"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("build failed");
    }
    Ok(())
}

/// Optimised agent and lab programs, for the benchmark: kube-proxy's
/// side is optimised C (iptables-restore, nft), so ours is too.
pub fn build_release() -> anyhow::Result<()> {
    let status = cargo()
        .args(["build", "--quiet", "--release", "--package", "proxy-agent", "--package", "proxy-tests", "--bins"])
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("release build failed");
    }
    Ok(())
}

pub fn release_binaries() -> proxy_lab::Binaries {
    proxy_lab::Binaries::in_dir(&target_dir().join("release"))
}

pub fn test(extra: &[String]) -> anyhow::Result<()> {
    let agent = bin_dir().join("proxy-agent");
    if !proxy_lab::privilege::is_root() {
        eprintln!("!!!!! not root: the lab tests will report SKIPPED; run as root to execute them !!!!!");
    }
    // One lab at a time: 2 cores, and the tests measure what packets do.
    let mut args: Vec<String> = vec!["test".into(), "--".into(), "--test-threads=1".into()];
    args.extend(extra.iter().cloned());
    let status = cargo()
        .args(&args)
        .env("PROXY_AGENT_BIN", &agent)
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}
