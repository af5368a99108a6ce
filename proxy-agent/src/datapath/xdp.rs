//! The XDP fast path on external devices, with pinned links like the tc
//! ones: a restarted agent swaps its program into the existing link in
//! place, and an agent started without `--xdp` removes links a previous one
//! left, so the flag can be turned off by a restart.

use std::os::fd::AsFd;

use anyhow::Context;
use aya::programs::links::FdLink;
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;

use super::link_detach::{detach_pinned_link, replace_program_of_pinned_link};
use super::PinLayout;

pub(super) const PROGRAM: &str = "proxy_xdp_external";

/// Loads the XDP program (with `--xdp`, once, before any attach).
pub fn load_xdp(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let program: &mut Xdp = ebpf.program_mut(PROGRAM).context("XDP program missing")?.try_into()?;
    program.load().context("loading the XDP program (verifier)")
}

/// Attaches the loaded XDP program to `device` (native mode where the
/// driver has it, as veth does).
pub fn attach_xdp(ebpf: &mut Ebpf, layout: &PinLayout, device: &str) -> anyhow::Result<()> {
    let program: &mut Xdp = ebpf.program_mut(PROGRAM).context("XDP program missing")?.try_into()?;
    let pin = layout.xdp_link(device);
    if pin.exists() {
        match replace_program_of_pinned_link(&pin, program.fd()?.as_fd()) {
            Ok(()) => {
                tracing::info!(device, "replaced program on existing XDP link");
                return Ok(());
            }
            Err(error) => {
                tracing::info!(device, %error, "stale XDP link; attaching afresh");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let link_id = program
        .attach(device, XdpMode::Default)
        .with_context(|| format!("attaching XDP to {device}"))?;
    let link: FdLink = program.take_link(link_id)?.try_into()?;
    link.pin(&pin).with_context(|| format!("pinning {}", pin.display()))?;
    tracing::info!(device, "attached XDP");
    Ok(())
}

/// Detaches and unpins every XDP link (for an agent running without
/// `--xdp`).
pub fn detach_xdp(layout: &PinLayout) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(layout.links()) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PinLayout::XDP) {
            continue;
        }
        let pin = entry.path();
        if let Err(error) = detach_pinned_link(&pin) {
            tracing::warn!(path = %pin.display(), %error, "detaching XDP link");
        }
        std::fs::remove_file(&pin)?;
        tracing::info!(path = %pin.display(), "XDP turned off: link removed");
    }
    Ok(())
}
