//! Samples by size, mode and metric; medians with their spread.

use std::collections::BTreeMap;
use std::fmt::Write;
use super::modes::{Mode, Traffic};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    ConnectLast,
    ConnectRandom,
    KeepaliveP50,
    KeepaliveP99,
    UdpNodePort,
    TcpNodePort,
    Program,
    EndpointChange,
}

impl Metric {
    pub const ALL: [Metric; 8] = [
        Metric::ConnectLast,
        Metric::ConnectRandom,
        Metric::KeepaliveP50,
        Metric::KeepaliveP99,
        Metric::UdpNodePort,
        Metric::TcpNodePort,
        Metric::Program,
        Metric::EndpointChange,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Metric::ConnectLast => "new connections/s, target last",
            Metric::ConnectRandom => "new connections/s, target at random position",
            Metric::KeepaliveP50 => "keep-alive request p50 (µs)",
            Metric::KeepaliveP99 => "keep-alive request p99 (µs)",
            Metric::UdpNodePort => "UDP NodePort requests/s, external client",
            Metric::TcpNodePort => "TCP NodePort new connections/s, external client",
            Metric::Program => "program N Services from empty (ms)",
            Metric::EndpointChange => "one endpoint change at N (ms)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Metric::ConnectLast => "connect_last_per_s",
            Metric::ConnectRandom => "connect_random_per_s",
            Metric::KeepaliveP50 => "keepalive_p50_us",
            Metric::KeepaliveP99 => "keepalive_p99_us",
            Metric::UdpNodePort => "udp_nodeport_per_s",
            Metric::TcpNodePort => "tcp_nodeport_per_s",
            Metric::Program => "program_ms",
            Metric::EndpointChange => "endpoint_change_ms",
        }
    }
}

/// Median, min, max and how many samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub count: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
            count: v.len(),
        })
    }
}

#[derive(Default)]
pub struct Samples {
    values: BTreeMap<(usize, Mode, Metric), Vec<f64>>,
}

impl Samples {
    pub fn add(&mut self, n: usize, mode: Mode, metric: Metric, value: Option<f64>) {
        if let Some(v) = value {
            self.values.entry((n, mode, metric)).or_default().push(v);
        }
    }

    pub fn add_traffic(&mut self, n: usize, mode: Mode, t: &Traffic) {
        self.add(n, mode, Metric::ConnectLast, t.connect_last.value);
        self.add(n, mode, Metric::ConnectRandom, t.connect_random.value);
        self.add(n, mode, Metric::KeepaliveP50, t.keepalive.value);
        self.add(n, mode, Metric::KeepaliveP99, t.keepalive.second);
        self.add(n, mode, Metric::UdpNodePort, t.udp_nodeport.value);
        self.add(n, mode, Metric::TcpNodePort, t.tcp_nodeport.value);
    }

    pub fn spread(&self, n: usize, mode: Mode, metric: Metric) -> Option<Spread> {
        Spread::of(self.values.get(&(n, mode, metric))?)
    }

    pub fn csv(&self) -> String {
        let mut out = String::from("services,mode,metric,run,value\n");
        for ((n, mode, metric), values) in &self.values {
            for (i, v) in values.iter().enumerate() {
                let _ = writeln!(out, "{n},{},{},{},{v:.3}", mode.label(), metric.key(), i + 1);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Spread::of(&[5.0, 1.0, 3.0]).unwrap().median, 3.0);
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.count), (2.5, 1.0, 4.0, 4));
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn missing_values_stay_missing() {
        let mut s = Samples::default();
        let mut t = Traffic::default();
        t.connect_last.value = Some(100.0);
        s.add_traffic(10, Mode::Agent, &t);
        assert_eq!(s.spread(10, Mode::Agent, Metric::ConnectLast).unwrap().median, 100.0);
        assert!(s.spread(10, Mode::Agent, Metric::UdpNodePort).is_none());
        assert!(s.csv().contains("10,this project,connect_last_per_s,1,100.000"));
    }
}
