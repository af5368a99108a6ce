use std::path::Path;

use anyhow::Context;
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use super::PinLayout;

static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Which side of the node a device faces; each gets its own entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRole {
    /// A pod's host-side veth.
    Pod,
    /// The node's own network devices.
    External,
}

impl DeviceRole {
    const ALL: [DeviceRole; 2] = [DeviceRole::Pod, DeviceRole::External];

    fn program(self) -> &'static str {
        match self {
            DeviceRole::Pod => "proxy_tc_pod",
            DeviceRole::External => "proxy_tc_external",
        }
    }
}

/// Loads the programs. Maps already pinned under `layout` are reused, so a
/// new agent picks up the services, backends and flows of the one before it;
/// pinned maps of another layout (from an older build) are replaced.
pub fn load(layout: &PinLayout) -> anyhow::Result<Ebpf> {
    std::fs::create_dir_all(layout.maps())?;
    std::fs::create_dir_all(layout.links())?;
    super::layout::unpin_outdated(&layout.maps())?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(layout.maps())
        .load(PROGRAM_OBJECT)
        .context("loading the eBPF object")?;
    for role in DeviceRole::ALL {
        let program: &mut SchedClassifier = ebpf
            .program_mut(role.program())
            .with_context(|| format!("{} missing from the object", role.program()))?
            .try_into()?;
        program.load().with_context(|| format!("loading {} (verifier)", role.program()))?;
    }
    Ok(ebpf)
}

/// Attaches the tc ingress program for `role` to `device` with a pinned tcx
/// link. If a previous agent left a link there, its program is replaced in
/// place (atomically, by the kernel), so no packet ever meets an empty hook.
pub fn attach_tc_ingress(ebpf: &mut Ebpf, layout: &PinLayout, device: &str, role: DeviceRole) -> anyhow::Result<()> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(role.program())
        .context("tc program missing")?
        .try_into()?;
    let pin = layout.tc_ingress_link(device);
    if pin.exists() {
        match replace_pinned(program, &pin) {
            Ok(()) => {
                tracing::info!(device, ?role, "replaced program on existing tc ingress link");
                return Ok(());
            }
            Err(error) => {
                tracing::warn!(device, %error, "stale tc ingress link; attaching afresh");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let link_id = program
        .attach_with_options(device, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching tc ingress to {device}"))?;
    let link: FdLink = program.take_link(link_id)?.try_into()?;
    link.pin(&pin).with_context(|| format!("pinning {}", pin.display()))?;
    tracing::info!(device, ?role, "attached tc ingress");
    Ok(())
}

fn replace_pinned(program: &mut SchedClassifier, pin: &Path) -> anyhow::Result<()> {
    let link: FdLink = PinnedLink::from_pin(pin)?.into();
    let link = SchedClassifierLink::try_from(link)?;
    let id = program.attach_to_link(link)?;
    // The pin keeps the link alive; dropping our handle only closes our fd.
    drop(program.take_link(id)?);
    Ok(())
}

/// Detaches every program and removes every map this agent pinned.
pub fn cleanup(layout: &PinLayout) -> anyhow::Result<()> {
    if !layout.root.exists() {
        tracing::info!(path = %layout.root.display(), "nothing to clean up");
        return Ok(());
    }
    for link in pins_in(&layout.links()) {
        if let Err(error) = super::link_detach::detach_pinned_link(&link) {
            // Its device is gone, or the link was detached already.
            tracing::warn!(path = %link.display(), %error, "detaching link");
        }
    }
    for pin in pins_in(&layout.links()).into_iter().chain(pins_in(&layout.maps())) {
        std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        tracing::info!(path = %pin.display(), "removed pin");
    }
    std::fs::remove_dir_all(&layout.root).with_context(|| format!("removing {}", layout.root.display()))?;
    Ok(())
}

fn pins_in(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}
