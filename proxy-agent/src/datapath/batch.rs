//! Batched map access: one bpf() call for many entries
//! (BPF_MAP_LOOKUP_BATCH / UPDATE_BATCH / DELETE_BATCH, Linux 5.6), which
//! aya 0.14 does not wrap. A start-up sync of ten thousand Services is some
//! 200,000 entries, and a full conntrack map 262,144; one call per entry was
//! most of the time.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
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

/// Every entry of a hash map, `chunk` at a time, handed to `each`. Entries
/// added or removed meanwhile may or may not be seen, as with any walk.
pub fn for_each<K: Pod, V: Pod>(map: &MapData, chunk: usize, mut each: impl FnMut(&[K], &[V])) -> std::io::Result<()> {
    // SAFETY: Pod types are plain data, valid as all zeroes.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
    // The kernel's position in the map (a bucket index for hash maps).
    let mut position = [0u64; 2];
    let mut next = [0u64; 2];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { position.as_mut_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = syscall(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = (attr.count as usize).min(chunk);
        match result {
            Ok(()) => each(&keys[..got], &values[..got]),
            // The end of the map: the last entries came with it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                each(&keys[..got], &values[..got]);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        position = next;
        first = false;
    }
}

fn syscall(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: attr's pointers are to buffers of `count` keys and values of the
    // map's types (and 16-byte batch positions), alive for the call; the
    // kernel writes at most `count` entries.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, size_of::<BatchAttr>() as u32) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn call(cmd: libc::c_long, map: &MapData, keys: u64, values: u64, count: usize) -> Result<(), Partial> {
    let mut attr = BatchAttr {
        keys,
        values,
        count: count as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    syscall(cmd, &mut attr).map_err(|error| Partial { done: (attr.count as usize).min(count), error })
}
