//! ICMP errors about translated flows, put back into the terms of whoever
//! receives them (what to write: `proxy_common::icmp`): the quoted packet's
//! addresses and ports, the quote's own IP and L4 checksums, the ICMP
//! checksum over all of it, and the outer header. On the tc path, with the
//! kernel's checksum helpers; XDP passes ICMP up to tc.

use aya_ebpf::programs::TcContext;
use proxy_common::{
    icmp::{towards_backend, towards_client, ErrorRewrite},
    IPPROTO_UDP,
};

use crate::conntrack::ct4_find;
use crate::packet::IcmpError;

const IP_CSUM_OFF: usize = 10;
const IP_SADDR_OFF: usize = 12;
const IP_DADDR_OFF: usize = 16;

/// The rewrite for an error about a tracked flow; `None` for any other.
#[inline(always)]
pub fn decide_icmp(err: &IcmpError) -> Option<ErrorRewrite> {
    // SAFETY: map values are read and copied at once.
    if let Some(found) = ct4_find(&err.quote.reply_key()) {
        return Some(towards_client(err.saddr, &err.quote, unsafe { &*found.entry }));
    }
    let found = ct4_find(&err.quote.original_key())?;
    Some(towards_backend(unsafe { &*found.entry }))
}

/// Writes `rw` into the error. Every field is written, a kept one with its
/// own value (a checksum update from a value to itself changes nothing):
/// straight-line code, which the verifier walks once instead of once per
/// combination of changed fields.
#[inline(always)]
pub fn rewrite_icmp(ctx: &TcContext, err: &IcmpError, rw: &ErrorRewrite) -> Result<(), i64> {
    let q = &err.quote;
    let (src, sport) = rw.inner_src.unwrap_or((q.saddr, q.sport));
    let (dst, dport) = rw.inner_dst.unwrap_or((q.daddr, q.dport));
    let l4_csum = quoted_l4_csum_off(ctx, err)?;
    quoted_addr(ctx, err, IP_SADDR_OFF, q.saddr, src, l4_csum)?;
    quoted_port(ctx, err, 0, q.sport, sport, l4_csum)?;
    quoted_addr(ctx, err, IP_DADDR_OFF, q.daddr, dst, l4_csum)?;
    quoted_port(ctx, err, 2, q.dport, dport, l4_csum)?;
    // ICMP has no pseudo-header: the outer addresses are in the IP
    // checksum only.
    outer_addr(ctx, err, IP_SADDR_OFF, err.saddr, rw.outer_src.unwrap_or(err.saddr))?;
    outer_addr(ctx, err, IP_DADDR_OFF, err.daddr, rw.outer_dst.unwrap_or(err.daddr))
}

#[inline(always)]
fn outer_addr(ctx: &TcContext, err: &IcmpError, off: usize, old: u32, new: u32) -> Result<(), i64> {
    ctx.l3_csum_replace(err.l3_off + IP_CSUM_OFF, old as u64, new as u64, 4)?;
    ctx.store(err.l3_off + off, &new, 0)
}

/// The quoted TCP or UDP checksum's offset, if the quote reaches it (an
/// error may quote as little as 8 bytes of the L4 header) and it is in use
/// (UDP's 0 is "none").
#[inline(always)]
fn quoted_l4_csum_off(ctx: &TcContext, err: &IcmpError) -> Result<Option<usize>, i64> {
    let off = err.inner_l4_csum_off();
    if off + 2 > ctx.len() as usize {
        return Ok(None);
    }
    if err.quote.proto == IPPROTO_UDP && ctx.load::<u16>(off)? == 0 {
        return Ok(None);
    }
    Ok(Some(off))
}

/// An address of the quoted packet: its IP checksum and (when quoted) its
/// L4 checksum follow, and the ICMP checksum follows all three changes.
#[inline(always)]
fn quoted_addr(ctx: &TcContext, err: &IcmpError, off: usize, old: u32, new: u32, l4_csum: Option<usize>) -> Result<(), i64> {
    quoted_csum(ctx, err, err.inner_l3_off + IP_CSUM_OFF, old, new, 4)?;
    if let Some(l4) = l4_csum {
        quoted_csum(ctx, err, l4, old, new, 4)?;
    }
    ctx.store(err.inner_l3_off + off, &new, 0)?;
    icmp_csum(ctx, err, old, new, 4)
}

#[inline(always)]
fn quoted_port(ctx: &TcContext, err: &IcmpError, off: usize, old: u16, new: u16, l4_csum: Option<usize>) -> Result<(), i64> {
    if let Some(l4) = l4_csum {
        quoted_csum(ctx, err, l4, old as u32, new as u32, 2)?;
    }
    ctx.store(err.inner_l4_off + off, &new, 0)?;
    icmp_csum(ctx, err, old as u32, new as u32, 2)
}

/// A checksum field inside the quote, updated for a field it covers going
/// from `old` to `new`; the ICMP checksum follows the field's own change.
#[inline(always)]
fn quoted_csum(ctx: &TcContext, err: &IcmpError, off: usize, old: u32, new: u32, size: u64) -> Result<(), i64> {
    let before = ctx.load::<u16>(off)?;
    // A plain incremental update of the 16-bit field at `off`.
    ctx.l3_csum_replace(off, old as u64, new as u64, size)?;
    let after = ctx.load::<u16>(off)?;
    icmp_csum(ctx, err, before as u32, after as u32, 2)
}

#[inline(always)]
fn icmp_csum(ctx: &TcContext, err: &IcmpError, old: u32, new: u32, size: u64) -> Result<(), i64> {
    ctx.l4_csum_replace(err.icmp_off + 2, old as u64, new as u64, size)
}
