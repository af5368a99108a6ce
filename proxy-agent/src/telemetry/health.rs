//! Whether the agent is keeping the datapath up to date, as kube-proxy's
//! `/healthz` and `/livez` answer it (pkg/proxy/healthcheck/proxier_health.go):
//! healthy while nothing is pending, or while what is pending has waited less
//! than the health timeout. Pure: every answer takes `now`, so the rules are
//! unit-tested without clocks or sockets.
//!
//! One deliberate difference: before its first successful sync the agent is
//! not healthy (kube-proxy is, for a while). `/healthz` is the DaemonSet's
//! readiness probe, and a node whose maps hold nothing yet is not ready.

use std::time::{Duration, Instant, SystemTime};

/// kube-proxy's health timeout is twice its sync period (2 x 30 s). This agent
/// has no periodic sync: a change is synced when it arrives and a failed sync
/// is retried every second, so a minute of pending work means it is stuck.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct SyncHealth {
    timeout: Duration,
    /// When the last sync that left the maps as wanted finished.
    last_success: Option<(Instant, SystemTime)>,
    /// Work the agent knows of and has not done: since the first failed sync
    /// after the last success (kube-proxy's `oldestPendingQueued`), or since
    /// start until the first success.
    pending_since: Option<Instant>,
    /// Why the last sync failed, while pending.
    last_error: Option<String>,
    /// A sync is running since then.
    in_sync_since: Option<Instant>,
}

/// An answer for `/healthz` or `/livez`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    /// Why not, for people reading the body; empty when healthy.
    pub reason: String,
    pub last_updated: Option<SystemTime>,
}

impl SyncHealth {
    pub fn new(started: Instant, timeout: Duration) -> Self {
        SyncHealth {
            timeout,
            last_success: None,
            pending_since: Some(started),
            last_error: None,
            in_sync_since: None,
        }
    }

    pub fn sync_started(&mut self, now: Instant) {
        self.in_sync_since = Some(now);
    }

    pub fn sync_succeeded(&mut self, now: Instant, wall: SystemTime) {
        self.in_sync_since = None;
        self.last_success = Some((now, wall));
        self.pending_since = None;
        self.last_error = None;
    }

    /// The source could not be read, or some map writes failed: the work is
    /// still pending and will be retried.
    pub fn sync_failed(&mut self, now: Instant, error: String) {
        self.in_sync_since = None;
        self.pending_since.get_or_insert(now);
        self.last_error = Some(error);
    }

    pub fn last_success(&self) -> Option<SystemTime> {
        self.last_success.map(|(_, wall)| wall)
    }

    /// `/healthz`: the maps hold what the source says, or will very soon.
    pub fn healthz(&self, now: Instant) -> Verdict {
        let verdict = |healthy: bool, reason: String| Verdict {
            healthy,
            reason,
            last_updated: self.last_success(),
        };
        if let Some(stuck) = self.stuck_in_sync(now) {
            return verdict(false, stuck);
        }
        let Some(since) = self.pending_since else {
            return verdict(true, String::new());
        };
        let waited = now.saturating_duration_since(since);
        let error = self.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        if self.last_success.is_none() {
            return verdict(false, format!("no successful sync yet ({} s since start){error}", waited.as_secs()));
        }
        if waited >= self.timeout {
            return verdict(false, format!("syncs failing for {} s{error}", waited.as_secs()));
        }
        verdict(true, String::new())
    }

    /// `/livez`: the sync loop is running, not wedged inside one sync. A
    /// failing source or a not-yet-synced agent is alive (restarting it would
    /// not help); a sync that never returns is not.
    pub fn livez(&self, now: Instant) -> Verdict {
        Verdict {
            healthy: self.stuck_in_sync(now).is_none(),
            reason: self.stuck_in_sync(now).unwrap_or_default(),
            last_updated: self.last_success(),
        }
    }

    fn stuck_in_sync(&self, now: Instant) -> Option<String> {
        let since = self.in_sync_since?;
        let running = now.saturating_duration_since(since);
        (running >= self.timeout).then(|| format!("one sync has been running for {} s", running.as_secs()))
    }
}

