//! The node's own flows on their way out, kept apart from SNATed ones.
//!
//! A SNATed flow keeps the client's source port when the tuple is free, so
//! it may use a port the node's own sockets pick too. Before the flow
//! claims it, the node's sockets are asked (`node_sockets`); a node socket
//! that picks the port afterwards, towards the same backend, would share
//! the flow's tuple. Its packets are seen here, leaving the node (the
//! external devices' egress, and the pod devices' egress for a backend on
//! this node), and the clash is resolved as netfilter's null binding
//! resolves a local connection that clashes with a NATed one: the node's
//! flow leaves on a port of the SNAT range, which the node's own sockets
//! never pick (the agent reserves it), and its replies are given back the
//! socket's port on the way in, by the reply entry like any translated
//! flow's.

use aya_ebpf::{bindings::bpf_sock, programs::TcContext};
use proxy_common::{
    conntrack::{ct_flags, flow_is_over},
    Backend, CtDirection, CtKey, Verdict, IPPROTO_TCP};

use crate::{
    conntrack::{
        ct4_create_snat, ct4_find, ct4_forget, ct4_mark_closing, ct4_mark_entry_closing, ct4_refresh, ct4_settle, ct_key, now_ns,
        starts_anew, Nat,
    },
    maps::{config, count},
    node_sockets::{holder, Holder},
};

/// The socket that sent the packet, if it carries one. Not necessarily the
/// node's: a pod's packet keeps its socket across the pod's veth (and a
/// redirect), a forwarded one has none.
#[inline(always)]
pub fn sender(ctx: &TcContext) -> Option<*const bpf_sock> {
    // SAFETY: `sk` of the skb context is readable by tc programs.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        None
    } else {
        Some(sk as *const bpf_sock)
    }
}

/// The source port a packet of the node's own flow must leave with, if not
/// its own: the remapped port of a flow that clashed. `sent_by` is the
/// packet's [`sender`].
#[inline(always)]
pub fn node_flow_port(ctx: &TcContext, flow: &crate::packet::Flow, sent_by: *const bpf_sock) -> Option<u16> {
    let now = now_ns();
    let orig = ct_key(flow, CtDirection::Original);
    let backend = Backend {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.proto,
        flags: 0,
    };
    if let Some(found) = ct4_find(&orig) {
        // SAFETY: a value of the map, copied.
        let value = unsafe { *found.entry };
        if value.flags & ct_flags::NODE_FLOW != 0 && !starts_anew(flow, &value, now) {
            let found = ct4_settle(found, &orig, flow, &backend);
            if flow.is_tcp_close() {
                ct4_mark_entry_closing(found.entry);
                ct4_mark_closing(&orig.reply_after_nat(flow.daddr, flow.dport, value.peer_addr, value.peer_port));
            }
            let _ = ct4_refresh(found, &orig, &backend, now);
            return Some(value.peer_port);
        }
    }
    // A TCP connection can clash only from its SYN on: the SNATed flow
    // checked the node's sockets before it took the tuple.
    if flow.proto == IPPROTO_TCP && !flow.is_tcp_open() {
        return None;
    }
    let clash = CtKey::new(flow.daddr, flow.saddr, flow.dport, flow.sport, flow.proto, CtDirection::Reply);
    // SAFETY: copied out of the map.
    let held = unsafe { *ct4_find(&clash)?.entry };
    if held.flags & ct_flags::SNAT == 0 {
        return None;
    }
    if flow_is_over(&held, flow.proto, now) {
        // The translated flow that held the tuple is over: its reply entry
        // would hand this flow's replies to that flow's client.
        ct4_forget(&clash);
        return None;
    }
    // A clash only if a socket of the node sent this: the packet may be a
    // pod's (a hairpin flow we translated, whose reply entry this is).
    if holder(ctx, flow.proto, (flow.daddr, flow.dport), (flow.saddr, flow.sport), sent_by) != Holder::That {
        return None;
    }
    let mut nat = Nat {
        backend_id: 0,
        backend,
        flags: ct_flags::SNAT | ct_flags::NODE_FLOW,
        src_addr: flow.saddr,
        src_port: 0,
    };
    match ct4_create_snat(ctx, &orig, 0, &mut nat, &config(), None) {
        Ok(Some(_)) => {
            count(Verdict::NodeFlowRemapped);
            Some(nat.src_port)
        }
        // The range is full: the clash stays, as it would without us.
        _ => {
            count(Verdict::SnatExhausted);
            None
        }
    }
}
