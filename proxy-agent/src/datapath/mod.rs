//! The only module that talks to the kernel: mounting bpffs, loading and
//! attaching the programs, and reading and writing the pinned maps.

mod batch;
mod bpffs;
mod cgroup;
mod layout;
mod link_detach;
mod maps;
mod programs;
mod sock_rev_nat;
pub mod udp_sockets;
mod xdp;

pub use bpffs::ensure_bpffs;
pub use cgroup::attach_cgroup;
pub use maps::PinnedMaps;
pub use programs::{attach_tc_ingress, cleanup, load, DeviceRole};
pub use sock_rev_nat::SockRevNat;
pub use xdp::{attach_xdp, detach_xdp};

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

    pub fn tc_ingress_link(&self, device: &str) -> PathBuf {
        self.links().join(format!("tc_ingress_{device}"))
    }

    /// One link per socket hook and cgroup, named by the cgroup's id (its
    /// inode), so a restarted agent finds the links on the same cgroup.
    pub fn cgroup_link(&self, hook: &str, cgroup_id: u64) -> PathBuf {
        self.links().join(format!("cgroup_{hook}_{cgroup_id}"))
    }
}
