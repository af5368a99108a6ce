//! Refusals rate-limited per client, as the kernel limits the ICMP errors
//! it sends (`net.ipv4.icmp_ratelimit`, per peer): a burst of
//! [`REFUSAL_BURST`], then one per [`REFUSAL_INTERVAL_NS`]. A client sending
//! thousands of datagrams to a Service without endpoints gets a few port
//! unreachables, not thousands: they cost the node as much as the datagrams
//! and would amplify a spoofed flood.

use core::mem::size_of;

pub const REFUSALS_MAP: &str = "REFUSALS";
/// Clients tracked at once (LRU: a forgotten client starts with a full
/// burst).
pub const MAX_REFUSAL_CLIENTS: u32 = 16_384;
/// The kernel's `icmp_ratelimit` default: 1000 ms per message.
pub const REFUSAL_INTERVAL_NS: u64 = 1_000_000_000;
/// The kernel's `XRLIM_BURST_FACTOR`.
pub const REFUSAL_BURST: u64 = 6;

/// A client's token bucket, in nanoseconds of credit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusalBucket {
    pub credit_ns: u64,
    pub last_ns: u64,
}

impl RefusalBucket {
    /// A client seen for the first time: a full burst.
    pub const fn full(now: u64) -> Self {
        RefusalBucket {
            credit_ns: REFUSAL_BURST * REFUSAL_INTERVAL_NS,
            last_ns: now,
        }
    }

    /// Whether a refusal may be sent at `now`; takes its cost if so.
    #[inline(always)]
    pub fn allow(&mut self, now: u64) -> bool {
        let max = REFUSAL_BURST * REFUSAL_INTERVAL_NS;
        let earned = now.saturating_sub(self.last_ns);
        self.last_ns = now;
        self.credit_ns = if self.credit_ns.saturating_add(earned) > max { max } else { self.credit_ns + earned };
        if self.credit_ns < REFUSAL_INTERVAL_NS {
            return false;
        }
        self.credit_ns -= REFUSAL_INTERVAL_NS;
        true
    }
}

const _: () = assert!(size_of::<RefusalBucket>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_one_a_second() {
        let mut b = RefusalBucket::full(0);
        let sent = (0..500).filter(|i| b.allow(i * 1_000_000)).count();
        assert_eq!(sent, 6, "500 in half a second: the burst only");
        assert!(!b.allow(S / 2 + 1));
        assert!(b.allow(S + S / 2), "a second later: one more");
        assert!(!b.allow(S + S / 2 + 1));
        // Idle for a minute: the burst is back, no more.
        let later = 60 * S;
        assert_eq!((0..20).filter(|i| b.allow(later + i)).count(), 6);
    }
}
