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

/// Waits until this process is the only agent using the pins under `root`,
/// and stays so while the returned file is open: an exclusive lock on the
/// directory. Two agents on one node would fight over the same maps and
/// links (two DaemonSets, or a rollout that starts the new pod before the
/// old one has gone); the second waits, saying why, and takes over when
/// the first exits.
pub async fn lock_node(root: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let dir = std::fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
    let mut said = false;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            if said {
                tracing::info!(dir = %root.display(), "the other agent is gone; taking over");
            }
            return Ok(dir);
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(error).with_context(|| format!("locking {}", root.display()));
        }
        if !said {
            tracing::error!(dir = %root.display(), "another agent is serving this node from the same pins; waiting for it to exit");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
