//! Address and port rewrites on an XDP frame, with the checksums updated by
//! hand (`proxy_common::csum`): XDP has no checksum helpers, and a frame
//! from the wire carries complete checksums.

use aya_ebpf::programs::XdpContext;
use proxy_common::{
    csum::{replace2, replace4},
    IPPROTO_UDP,
};

use crate::nat::Side;
use crate::packet::{xdp_ptr, Flow};

const IP_CSUM_OFF: usize = 10;

/// Rewrites one end of the flow to `addr:port` (network byte order).
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, flow: &Flow, side: Side, addr: u32, port: u16) -> Result<(), ()> {
    let (old_addr, old_port, addr_off, port_off) = match side {
        Side::Source => (flow.saddr, flow.sport, 12, 0),
        Side::Destination => (flow.daddr, flow.dport, 16, 2),
    };
    let ip_csum = xdp_ptr::<u16>(ctx, flow.l3_off + IP_CSUM_OFF).ok_or(())?;
    let addr_ptr = xdp_ptr::<u32>(ctx, flow.l3_off + addr_off).ok_or(())?;
    let l4_csum = xdp_ptr::<u16>(ctx, flow.l4_csum_off()).ok_or(())?;
    let port_ptr = xdp_ptr::<u16>(ctx, flow.l4_off + port_off).ok_or(())?;
    unsafe {
        let c = core::ptr::read_unaligned(ip_csum);
        core::ptr::write_unaligned(ip_csum, replace4(c, old_addr, addr));
        core::ptr::write_unaligned(addr_ptr, addr);
        let c = core::ptr::read_unaligned(l4_csum);
        // A zero UDP checksum means "none": it stays zero.
        if !(flow.proto == IPPROTO_UDP && c == 0) {
            let mut n = replace2(replace4(c, old_addr, addr), old_port, port);
            if flow.proto == IPPROTO_UDP && n == 0 {
                n = 0xffff; // zero is reserved for "none"
            }
            core::ptr::write_unaligned(l4_csum, n);
        }
        core::ptr::write_unaligned(port_ptr, port);
    }
    Ok(())
}
