//! Forced, synchronous detach of a pinned bpf link. Dropping the last
//! reference to a link also detaches it, but only once the kernel's deferred
//! release runs; `cleanup` promises that nothing is attached when it returns.
//! Also the in-place program swap on a pinned link for the link kinds aya has
//! no `attach_to_link` for (cgroup links), and what a pinned link is
//! attached to (aya's link info leaves the target out).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// enum bpf_cmd values from the kernel UAPI (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Room for any bpf_attr variant; the kernel checks the unused tail is zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed, properly sized bpf_attr that outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, std::mem::size_of::<Attr>()) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn open_pinned_link(pin: &Path) -> std::io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let mut attr = Attr([0; 128]);
    // union bpf_attr { struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; } }
    attr.0[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)? as i32;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Atomically swaps the program of the pinned link `pin` for `program`: the
/// hook is never empty, not even for one call.
pub fn replace_program_of_pinned_link(pin: &Path, program: BorrowedFd<'_>) -> std::io::Result<()> {
    let link = open_pinned_link(pin)?;
    let mut attr = Attr([0; 128]);
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; } link_update
    attr.0[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_UPDATE, &mut attr)?;
    Ok(())
}

pub fn detach_pinned_link(pin: &Path) -> std::io::Result<()> {
    let fd = open_pinned_link(pin)?;
    let mut attr = Attr([0; 128]);
    // struct { __u32 link_fd; } link_detach
    attr.0[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr)?;
    Ok(())
}

/// What a pinned link is attached to, from `struct bpf_link_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkTarget {
    /// A tcx link: the device (0 once the device is gone) and whether on
    /// egress.
    Tcx { ifindex: u32, egress: bool },
    Xdp { ifindex: u32 },
    Cgroup { cgroup_id: u64 },
    Other { link_type: u32 },
}

#[derive(Clone, Copy, Debug)]
pub struct PinnedLinkInfo {
    pub program_id: u32,
    pub target: LinkTarget,
}

// enum bpf_link_type and enum bpf_attach_type values from the kernel UAPI.
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_LINK_TYPE_TCX: u32 = 11;
const BPF_TCX_EGRESS: u32 = 47;

pub fn pinned_link_info(pin: &Path) -> std::io::Result<PinnedLinkInfo> {
    let link = open_pinned_link(pin)?;
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union.
    let mut info = Attr([0; 128]);
    let mut attr = Attr([0; 128]);
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; } info
    attr.0[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(info.0.len() as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(info.0.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let u32_at = |off: usize| u32::from_ne_bytes(info.0[off..off + 4].try_into().unwrap());
    let target = match u32_at(0) {
        // union { struct { __u32 ifindex; __u32 attach_type; } tcx; ... }
        BPF_LINK_TYPE_TCX => LinkTarget::Tcx {
            ifindex: u32_at(16),
            egress: u32_at(20) == BPF_TCX_EGRESS,
        },
        BPF_LINK_TYPE_XDP => LinkTarget::Xdp { ifindex: u32_at(16) },
        // struct { __u64 cgroup_id; __u32 attach_type; } cgroup
        BPF_LINK_TYPE_CGROUP => LinkTarget::Cgroup {
            cgroup_id: u64::from_ne_bytes(info.0[16..24].try_into().unwrap()),
        },
        link_type => LinkTarget::Other { link_type },
    };
    Ok(PinnedLinkInfo {
        program_id: u32_at(8),
        target,
    })
}
