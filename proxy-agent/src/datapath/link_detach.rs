//! Forced, synchronous detach of a pinned bpf link. Dropping the last
//! reference to a link also detaches it, but only once the kernel's deferred
//! release runs; `cleanup` promises that nothing is attached when it returns.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// enum bpf_cmd values from the kernel UAPI (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
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

pub fn detach_pinned_link(pin: &Path) -> std::io::Result<()> {
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let mut attr = Attr([0; 128]);
    // union bpf_attr { struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; } }
    attr.0[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)? as i32;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut attr = Attr([0; 128]);
    // struct { __u32 link_fd; } link_detach
    attr.0[..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr)?;
    Ok(())
}
