//! The tc datapath: carries out the shared decision with the skb helpers:
//! rewrites with checksum updates, refusals, FIB redirects.
//!
//! A packet that is not ours to finish goes on with `TC_ACT_UNSPEC` (tcx's
//! "next"): whatever else is attached to the device after us, a CNI's
//! program or a legacy tc filter, still sees it. `TC_ACT_OK` would end the
//! device's chain there.

use aya_ebpf::{
    bindings::{bpf_sock, TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};
use aya_log_ebpf::error;
use proxy_common::{frag::Fragment, tail, CtDirection, Verdict};

use crate::{
    conntrack::{ct4_lookup_reply, ct_key},
    decide::{decide, reverse, Decision, Rewrite},
    icmp_nat::{decide_icmp, rewrite_icmp},
    fib::fib_redirect,
    frag::with_ports,
    lb::Role,
    maps::{count, TAIL_CALLS},
    nat::{rewrite, Side},
    node_flows::{node_flow_port, sender},
    packet::{parse, parse_icmp_error, Flow, IcmpAt, Parsed, IPPROTO_ICMP},
    reject::reject,
};

#[inline(always)]
pub fn ingress(ctx: &TcContext, role: Role) -> i32 {
    let (verdict, action) = match parse(ctx) {
        Ok(Parsed::Flow(flow)) => match with_ports(flow) {
            Some(flow) => match decide(ctx, &flow, role) {
                Decision::Pass(verdict) => (verdict, TC_ACT_UNSPEC),
                Decision::Drop(verdict) => (verdict, TC_ACT_SHOT),
                // A later fragment has no header to answer from.
                Decision::Refuse if flow.fragment == Fragment::Later => (Verdict::NoBackend, TC_ACT_SHOT),
                // Refusals are built in a program of their own.
                Decision::Refuse => {
                    hand_on(ctx, tail::REFUSE);
                    (Verdict::Error, TC_ACT_SHOT)
                }
                Decision::Rewrite(rw) => apply(ctx, &flow, &rw),
            },
            // A later fragment whose first one this device did not see.
            None => (Verdict::NotService, TC_ACT_UNSPEC),
        },
        Ok(Parsed::Icmp(_)) => hand_on(ctx, tail::ICMP_INGRESS),
        Ok(Parsed::Other) => (Verdict::NotService, TC_ACT_UNSPEC),
        // Malformed: not ours to judge; the stack drops it if it must.
        Err(()) => (Verdict::Error, TC_ACT_UNSPEC),
    };
    count(verdict);
    action
}

/// A packet leaving the node into a pod: restored if it is the reply of a
/// translated flow, which the ingress hooks would have restored already
/// unless NAT applied after ours hid its tuple from them. It is on its way
/// out of the right device, so nothing is redirected. Everything else is
/// left alone and not counted: this hook sees all of a pod's traffic.
#[inline(always)]
pub fn pod_egress(ctx: &TcContext) -> i32 {
    let flow = match parse(ctx) {
        Ok(Parsed::Flow(flow)) => match with_ports(flow) {
            Some(flow) => flow,
            None => return TC_ACT_UNSPEC,
        },
        Ok(Parsed::Icmp(_)) => {
            hand_on(ctx, tail::ICMP_EGRESS);
            return TC_ACT_UNSPEC;
        }
        _ => return TC_ACT_UNSPEC,
    };
    let Some(entry) = ct4_lookup_reply(&ct_key(&flow, CtDirection::Reply), flow.is_tcp_close()) else {
        // The node's own flow to a backend on this node.
        return match sender(ctx) {
            Some(sent_by) => remap_node_flow(ctx, &flow, sent_by),
            None => TC_ACT_UNSPEC,
        };
    };
    let mut rw = reverse(&entry);
    rw.redirect = false;
    let (verdict, action) = apply(ctx, &flow, &rw);
    count(verdict);
    action
}

/// A packet leaving the node through an external device: the node's own
/// flows are moved off tuples that SNATed flows hold (see `node_flows`);
/// everything else goes on untouched, and uncounted.
#[inline(always)]
pub fn external_egress(ctx: &TcContext) -> i32 {
    let Some(sent_by) = sender(ctx) else {
        return TC_ACT_UNSPEC;
    };
    match parse(ctx) {
        Ok(Parsed::Flow(flow)) => match with_ports(flow) {
            Some(flow) => remap_node_flow(ctx, &flow, sent_by),
            None => TC_ACT_UNSPEC,
        },
        _ => TC_ACT_UNSPEC,
    }
}

#[inline(always)]
fn remap_node_flow(ctx: &TcContext, flow: &Flow, sent_by: *const bpf_sock) -> i32 {
    let Some(port) = node_flow_port(ctx, flow, sent_by) else {
        return TC_ACT_UNSPEC;
    };
    if let Err(e) = rewrite(ctx, flow, Side::Source, flow.saddr, port) {
        error!(ctx, "node flow rewrite failed: {}", e);
        count(Verdict::Error);
        return TC_ACT_SHOT;
    }
    TC_ACT_UNSPEC
}

/// A packet an entry point decided to refuse: a reset or a port
/// unreachable sent back (or, over the client's ICMP rate, the packet
/// dropped).
#[inline(always)]
pub fn refuse(ctx: &TcContext) -> i32 {
    let (verdict, action) = match parse(ctx) {
        Ok(Parsed::Flow(flow)) => reject(ctx, &flow),
        _ => (Verdict::Error, TC_ACT_SHOT),
    };
    count(verdict);
    action
}

/// Hands the packet to the program in `slot` (it does not come back); if
/// the slot is empty, the packet goes on untouched.
#[inline(always)]
fn hand_on(ctx: &TcContext, slot: u32) -> (Verdict, i32) {
    // SAFETY: a tail call into a program the agent put there; on failure
    // (an empty slot) control returns here.
    unsafe { TAIL_CALLS.tail_call(ctx, slot) };
    (Verdict::NotService, TC_ACT_UNSPEC)
}

/// An ICMP message handed on by an entry point: an error about a tracked
/// flow is translated, then forwarded by us when `may_redirect` and the
/// flow's path needs it; anything else goes on untouched.
#[inline(always)]
pub fn icmp(ctx: &TcContext, may_redirect: bool) -> i32 {
    let (verdict, action) = match parse(ctx) {
        Ok(Parsed::Icmp(at)) => icmp_error(ctx, &at, may_redirect),
        _ => (Verdict::NotService, TC_ACT_UNSPEC),
    };
    if verdict != Verdict::NotService {
        count(verdict);
    }
    action
}

#[inline(always)]
fn icmp_error(ctx: &TcContext, at: &IcmpAt, may_redirect: bool) -> (Verdict, i32) {
    let Ok(Some(err)) = parse_icmp_error(ctx, at) else {
        return (Verdict::NotService, TC_ACT_UNSPEC);
    };
    let err = &err;
    let Some(rw) = decide_icmp(err) else {
        return (Verdict::NotService, TC_ACT_UNSPEC);
    };
    if let Err(e) = rewrite_icmp(ctx, err, &rw) {
        error!(ctx, "ICMP error rewrite failed: {}", e);
        return (Verdict::Error, TC_ACT_SHOT);
    }
    if may_redirect && rw.redirect {
        let saddr = rw.outer_src.unwrap_or(err.saddr);
        let daddr = rw.outer_dst.unwrap_or(err.daddr);
        return (Verdict::IcmpErrorTranslated, fib_redirect(ctx, IPPROTO_ICMP, saddr, daddr));
    }
    (Verdict::IcmpErrorTranslated, TC_ACT_UNSPEC)
}

#[inline(always)]
fn apply(ctx: &TcContext, flow: &Flow, rw: &Rewrite) -> (Verdict, i32) {
    let mut result = Ok(());
    if let Some((addr, port)) = rw.dst {
        result = rewrite(ctx, flow, Side::Destination, addr, port);
    }
    if let (Ok(()), Some((addr, port))) = (result, rw.src) {
        result = rewrite(ctx, flow, Side::Source, addr, port);
    }
    if let Err(e) = result {
        error!(ctx, "rewrite failed: {}", e);
        return (Verdict::Error, TC_ACT_SHOT);
    }
    if rw.redirect {
        return (rw.verdict, fib_redirect(ctx, flow.proto, rw.saddr(flow), rw.daddr(flow)));
    }
    (rw.verdict, TC_ACT_UNSPEC)
}
