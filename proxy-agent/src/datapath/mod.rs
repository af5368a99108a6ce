//! The only module that talks to the kernel: mounting bpffs, loading and
//! attaching the programs, and reading and writing the pinned maps.

mod batch;
mod bpffs;
mod link_detach;
mod maps;
mod programs;

pub use bpffs::ensure_bpffs;
pub use maps::PinnedMaps;
pub use programs::{attach_tc_ingress, cleanup, load};

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
}
