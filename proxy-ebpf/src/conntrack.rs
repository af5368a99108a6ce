//! Connection tracking: the same backend for every packet of a flow, and the
//! way back for its replies.
//!
//! Two tables, as netfilter keeps "assured" connections apart when its table
//! fills: a flow starts in `CONNTRACK_NEW` and moves to `CONNTRACK` once it
//! has shown it is established (a reply, then another packet from the
//! client: the handshake's last ACK, or a UDP stream's second datagram). A
//! flood of new flows (spoofed SYNs, one-shot datagrams) then only ever
//! evicts new flows from the first table, never an established connection,
//! idle or not, from the second. Packets look in `CONNTRACK` first.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    maps::LruHashMap,
    EbpfContext,
};
use proxy_common::{
    config::snat_port,
    conntrack::{ct_flags, flow_is_over, reply_belongs_to, LAST_SEEN_GRANULARITY_NS},
    Backend, CtDirection, CtKey, CtValue, DatapathConfig, ServiceValue,
};

use crate::maps::{CONNTRACK, CONNTRACK_NEW};
use crate::node_sockets::node_socket_holds;
use crate::packet::Flow;

/// Random ports tried for a new SNATed flow before giving up on it. With a
/// fraction f of the range held, all of them are taken with probability
/// f^32: under 1 % until the range is 86 % full (8 probes gave up from
/// about 55 %).
const SNAT_ATTEMPTS: u32 = 32;

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// The conntrack key of this packet's tuple, looked up as `direction`.
#[inline(always)]
pub fn ct_key(flow: &Flow, direction: CtDirection) -> CtKey {
    CtKey::new(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto, direction)
}

/// Which table an entry is in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Established,
    New,
}

/// An entry, and the table it is in.
#[derive(Clone, Copy)]
pub struct Found {
    pub entry: *mut CtValue,
    pub table: Table,
}

/// The entry at `key`, established flows first.
#[inline(always)]
pub fn ct4_find(key: &CtKey) -> Option<Found> {
    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        return Some(Found {
            entry,
            table: Table::Established,
        });
    }
    CONNTRACK_NEW.get_ptr_mut(key).map(|entry| Found { entry, table: Table::New })
}

/// The entry of a flow sent to this frontend before.
#[inline(always)]
pub fn ct4_lookup_original(key: &CtKey, svc: &ServiceValue) -> Option<Found> {
    let found = ct4_find(key)?;
    if unsafe { (*found.entry).rev_nat_index } != svc.rev_nat_index {
        return None;
    }
    Some(found)
}

/// Reply entry for a packet coming back from a backend; `closing` when the
/// packet is a TCP FIN or RST, which marks both of the flow's entries. A new
/// flow's reply entry notes the reply (see [`ct4_settle`]).
#[inline(always)]
pub fn ct4_lookup_reply(key: &CtKey, closing: bool) -> Option<CtValue> {
    let found = ct4_find(key)?;
    let entry = found.entry;
    touch(entry, now_ns());
    unsafe {
        if found.table == Table::New && (*entry).flags & ct_flags::REPLIED == 0 {
            (*entry).flags |= ct_flags::REPLIED;
        }
    }
    let value = unsafe { *entry };
    if closing {
        ct4_mark_entry_closing(entry);
        ct4_mark_closing(&key.original_of_reply(&value));
    }
    Some(value)
}

/// Deletes the entry at `key` from both tables, if there is one: its
/// flow's tuple now carries another flow.
#[inline(always)]
pub fn ct4_forget(key: &CtKey) {
    forget(&CONNTRACK, key);
    forget(&CONNTRACK_NEW, key);
}

/// Marks an entry of a flow that saw a FIN or RST: it is over once idle for
/// `CLOSED_IDLE_NS`, and a SYN on it is a new connection.
#[inline(always)]
pub fn ct4_mark_closing(key: &CtKey) {
    if let Some(found) = ct4_find(key) {
        ct4_mark_entry_closing(found.entry);
    }
}

