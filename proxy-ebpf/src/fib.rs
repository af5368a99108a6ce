//! Forwarding a translated packet ourselves: a FIB lookup for the egress
//! device, then a redirect that lets the kernel fill in the L2 header.
//!
//! Needed where the stack would refuse the packet: after SNAT to the node's
//! address, or reverse translation to a NodePort address, one end of the
//! packet is a local address, and the input path drops such packets as
//! martians. It also skips a trip through the stack's routing.

use core::{mem::size_of, ptr::null_mut};

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_OK},
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

/// The device the packet came in on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Redirects the packet (already rewritten to `saddr -> daddr`) to the
/// device the routing table sends `daddr` to. When the table has no
/// forwarding answer (a local destination, forwarding off), the packet is
/// handed to the stack instead.
#[inline(always)]
pub fn fib_redirect(ctx: &TcContext, saddr: u32, daddr: u32, proto: u8, tot_len: u16) -> i32 {
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ifindex(ctx);
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return TC_ACT_OK as i32;
    }
    unsafe { bpf_redirect_neigh(params.ifindex, null_mut(), 0, 0) as i32 }
}
