//! What to do with a packet, shared by the tc and XDP programs: reverse
//! translation of a tracked reply, or a frontend's lookup, backend choice and
//! conntrack entry. The programs differ only in how they carry it out.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::error;
use proxy_common::{
    config::{config_flags, may_keep_client_port},
    conntrack::ct_flags,
    maps::{scope, service_flags},
    Backend, CtDirection, CtKey, CtValue, DatapathConfig, Verdict, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    conntrack::{
        ct4_create, ct4_create_snat, ct4_forget, ct4_lookup_original, ct4_lookup_reply, ct4_mark_closing, ct4_mark_entry_closing,
        ct4_refresh, ct4_settle, ct_key, now_ns, source_after_nat, starts_anew, Nat, SnatPort,
    },
    lb::{lb4_lookup_backend, lb4_lookup_service, lb4_select_backend_for, lb4_source_allowed, Frontend, Role},
    maps::{config, count},
    packet::Flow,
};

pub enum Decision {
    /// Not service traffic: leave it to the stack.
    Pass(Verdict),
    /// Dropped, as kube-proxy drops it.
    Drop(Verdict),
    /// No usable backend: answer with a reset or port unreachable.
    Refuse,
    Rewrite(Rewrite),
}

/// New source and destination for the packet; `None` leaves that end.
pub struct Rewrite {
    pub verdict: Verdict,
    pub src: Option<(u32, u16)>,
    pub dst: Option<(u32, u16)>,
    /// Forward it ourselves after a FIB lookup (see `fib`).
    pub redirect: bool,
}

impl Rewrite {
    #[inline(always)]
    pub fn saddr(&self, flow: &Flow) -> u32 {
        self.src.map(|(a, _)| a).unwrap_or(flow.saddr)
    }

    #[inline(always)]
    pub fn daddr(&self, flow: &Flow) -> u32 {
        self.dst.map(|(a, _)| a).unwrap_or(flow.daddr)
    }
}

#[inline(always)]
pub fn decide<C: EbpfContext>(ctx: &C, flow: &Flow, role: Role) -> Decision {
    if let Some(entry) = ct4_lookup_reply(&ct_key(flow, CtDirection::Reply), flow.is_tcp_close()) {
        return Decision::Rewrite(reverse(&entry));
    }

    // Loopback NodePorts (`--nodeport-addresses` 127.0.0.0/8) are for the
    // node itself: from outside, the stack drops such a packet as martian,
    // as kube-proxy's KUBE-FIREWALL does, and so must we leave it.
    if role == Role::External && u32::from_be(flow.daddr) >> 24 == 127 {
        return Decision::Pass(Verdict::NotService);
    }
    let config = config();
    let external_cluster_ip = config.flags & config_flags::EXTERNAL_CLUSTER_IP != 0;
    let Some(frontend) = lb4_lookup_service(flow, role, external_cluster_ip) else {
        // An address of the service range that no Service holds (deleted, or
        // never allocated): refused at once, as kube-proxy does.
        if (role == Role::Pod || external_cluster_ip) && config.in_service_range(flow.daddr) {
            return Decision::Refuse;
        }
        // A new flow straight to an address that a translated flow of this
        // tuple once reached as a backend (a socket the hooks connected to
        // the backend, or a pod talking to it directly, on a source port a
        // translated flow used before): that flow is over, and its reply
        // entry would put a frontend on this flow's replies.
        if flow.proto == IPPROTO_UDP || flow.is_tcp_open() {
            ct4_forget(&CtKey::new(flow.daddr, flow.saddr, flow.dport, flow.sport, flow.proto, CtDirection::Reply));
        }
        return Decision::Pass(Verdict::NotService);
    };
    let svc = &frontend.svc;
    if frontend.scope == scope::EXTERNAL && !lb4_source_allowed(svc, flow.saddr) {
        return Decision::Drop(Verdict::SourceDenied);
    }

    let orig = ct_key(flow, CtDirection::Original);
    let nat = match known_flow(flow, &orig, &frontend) {
        Some(Ok(nat)) => nat,
        Some(Err(e)) => {
            error!(ctx, "conntrack update failed: {}", e);
            return Decision::Drop(Verdict::Error);
        }
        // New, or its backend was removed (a UDP stream to a deleted pod):
        // a live backend instead of a black hole.
        None => match new_flow(ctx, flow, &orig, &frontend, role, &config) {
            Ok(nat) => nat,
            Err(NoNat::NoBackend) if svc.flags & service_flags::NO_LOCAL_ENDPOINTS != 0 => {
                return Decision::Drop(Verdict::NoLocalBackend)
            }
            Err(NoNat::NoBackend) => return Decision::Refuse,
            Err(NoNat::SnatExhausted) => return Decision::Drop(Verdict::SnatExhausted),
            Err(NoNat::Failed(e)) => {
                error!(ctx, "conntrack insert failed: {}", e);
                return Decision::Drop(Verdict::Error);
            }
        },
    };
    let snat = nat.flags & ct_flags::SNAT != 0;
    Decision::Rewrite(Rewrite {
        verdict: Verdict::Translated,
        src: if snat { Some((nat.src_addr, nat.src_port)) } else { None },
        dst: Some((nat.backend.addr, nat.backend.port)),
        redirect: nat.flags & ct_flags::REDIRECT != 0,
    })
}