/// [`ct4_mark_closing`] for an entry already looked up.
#[inline(always)]
pub fn ct4_mark_entry_closing(entry: *mut CtValue) {
    unsafe {
        if (*entry).flags & ct_flags::CLOSING == 0 {
            (*entry).flags |= ct_flags::CLOSING;
        }
    }
}

/// Moves `last_seen_ns` forward when it is more than the granularity old;
/// true when it did. Writing it on every packet would cost a store per packet
/// for nothing.
#[inline(always)]
fn touch(entry: *mut CtValue, now: u64) -> bool {
    unsafe {
        if now.wrapping_sub((*entry).last_seen_ns) <= LAST_SEEN_GRANULARITY_NS {
            return false;
        }
        (*entry).last_seen_ns = now;
    }
    true
}

/// How long a connection's first SYN may be retransmitted onto its entry
/// (Linux retries at 1, 3, 7 s): a SYN on an older entry, or on one that saw
/// a FIN or RST, opens a new connection that reuses an old one's ports (the
/// client's TIME_WAIT is over, or reused), and gets a backend chosen afresh
/// rather than the old connection's, which may have left the Service since,
/// and both directions recorded anew.
const SYN_RETRANSMIT_WINDOW_NS: u64 = 10_000_000_000;

/// Whether a packet of `flow` found on a tracked flow's entry starts a new
/// flow instead: the tracked one is over (its SNAT port may belong to
/// another flow by now), or this is a SYN opening a new connection on an
/// old one's ports.
#[inline(always)]
pub fn starts_anew(flow: &Flow, entry: &CtValue, now: u64) -> bool {
    flow_is_over(entry, flow.proto, now)
        || (flow.is_tcp_open()
            && (entry.flags & ct_flags::CLOSING != 0 || now.wrapping_sub(entry.created_ns) > SYN_RETRANSMIT_WINDOW_NS))
}

/// The source a flow's packets leave with: the SNAT address and port when
/// it has them, else the client's own.
#[inline(always)]
pub fn source_after_nat(orig: &CtKey, entry: &CtValue) -> (u32, u16) {
    if entry.flags & ct_flags::SNAT != 0 {
        (entry.peer_addr, entry.peer_port)
    } else {
        (orig.saddr, orig.sport)
    }
}

/// A packet of a known flow. Once per granularity, when its timestamp moves,
/// the reply entry is checked too and written back if the LRU evicted it
/// (the two directions are evicted independently) or another flow took the
/// reply tuple over (see `reply_belongs_to`).
#[inline(always)]
pub fn ct4_refresh(found: Found, orig: &CtKey, backend: &Backend, now: u64) -> Result<(), i64> {
    if !touch(found.entry, now) {
        return Ok(());
    }
    let value = unsafe { *found.entry };
    let (src_addr, src_port) = source_after_nat(orig, &value);
    let reply = orig.reply_after_nat(backend.addr, backend.port, src_addr, src_port);
    if ct4_find(&reply).is_some_and(|held| reply_belongs_to(unsafe { &*held.entry }, orig)) {
        return Ok(());
    }
    let value = reply_value(orig, &value, now);
    match found.table {
        Table::Established => insert(&CONNTRACK, &reply, &value, BPF_ANY),
        Table::New => insert(&CONNTRACK_NEW, &reply, &value, BPF_ANY),
    }
}

