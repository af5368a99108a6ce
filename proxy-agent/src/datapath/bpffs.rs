use std::path::Path;

use anyhow::Context;
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::statfs;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mounts bpffs at `path` unless one is already there. Pins only outlive the
/// agent on a bpffs that is not private to it, so the mount is made in the
/// agent's own mount namespace, which on a node is the host's.
pub fn ensure_bpffs(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let fs = statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    if fs.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    mount(Some("bpf"), path, Some("bpf"), MsFlags::empty(), Some("mode=0700"))
        .with_context(|| format!("mounting bpffs at {}", path.display()))?;
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}
