//! The tc ingress datapath: carries out the shared decision with the skb
//! helpers: rewrites with checksum updates, refusals, FIB redirects.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use aya_log_ebpf::error;
use proxy_common::Verdict;

use crate::{
    decide::{decide, Decision, Rewrite},
    fib::fib_redirect,
    lb::Role,
    maps::count,
    nat::{rewrite, Side},
    packet::{parse, Flow, Parsed},
    reject::reject,
};

#[inline(always)]
pub fn ingress(ctx: &TcContext, role: Role) -> i32 {
    let (verdict, action) = match parse(ctx) {
        Ok(Parsed::Flow(flow)) => match decide(ctx, &flow, role) {
            Decision::Pass(verdict) => (verdict, TC_ACT_OK),
            Decision::Drop(verdict) => (verdict, TC_ACT_SHOT),
            Decision::Refuse => (Verdict::NoBackend, reject(ctx, &flow)),
            Decision::Rewrite(rw) => apply(ctx, &flow, &rw),
        },
        Ok(Parsed::Other) => (Verdict::NotService, TC_ACT_OK),
        // Malformed: not ours to judge; the stack drops it if it must.
        Err(()) => (Verdict::Error, TC_ACT_OK),
    };
    count(verdict);
    action
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
        return (rw.verdict, fib_redirect(ctx, flow, rw.saddr(flow), rw.daddr(flow)));
    }
    (rw.verdict, TC_ACT_OK)
}
