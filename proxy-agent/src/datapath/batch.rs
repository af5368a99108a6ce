//! Batched writes to a map: one bpf() call for many entries
//! (BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH, Linux 5.6), which aya 0.14
//! does not wrap. A start-up sync of ten thousand Services is some 200,000
//! entries; one call per entry was most of its time.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use aya::Pod;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch stopped part way: how many entries went in, and why not the next.
#[derive(Debug)]
pub struct Partial {
    pub done: usize,
    pub error: std::io::Error,
}

/// Writes `keys[i] -> values[i]` in order (BPF_ANY).
pub fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> Result<(), Partial> {
    assert_eq!(keys.len(), values.len());
    call(BPF_MAP_UPDATE_BATCH, map, keys.as_ptr() as u64, values.as_ptr() as u64, keys.len())
}

/// Deletes `keys` in order; a missing key stops the batch (ENOENT).
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<(), Partial> {
    call(BPF_MAP_DELETE_BATCH, map, keys.as_ptr() as u64, 0, keys.len())
}

fn call(cmd: libc::c_long, map: &MapData, keys: u64, values: u64, count: usize) -> Result<(), Partial> {
    let mut attr = BatchAttr {
        keys,
        values,
        count: count as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: attr points at `count` keys (and values) of the map's key and
    // value types, alive for the call; the kernel writes back only `count`.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, &mut attr as *mut BatchAttr, size_of::<BatchAttr>() as u32) };
    if ret == 0 {
        Ok(())
    } else {
        let error = std::io::Error::last_os_error();
        Err(Partial { done: (attr.count as usize).min(count), error })
    }
}
