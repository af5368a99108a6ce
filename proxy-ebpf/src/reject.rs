//! Refusing a flow the way kube-proxy's REJECT does: the packet is turned
//! into a TCP reset or an ICMP port unreachable (built by
//! `proxy_common::reject`) and sent back out of the device it came in on.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use proxy_common::{
    reject::{icmp_port_unreachable, tcp_reset, ICMP_QUOTE_LEN, ICMP_UNREACH_LEN, IPV4_HLEN, TCP_HLEN, TCP_RESET_LEN},
    IPPROTO_TCP,
};

use crate::fib::ifindex;
use crate::packet::{Flow, ETH_HLEN};

/// The tc action that sends the refusal, or drops the packet when no
/// refusal is due (it is a reset itself, or its header has options).
#[inline(always)]
pub fn reject(ctx: &TcContext, flow: &Flow) -> i32 {
    match answer(ctx, flow) {
        Ok(true) => unsafe { bpf_redirect(ifindex(ctx), 0) as i32 },
        _ => TC_ACT_SHOT,
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
