//! Socket-level load balancing: the four cgroup sock_addr programs attached
//! to one cgroup v2 directory with pinned links, like the tc links: a
//! restarted agent swaps its programs into the existing links in place, and
//! `cleanup` detaches them with every other pinned link.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::Ebpf;

use super::link_detach::replace_program_of_pinned_link;
use super::PinLayout;

/// (program in the object, hook name used in the pin's name).
const SOCK_HOOKS: [(&str, &str); 4] = [
    ("proxy_sock_connect4", "connect4"),
    ("proxy_sock_sendmsg4", "sendmsg4"),
    ("proxy_sock_recvmsg4", "recvmsg4"),
    ("proxy_sock_getpeername4", "getpeername4"),
];

/// Loads the socket programs and attaches them to the cgroup v2 directory
/// `cgroup`: processes in it (and below it) reach frontends by socket-level
/// translation. Loaded only here, so an agent without `--cgroup` runs
/// exactly the programs it ran before.
pub fn attach_cgroup(ebpf: &mut Ebpf, layout: &PinLayout, cgroup: &Path) -> anyhow::Result<()> {
    let dir = std::fs::File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    // A cgroup's id is its directory's inode number on cgroup2.
    let cgroup_id = dir.metadata()?.ino();
    for (name, hook) in SOCK_HOOKS {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing from the object"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {name} (verifier)"))?;
        let pin = layout.cgroup_link(hook, cgroup_id);
        if pin.exists() {
            match replace_program_of_pinned_link(&pin, program.fd()?.as_fd()) {
                Ok(()) => {
                    tracing::info!(hook, cgroup = %cgroup.display(), "replaced program on existing cgroup link");
                    continue;
                }
                Err(error) => {
                    // Its cgroup was removed and made again, or the link was
                    // detached by hand.
                    tracing::warn!(hook, %error, "stale cgroup link; attaching afresh");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let link_id = program
            .attach(&dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {hook} to {}", cgroup.display()))?;
        let link: FdLink = program.take_link(link_id)?.try_into()?;
        link.pin(&pin).with_context(|| format!("pinning {}", pin.display()))?;
        tracing::info!(hook, cgroup = %cgroup.display(), "attached socket hook");
    }
    Ok(())
}
