//! The XDP fast path on external devices: NodePort, LoadBalancer and
//! external IP traffic, and replies to it, translated and sent on before an
//! skb exists. It shares the decision (lookup, backend choice, conntrack)
//! with tc; whatever it cannot finish itself it passes up untouched, and tc,
//! finding the same conntrack entries, does the same translation.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    programs::XdpContext,
};
use proxy_common::{frag::Fragment, Verdict};

use crate::{
    decide::{decide, Decision, Rewrite},
    fib::fib_lookup,
    lb::Role,
    maps::count,
    nat::Side,
    nat_xdp::rewrite,
    packet::{parse, xdp_ptr, Flow, Parsed},
};

#[inline(always)]
pub fn ingress(ctx: &XdpContext) -> u32 {
    // ICMP errors (rare, and never hot) and fragments (whose ports the
    // first one leaves for the rest) go up to tc, which translates them.
    let Ok(Parsed::Flow(flow)) = parse(ctx) else {
        return xdp_action::XDP_PASS;
    };
    if flow.fragment != Fragment::Whole {
        return xdp_action::XDP_PASS;
    }
    match decide(ctx, &flow, Role::External) {
        Decision::Drop(verdict) => {
            count(verdict);
            xdp_action::XDP_DROP
        }
        // Refusals are built by tc, which has the helpers to resize the
        // packet; translations without a redirect are for the stack to route.
        Decision::Pass(_) | Decision::Refuse => xdp_action::XDP_PASS,
        Decision::Rewrite(rw) if !rw.redirect => xdp_action::XDP_PASS,
        Decision::Rewrite(rw) => forward(ctx, &flow, &rw),
    }
}

/// Looks the route up first, so a frame whose next hop is not resolved yet
/// goes up to tc unchanged rather than half translated.
#[inline(always)]
fn forward(ctx: &XdpContext, flow: &Flow, rw: &Rewrite) -> u32 {
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some(params) = fib_lookup(ctx.ctx as *mut _, ingress, flow.proto, rw.saddr(flow), rw.daddr(flow), flow.tot_len, 0) else {
        return xdp_action::XDP_PASS;
    };
    let Some(eth) = xdp_ptr::<[u8; 12]>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    let mut result = Ok(());
    if let Some((addr, port)) = rw.dst {
        result = rewrite(ctx, flow, Side::Destination, addr, port);
    }
    if let (Ok(()), Some((addr, port))) = (result, rw.src) {
        result = rewrite(ctx, flow, Side::Source, addr, port);
    }
    if result.is_err() {
        count(Verdict::Error);
        return xdp_action::XDP_DROP;
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&params.dmac);
    macs[6..].copy_from_slice(&params.smac);
    unsafe { core::ptr::write_unaligned(eth, macs) };
    count(match rw.verdict {
        Verdict::Translated => Verdict::XdpTranslated,
        _ => Verdict::XdpReverseTranslated,
    });
    // A redirect even back out of the ingress device, not XDP_TX: veth
    // flushes XDP_TX frames to its peer only when the peer runs XDP itself,
    // and would otherwise hold them until other traffic comes by; a
    // redirect flushes them whatever the peer runs.
    unsafe { bpf_redirect(params.ifindex, 0) as u32 }
}
