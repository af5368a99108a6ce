//! Connection tracking entries.
//!
//! Each translated flow gets two entries: one keyed by the tuple the client
//! sent (`Original`), naming the chosen backend so every packet of the flow goes
//! to the same one, and one keyed by the tuple the backend's replies carry
//! (`Reply`), naming the frontend address and port to put back as the source.
//! The frontend is stored in the reply entry itself rather than looked up by
//! rev-NAT index, so a flow keeps being translated after its Service is gone,
//! as established connections do under kube-proxy.
//!
//! When the source is rewritten too (SNAT for external traffic under
//! `externalTrafficPolicy: Cluster`, masquerade for hairpin), the original
//! entry names the new source in `peer_*` and the reply entry keeps the
//! client's own address and port in `peer_*` to put back as the destination.

use core::mem::size_of;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtDirection {
    Original = 0,
    Reply = 1,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}

impl CtKey {
    /// The key that replies carry once this flow has been sent to
    /// `backend_addr:backend_port` from `src_addr:src_port` (after SNAT).
    pub const fn reply_after_nat(&self, backend_addr: u32, backend_port: u16, src_addr: u32, src_port: u16) -> Self {
        CtKey::new(backend_addr, src_addr, backend_port, src_port, self.proto, CtDirection::Reply)
    }

    /// The original-direction key of the flow whose reply entry, at this
    /// key, is `reply`: the client (put back from the entry for a SNATed
    /// flow, else the reply's destination) to the frontend.
    pub const fn original_of_reply(&self, reply: &CtValue) -> Self {
        let (client, client_port) = if reply.flags & ct_flags::SNAT != 0 {
            (reply.peer_addr, reply.peer_port)
        } else {
            (self.daddr, self.dport)
        };
        CtKey::new(client, reply.nat_addr, client_port, reply.nat_port, self.proto, CtDirection::Original)
    }

    /// Key of a packet as seen on the wire, all fields in network byte order.
    pub const fn new(
        saddr: u32,
        daddr: u32,
        sport: u16,
        dport: u16,
        proto: u8,
        direction: CtDirection,
    ) -> Self {
        CtKey {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            direction: direction as u8,
            _pad: [0; 2],
        }
    }

    /// The key that replies carry once this original-direction flow has been
    /// sent to `backend_addr:backend_port`.
    pub const fn reply_after_dnat(&self, backend_addr: u32, backend_port: u16) -> Self {
        CtKey::new(
            backend_addr,
            self.saddr,
            backend_port,
            self.sport,
            self.proto,
            CtDirection::Reply,
        )
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue {
    /// Original entries: the backend chosen. Reply entries: the same, for
    /// inspection.
    pub backend_id: u32,
    /// The frontend's rev-NAT index (its service id).
    pub rev_nat_index: u32,
    /// Original entries: backend address; reply entries: frontend address.
    pub nat_addr: u32,
    /// Original entries: backend port; reply entries: frontend port.
    pub nat_port: u16,
    /// [`ct_flags`] bits.
    pub flags: u16,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// With [`ct_flags::SNAT`]: original entries, the source written into
    /// the packet; reply entries, the client's address, put back as the
    /// destination. Otherwise 0.
    pub peer_addr: u32,
    pub peer_port: u16,
    pub _pad: [u8; 2],
}

/// Bits of [`CtValue::flags`].
pub mod ct_flags {
    /// The source is rewritten too (see [`super::CtValue::peer_addr`]).
    pub const SNAT: u16 = 1 << 0;
    /// Translated packets are forwarded by a FIB lookup and a redirect
    /// rather than handed to the stack: after the rewrite, a source or a
    /// destination is one of the node's own addresses, which the stack's
    /// input path would drop as martian.
    pub const REDIRECT: u16 = 1 << 1;
    /// A TCP FIN or RST went through: once idle for
    /// [`super::CLOSED_IDLE_NS`], the flow's tuple may be reused by another.
    pub const CLOSING: u16 = 1 << 2;
    /// A flow of the node's own, not a Service's: its source port clashed
    /// with a translated flow's tuple and was moved to a SNAT-range port
    /// (`peer_*` of the original entry), as netfilter's null binding moves a
    /// local connection that clashes with a NATed one.
    pub const NODE_FLOW: u16 = 1 << 3;
    /// A new flow's reply entry: a reply went through. The client's next
    /// packet (not a SYN) then moves the flow to the established table.
    pub const REPLIED: u16 = 1 << 4;
}

/// When a tracked flow counts as over, so its SNAT port can be claimed by a
/// new flow: a TCP connection closed (FIN or RST seen) and then idle this
/// long (the peer's retransmissions of its last segments are long done).
pub const CLOSED_IDLE_NS: u64 = 10_000_000_000;
/// A UDP flow idle this long (netfilter's `nf_conntrack_udp_timeout`).
pub const UDP_IDLE_NS: u64 = 30_000_000_000;
/// A TCP connection idle this long without a FIN or RST (a peer that
/// vanished); netfilter keeps established ones for 5 days, which would let
/// dead connections hold SNAT ports for as long.
pub const TCP_IDLE_NS: u64 = 7_200_000_000_000;

/// Whether `reply`, found at the reply tuple of the flow `orig` names, is
/// that flow's: it translates back to the frontend `orig` dialled (and, for
/// a SNATed flow, to `orig`'s client). Without SNAT two flows can share a
/// reply tuple: one client port to two frontends with the same backend, as
/// when a client reuses a port (TIME_WAIT reuse) for another Service.
pub const fn reply_belongs_to(reply: &CtValue, orig: &CtKey) -> bool {
    reply.nat_addr == orig.daddr
        && reply.nat_port == orig.dport
        && (reply.flags & ct_flags::SNAT == 0 || (reply.peer_addr == orig.saddr && reply.peer_port == orig.sport))
}

/// Whether the flow an entry records is over at `now_ns`, by the rules above.
pub const fn flow_is_over(entry: &CtValue, proto: u8, now_ns: u64) -> bool {
    let idle = now_ns.wrapping_sub(entry.last_seen_ns);
    if proto == crate::IPPROTO_UDP {
        return idle > UDP_IDLE_NS;
    }
    if entry.flags & ct_flags::CLOSING != 0 {
        return idle > CLOSED_IDLE_NS;
    }
    idle > TCP_IDLE_NS
}

const _: () = assert!(size_of::<CtKey>() == 16);
const _: () = assert!(size_of::<CtValue>() == 40);

/// How stale `last_seen_ns` may get before the datapath refreshes it; writing
/// it on every packet would cost a map update per packet for nothing.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(flags: u16, last_seen_ns: u64) -> CtValue {
        CtValue {
            backend_id: 1,
            rev_nat_index: 1,
            nat_addr: 0,
            nat_port: 0,
            flags,
            created_ns: 0,
            last_seen_ns,
            peer_addr: 0,
            peer_port: 0,
            _pad: [0; 2],
        }
    }

