use std::path::Path;

use anyhow::Context;
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::maps::{MapData, ProgramArray};
use aya::{Ebpf, EbpfLoader};
use proxy_common::tail;

use super::PinLayout;

static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Which side of the node a device faces; each gets its own programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRole {
    /// A pod's host-side device.
    Pod,
    /// The node's own network devices.
    External,
}

/// One tc program on one direction of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcHook {
    /// Traffic from a pod: its service traffic, its replies as a backend.
    PodIngress,
    /// Traffic into a pod: replies that NAT after ours hid from ingress.
    PodEgress,
    /// Traffic from outside the node, and replies from other nodes.
    ExternalIngress,
    /// Traffic leaving the node: its own flows, moved off tuples SNATed
    /// flows hold.
    ExternalEgress,
}

impl TcHook {
    pub const ALL: [TcHook; 4] = [TcHook::PodIngress, TcHook::PodEgress, TcHook::ExternalIngress, TcHook::ExternalEgress];

    pub fn for_role(role: DeviceRole) -> &'static [TcHook] {
        match role {
            DeviceRole::Pod => &[TcHook::PodIngress, TcHook::PodEgress],
            DeviceRole::External => &[TcHook::ExternalIngress, TcHook::ExternalEgress],
        }
    }

    pub fn program(self) -> &'static str {
        match self {
            TcHook::PodIngress => "proxy_tc_pod",
            TcHook::PodEgress => "proxy_tc_pod_egress",
            TcHook::ExternalIngress => "proxy_tc_external",
            TcHook::ExternalEgress => "proxy_tc_node_egress",
        }
    }

    fn attach_type(self) -> TcAttachType {
        if self.egress() {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        }
    }

    /// The direction's word, for logs and errors.
    pub fn direction(self) -> &'static str {
        if self.egress() {
            "egress"
        } else {
            "ingress"
        }
    }

    fn egress(self) -> bool {
        matches!(self, TcHook::PodEgress | TcHook::ExternalEgress)
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
    for hook in TcHook::ALL {
        let started = std::time::Instant::now();
        let program: &mut SchedClassifier = ebpf
            .program_mut(hook.program())
            .with_context(|| format!("{} missing from the object", hook.program()))?
            .try_into()?;
        program.load().with_context(|| format!("loading {} (verifier)", hook.program()))?;
        tracing::info!(program = hook.program(), elapsed_ms = started.elapsed().as_millis() as u64, "loaded");
    }
    fill_tail_calls(&mut ebpf)?;
    Ok(ebpf)
}

/// Loads the programs the tc entry points hand rare packets to and puts
/// them in the (pinned) tail-call array, replacing an earlier agent's.
fn fill_tail_calls(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut fds = Vec::new();
    for (slot, name) in tail::PROGRAMS {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing from the object"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {name} (verifier)"))?;
        fds.push((slot, program.fd()?.try_clone()?));
    }
    let map = ebpf.map_mut(tail::TAIL_CALLS_MAP).context("tail-call map missing from the object")?;
    let mut array: ProgramArray<&mut MapData> = map.try_into()?;
    for (slot, fd) in &fds {
        array.set(*slot, fd, 0).with_context(|| format!("filling tail-call slot {slot}"))?;
    }
    Ok(())
}

/// Attaches `hook`'s program to `device` with a pinned tcx link, behind
/// whatever else is attached there (a CNI's programs keep running: ours
/// hands on what is not its own). If a previous agent left a link there, its
/// program is replaced in place (atomically, by the kernel), so no packet
/// ever meets an empty hook.
pub fn attach_tc(ebpf: &mut Ebpf, layout: &PinLayout, device: &str, hook: TcHook) -> anyhow::Result<()> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(hook.program())
        .context("tc program missing")?
        .try_into()?;
    let pin = layout.tc_link(device, hook.egress());
    if pin.exists() {
        match replace_pinned(program, &pin) {
            Ok(()) => {
                tracing::info!(device, ?hook, "replaced program on existing tc link");
                return Ok(());
            }
            Err(error) => {
                // Its device was removed and made again under the same name.
                tracing::info!(device, %error, "stale tc link; attaching afresh");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let link_id = program
        .attach_with_options(device, hook.attach_type(), TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching tc {} to {device}", hook.direction()))?;
    let link: FdLink = program.take_link(link_id)?.try_into()?;
    link.pin(&pin).with_context(|| format!("pinning {}", pin.display()))?;
    tracing::info!(device, ?hook, "attached tc program");
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
