//! Address and port rewrites with incremental L3 and L4 checksum updates.
//!
//! The kernel helpers are used rather than hand-rolled arithmetic because they
//! also keep `skb->csum` right for CHECKSUM_COMPLETE and handle
//! CHECKSUM_PARTIAL skbs, which veth and GSO traffic carry.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::{frag::Fragment, IPPROTO_UDP};

use crate::packet::Flow;

const IP_SADDR_OFF: usize = 12;
const IP_DADDR_OFF: usize = 16;
const IP_CSUM_OFF: usize = 10;

pub enum Side {
    Source,
    Destination,
}

/// Rewrites one end of the flow to `addr:port`.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, flow: &Flow, side: Side, addr: u32, port: u16) -> Result<(), i64> {
    let (old_addr, old_port, addr_off, port_off) = match side {
        Side::Source => (flow.saddr, flow.sport, IP_SADDR_OFF, 0),
        Side::Destination => (flow.daddr, flow.dport, IP_DADDR_OFF, 2),
    };
    // A zero UDP checksum means "none": leave it zero rather than inventing one.
    let l4_flags = if flow.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let csum_off = flow.l4_csum_off();

    // A later fragment has no L4 header: its addresses alone change (the
    // first fragment's checksum covered the whole datagram).
    let l4 = flow.fragment != Fragment::Later;
    if old_addr != addr {
        if l4 {
            ctx.l4_csum_replace(
                csum_off,
                old_addr as u64,
                addr as u64,
                l4_flags | BPF_F_PSEUDO_HDR as u64 | 4,
            )?;
        }
        ctx.l3_csum_replace(flow.l3_off + IP_CSUM_OFF, old_addr as u64, addr as u64, 4)?;
        ctx.store(flow.l3_off + addr_off, &addr, 0)?;
    }
    if !l4 {
        return Ok(());
    }
    if old_port != port {
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, l4_flags | 2)?;
        ctx.store(flow.l4_off + port_off, &port, 0)?;
    }
    Ok(())
}
