//! What makes a lab node look like a kind node to the agent, beyond its
//! network namespace: its own root cgroup with a cgroup namespace rooted
//! there (a kind node is a container with a private cgroup namespace), the
//! kubepods-style cgroups its pods' processes run in, a directory standing
//! for its host filesystem (the DaemonSet's hostPath volumes), and
//! kindnet's masquerade rules.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cmd::{in_ns, run};
use crate::lab::wait_until;

/// Where the lab mounts cgroup2, inside its run directory.
pub const CGROUP_MOUNT: &str = "cgroup2";

/// The lab's cgroup2 mount (the machine's hierarchy, wherever the machine
/// mounts it: the lab never attaches anything to the machine's cgroups,
/// only to directories it makes below the root).
pub fn mount_cgroup2(lab_dir: &Path) -> anyhow::Result<PathBuf> {
    let mount = lab_dir.join(CGROUP_MOUNT);
    if !mount.join("cgroup.procs").exists() {
        std::fs::create_dir_all(&mount)?;
        run("mount", &["-t", "cgroup2", "none", &mount.to_string_lossy()])?;
    }
    Ok(mount)
}

/// A 64-bit random value for names (no rand dependency: the kernel's).
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: buf is 8 writable bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(n, 8, "getrandom");
    u64::from_ne_bytes(buf)
}

/// kindnet's host-side device name for a pod: `veth` and 8 hex digits.
pub fn kindnet_veth_name() -> String {
    format!("veth{:08x}", random_u64() as u32)
}

/// The cgroup a kubelet with the systemd driver and containerd gives a
/// BestEffort pod's container, below the node's root cgroup.
pub fn pod_cgroup(node_cgroup: &Path) -> PathBuf {
    let uid = format!("{:016x}{:016x}", random_u64(), random_u64());
    let pod = format!("{}_{}_{}_{}_{}", &uid[..8], &uid[8..12], &uid[12..16], &uid[16..20], &uid[20..32]);
    node_cgroup
        .join("kubepods.slice/kubepods-besteffort.slice")
        .join(format!("kubepods-besteffort-pod{pod}.slice"))
        .join(format!("cri-containerd-{:016x}{:016x}{:016x}{:016x}.scope", random_u64(), random_u64(), random_u64(), random_u64()))
}

/// The node's cgroup for its own host processes (kubelet, a host-network
/// client).
pub fn host_cgroup(node_cgroup: &Path) -> PathBuf {
    node_cgroup.join("system.slice/lab-host.service")
}

/// The cgroup of the agent's container (a Burstable pod).
pub fn agent_cgroup(node_cgroup: &Path) -> PathBuf {
    node_cgroup.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod-ebpf-proxy.slice/cri-containerd-agent.scope")
}

/// Makes a cgroup namespace rooted at `cgroup` and keeps it at `file` (a
/// bind mount, as `ip netns` keeps network namespaces): what the host's
/// `/proc/1/ns/cgroup` is to a kind node's processes.
pub fn make_cgroup_namespace(cgroup: &Path, file: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(file.parent().unwrap())?;
    std::fs::write(file, b"")?;
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())?;
    let mut cmd = Command::new("unshare");
    cmd.arg(format!("--cgroup={}", file.display())).arg("true");
    // SAFETY: join_cgroup only makes async-signal-safe calls.
    unsafe { cmd.pre_exec(move || join_cgroup(&procs)) };
    let out = cmd.output().context("running unshare")?;
    if !out.status.success() {
        bail!("unshare --cgroup failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Whether a cgroup2 file system is mounted at `path`.
pub fn is_cgroup2_mount(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*path.to_string_lossy()) && l.split_whitespace().nth(2) == Some("cgroup2"))
}

/// Whether `mount` is a cgroup2 mount rooted at `cgroup` (same directory
/// inode): what the lab checks before an agent may attach there, so a
/// mistake can never put the hooks on the machine's own root cgroup.
pub fn is_mount_of(mount: &Path, cgroup: &Path) -> bool {
    let ino = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).ok();
    is_cgroup2_mount(mount) && ino(mount).is_some() && ino(mount) == ino(cgroup)
}

/// kindnet's masquerade (its `KIND-MASQ-AGENT` chain): traffic leaving the
/// node for anything but the pod network or a local address is
/// masqueraded to the node's address.
pub fn kindnet_masquerade(node_ns: &str, pod_network: &str) -> anyhow::Result<()> {
    let ipt = |args: &[&str]| -> anyhow::Result<()> {
        let mut full = vec!["iptables", "-w", "-t", "nat"];
        full.extend_from_slice(args);
        in_ns(node_ns, &full).map(drop)
    };
    ipt(&["-N", "KIND-MASQ-AGENT"])?;
    ipt(&[
        "-A", "POSTROUTING", "-m", "addrtype", "!", "--dst-type", "LOCAL", "-m", "comment", "--comment",
        "kind-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom KIND-MASQ-AGENT chain",
        "-j", "KIND-MASQ-AGENT",
    ])?;
    ipt(&["-A", "KIND-MASQ-AGENT", "-d", pod_network, "-m", "comment", "--comment", "kind-masq-agent: local traffic is not subject to MASQUERADE", "-j", "RETURN"])?;
    ipt(&["-A", "KIND-MASQ-AGENT", "-m", "comment", "--comment", "kind-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)", "-j", "MASQUERADE"])
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`
/// (writing "0" means "me"). Runs between fork and exec: no allocation.
pub fn join_cgroup(procs: &CStr) -> std::io::Result<()> {
    // SAFETY: plain syscalls on a NUL-terminated path and a local buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}

/// Makes `command` start in `cgroup` (created when missing).
pub fn start_in_cgroup(command: &mut Command, cgroup: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(cgroup).with_context(|| format!("creating cgroup {}", cgroup.display()))?;
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())?;
    // SAFETY: join_cgroup only makes async-signal-safe calls.
    unsafe { command.pre_exec(move || join_cgroup(&procs)) };
    Ok(())
}

/// Removes a cgroup and everything below it, deepest first, killing what
/// runs there (a cgroup with members cannot be removed).
pub fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for child in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
        remove_cgroup_tree(&child.path());
    }
    let _ = wait_until(Duration::from_secs(2), || {
        let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: a signal to a process of the lab's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::fs::remove_dir(dir).is_ok() || !dir.exists()
    });
}
