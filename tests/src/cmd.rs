//! Running commands, with the failure message a person needs.

use std::process::{Command, Output};

use anyhow::{bail, Context};

/// Runs `program args...`, failing with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = output(program, args)?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn output(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))
}

/// `ip -n NS args...`
pub fn ip(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Runs a command inside a namespace.
pub fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// A command that runs `program` inside namespace `ns`, to spawn.
pub fn ns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

pub fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    in_ns(ns, &["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
}
