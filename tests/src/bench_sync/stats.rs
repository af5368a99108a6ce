//! Percentiles and the fields of the agent's log lines.

use std::time::Duration;

/// Nearest-rank percentile (`p` in 0..=100) of `samples`; None when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p99 and max of `samples`, for a table row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spread {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Spread {
    pub fn of(samples: &[Duration]) -> Self {
        let at = |p| percentile(samples, p).unwrap_or_default();
        Spread { p50: at(50.0), p99: at(99.0), max: at(100.0) }
    }
}

/// Milliseconds with two decimals, as the tables print them.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The value of `key=` in a `tracing` log line (`key=value`, space separated).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// `field` as a number.
pub fn number(line: &str, key: &str) -> Option<u64> {
    field(line, key)?.parse().ok()
}

/// A `/proc/PID/status` size field (`VmHWM:    1234 kB`) in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    line[key.len() + 1..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_list(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<u64> = (1..=100).rev().collect();
        let s = Spread::of(&ms_list(&hundred));
        assert_eq!((s.p50, s.p99, s.max), (Duration::from_millis(50), Duration::from_millis(99), Duration::from_millis(100)));
        // Few samples: p99 is the largest, p50 the lower middle.
        let s = Spread::of(&ms_list(&[7, 1, 3, 5]));
        assert_eq!((s.p50, s.p99), (Duration::from_millis(3), Duration::from_millis(7)));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&ms_list(&[4]), 0.0), Some(Duration::from_millis(4)));
    }

    #[test]
    fn log_fields_and_proc_status() {
        let line = "2025-01-01T00:00:00.000001Z  INFO proxy_agent::agent: synced generation=3 full=false frontends=10000 elapsed_us=412";
        assert_eq!(number(line, "generation"), Some(3));
        assert_eq!(field(line, "full"), Some("false"));
        assert_eq!(number(line, "elapsed_us"), Some(412));
        assert_eq!(number(line, "missing"), None);
        let status = "Name:\tproxy-agent\nVmHWM:\t   61234 kB\nVmRSS:\t   50000 kB\n";
        assert_eq!((status_kib(status, "VmHWM"), status_kib(status, "VmRSS")), (Some(61234), Some(50000)));
        assert_eq!(status_kib(status, "VmRS"), None);
    }
}