/// `/healthz` with the datapath's problems (devices or the cgroup without
/// their programs) taken in: any makes the node unready, whatever the syncs.
pub fn with_datapath_problems(verdict: Verdict, problems: &[String]) -> Verdict {
    if problems.is_empty() {
        return verdict;
    }
    let mut reasons: Vec<&str> = Vec::new();
    if !verdict.healthy {
        reasons.push(&verdict.reason);
    }
    reasons.extend(problems.iter().map(String::as_str));
    Verdict {
        healthy: false,
        reason: reasons.join("; "),
        last_updated: verdict.last_updated,
    }
}

/// kube-proxy's body (`{"lastUpdated": ..., "currentTime": ...}`) with RFC 3339
/// times, plus whether healthy and why not.
pub fn body(verdict: &Verdict, wall_now: SystemTime) -> String {
    let time = |t: SystemTime| {
        jiff::Timestamp::try_from(t)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    serde_json::json!({
        "lastUpdated": verdict.last_updated.map(time).unwrap_or_default(),
        "currentTime": time(wall_now),
        "healthy": verdict.healthy,
        "reason": verdict.reason,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(60);

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn not_ready_until_the_first_sync_then_healthy() {
        let start = Instant::now();
        let mut h = SyncHealth::new(start, T);
        let before = h.healthz(at(start, 1));
        assert!(!before.healthy);
        assert!(before.reason.contains("no successful sync yet"), "{}", before.reason);
        assert!(h.livez(at(start, 1)).healthy, "waiting for the API is alive");
        h.sync_started(at(start, 2));
        h.sync_succeeded(at(start, 2), SystemTime::now());
        assert!(h.healthz(at(start, 3)).healthy);
        // Idle for a long time with nothing pending: still healthy.
        assert!(h.healthz(at(start, 3600)).healthy);
    }

    #[test]
    fn failing_syncs_turn_unhealthy_after_the_timeout_and_recover() {
        let start = Instant::now();
        let mut h = SyncHealth::new(start, T);
        h.sync_succeeded(at(start, 1), SystemTime::now());
        h.sync_failed(at(start, 100), "map write failed".into());
        // Retried every second; the pending time counts from the first failure.
        for s in 101..=159 {
            h.sync_failed(at(start, s), "map write failed".into());
            assert!(h.healthz(at(start, s)).healthy, "at {s} s");
        }
        let down = h.healthz(at(start, 160));
        assert!(!down.healthy);
        assert!(down.reason.contains("syncs failing for 60 s: map write failed"), "{}", down.reason);
        assert!(h.livez(at(start, 160)).healthy, "a failing sync loop still runs");
        h.sync_succeeded(at(start, 161), SystemTime::now());
        assert!(h.healthz(at(start, 161)).healthy);
    }

    #[test]
    fn a_wedged_sync_fails_both_probes() {
        let start = Instant::now();
        let mut h = SyncHealth::new(start, T);
        h.sync_succeeded(at(start, 1), SystemTime::now());
        h.sync_started(at(start, 10));
        assert!(h.livez(at(start, 69)).healthy);
        let live = h.livez(at(start, 70));
        assert!(!live.healthy);
        assert!(live.reason.contains("running for 60 s"), "{}", live.reason);
        assert!(!h.healthz(at(start, 70)).healthy);
    }

    #[test]
    fn datapath_problems_make_the_node_unready() {
        let start = Instant::now();
        let mut h = SyncHealth::new(start, T);
        h.sync_succeeded(at(start, 1), SystemTime::now());
        let synced = h.healthz(at(start, 2));
        assert_eq!(with_datapath_problems(synced.clone(), &[]), synced);
        let v = with_datapath_problems(synced, &["device eth0 (--device) does not exist".into()]);
        assert!(!v.healthy);
        assert_eq!(v.reason, "device eth0 (--device) does not exist");
        let never = SyncHealth::new(start, T).healthz(at(start, 1));
        let v = with_datapath_problems(never, &["a".into(), "b".into()]);
        assert!(v.reason.starts_with("no successful sync yet") && v.reason.ends_with("; a; b"), "{}", v.reason);
    }

    #[test]
    fn body_has_kube_proxy_fields() {
        let v = Verdict {
            healthy: false,
            reason: "why".into(),
            last_updated: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        };
        let json: serde_json::Value = serde_json::from_str(&body(&v, SystemTime::now())).unwrap();
        assert_eq!(json["lastUpdated"], "2023-11-14T22:13:20Z");
        assert!(json["currentTime"].as_str().unwrap().ends_with('Z'));
        assert_eq!(json["healthy"], false);
        assert_eq!(json["reason"], "why");
    }
}
