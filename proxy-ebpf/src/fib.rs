//! Forwarding a translated packet ourselves: a FIB lookup for the egress
//! device, then a redirect that lets the kernel fill in the L2 header.
//!
//! Needed where the stack would refuse the packet: after SNAT to the node's
//! address, or reverse translation to a NodePort address, one end of the
//! packet is a local address, and the input path drops such packets as
//! martians. It also skips a trip through the stack's routing.

use core::{ffi::c_void, mem::size_of, ptr::null_mut};

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_UNSPEC},
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

/// The route for `saddr -> daddr` of a packet of protocol `proto`, entering
/// on `ifindex`: the
/// egress device and, unless `flags` skips it, the next hop's and this
/// device's MAC addresses. `None` when the table has no forwarding answer (a
/// local destination, forwarding off, with neighbours asked for, one not
/// resolved yet, or a packet too big for the egress device). `ctx` is the
/// program's context (skb or XDP frame).
///
/// `tot_len` is the packet's length to check against the egress device's
/// MTU, or 0 to let the kernel check the skb itself: for an skb it must be
/// 0, because a GSO packet (TSO or GRO, up to 64 KB) is longer than any
/// MTU while each of the segments it will be cut into fits, and only the
/// kernel's own check (`is_skb_forwardable`) knows that. An XDP frame is
/// never segmented; its length is what goes on the wire.
#[inline(always)]
pub fn fib_lookup(ctx: *mut c_void, ifindex: u32, proto: u8, saddr: u32, daddr: u32, tot_len: u16, flags: u32) -> Option<FibParams> {
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    let rc = unsafe { bpf_fib_lookup(ctx, &mut params, size_of::<FibParams>() as i32, flags) };
    (rc == BPF_FIB_LKUP_RET_SUCCESS).then_some(params)
}

/// Redirects the packet (of protocol `proto`, already rewritten to
/// `saddr -> daddr`) to the
/// device the routing table sends `daddr` to. When the table has no
/// forwarding answer, the packet is handed on (to the stack, after any
/// program attached behind ours) instead.
#[inline(always)]
pub fn fib_redirect(ctx: &TcContext, proto: u8, saddr: u32, daddr: u32) -> i32 {
    // The kernel fills in the L2 header itself (redirect_neigh).
    match fib_lookup(ctx.skb.skb as *mut c_void, ifindex(ctx), proto, saddr, daddr, 0, BPF_FIB_LOOKUP_SKIP_NEIGH) {
        Some(params) => unsafe { bpf_redirect_neigh(params.ifindex, null_mut(), 0, 0) as i32 },
        None => TC_ACT_UNSPEC,
    }
}
