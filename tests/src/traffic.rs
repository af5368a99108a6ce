//! Parsing what `lab-client` printed, and summing it up.

use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok {
        /// The pod name the backend answered with.
        backend: String,
        /// The source address the backend saw.
        seen_source: SocketAddr,
        /// The address the reply came from, as the client saw it.
        from: SocketAddr,
        micros: u64,
        /// When the request started, Unix time in milliseconds.
        at_ms: u64,
    },
    Err {
        reason: String,
        micros: u64,
        at_ms: u64,
    },
}

impl Reply {
    /// How long the request took, answered or not.
    pub fn micros(&self) -> u64 {
        match self {
            Reply::Ok { micros, .. } | Reply::Err { micros, .. } => *micros,
        }
    }

    /// The pod that answered; None for a failed request.
    pub fn backend(&self) -> Option<&str> {
        match self {
            Reply::Ok { backend, .. } => Some(backend),
            Reply::Err { .. } => None,
        }
    }

    /// When the request started, Unix time in milliseconds.
    pub fn at_ms(&self) -> u64 {
        match self {
            Reply::Ok { at_ms, .. } | Reply::Err { at_ms, .. } => *at_ms,
        }
    }

    /// The source address the backend saw; None for a failed request.
    pub fn seen_source(&self) -> Option<SocketAddr> {
        match self {
            Reply::Ok { seen_source, .. } => Some(*seen_source),
            Reply::Err { .. } => None,
        }
    }
}

/// Who answered each request, in order ("error" for a failed one).
pub fn answer_order(replies: &[Reply]) -> Vec<&str> {
    replies.iter().map(|r| r.backend().unwrap_or("error")).collect()
}

/// The longest any of `replies` took (0 for none).
pub fn slowest_micros(replies: &[Reply]) -> u64 {
    replies.iter().map(Reply::micros).max().unwrap_or(0)
}

pub fn parse(output: &str) -> Vec<Reply> {
    output
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["ok", backend, seen, from, micros, at_ms] => Some(Reply::Ok {
                    backend: backend.to_string(),
                    seen_source: seen.parse().ok()?,
                    from: from.parse().ok()?,
                    micros: micros.parse().ok()?,
                    at_ms: at_ms.parse().ok()?,
                }),
                ["err", reason, micros, at_ms] => Some(Reply::Err {
                    reason: reason.to_string(),
                    micros: micros.parse().ok()?,
                    at_ms: at_ms.parse().ok()?,
                }),
                _ => None,
            }
        })
        .collect()
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub sent: usize,
    pub failed: usize,
    pub by_backend: BTreeMap<String, usize>,
    pub sources_seen: BTreeMap<String, usize>,
    pub replies_from: BTreeMap<String, usize>,
    pub errors: BTreeMap<String, usize>,
    /// Latencies of successful requests, sorted.
    pub micros: Vec<u64>,
}

impl Summary {
    pub fn of(replies: &[Reply]) -> Self {
        let mut s = Summary {
            sent: replies.len(),
            ..Default::default()
        };
        for r in replies {
            match r {
                Reply::Ok {
                    backend,
                    seen_source,
                    from,
                    micros,
                    ..
                } => {
                    *s.by_backend.entry(backend.clone()).or_default() += 1;
                    *s.sources_seen.entry(seen_source.ip().to_string()).or_default() += 1;
                    *s.replies_from.entry(from.to_string()).or_default() += 1;
                    s.micros.push(*micros);
                }
                Reply::Err { reason, .. } => {
                    s.failed += 1;
                    *s.errors.entry(reason.clone()).or_default() += 1;
                }
            }
        }
        s.micros.sort_unstable();
        s
    }

    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.micros.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * (self.micros.len() - 1) as f64).round() as usize;
        Some(self.micros[rank.min(self.micros.len() - 1)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds_of_line_and_ignores_noise() {
        let out = "ok web-1 10.244.1.10:40000 10.96.0.10:80 512 1700000000000\nerr timed_out 1000000 1700000000001\ngarbage\n";
        let replies = parse(out);
        assert_eq!(replies.len(), 2);
        let s = Summary::of(&replies);
        assert_eq!(s.sent, 2);
        assert_eq!(s.failed, 1);
        assert_eq!(s.by_backend["web-1"], 1);
        assert_eq!(s.sources_seen["10.244.1.10"], 1);
        assert_eq!(s.replies_from["10.96.0.10:80"], 1);
        assert_eq!(s.percentile(50.0), Some(512));
        assert_eq!(replies[1].at_ms(), 1_700_000_000_001);
    }
}
