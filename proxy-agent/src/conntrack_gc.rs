//! Conntrack garbage collection. Entries of flows that are over (UDP idle
//! 30 s, TCP 10 s after a FIN or RST, 2 h otherwise: `flow_is_over`, the
//! rule the datapath itself applies) are deleted every interval, so the map
//! stays below its capacity. Without this, closed flows stay until the LRU
//! evicts them: a busy node's map would sit full, and every new flow would
//! evict one, which on an LRU approximation can be a live but idle one (a
//! pooled database connection), whose next packet would then go to a new
//! backend and be reset.
//!
//! A flow that starts on the very tuple of an over flow between the walk
//! and the delete (milliseconds) loses its entries and is re-translated at
//! its next packet; the datapath already treats a packet on an over flow's
//! tuple as a new flow, so only that window is new.

use std::time::{Duration, Instant};

use proxy_common::conntrack::flow_is_over;

use crate::datapath::{CtTable, PinLayout, PinnedMaps};

/// One collection pass.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    pub seen: usize,
    pub deleted: usize,
    pub took: Duration,
}

/// Runs a pass every `interval` on a thread of its own (a pass over a full
/// map takes tens of milliseconds, which the sync loop should not wait for).
pub fn spawn(layout: PinLayout, interval: Duration, report: impl Fn(Pass) + Send + 'static) -> anyhow::Result<()> {
    let mut maps = PinnedMaps::open(&layout)?;
    std::thread::Builder::new().name("conntrack-gc".into()).spawn(move || loop {
        std::thread::sleep(interval);
        match pass(&mut maps) {
            Ok(p) => {
                if p.deleted > 0 {
                    tracing::debug!(seen = p.seen, deleted = p.deleted, took_us = p.took.as_micros() as u64, "conntrack collected");
                }
                report(p);
            }
            Err(error) => tracing::warn!(%error, "conntrack collection failed; the LRU still bounds the map"),
        }
    })?;
    Ok(())
}

fn pass(maps: &mut PinnedMaps) -> anyhow::Result<Pass> {
    let started = Instant::now();
    let now = monotonic_ns();
    let (mut seen, mut deleted) = (0, 0);
    for table in CtTable::ALL {
        let (walked, over) = maps.conntrack_keys_where(table, |k, v| flow_is_over(v, k.proto, now))?;
        seen += walked;
        deleted += maps.delete_conntrack(table, &over);
    }
    Ok(Pass { seen, deleted, took: started.elapsed() })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, which
/// stamps the entries.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries' clock and ours must be one: a pass compares them.
    #[test]
    fn monotonic_clock_is_the_one_std_instant_uses() {
        let a = monotonic_ns();
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let elapsed = before.elapsed().as_nanos() as u64;
        let b = monotonic_ns();
        assert!(b - a >= elapsed, "{} < {elapsed}", b - a);
        assert!(b - a < elapsed + 50_000_000);
    }
}
