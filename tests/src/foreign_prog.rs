//! A stand-in for another party's program on a device (a CNI's tc
//! program): a few eBPF instructions, loaded and attached with bpf(2)
//! directly, that count the packets they see in an array map and hand each
//! one on (`TC_ACT_UNSPEC`). The lab checks with it that the agent leaves
//! such programs attached and running, before and after its own.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Context;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// Attach at the head of the device's chain (with no relative program).
const BPF_F_BEFORE: u32 = 1 << 3;

#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32_at(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64_at(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<i64> {
    // SAFETY: a zeroed bpf_attr of the kernel's maximum size, alive for the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, std::mem::size_of::<Attr>()) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

/// One eBPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = (src << 4) | dst;
    i[2..4].copy_from_slice(&off.to_ne_bytes());
    i[4..8].copy_from_slice(&imm.to_ne_bytes());
    i
}

/// Where the counting program sits in the device's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// At the head: attached before the agent's, as a CNI that was there first.
    First,
    /// At the tail: behind whatever is attached.
    Last,
}

/// A packet-counting program attached to one direction of a device, for as
/// long as this lives.
pub struct CountingProgram {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl CountingProgram {
    /// Attaches to `ifindex` (a device of the caller's network namespace).
    pub fn attach(ifindex: u32, egress: bool, position: Position) -> anyhow::Result<Self> {
        let mut attr = Attr::new();
        // map_type, key_size, value_size, max_entries
        attr.u32_at(0, BPF_MAP_TYPE_ARRAY).u32_at(4, 4).u32_at(8, 8).u32_at(12, 1);
        // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
        let map = unsafe { OwnedFd::from_raw_fd(bpf(BPF_MAP_CREATE, &mut attr).context("creating the counter map")? as i32) };
        let fd = map.as_raw_fd();
        let program: Vec<[u8; 8]> = vec![
            // r1 = map (ld_imm64 with a map fd: two slots)
            insn(0x18, 1, 1, 0, fd),
            insn(0, 0, 0, 0, 0),
            // *(u32 *)(r10 - 4) = 0; r2 = r10 - 4
            insn(0x62, 10, 0, -4, 0),
            insn(0xbf, 2, 10, 0, 0),
            insn(0x07, 2, 0, 0, -4),
            // r0 = bpf_map_lookup_elem(r1, r2)
            insn(0x85, 0, 0, 0, 1),
            // if r0 == 0 goto +2
            insn(0x15, 0, 0, 2, 0),
            // r1 = 1; lock *(u64 *)(r0 + 0) += r1
            insn(0xb7, 1, 0, 0, 1),
            insn(0xdb, 0, 1, 0, 0),
            // r0 = TC_ACT_UNSPEC (-1): hand the packet on; exit
            insn(0xb7, 0, 0, 0, -1),
            insn(0x95, 0, 0, 0, 0),
        ];
        let code: Vec<u8> = program.concat();
        let license = b"GPL\0";
        let mut attr = Attr::new();
        // prog_type, insn_cnt, insns, license
        attr.u32_at(0, BPF_PROG_TYPE_SCHED_CLS)
            .u32_at(4, program.len() as u32)
            .u64_at(8, code.as_ptr() as u64)
            .u64_at(16, license.as_ptr() as u64);
        // SAFETY: as above.
        let prog = unsafe { OwnedFd::from_raw_fd(bpf(BPF_PROG_LOAD, &mut attr).context("loading the counting program")? as i32) };
        let mut attr = Attr::new();
        // link_create: prog_fd, target_ifindex, attach_type, flags
        attr.u32_at(0, prog.as_raw_fd() as u32)
            .u32_at(4, ifindex)
            .u32_at(8, if egress { BPF_TCX_EGRESS } else { BPF_TCX_INGRESS })
            .u32_at(12, if position == Position::First { BPF_F_BEFORE } else { 0 });
        // SAFETY: as above.
        let link = unsafe { OwnedFd::from_raw_fd(bpf(BPF_LINK_CREATE, &mut attr).context("attaching the counting program")? as i32) };
        Ok(CountingProgram { map, _prog: prog, _link: link })
    }

    /// Packets seen so far.
    pub fn count(&self) -> anyhow::Result<u64> {
        let key: u32 = 0;
        let mut value: u64 = 0;
        let mut attr = Attr::new();
        // map_fd, key, value
        attr.u32_at(0, self.map.as_raw_fd() as u32)
            .u64_at(8, &key as *const u32 as u64)
            .u64_at(16, &mut value as *mut u64 as u64);
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
        Ok(value)
    }
}

/// Runs `f` with the calling thread in network namespace `ns` (a lab
/// namespace's name), then puts the thread back.
pub fn in_netns<T>(ns: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let own = std::fs::File::open("/proc/thread-self/ns/net")?;
    let target = std::fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
    // SAFETY: setns on this thread with fds that outlive the calls.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("entering the netns");
    }
    let result = f();
    // SAFETY: as above; going back cannot be skipped.
    let back = unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(back, 0, "could not return to the test's own network namespace");
    result
}

/// `CountingProgram::attach` on device `device` of namespace `ns`.
pub fn attach_in(ns: &str, device: &str, egress: bool, position: Position) -> anyhow::Result<CountingProgram> {
    in_netns(ns, || {
        let name = std::ffi::CString::new(device)?;
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        anyhow::ensure!(index != 0, "no device {device} in {ns}");
        CountingProgram::attach(index, egress, position)
    })
}
