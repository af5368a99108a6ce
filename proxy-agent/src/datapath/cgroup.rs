//! Socket-level load balancing: the four cgroup sock_addr programs attached
//! to the node's root cgroup (v2) with pinned links, like the tc links: a
//! restarted agent swaps its programs into the existing links in place, and
//! `cleanup` detaches them with every other pinned link. Every process of
//! the node sits below that root, pods created later too, so every socket
//! meets the hooks.
//!
//! Which directory is the node's root is not the agent's to guess: a
//! container sees cgroups through its own namespace, and hosts mount cgroup
//! v2 in different places (or, with a hybrid or v1 layout, not where
//! containers see it). The DaemonSet's init container mounts a cgroup2 of
//! its own from the host's cgroup namespace (`prepare_cgroup_root`), as
//! Cilium does, and the agent attaches there.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context};
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::statfs;
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::Ebpf;

use super::link_detach::replace_program_of_pinned_link;
use super::PinLayout;

/// (program in the object, hook name used in the pin's name).
pub(super) const SOCK_HOOKS: [(&str, &str); 4] = [
    ("proxy_sock_connect4", "connect4"),
    ("proxy_sock_sendmsg4", "sendmsg4"),
    ("proxy_sock_recvmsg4", "recvmsg4"),
    ("proxy_sock_getpeername4", "getpeername4"),
];

const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

pub fn is_cgroup2(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC)
}

/// Loads the socket programs and attaches them to the cgroup v2 directory
/// `cgroup`: processes in it (and below it) reach frontends by socket-level
/// translation. Links this agent's directory holds for another cgroup
/// (the root moved) are detached.
pub fn attach_cgroup(ebpf: &mut Ebpf, layout: &PinLayout, cgroup: &Path) -> anyhow::Result<()> {
    if !is_cgroup2(cgroup) {
        bail!("{} is not a cgroup2 mount (the init container `prepare-node` makes it)", cgroup.display());
    }
    let dir = std::fs::File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    // A cgroup's id is its directory's inode number on cgroup2.
    let cgroup_id = dir.metadata()?.ino();
    detach_other_cgroups(layout, cgroup_id);
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

/// Detaches the socket hooks this agent's directory pinned on any cgroup
/// but `keep`.
fn detach_other_cgroups(layout: &PinLayout, keep: u64) {
    let Ok(entries) = std::fs::read_dir(layout.links()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("cgroup_").and_then(|rest| rest.rsplit('_').next()) else { continue };
        if id.parse::<u64>().is_ok_and(|id| id != keep) {
            let pin = entry.path();
            if let Err(error) = super::link_detach::detach_pinned_link(&pin) {
                tracing::warn!(path = %pin.display(), %error, "detaching socket hook of another cgroup");
            }
            let _ = std::fs::remove_file(&pin);
            tracing::info!(path = %pin.display(), "socket hook of another cgroup removed");
        }
    }
}

/// The init container's half: makes `target` a cgroup2 mount whose root is
/// the host's root cgroup. A cgroup2 mounted from inside a container's own
/// cgroup namespace would be rooted at the container's cgroup and reach
/// none of the pods, so the mount is made from the host's namespace
/// (`host_cgroupns`, the host's `/proc/1/ns/cgroup`). Works whatever the
/// host's layout: v2, hybrid (v2 beside v1 controllers) or v1 only.
/// Nothing is done when `target` is a cgroup2 mount already.
pub fn prepare_cgroup_root(target: &Path, host_cgroupns: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    if is_cgroup2(target) {
        tracing::info!(path = %target.display(), "cgroup2 already mounted");
        return Ok(());
    }
    // Fail rather than mount from our own namespace: that mount would look
    // right and serve nobody.
    let ns = std::fs::File::open(host_cgroupns)
        .with_context(|| format!("opening the host's cgroup namespace {}", host_cgroupns.display()))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWCGROUP)
        .with_context(|| format!("entering the host's cgroup namespace {}", host_cgroupns.display()))?;
    mount(Some("cgroup2"), target, Some("cgroup2"), MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mounting cgroup2 at {}", target.display()))?;
    tracing::info!(path = %target.display(), "mounted the host's cgroup2 hierarchy");
    Ok(())
}
