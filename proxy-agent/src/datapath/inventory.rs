//! What this agent's pinned links are attached to, read back from the
//! kernel (`proxy-agent list attachments`, and the start-up log).

use std::ffi::CStr;

use super::link_detach::{pinned_link_info, LinkTarget};
use super::programs::TcHook;
use super::PinLayout;

#[derive(Clone, Debug)]
pub struct Attachment {
    /// The pin's file name (`tc_ingress_eth0`, `cgroup_connect4_1234`).
    pub pin: String,
    /// tc ingress / tc egress / xdp / cgroup.
    pub hook: String,
    /// The device by name (or `ifindex N (gone)`), or the cgroup's id.
    pub target: String,
    /// The program's name as loaded, or its id when it cannot be read.
    pub program: String,
}

pub fn attachments(layout: &PinLayout) -> Vec<Attachment> {
    let Ok(entries) = std::fs::read_dir(layout.links()) else {
        return Vec::new();
    };
    let mut pins: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    pins.sort();
    let programs: Vec<(u32, String)> = aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_string()))
        .collect();
    pins.iter()
        .map(|pin| {
            let name = pin.file_name().unwrap_or_default().to_string_lossy().into_owned();
            match pinned_link_info(pin) {
                Ok(info) => {
                    let (hook, target) = match info.target {
                        LinkTarget::Tcx { ifindex, egress } => {
                            (if egress { "tc egress" } else { "tc ingress" }.to_string(), device(ifindex))
                        }
                        LinkTarget::Xdp { ifindex } => ("xdp".to_string(), device(ifindex)),
                        LinkTarget::Cgroup { cgroup_id } => (
                            format!("cgroup {}", name.split('_').nth(1).unwrap_or("?")),
                            format!("cgroup id {cgroup_id}"),
                        ),
                        LinkTarget::Other { link_type } => (format!("link type {link_type}"), "-".to_string()),
                    };
                    let program = programs
                        .iter()
                        .find(|(id, _)| *id == info.program_id)
                        .map(|(_, n)| full_name(n))
                        .unwrap_or_else(|| format!("id {}", info.program_id));
                    Attachment { pin: name, hook, target, program }
                }
                Err(error) => Attachment {
                    pin: name,
                    hook: "?".into(),
                    target: format!("unreadable: {error}"),
                    program: "-".into(),
                },
            }
        })
        .collect()
}

/// The kernel keeps 15 bytes of a program's name: ours are given back whole.
fn full_name(kernel_name: &str) -> String {
    let mut ours = TcHook::ALL
        .iter()
        .map(|hook| hook.program())
        .chain([super::xdp::PROGRAM])
        .chain(super::cgroup::SOCK_HOOKS.iter().map(|(program, _)| *program))
        .chain(proxy_common::tail::PROGRAMS.iter().map(|(_, program)| *program));
    ours.find(|full| *full == kernel_name || (kernel_name.len() == 15 && full.starts_with(kernel_name)))
        .map_or_else(|| kernel_name.to_string(), String::from)
}

/// A device's name from its index; a link whose device was deleted reports
/// index 0.
fn device(ifindex: u32) -> String {
    if ifindex == 0 {
        return "(device gone)".into();
    }
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf has room for IF_NAMESIZE bytes, as if_indextoname needs.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return format!("ifindex {ifindex} (gone)");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    unsafe { CStr::from_ptr(buf.as_ptr().cast()) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel keeps 15 bytes of a name: two programs that share them
    /// would be listed under one name.
    #[test]
    fn every_program_is_told_apart_by_the_kernels_15_bytes() {
        let names: Vec<&str> = TcHook::ALL
            .iter()
            .map(|hook| hook.program())
            .chain([super::super::xdp::PROGRAM])
            .chain(super::super::cgroup::SOCK_HOOKS.iter().map(|(program, _)| *program))
            .chain(proxy_common::tail::PROGRAMS.iter().map(|(_, program)| *program))
            .collect();
        for name in &names {
            let kernel_name = &name[..name.len().min(15)];
            assert_eq!(full_name(kernel_name), *name, "{kernel_name} names more than one program");
        }
    }
}
