//! How the API server's watches are doing, for `/healthz`, and how soon a
//! failed watch is retried.
//!
//! A watch that fails keeps the last state it listed, and the maps keep
//! what was programmed from it: traffic is still served. But the node no
//! longer follows the cluster, which is what readiness says: after
//! `WATCH_TIMEOUT` of failing, `/healthz` turns 503 and names the watch.
//! Retries come at most a second apart (with jitter, so the nodes of a
//! cluster do not come back in step): kube-rs's default backoff grows to
//! 30 s, so a change made just after the API server came back could wait
//! that long to reach the maps.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a watch may fail before the node is unready: `/healthz`'s own
/// timeout for pending work.
pub const WATCH_TIMEOUT: Duration = crate::telemetry::health::HEALTH_TIMEOUT;

/// The failing watches: since when, when they last failed, and how.
#[derive(Debug, Default)]
pub struct WatchHealth {
    failing: Mutex<BTreeMap<&'static str, Failing>>,
}

#[derive(Debug)]
struct Failing {
    since: Instant,
    last: Instant,
    error: String,
}

/// A watch whose retries (at most a second apart) have not failed for this
/// long, while the API server answers, is back. A watch that resumes shows
/// no event until something changes, so its silence is what tells.
pub const QUIET: Duration = Duration::from_secs(3);

impl WatchHealth {
    pub fn failed(&self, watch: &'static str, now: Instant, error: String) {
        let mut failing = self.failing.lock().unwrap();
        let entry = failing.entry(watch).or_insert(Failing {
            since: now,
            last: now,
            error: String::new(),
        });
        entry.last = now;
        entry.error = error;
    }

    pub fn any_failing(&self) -> bool {
        !self.failing.lock().unwrap().is_empty()
    }

    /// The API server answered at `now`: the watches that have not failed
    /// for [`QUIET`] are back. One whose requests keep failing (forbidden,
    /// say) is not.
    pub fn api_answered(&self, now: Instant) {
        let mut failing = self.failing.lock().unwrap();
        failing.retain(|watch, f| {
            let back = now.saturating_duration_since(f.last) >= QUIET;
            if back {
                tracing::info!(resource = *watch, "watch is back");
            }
            !back
        });
    }

    pub fn succeeded(&self, watch: &'static str) {
        let mut failing = self.failing.lock().unwrap();
        if failing.remove(watch).is_some() {
            tracing::info!(resource = watch, "watch is back");
        }
    }

    /// Why the node is unready, if a watch has been failing for `timeout`.
    pub fn problem(&self, now: Instant, timeout: Duration) -> Option<String> {
        let failing = self.failing.lock().unwrap();
        let (watch, f) = failing.iter().find(|(_, f)| now.saturating_duration_since(f.since) >= timeout)?;
        Some(format!("the watch of {watch} has been failing for {} s: {}", now.saturating_duration_since(f.since).as_secs(), f.error))
    }
}

/// Retry delays: 100 ms doubling to 1 s, each with up to 25 % taken off at
/// random; back to 100 ms after a success.
#[derive(Debug)]
pub struct QuickBackoff {
    next: Duration,
    seed: u64,
}

const FIRST: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(1);

impl Default for QuickBackoff {
    fn default() -> Self {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
        QuickBackoff { next: FIRST, seed }
    }
}

impl Iterator for QuickBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // xorshift: jitter needs no more.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let delay = self.next.mul_f64(1.0 - (self.seed % 1000) as f64 / 4000.0);
        self.next = (self.next * 2).min(MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for QuickBackoff {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_come_within_a_second_and_start_over_after_a_success() {
        let mut b = QuickBackoff::default();
        let delays: Vec<Duration> = (&mut b).take(8).collect();
        assert!(delays.iter().all(|d| *d <= MAX && *d >= FIRST * 3 / 4), "{delays:?}");
        assert!(delays[7] >= MAX * 3 / 4, "{delays:?}");
        kube::runtime::utils::Backoff::reset(&mut b);
        assert!(b.next().unwrap() <= FIRST);
    }

    #[test]
    fn a_watch_failing_past_the_timeout_is_a_problem_until_it_succeeds() {
        let h = WatchHealth::default();
        let t0 = Instant::now();
        h.failed("services", t0, "connection refused".into());
        h.failed("services", t0 + Duration::from_secs(30), "connection refused again".into());
        assert_eq!(h.problem(t0 + Duration::from_secs(59), Duration::from_secs(60)), None);
        let p = h.problem(t0 + Duration::from_secs(61), Duration::from_secs(60)).unwrap();
        assert!(p.contains("services") && p.contains("61 s") && p.contains("again"), "{p}");
        h.succeeded("services");
        assert_eq!(h.problem(t0 + Duration::from_secs(90), Duration::from_secs(60)), None);
    }

    #[test]
    fn a_watch_is_back_when_the_api_answers_and_its_retries_stopped_failing() {
        let h = WatchHealth::default();
        let t0 = Instant::now();
        h.failed("node", t0, "connection refused".into());
        h.failed("services", t0, "forbidden".into());
        h.failed("services", t0 + Duration::from_secs(9), "forbidden".into());
        h.api_answered(t0 + Duration::from_secs(10));
        assert!(h.any_failing());
        let p = h.problem(t0 + Duration::from_secs(61), Duration::from_secs(60)).unwrap();
        assert!(p.contains("services") && p.contains("forbidden"), "{p}");
        h.api_answered(t0 + Duration::from_secs(13));
        assert!(!h.any_failing());
    }
}
