//! Refusing a flow the way kube-proxy's REJECT does: the packet is turned
//! into a TCP reset or an ICMP port unreachable (built by
//! `proxy_common::reject`) and sent back out of the device it came in on.
//! Port unreachables are rate-limited per client as the kernel limits its
//! ICMP errors; resets are not, as netfilter's REJECT does not limit them
//! (a client's connect would otherwise hang for a SYN retransmission).

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use proxy_common::{
    ratelimit::RefusalBucket,
    reject::{icmp_port_unreachable, tcp_reset, ICMP_QUOTE_LEN, ICMP_UNREACH_LEN, IPV4_HLEN, TCP_HLEN, TCP_RESET_LEN},
    Verdict, IPPROTO_TCP,
};

use crate::fib::ifindex;
use crate::maps::REFUSALS;
use crate::packet::{Flow, ETH_HLEN};

/// The verdict and tc action for a packet to refuse: the refusal sent, or
/// the packet dropped when no refusal is due (it is a reset itself, its
/// header has options, or its client is over its ICMP rate).
#[inline(always)]
pub fn reject(ctx: &TcContext, flow: &Flow) -> (Verdict, i32) {
    if flow.proto != IPPROTO_TCP && !icmp_allowed(flow.saddr) {
        return (Verdict::RefusalRateLimited, TC_ACT_SHOT);
    }
    match answer(ctx, flow) {
        Ok(true) => (Verdict::NoBackend, unsafe { bpf_redirect(ifindex(ctx), 0) as i32 }),
        _ => (Verdict::NoBackend, TC_ACT_SHOT),
    }
}

/// Takes a refusal from `client`'s bucket; false when it has none left.
#[inline(always)]
fn icmp_allowed(client: u32) -> bool {
    let now = unsafe { bpf_ktime_get_ns() };
    match REFUSALS.get_ptr_mut(&client) {
        // SAFETY: the map's value for this key, valid for this program run.
        Some(bucket) => unsafe { (*bucket).allow(now) },
        None => {
            let mut bucket = RefusalBucket::full(now);
            let allowed = bucket.allow(now);
            // Best effort: a failed insert only gives the next one a burst.
            let _ = REFUSALS.insert(&client, &bucket, 0);
            allowed
        }
    }
}

#[inline(always)]
fn answer(ctx: &TcContext, flow: &Flow) -> Result<bool, i64> {
    if flow.ihl != IPV4_HLEN {
        return Ok(false);
    }
    if flow.proto == IPPROTO_TCP {
        // Fixed-size loads: the verifier rejects a length that may be zero.
        let ip = ctx.load::<[u8; IPV4_HLEN]>(flow.l3_off)?;
        let tcp = ctx.load::<[u8; TCP_HLEN]>(flow.l4_off)?;
        let header_len = u32::from(tcp[12] >> 4) * 4;
        let payload_len = u32::from(flow.tot_len).saturating_sub(IPV4_HLEN as u32 + header_len);
        let Some(out) = tcp_reset(&ip, &tcp, payload_len) else {
            return Ok(false);
        };
        resize(ctx, ETH_HLEN + TCP_RESET_LEN)?;
        ctx.store(ETH_HLEN, &out, 0)?;
    } else {
        let quote = ctx.load::<[u8; ICMP_QUOTE_LEN]>(flow.l3_off)?;
        let Some(out) = icmp_port_unreachable(&quote) else {
            return Ok(false);
        };
        resize(ctx, ETH_HLEN + ICMP_UNREACH_LEN)?;
        ctx.store(ETH_HLEN, &out, 0)?;
    }
    swap_macs(ctx)?;
    Ok(true)
}

#[inline(always)]
fn resize(ctx: &TcContext, len: usize) -> Result<(), i64> {
    match unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) } {
        0 => Ok(()),
        e => Err(e),
    }
}

#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Result<(), i64> {
    let dst = ctx.load::<[u8; 6]>(0)?;
    let src = ctx.load::<[u8; 6]>(6)?;
    ctx.store(0, &src, 0)?;
    ctx.store(6, &dst, 0)?;
    Ok(())
}
