//! What the datapath decided for a packet; one per-CPU counter each.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Destination was a frontend; rewritten to a backend.
    Translated = 0,
    /// Reply from a backend; source rewritten back to the frontend.
    ReverseTranslated = 1,
    /// Neither a frontend nor a tracked reply; left alone.
    NotService = 2,
    /// A frontend with no usable backend (or an address in the service
    /// range with no frontend): refused with a TCP reset or ICMP port
    /// unreachable.
    NoBackend = 3,
    /// A packet the program could not read or rewrite.
    Error = 4,
    /// The traffic policy is Local and no endpoint is on this node: dropped,
    /// as kube-proxy does, so the client's retry can find another node.
    NoLocalBackend = 5,
    /// A LoadBalancer address reached from outside its
    /// `loadBalancerSourceRanges`: dropped.
    SourceDenied = 6,
    /// No free SNAT port for a new external flow: dropped.
    SnatExhausted = 7,
    /// Translated by the XDP program and sent on before the stack saw it.
    XdpTranslated = 8,
    /// A reply translated back by the XDP program and sent on.
    XdpReverseTranslated = 9,
    /// A refusal (ICMP port unreachable) not sent: the client had its
    /// share for now (see `ratelimit`). The datagram is dropped.
    RefusalRateLimited = 10,
    /// An ICMP error about a translated flow (port unreachable,
    /// fragmentation needed, time exceeded), put back into the receiver's
    /// terms.
    IcmpErrorTranslated = 11,
    /// A new SNATed flow kept the client's source port (counted once per
    /// flow, beside `Translated`).
    SnatPortKept = 12,
    /// A new SNATed flow got a port of the SNAT range: the client's was
    /// held by another flow or a node socket, or is a NodePort's.
    SnatPortFromRange = 13,
    /// A flow of the node's own whose tuple a translated flow already held
    /// got a port of the SNAT range, as netfilter remaps a clashing local
    /// connection (counted once per flow).
    NodeFlowRemapped = 14,
}

impl Verdict {
    pub const COUNT: u32 = 15;
    pub const ALL: [Verdict; 15] = [
        Verdict::Translated,
        Verdict::ReverseTranslated,
        Verdict::NotService,
        Verdict::NoBackend,
        Verdict::Error,
        Verdict::NoLocalBackend,
        Verdict::SourceDenied,
        Verdict::SnatExhausted,
        Verdict::XdpTranslated,
        Verdict::XdpReverseTranslated,
        Verdict::RefusalRateLimited,
        Verdict::IcmpErrorTranslated,
        Verdict::SnatPortKept,
        Verdict::SnatPortFromRange,
        Verdict::NodeFlowRemapped,
    ];

    pub const fn index(self) -> u32 {
        self as u32
    }

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Translated => "translated",
            Verdict::ReverseTranslated => "reverse_translated",
            Verdict::NotService => "not_service",
            Verdict::NoBackend => "no_backend",
            Verdict::Error => "error",
            Verdict::NoLocalBackend => "no_local_backend",
            Verdict::SourceDenied => "source_denied",
            Verdict::SnatExhausted => "snat_exhausted",
            Verdict::XdpTranslated => "xdp_translated",
            Verdict::XdpReverseTranslated => "xdp_reverse_translated",
            Verdict::RefusalRateLimited => "refusal_rate_limited",
            Verdict::IcmpErrorTranslated => "icmp_error_translated",
            Verdict::SnatPortKept => "snat_port_kept",
            Verdict::SnatPortFromRange => "snat_port_from_range",
            Verdict::NodeFlowRemapped => "node_flow_remapped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(v.index() as usize, i);
        }
        for a in Verdict::ALL {
            for b in Verdict::ALL {
                assert!(a == b || a.name() != b.name());
            }
        }
        assert_eq!(Verdict::ALL.len() as u32, Verdict::COUNT);
    }
}
