//! Paths and cargo invocations.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The debug profile's output directory.
pub fn bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    target.join("debug")
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
