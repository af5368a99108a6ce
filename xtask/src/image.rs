//! `cargo xtask image`: builds the agent's container image from the
//! Dockerfile with whichever container engine works here (docker, podman).

use std::process::Command;

use anyhow::{ensure, Context};

use crate::workspace;

/// The name the manifests use (`manifests/daemonset.yaml`).
pub const IMAGE: &str = "ebpf-proxy-agent:dev";

/// Exit code when a command cannot run on this machine (no engine, no
/// network): distinct from a failure of what it checks.
pub const CANNOT_RUN: i32 = 2;

/// The first engine whose daemon answers. A `docker` CLI without a daemon
/// does not count.
pub fn engine() -> Option<&'static str> {
    ["docker", "podman"].into_iter().find(|engine| {
        Command::new(engine)
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

/// Says why it cannot run and exits with [`CANNOT_RUN`].
pub fn cannot_run(what: &str, why: &str) -> ! {
    eprintln!("{what}: cannot run on this machine: {why}.");
    std::process::exit(CANNOT_RUN)
}

pub fn run() -> anyhow::Result<()> {
    let Some(engine) = engine() else {
        cannot_run(
            "image",
            "no container engine answers (`docker info` and `podman info` fail). The Dockerfile builds \
             with `docker build -t ebpf-proxy-agent:dev .` wherever one does",
        )
    };
    build(engine)
}

pub fn build(engine: &str) -> anyhow::Result<()> {
    println!("image: building {IMAGE} with {engine}");
    let status = Command::new(engine)
        .args(["build", "--tag", IMAGE, "--file", "Dockerfile", "."])
        .current_dir(workspace::root())
        .env("DOCKER_BUILDKIT", "1")
        .status()
        .with_context(|| format!("running {engine} build"))?;
    ensure!(status.success(), "{engine} build failed with {status}");
    println!("image: built {IMAGE}");
    Ok(())
}