/// Moves a new flow to the established table once it has shown it is
/// established: its reply entry noted a reply, and `flow`, a packet from
/// the client, is not a SYN (a TCP handshake's last ACK, or a UDP stream's
/// next datagram). Returns where the flow's original entry is now.
#[inline(always)]
pub fn ct4_settle(found: Found, orig: &CtKey, flow: &Flow, backend: &Backend) -> Found {
    if found.table == Table::Established || flow.is_tcp_open() {
        return found;
    }
    let value = unsafe { *found.entry };
    let (src_addr, src_port) = source_after_nat(orig, &value);
    let reply_key = orig.reply_after_nat(backend.addr, backend.port, src_addr, src_port);
    // SAFETY: copied out of the map.
    let Some(reply) = (unsafe { CONNTRACK_NEW.get(&reply_key) }).copied() else {
        return found;
    };
    if reply.flags & ct_flags::REPLIED == 0 || !reply_belongs_to(&reply, orig) {
        return found;
    }
    // The reply entry first: a packet between the two inserts finds the
    // new flow's entries, which are still there.
    if insert(&CONNTRACK, &reply_key, &reply, BPF_ANY).is_err() || insert(&CONNTRACK, orig, &value, BPF_ANY).is_err() {
        return found;
    }
    let _ = CONNTRACK_NEW.remove(orig);
    let _ = CONNTRACK_NEW.remove(&reply_key);
    match CONNTRACK.get_ptr_mut(orig) {
        Some(entry) => Found {
            entry,
            table: Table::Established,
        },
        None => found,
    }
}

/// How a new flow is translated.
pub struct Nat {
    pub backend_id: u32,
    pub backend: Backend,
    /// [`ct_flags`] bits.
    pub flags: u16,
    /// With [`ct_flags::SNAT`], the new source; otherwise unused.
    pub src_addr: u32,
    pub src_port: u16,
}

/// Records both directions of a new flow (or of one moved off a removed
/// backend) in the new flows' table, and forgets what the established one
/// held at the same keys (a flow that was over, or, without SNAT, another
/// frontend's flow on the same reply tuple, which this one takes over).
#[inline(always)]
pub fn ct4_create(orig: &CtKey, svc: &ServiceValue, nat: &Nat) -> Result<(), i64> {
    let now = now_ns();
    let fwd = original_value(svc.rev_nat_index, nat, now);
    let (src_addr, src_port) = source_after_nat(orig, &fwd);
    let reply = orig.reply_after_nat(nat.backend.addr, nat.backend.port, src_addr, src_port);
    forget_established(&reply);
    forget_established(orig);
    insert(&CONNTRACK_NEW, &reply, &reply_value(orig, &fwd, now), BPF_ANY)?;
    insert(&CONNTRACK_NEW, orig, &fwd, BPF_ANY)
}

#[inline(always)]
fn forget_established(key: &CtKey) {
    forget(&CONNTRACK, key);
}

/// Deletes the entry at `key` from `table`, if there is one.
#[inline(always)]
fn forget(table: &LruHashMap<CtKey, CtValue>, key: &CtKey) {
    // SAFETY: only looked at, to skip the delete in the common case.
    if unsafe { table.get(key) }.is_some() {
        let _ = table.remove(key);
    }
}

/// Which port a SNATed flow got.
pub enum SnatPort {
    /// The client's own, as netfilter keeps it when the tuple is free.
    Kept,
    /// One of the configured range.
    FromRange,
}

/// Like [`ct4_create`] for a flow SNATed to `nat.src_addr`: on the port
/// `keep` (the client's, network byte order) if given and free, else on a
/// port of the configured range. A port is free when the reply entry can be
/// inserted, and for the client's port also when no node socket holds the
/// tuple (see `node_sockets`; the node's sockets never pick ports of the
/// range, which the agent reserves where it meets their ephemeral range,
/// and asking the kernel once per probe would multiply what the verifier
/// walks by the probes). The entry is inserted only if absent, which claims
/// the port atomically: two flows can never share a reply tuple. A port
/// held by a flow that is over (see `flow_is_over`) is taken over. `None`
/// when every attempt found its port taken; `nat.src_port` is the port
/// otherwise.
#[inline(always)]
pub fn ct4_create_snat<C: EbpfContext>(
    ctx: &C,
    orig: &CtKey,
    rev_nat_index: u32,
    nat: &mut Nat,
    config: &DatapathConfig,
    keep: Option<u16>,
) -> Result<Option<SnatPort>, i64> {
    let now = now_ns();
    if let Some(port) = keep {
        if !node_socket_holds(ctx, orig.proto, (nat.backend.addr, nat.backend.port), (nat.src_addr, port))
            && claim_snat_port(orig, rev_nat_index, nat, port, now)?
        {
            return Ok(Some(SnatPort::Kept));
        }
    }
    let mut attempt = 0;
    while attempt < SNAT_ATTEMPTS {
        // Independent random probes: consecutive ones would keep landing in
        // the same run of taken ports once the range fills up.
        let random = unsafe { bpf_get_prandom_u32() };
        let port = snat_port(random, config.snat_port_min, config.snat_port_max).to_be();
        if claim_snat_port(orig, rev_nat_index, nat, port, now)? {
            return Ok(Some(SnatPort::FromRange));
        }
        attempt += 1;
    }
    Ok(None)
}

