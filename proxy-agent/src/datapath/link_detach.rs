//! Forced, synchronous detach of a pinned bpf link. Dropping the last
//! reference to a link also detaches it, but only once the kernel's deferred
//! release runs; `cleanup` promises that nothing is attached when it returns.
//! Also the in-place program swap on a pinned link for the link kinds aya has
//! no `attach_to_link` for (cgroup links).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// enum bpf_cmd values from the kernel UAPI (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
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
