//! ICMP errors about translated flows (destination unreachable, with port
//! unreachable and fragmentation needed among them; time exceeded), put
//! back into the terms of whoever receives them, as netfilter does for
//! RELATED packets. An error quotes the packet it is about; that quote is
//! one direction of a tracked flow, as it left the node:
//!
//! - about a packet the node sent towards the backend (the flow's original
//!   direction, after DNAT and any SNAT), the error comes back from the
//!   backend or a router before it and goes to the client: it is found
//!   through the flow's reply entry, and the client must see its own packet
//!   (client to frontend) quoted, from the frontend when the backend sent it;
//! - about a packet the node sent towards the client (a reply, after its
//!   reverse translation), the error comes from a router on the client's
//!   side, to the frontend address, and goes to the backend: it is found
//!   through the original entry, and the backend must see its own reply
//!   quoted (backend to client, or to the node's SNAT address and port).
//!
//! Fragmentation needed is what path MTU discovery runs on: without it a
//! flow whose path has a smaller link stalls for good.

use crate::conntrack::{ct_flags, CtDirection, CtKey, CtValue};

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// Whether ICMP messages of this type quote a packet and so must be
/// translated with its flow.
#[inline(always)]
pub const fn is_error(icmp_type: u8) -> bool {
    icmp_type == ICMP_DEST_UNREACH || icmp_type == ICMP_TIME_EXCEEDED
}

/// The quoted packet's tuple, as it sits in the error (network byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Quote {
    /// The key of the reply entry of a flow whose original direction, after
    /// translation, is the quoted packet.
    #[inline(always)]
    pub const fn reply_key(&self) -> CtKey {
        CtKey::new(self.daddr, self.saddr, self.dport, self.sport, self.proto, CtDirection::Reply)
    }

    /// The key of the original entry of a flow whose reply, after reverse
    /// translation, is the quoted packet.
    #[inline(always)]
    pub const fn original_key(&self) -> CtKey {
        CtKey::new(self.daddr, self.saddr, self.dport, self.sport, self.proto, CtDirection::Original)
    }
}

/// What to write into an ICMP error; `None` leaves a field as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorRewrite {
    pub outer_src: Option<u32>,
    pub outer_dst: Option<u32>,
    pub inner_src: Option<(u32, u16)>,
    pub inner_dst: Option<(u32, u16)>,
    /// Forward it ourselves after a FIB lookup (its destination, or its
    /// new source, is one of the node's addresses).
    pub redirect: bool,
}

/// An error about the flow's original direction, going to the client; the
/// flow's reply entry is `entry`. `outer_src` is the error's sender.
#[inline(always)]
pub const fn towards_client(outer_src: u32, quote: &Quote, entry: &CtValue) -> ErrorRewrite {
    let snat = entry.flags & ct_flags::SNAT != 0;
    ErrorRewrite {
        // The backend answered for the frontend; a router speaks for itself.
        outer_src: if outer_src == quote.daddr { Some(entry.nat_addr) } else { None },
        outer_dst: if snat { Some(entry.peer_addr) } else { None },
        inner_src: if snat { Some((entry.peer_addr, entry.peer_port)) } else { None },
        inner_dst: Some((entry.nat_addr, entry.nat_port)),
        redirect: entry.flags & ct_flags::REDIRECT != 0,
    }
}

