//! The only module that talks to the kernel: mounting bpffs, loading and
//! attaching the programs, and reading and writing the pinned maps.

mod batch;
mod bpffs;
mod cgroup;
mod devices;
mod inventory;
mod layout;
mod link_detach;
pub mod links;
mod maps;
mod programs;
mod sock_rev_nat;
pub mod udp_sockets;
mod xdp;

pub use bpffs::{ensure_bpffs, lock_node};
pub use cgroup::{attach_cgroup, prepare_cgroup_root};
pub use devices::{attach_device, detach_device, forget_device, pinned_devices};
pub use inventory::{attachments, Attachment};
pub use maps::{CtTable, PinnedMaps};
pub use programs::{cleanup, load, DeviceRole};
pub use sock_rev_nat::SockRevNat;
pub use xdp::{detach_xdp, load_xdp};

use std::path::{Path, PathBuf};

/// Where one agent keeps its pins, below the bpffs mount point.
#[derive(Clone, Debug)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub const DIR: &'static str = "ebpf-proxy";

    pub fn new(bpffs: &Path) -> Self {
        PinLayout {
            root: bpffs.join(Self::DIR),
        }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Pin names of a device's links start with one of these, the device's
    /// name after it.
    pub const DEVICE_PIN_PREFIXES: [&'static str; 3] = [Self::TC_INGRESS, Self::TC_EGRESS, Self::XDP];
    const TC_INGRESS: &'static str = "tc_ingress_";
    const TC_EGRESS: &'static str = "tc_egress_";
    pub const XDP: &'static str = "xdp_";

    /// A tc link on `device`.
    pub fn tc_link(&self, device: &str, egress: bool) -> PathBuf {
        let prefix = if egress { Self::TC_EGRESS } else { Self::TC_INGRESS };
        self.links().join(format!("{prefix}{device}"))
    }

    pub fn xdp_link(&self, device: &str) -> PathBuf {
        self.links().join(format!("{}{device}", Self::XDP))
    }

    /// One link per socket hook and cgroup, named by the cgroup's id (its
    /// inode), so a restarted agent finds the links on the same cgroup.
    pub fn cgroup_link(&self, hook: &str, cgroup_id: u64) -> PathBuf {
        self.links().join(format!("cgroup_{hook}_{cgroup_id}"))
    }
}

/// The kernel's cookie for the agent's own network namespace, the node's
/// (the DaemonSet runs with host networking): what `bpf_get_netns_cookie`
/// gives the socket hooks for host sockets.
pub fn own_netns_cookie() -> std::io::Result<u64> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let socket = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len outlive the call and len is cookie's size.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
