//! The tc ingress datapath: reverse-translate tracked replies, translate
//! packets addressed to a frontend, pass the rest.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use aya_log_ebpf::error;
use proxy_common::{CtDirection, Verdict};

use crate::{
    conntrack::{ct4_create, ct4_lookup_original, ct4_lookup_reply, ct4_refresh, ct_key},
    lb::{lb4_lookup_backend, lb4_lookup_service, lb4_select_backend},
    maps::count,
    nat::{rewrite, Side},
    packet::{parse, Flow, Parsed},
};

#[inline(always)]
pub fn ingress(ctx: &TcContext) -> i32 {
    let (verdict, action) = match parse(ctx) {
        Ok(Parsed::Flow(flow)) => handle_flow(ctx, &flow),
        Ok(Parsed::Other) => (Verdict::NotService, TC_ACT_OK),
        // Malformed: not ours to judge; the stack drops it if it must.
        Err(()) => (Verdict::Error, TC_ACT_OK),
    };
    count(verdict);
    action
}

#[inline(always)]
fn handle_flow(ctx: &TcContext, flow: &Flow) -> (Verdict, i32) {
    if let Some(entry) = ct4_lookup_reply(&ct_key(flow, CtDirection::Reply)) {
        return match rewrite(ctx, flow, Side::Source, entry.nat_addr, entry.nat_port) {
            Ok(()) => (Verdict::ReverseTranslated, TC_ACT_OK),
            Err(e) => {
                error!(ctx, "reverse translation failed: {}", e);
                (Verdict::Error, TC_ACT_SHOT)
            }
        };
    }

    let Some(svc) = lb4_lookup_service(flow) else {
        return (Verdict::NotService, TC_ACT_OK);
    };

    let orig = ct_key(flow, CtDirection::Original);
    let known = ct4_lookup_original(&orig, &svc)
        .and_then(|entry| lb4_lookup_backend(unsafe { (*entry).backend_id }).map(|b| (entry, b)));
    let tracked = match known {
        Some((entry, backend)) => ct4_refresh(entry, &orig, &backend).map(|()| backend),
        // New, or its backend was removed (a UDP stream to a deleted pod):
        // a live backend instead of a black hole.
        None => match lb4_select_backend(&svc) {
            Some((backend_id, backend)) => ct4_create(&orig, &svc, backend_id, &backend).map(|()| backend),
            None => return (Verdict::NoBackend, TC_ACT_SHOT),
        },
    };
    let backend = match tracked {
        Ok(backend) => backend,
        Err(e) => {
            error!(ctx, "conntrack update failed: {}", e);
            return (Verdict::Error, TC_ACT_SHOT);
        }
    };
    match rewrite(ctx, flow, Side::Destination, backend.addr, backend.port) {
        Ok(()) => (Verdict::Translated, TC_ACT_OK),
        Err(e) => {
            error!(ctx, "translation failed: {}", e);
            (Verdict::Error, TC_ACT_SHOT)
        }
    }
}