/// An error about the flow's reply direction, going to the backend; the
/// flow's original entry is `entry`.
#[inline(always)]
pub const fn towards_backend(entry: &CtValue) -> ErrorRewrite {
    let snat = entry.flags & ct_flags::SNAT != 0;
    ErrorRewrite {
        outer_src: None,
        outer_dst: Some(entry.nat_addr),
        inner_src: Some((entry.nat_addr, entry.nat_port)),
        inner_dst: if snat { Some((entry.peer_addr, entry.peer_port)) } else { None },
        redirect: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    /// A quoted packet's tuple, ports in host order.
    fn quote(saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16, proto: u8) -> Quote {
        Quote {
            saddr: be(saddr),
            daddr: be(daddr),
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto,
        }
    }

    const CLIENT: [u8; 4] = [10, 100, 0, 100];
    const NODE: [u8; 4] = [10, 100, 0, 11];
    const BACKEND: [u8; 4] = [10, 244, 2, 10];
    const ROUTER: [u8; 4] = [10, 100, 0, 200];

    /// A NodePort flow, SNATed: client:40000 -> node:30080 became
    /// node:61000 -> backend:8080. Its two entries, as `ct4_create_snat`
    /// writes them.
    fn snat_flow() -> (CtKey, CtValue, CtKey, CtValue) {
        let flags = ct_flags::SNAT | ct_flags::REDIRECT;
        let orig = CtKey::new(be(CLIENT), be(NODE), 40000u16.to_be(), 30080u16.to_be(), 17, CtDirection::Original);
        let orig_value = CtValue {
            backend_id: 1,
            rev_nat_index: 1,
            nat_addr: be(BACKEND),
            nat_port: 8080u16.to_be(),
            flags,
            created_ns: 0,
            last_seen_ns: 0,
            peer_addr: be(NODE),
            peer_port: 61000u16.to_be(),
            _pad: [0; 2],
        };
        let reply = orig.reply_after_nat(be(BACKEND), 8080u16.to_be(), be(NODE), 61000u16.to_be());
        let reply_value = CtValue {
            nat_addr: be(NODE),
            nat_port: 30080u16.to_be(),
            peer_addr: be(CLIENT),
            peer_port: 40000u16.to_be(),
            ..orig_value
        };
        (orig, orig_value, reply, reply_value)
    }

    #[test]
    fn a_backends_port_unreachable_reaches_the_client_as_the_frontends() {
        let (_, _, reply, reply_value) = snat_flow();
        // The backend quotes what it got: node:61000 -> backend:8080.
        let quote = quote(NODE, BACKEND, 61000, 8080, 17);
        assert_eq!(quote.reply_key(), reply);
        let rw = towards_client(be(BACKEND), &quote, &reply_value);
        assert_eq!(rw.outer_src, Some(be(NODE)), "from the frontend");
        assert_eq!(rw.outer_dst, Some(be(CLIENT)));
        assert_eq!(rw.inner_src, Some((be(CLIENT), 40000u16.to_be())), "the client's own packet");
        assert_eq!(rw.inner_dst, Some((be(NODE), 30080u16.to_be())));
        assert!(rw.redirect);
        // A router between node and backend keeps its own address.
        assert_eq!(towards_client(be(ROUTER), &quote, &reply_value).outer_src, None);
    }

    #[test]
    fn fragmentation_needed_on_the_clients_side_reaches_the_backend() {
        let (orig, orig_value, _, _) = snat_flow();
        // A router towards the client quotes the reply as the node sent it:
        // node:30080 -> client:40000.
        let quote = quote(NODE, CLIENT, 30080, 40000, 17);
        assert_eq!(quote.original_key(), orig);
        let rw = towards_backend(&orig_value);
        assert_eq!(rw.outer_dst, Some(be(BACKEND)));
        assert_eq!(rw.outer_src, None, "the router speaks for itself");
        assert_eq!(rw.inner_src, Some((be(BACKEND), 8080u16.to_be())), "the backend's own reply");
        assert_eq!(rw.inner_dst, Some((be(NODE), 61000u16.to_be())));
        assert!(rw.redirect);
    }

    #[test]
    fn without_snat_only_the_frontend_is_put_back() {
        let (_, _, _, mut reply_value) = snat_flow();
        reply_value.flags = 0;
        let quote = quote(CLIENT, BACKEND, 40000, 8080, 6);
        let rw = towards_client(be(BACKEND), &quote, &reply_value);
        assert_eq!((rw.outer_dst, rw.inner_src), (None, None));
        assert_eq!(rw.inner_dst, Some((be(NODE), 30080u16.to_be())));
        assert!(!rw.redirect);
        assert!(is_error(3) && is_error(11) && !is_error(0) && !is_error(8));
    }
}