/// A reply: the frontend goes back in as the source, and for a SNATed flow
/// the client goes back in as the destination.
#[inline(always)]
pub fn reverse(entry: &CtValue) -> Rewrite {
    let snat = entry.flags & ct_flags::SNAT != 0;
    Rewrite {
        verdict: Verdict::ReverseTranslated,
        src: Some((entry.nat_addr, entry.nat_port)),
        dst: if snat { Some((entry.peer_addr, entry.peer_port)) } else { None },
        redirect: entry.flags & ct_flags::REDIRECT != 0,
    }
}

/// The translation of a flow seen before. When its backend has left the
/// Service (not ready, terminating, or deleted), a TCP connection stays with
/// the backend its entry records, as netfilter's conntrack keeps kube-proxy's
/// DNAT: the pod may still be finishing it (a rolling update's graceful
/// shutdown, a readiness probe that failed under load). A UDP flow, or a
/// retransmitted first SYN, gets a live backend instead, as kube-proxy
/// clears the UDP entries of endpoints that stop serving.
#[inline(always)]
fn known_flow(flow: &Flow, orig: &CtKey, frontend: &Frontend) -> Option<Result<Nat, i64>> {
    let found = ct4_lookup_original(orig, &frontend.svc)?;
    let value: CtValue = unsafe { *found.entry };
    let now = now_ns();
    if starts_anew(flow, &value, now) {
        return None;
    }
    let backend = match lb4_lookup_backend(value.backend_id) {
        Some(backend) => backend,
        None if flow.proto == IPPROTO_TCP && !flow.is_tcp_open() => Backend {
            addr: value.nat_addr,
            port: value.nat_port,
            proto: flow.proto,
            flags: 0,
        },
        None => return None,
    };
    let found = ct4_settle(found, orig, flow, &backend);
    if flow.is_tcp_close() {
        let (src_addr, src_port) = source_after_nat(orig, &value);
        ct4_mark_entry_closing(found.entry);
        ct4_mark_closing(&orig.reply_after_nat(backend.addr, backend.port, src_addr, src_port));
    }
    Some(ct4_refresh(found, orig, &backend, now).map(|()| Nat {
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
fn new_flow<C: EbpfContext>(ctx: &C, flow: &Flow, orig: &CtKey, frontend: &Frontend, role: Role, config: &DatapathConfig) -> Result<Nat, NoNat> {
    let svc = &frontend.svc;
    let (backend_id, backend) = lb4_select_backend_for(svc, flow.saddr).ok_or(NoNat::NoBackend)?;
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
        nat.flags |= ct_flags::SNAT;
        nat.src_addr = if frontend.scope == scope::NODE_PORT {
            flow.daddr
        } else {
            config.snat_addr
        };
        if nat.src_addr == 0 {
            return Err(NoNat::Failed(0));
        }
        // The client's port when the tuple is free, as netfilter keeps it:
        // the node then needs no port of its own per flow, and the rate of
        // new flows does not depend on the range's size.
        let keep = may_keep_client_port(u16::from_be(flow.sport)).then_some(flow.sport);
        return match ct4_create_snat(ctx, orig, svc.rev_nat_index, &mut nat, config, keep) {
            Ok(Some(port)) => {
                count(match port {
                    SnatPort::Kept => Verdict::SnatPortKept,
                    SnatPort::FromRange => Verdict::SnatPortFromRange,
                });
                Ok(nat)
            }
            Ok(None) => Err(NoNat::SnatExhausted),
            Err(e) => Err(NoNat::Failed(e)),
        };
    }
    ct4_create(orig, svc, &nat).map_err(NoNat::Failed)?;
    Ok(nat)
}
