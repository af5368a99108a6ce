//! The tc ingress datapath: reverse-translate tracked replies, translate
//! packets addressed to a frontend, refuse or drop what has nowhere to go,
//! pass the rest.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use aya_log_ebpf::error;
use proxy_common::{
    conntrack::ct_flags,
    maps::{scope, service_flags},
    CtDirection, CtKey, CtValue, Verdict,
};

use crate::{
    conntrack::{ct4_create, ct4_create_snat, ct4_lookup_original, ct4_lookup_reply, ct4_refresh, ct_key, Nat},
    fib::fib_redirect,
    lb::{lb4_lookup_backend, lb4_lookup_service, lb4_select_backend, lb4_source_allowed, Frontend, Role},
    maps::{config, count},
    nat::{rewrite, Side},
    packet::{parse, Flow, Parsed},
    reject::reject,
};

#[inline(always)]
pub fn ingress(ctx: &TcContext, role: Role) -> i32 {
    let (verdict, action) = match parse(ctx) {
        Ok(Parsed::Flow(flow)) => handle_flow(ctx, &flow, role),
        Ok(Parsed::Other) => (Verdict::NotService, TC_ACT_OK),
        // Malformed: not ours to judge; the stack drops it if it must.
        Err(()) => (Verdict::Error, TC_ACT_OK),
    };
    count(verdict);
    action
}

#[inline(always)]
fn handle_flow(ctx: &TcContext, flow: &Flow, role: Role) -> (Verdict, i32) {
    if let Some(entry) = ct4_lookup_reply(&ct_key(flow, CtDirection::Reply)) {
        return reverse(ctx, flow, &entry);
    }

    let Some(frontend) = lb4_lookup_service(flow, role) else {
        // An address of the service range that no Service holds (deleted, or
        // never allocated): refused at once, as kube-proxy does.
        if role == Role::Pod && config().in_service_range(flow.daddr) {
            return (Verdict::NoBackend, reject(ctx, flow));
        }
        return (Verdict::NotService, TC_ACT_OK);
    };
    let svc = &frontend.svc;
    if frontend.scope == scope::EXTERNAL && !lb4_source_allowed(svc, flow.saddr) {
        return (Verdict::SourceDenied, TC_ACT_SHOT);
    }

    let orig = ct_key(flow, CtDirection::Original);
    let nat = match known_flow(&orig, &frontend) {
        Some(Ok(nat)) => nat,
        Some(Err(e)) => {
            error!(ctx, "conntrack update failed: {}", e);
            return (Verdict::Error, TC_ACT_SHOT);
        }
        // New, or its backend was removed (a UDP stream to a deleted pod):
        // a live backend instead of a black hole.
        None => match new_flow(flow, &orig, &frontend, role) {
            Ok(nat) => nat,
            Err(NoNat::NoBackend) if svc.flags & service_flags::NO_LOCAL_ENDPOINTS != 0 => {
                return (Verdict::NoLocalBackend, TC_ACT_SHOT)
            }
            Err(NoNat::NoBackend) => return (Verdict::NoBackend, reject(ctx, flow)),
            Err(NoNat::SnatExhausted) => return (Verdict::SnatExhausted, TC_ACT_SHOT),
            Err(NoNat::Failed(e)) => {
                error!(ctx, "conntrack insert failed: {}", e);
                return (Verdict::Error, TC_ACT_SHOT);
            }
        },
    };
    translate(ctx, flow, &nat)
}

/// The translation of a flow seen before, if its backend is still there.
#[inline(always)]
fn known_flow(orig: &CtKey, frontend: &Frontend) -> Option<Result<Nat, i64>> {
    let entry = ct4_lookup_original(orig, &frontend.svc)?;
    let value: CtValue = unsafe { *entry };
    let backend = lb4_lookup_backend(value.backend_id)?;
    Some(ct4_refresh(entry, orig, &backend).map(|()| Nat {
        backend_id: value.backend_id,
        backend,
        flags: value.flags,
        src_addr: value.peer_addr,
        src_port: value.peer_port,
    }))
}