/// Records the flow on source port `port` if no other flow holds the tuple
/// (see [`ct4_create_snat`]); false if one does. An established flow holding
/// it is looked for first; the claim itself is the insert into the new
/// flows' table.
#[inline(always)]
fn claim_snat_port(orig: &CtKey, rev_nat_index: u32, nat: &mut Nat, port: u16, now: u64) -> Result<bool, i64> {
    nat.src_port = port;
    let fwd = original_value(rev_nat_index, nat, now);
    let reply = orig.reply_after_nat(nat.backend.addr, nat.backend.port, nat.src_addr, port);
    // SAFETY: only looked at.
    if let Some(held) = unsafe { CONNTRACK.get(&reply) } {
        if !flow_is_over(held, orig.proto, now) {
            return Ok(false);
        }
        let _ = CONNTRACK.remove(&reply);
    }
    let value = reply_value(orig, &fwd, now);
    let claimed = insert(&CONNTRACK_NEW, &reply, &value, BPF_NOEXIST).is_ok()
        || (unsafe { CONNTRACK_NEW.get(&reply) }.is_some_and(|held| flow_is_over(held, orig.proto, now))
            && insert(&CONNTRACK_NEW, &reply, &value, BPF_ANY).is_ok());
    if !claimed {
        return Ok(false);
    }
    forget_established(orig);
    insert(&CONNTRACK_NEW, orig, &fwd, BPF_ANY)?;
    Ok(true)
}

#[inline(always)]
fn original_value(rev_nat_index: u32, nat: &Nat, now: u64) -> CtValue {
    let snat = nat.flags & ct_flags::SNAT != 0;
    CtValue {
        backend_id: nat.backend_id,
        rev_nat_index,
        nat_addr: nat.backend.addr,
        nat_port: nat.backend.port,
        flags: nat.flags,
        created_ns: now,
        last_seen_ns: now,
        peer_addr: if snat { nat.src_addr } else { 0 },
        peer_port: if snat { nat.src_port } else { 0 },
        _pad: [0; 2],
    }
}

/// The reply entry puts the frontend the client dialled back as the source,
/// and, for a SNATed flow, the client back as the destination.
#[inline(always)]
fn reply_value(orig: &CtKey, fwd: &CtValue, now: u64) -> CtValue {
    let snat = fwd.flags & ct_flags::SNAT != 0;
    CtValue {
        backend_id: fwd.backend_id,
        rev_nat_index: fwd.rev_nat_index,
        nat_addr: orig.daddr,
        nat_port: orig.dport,
        flags: fwd.flags,
        created_ns: now,
        last_seen_ns: now,
        peer_addr: if snat { orig.saddr } else { 0 },
        peer_port: if snat { orig.sport } else { 0 },
        _pad: [0; 2],
    }
}

#[inline(always)]
fn insert(table: &LruHashMap<CtKey, CtValue>, key: &CtKey, value: &CtValue, flags: u32) -> Result<(), i64> {
    table.insert(key, value, flags as u64).map_err(|e| e as i64)
}