    #[test]
    fn flows_are_over_after_their_protocols_idle_time() {
        let s = 1_000_000_000u64;
        let t0 = 1000 * s;
        // UDP: 30 s idle.
        assert!(!flow_is_over(&entry(0, t0), 17, t0 + 29 * s));
        assert!(flow_is_over(&entry(0, t0), 17, t0 + 31 * s));
        // TCP closed: 10 s idle; open: two hours.
        assert!(flow_is_over(&entry(ct_flags::CLOSING, t0), 6, t0 + 11 * s));
        assert!(!flow_is_over(&entry(0, t0), 6, t0 + 11 * s));
        assert!(!flow_is_over(&entry(0, t0), 6, t0 + 7000 * s));
        assert!(flow_is_over(&entry(0, t0), 6, t0 + 7300 * s));
    }

    #[test]
    fn reply_key_swaps_ends_and_uses_backend() {
        let client = u32::from_be_bytes([10, 244, 1, 2]).to_be();
        let vip = u32::from_be_bytes([10, 96, 0, 10]).to_be();
        let backend = u32::from_be_bytes([10, 244, 2, 3]).to_be();
        let k = CtKey::new(client, vip, 40000u16.to_be(), 80u16.to_be(), 6, CtDirection::Original);
        let r = k.reply_after_dnat(backend, 8080u16.to_be());
        assert_eq!(r.saddr, backend);
        assert_eq!(r.daddr, client);
        assert_eq!(r.sport, 8080u16.to_be());
        assert_eq!(r.dport, 40000u16.to_be());
        assert_eq!(r.proto, 6);
        assert_eq!(r.direction, CtDirection::Reply as u8);
        assert_eq!(r._pad, [0, 0]);
    }

    #[test]
    fn a_reply_entry_belongs_to_the_flow_it_translates_back_to() {
        let (client, frontend_a, frontend_b) = (u32::from_ne_bytes([10, 244, 1, 10]), u32::from_ne_bytes([10, 96, 0, 10]), u32::from_ne_bytes([10, 96, 0, 11]));
        let orig = CtKey::new(client, frontend_a, 40000u16.to_be(), 80u16.to_be(), 6, CtDirection::Original);
        let mut reply = entry(0, 0);
        reply.nat_addr = frontend_a;
        reply.nat_port = 80u16.to_be();
        assert!(reply_belongs_to(&reply, &orig));
        // The same client port, later sent to frontend B with the same backend.
        reply.nat_addr = frontend_b;
        assert!(!reply_belongs_to(&reply, &orig));
        reply.nat_addr = frontend_a;
        reply.nat_port = 443u16.to_be();
        assert!(!reply_belongs_to(&reply, &orig));
        // SNATed: the client put back must be this flow's.
        let mut snat = entry(ct_flags::SNAT, 0);
        snat.nat_addr = frontend_a;
        snat.nat_port = 80u16.to_be();
        snat.peer_addr = client;
        snat.peer_port = 40000u16.to_be();
        assert!(reply_belongs_to(&snat, &orig));
        snat.peer_port = 40001u16.to_be();
        assert!(!reply_belongs_to(&snat, &orig));
    }

    #[test]
    fn the_original_key_comes_back_from_a_reply_entry() {
        let (client, frontend, backend, node) = ([10, 244, 1, 10], [10, 96, 0, 10], [10, 244, 2, 10], [10, 100, 0, 11]);
        let ip = u32::from_ne_bytes;
        let orig = CtKey::new(ip(client), ip(frontend), 40000u16.to_be(), 80u16.to_be(), 6, CtDirection::Original);
        let mut value = entry(0, 0);
        value.nat_addr = ip(frontend);
        value.nat_port = 80u16.to_be();
        let reply = orig.reply_after_nat(ip(backend), 8080u16.to_be(), ip(client), 40000u16.to_be());
        assert_eq!(reply.original_of_reply(&value), orig);
        // SNATed to the node: the client is in the entry.
        value.flags = ct_flags::SNAT;
        value.peer_addr = ip(client);
        value.peer_port = 40000u16.to_be();
        let reply = orig.reply_after_nat(ip(backend), 8080u16.to_be(), ip(node), 61234u16.to_be());
        assert_eq!(reply.original_of_reply(&value), orig);
    }
}
