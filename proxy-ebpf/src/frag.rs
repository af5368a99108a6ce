//! Ports for later fragments, from their datagram's first fragment (see
//! `proxy_common::frag`).

use proxy_common::frag::{FragKey, FragPorts, Fragment};

use crate::maps::FRAGMENTS;
use crate::packet::Flow;

/// `flow` made complete: a first fragment's ports are kept for the rest,
/// a later fragment gets them. `None` for a later fragment whose first one
/// was not seen here (it goes on untranslated).
#[inline(always)]
pub fn with_ports(mut flow: Flow) -> Option<Flow> {
    let key = FragKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        id: flow.ip_id,
        proto: flow.proto,
        _pad: 0,
    };
    match flow.fragment {
        Fragment::Whole => Some(flow),
        Fragment::First => {
            let ports = FragPorts {
                sport: flow.sport,
                dport: flow.dport,
            };
            // Best effort: without it the later fragments pass untranslated.
            let _ = FRAGMENTS.insert(&key, &ports, 0);
            Some(flow)
        }
        Fragment::Later => {
            // SAFETY: the value is copied out at once.
            let ports = unsafe { FRAGMENTS.get(&key) }?;
            flow.sport = ports.sport;
            flow.dport = ports.dport;
            Some(flow)
        }
    }
}
