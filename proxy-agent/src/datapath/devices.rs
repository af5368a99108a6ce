//! A device's programs as one unit: what a pod's or the node's device gets,
//! and its pins, which are named after the device. Only pins under the
//! agent's own directory are ever detached: what others attached to the
//! same devices (a CNI's programs) is never touched.

use std::path::PathBuf;

use aya::Ebpf;

use super::link_detach::detach_pinned_link;
use super::programs::{attach_tc, DeviceRole, TcHook};
use super::xdp::attach_xdp;
use super::PinLayout;

/// Attaches `role`'s programs to `device` (and XDP with `xdp`, for the
/// node's devices).
pub fn attach_device(ebpf: &mut Ebpf, layout: &PinLayout, device: &str, role: DeviceRole, xdp: bool) -> anyhow::Result<()> {
    for hook in TcHook::for_role(role) {
        attach_tc(ebpf, layout, device, *hook)?;
    }
    if xdp && role == DeviceRole::External {
        attach_xdp(ebpf, layout, device)?;
    }
    Ok(())
}

/// Detaches the programs this agent attached to `device` and removes their
/// pins (the device was renamed out of the selection, or is no longer
/// wanted). Links whose device is gone are only unpinned.
pub fn detach_device(layout: &PinLayout, device: &str) {
    for pin in device_pins(layout, device) {
        if let Err(error) = detach_pinned_link(&pin) {
            tracing::debug!(path = %pin.display(), %error, "detaching (device gone?)");
        }
        forget_pin(&pin);
    }
}

/// Removes the pins of a device that is gone: the kernel detached its links
/// when it went.
pub fn forget_device(layout: &PinLayout, device: &str) {
    for pin in device_pins(layout, device) {
        forget_pin(&pin);
    }
}

fn forget_pin(pin: &std::path::Path) {
    match std::fs::remove_file(pin) {
        Ok(()) => tracing::info!(path = %pin.display(), "removed pin"),
        Err(error) => tracing::warn!(path = %pin.display(), %error, "removing pin"),
    }
}

fn device_pins(layout: &PinLayout, device: &str) -> Vec<PathBuf> {
    PinLayout::DEVICE_PIN_PREFIXES
        .iter()
        .map(|prefix| layout.links().join(format!("{prefix}{device}")))
        .filter(|p| p.exists())
        .collect()
}

/// Devices that have pinned links of this agent (or of the one before it).
pub fn pinned_devices(layout: &PinLayout) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(layout.links()) else {
        return Vec::new();
    };
    let mut devices: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            PinLayout::DEVICE_PIN_PREFIXES.iter().find_map(|p| name.strip_prefix(p).map(String::from))
        })
        .collect();
    devices.sort();
    devices.dedup();
    devices
}
