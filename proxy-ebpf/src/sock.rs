//! Socket-level load balancing for processes in a cgroup (host-network
//! clients): the destination a socket dials is rewritten to a backend at
//! connect()/sendto() time, so no packet of the flow ever carries the
//! frontend address and no per-packet NAT or conntrack is needed. The reverse
//! hooks show the application the frontend it dialled instead of the backend.
//!
//! With `sessionAffinity: ClientIP` every host socket is one client, the
//! node, as the backends see it: kube-proxy keys affinity by source address,
//! and host connections leave with the node's. A connected socket stays on
//! its backend; when that endpoint leaves, the agent aborts connected UDP
//! sockets (see the agent's stale_sockets), as kube-proxy's conntrack
//! cleanup moves UDP flows.
//!
//! Which sockets they translate is the config's (`socket_lb_serves`): host
//! sockets always; pods' sockets too unless the agent runs host-namespace
//! only, except a pod's connected UDP socket, which is left to the per-packet
//! path so that it follows its endpoint's removal.

use aya_ebpf::{
    bindings::{bpf_sock_addr, BPF_ANY},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
    EbpfContext,
};
use proxy_common::{
    maps::{scope, service_flags},
    sock::{SockFlowKey, SockFlowValue, SockRevNatKey, SockRevNatValue},
    Backend, ServiceKey, ServiceValue, Verdict, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    lb::{lb4_lookup, lb4_lookup_backend, lb4_select_backend_for},
    maps::{config, count, SOCK_FLOWS, SOCK_REV_NAT},
};

/// What a cgroup sock_addr program returns to let the call go on.
const PROCEED: i32 = 1;
/// ... and to fail it, with the error set by `bpf_set_retval` (else EPERM).
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// The affinity map's client for host sockets: no pod or outside client has
/// address 0.0.0.0, so the node's sockets share an entry of their own.
const HOST_CLIENT: u32 = 0;

/// Which hook is translating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// cgroup/connect4: TCP, and UDP sockets that connect.
    Connect,
    /// cgroup/sendmsg4: UDP `sendto` with an address.
    SendTo,
}

/// cgroup/connect4 and cgroup/sendmsg4.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext, call: Call) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = protocol(sa) else { return PROCEED };
    // SAFETY: the context is the hook's own bpf_sock_addr.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let config = config();
    if !config.socket_lb_serves(netns, call == Call::Connect, proto == IPPROTO_UDP) {
        return PROCEED;
    }
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    let Some(svc) = lookup_frontend(addr, port, proto) else {
        // Not a frontend: the overwhelming majority of calls, not counted
        // so that `not_service` stays a packet count of the tc program.
        return PROCEED;
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A Local traffic policy left no endpoint on this node: kube-proxy
    // drops such traffic. A pod's packets go on untranslated, and the
    // program on its device drops them, exactly so. A host socket would
    // leave the node with the frontend address, so it is refused instead
    // (a socket has no "drop" short of a timeout).
    if svc.count == 0 && svc.flags & service_flags::NO_LOCAL_ENDPOINTS != 0 && !config.is_host_netns(netns) {
        return PROCEED;
    }
    // No usable endpoint (count 0), or the agent is half-way through
    // shrinking the service: refuse at once, as kube-proxy's REJECT does,
    // instead of letting the client wait for a timeout.
    let Some(backend) = choose_backend(cookie, &svc, addr, port, proto) else {
        count(Verdict::NoBackend);
        // Without this the kernel reports EPERM; with it, ECONNREFUSED.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    };
    let key = SockRevNatKey::new(cookie, backend.addr, backend.port);
    let value = SockRevNatValue {
        frontend_addr: addr,
        frontend_port: port,
        pad: 0,
    };
    // A datagram of a known flow finds its entry there: a lookup is cheaper
    // than rewriting the LRU entry per datagram.
    let known = unsafe { SOCK_REV_NAT.get(&key) }.is_some_and(|v| *v == value);
    if !known && SOCK_REV_NAT.insert(&key, &value, BPF_ANY as u64).is_err() {
        // The flow still works; only the peer address the application reads
        // would be the backend's. Counted so it can be noticed.
        count(Verdict::Error);
    }
    unsafe {
        (*sa).user_ip4 = backend.addr;
        (*sa).user_port = backend.port as u32;
    }
    count(Verdict::Translated);
    PROCEED
}

/// cgroup/recvmsg4 (source of a datagram) and cgroup/getpeername4: the
/// backend a translated socket talks to is shown as the frontend it dialled.
/// Both hooks must always return 1.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let key = SockRevNatKey::new(
        unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        unsafe { (*sa).user_ip4 },
        unsafe { (*sa).user_port } as u16,
    );
    if let Some(frontend) = unsafe { SOCK_REV_NAT.get(&key) } {
        unsafe {
            (*sa).user_ip4 = frontend.frontend_addr;
            (*sa).user_port = frontend.frontend_port as u32;
        }
        count(Verdict::ReverseTranslated);
    }
    PROCEED
}

/// TCP or UDP from the socket's protocol (which, unlike its type, tells a
/// UDP socket from an ICMP datagram "ping" socket); anything else is left alone.
#[inline(always)]
fn protocol(sa: *mut bpf_sock_addr) -> Option<u8> {
    match unsafe { (*sa).protocol } {
        p if p == IPPROTO_TCP as u32 => Some(IPPROTO_TCP),
        p if p == IPPROTO_UDP as u32 => Some(IPPROTO_UDP),
        _ => None,
    }
}

/// A TCP socket connects once: a fresh choice (random, or the node's
/// affinity backend). An unconnected UDP
/// socket picks per datagram, so its datagrams to a frontend follow its first
/// one while that backend exists (a deleted pod's flow moves to a live one),
/// as kube-proxy's conntrack keeps a UDP flow on one endpoint.
#[inline(always)]
fn choose_backend(cookie: u64, svc: &ServiceValue, addr: u32, port: u16, proto: u8) -> Option<Backend> {
    if svc.count == 0 {
        return None;
    }
    let flow = SockFlowKey {
        cookie,
        frontend_addr: addr,
        frontend_port: port,
        proto,
        pad: 0,
    };
    if proto == IPPROTO_UDP {
        if let Some(known) = unsafe { SOCK_FLOWS.get(&flow) } {
            if known.rev_nat_index == svc.rev_nat_index {
                if let Some(backend) = lb4_lookup_backend(known.backend_id) {
                    return Some(backend);
                }
            }
        }
    }
    let (backend_id, backend) = lb4_select_backend_for(svc, HOST_CLIENT)?;
    if proto == IPPROTO_UDP {
        let chosen = SockFlowValue {
            backend_id,
            rev_nat_index: svc.rev_nat_index,
        };
        // Without the entry the next datagram picks again; nothing breaks.
        let _ = SOCK_FLOWS.insert(&flow, &chosen, BPF_ANY as u64);
    }
    Some(backend)
}

#[inline(always)]
fn lookup_frontend(addr: u32, port: u16, proto: u8) -> Option<ServiceValue> {
    for scope in scope::SOCKET_LOOKUP_ORDER {
        let key = ServiceKey { addr, port, proto, scope };
        if let Some(svc) = lb4_lookup(&key) {
            return Some(svc);
        }
    }
    None
}