enum NoNat {
    NoBackend,
    SnatExhausted,
    Failed(i64),
}

/// Chooses a backend for a new flow, decides what else is rewritten, and
/// records it.
#[inline(always)]
fn new_flow(flow: &Flow, orig: &CtKey, frontend: &Frontend, role: Role) -> Result<Nat, NoNat> {
    let svc = &frontend.svc;
    let (backend_id, backend) = lb4_select_backend(svc).ok_or(NoNat::NoBackend)?;
    let mut nat = Nat {
        backend_id,
        backend,
        flags: 0,
        src_addr: 0,
        src_port: 0,
    };
    if role == Role::External || frontend.scope == scope::NODE_PORT {
        nat.flags |= ct_flags::REDIRECT;
    }
    if backend.addr == flow.saddr {
        // Hairpin: a pod reaching itself would see its own address as the
        // source and drop the packet, so the frontend stands in for it.
        nat.flags |= ct_flags::SNAT | ct_flags::REDIRECT;
        nat.src_addr = flow.daddr;
        nat.src_port = flow.sport;
    } else if role == Role::External && svc.flags & service_flags::EXTERNAL_LOCAL == 0 {
        // externalTrafficPolicy Cluster: the backend may be on another node,
        // and its replies must come back through this one.
        let config = config();
        nat.flags |= ct_flags::SNAT;
        nat.src_addr = if frontend.scope == scope::NODE_PORT {
            flow.daddr
        } else {
            config.snat_addr
        };
        if nat.src_addr == 0 {
            return Err(NoNat::Failed(0));
        }
        return match ct4_create_snat(orig, svc, &mut nat, &config) {
            Ok(Some(_)) => Ok(nat),
            Ok(None) => Err(NoNat::SnatExhausted),
            Err(e) => Err(NoNat::Failed(e)),
        };
    }
    ct4_create(orig, svc, &nat).map_err(NoNat::Failed)?;
    Ok(nat)
}

#[inline(always)]
fn translate(ctx: &TcContext, flow: &Flow, nat: &Nat) -> (Verdict, i32) {
    let mut saddr = flow.saddr;
    let mut result = rewrite(ctx, flow, Side::Destination, nat.backend.addr, nat.backend.port);
    if result.is_ok() && nat.flags & ct_flags::SNAT != 0 {
        result = rewrite(ctx, flow, Side::Source, nat.src_addr, nat.src_port);
        saddr = nat.src_addr;
    }
    if let Err(e) = result {
        error!(ctx, "translation failed: {}", e);
        return (Verdict::Error, TC_ACT_SHOT);
    }
    if nat.flags & ct_flags::REDIRECT != 0 {
        return (Verdict::Translated, fib_redirect(ctx, saddr, nat.backend.addr, flow.proto, flow.tot_len));
    }
    (Verdict::Translated, TC_ACT_OK)
}

/// A reply: the frontend goes back in as the source, and for a SNATed flow
/// the client goes back in as the destination.
#[inline(always)]
fn reverse(ctx: &TcContext, flow: &Flow, entry: &CtValue) -> (Verdict, i32) {
    let mut daddr = flow.daddr;
    let mut result = rewrite(ctx, flow, Side::Source, entry.nat_addr, entry.nat_port);
    if result.is_ok() && entry.flags & ct_flags::SNAT != 0 {
        result = rewrite(ctx, flow, Side::Destination, entry.peer_addr, entry.peer_port);
        daddr = entry.peer_addr;
    }
    if let Err(e) = result {
        error!(ctx, "reverse translation failed: {}", e);
        return (Verdict::Error, TC_ACT_SHOT);
    }
    if entry.flags & ct_flags::REDIRECT != 0 {
        return (
            Verdict::ReverseTranslated,
            fib_redirect(ctx, entry.nat_addr, daddr, flow.proto, flow.tot_len),
        );
    }
    (Verdict::ReverseTranslated, TC_ACT_OK)
}
