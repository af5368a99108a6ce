//! The agent's Prometheus metrics, kept as plain numbers and written out in
//! the text exposition format (version 0.0.4) at scrape time. A dozen series
//! do not need a metrics library; the format is small and tested below.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

use crate::skip::Skipped;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Sync results, the `result` label of `ebpf_proxy_syncs_total`.
pub const RESULT_SUCCESS: &str = "success";
pub const RESULT_MAP_WRITE_FAILED: &str = "map_write_failed";
pub const RESULT_SOURCE_ERROR: &str = "source_error";

/// Upper bounds in seconds: 100 µs doubling to about 13 s. kube-proxy's
/// `sync_proxy_rules_duration_seconds` starts at 1 ms; a sync here is a diff
/// and a few map writes, usually well under a millisecond.
fn sync_buckets() -> Vec<f64> {
    (0..18).map(|i| 0.0001 * f64::from(1u32 << i)).collect()
}

#[derive(Clone, Debug)]
struct Histogram {
    bounds: Vec<f64>,
    /// Per bucket, not cumulative; one more than `bounds` for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: Vec<f64>) -> Self {
        Histogram {
            counts: vec![0; bounds.len() + 1],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        let bucket = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }
}

/// What the datapath's maps say at scrape time.
#[derive(Clone, Debug, Default)]
pub struct DatapathFigures {
    /// (verdict name, packets), summed over CPUs.
    pub verdicts: Vec<(&'static str, u64)>,
    /// Entries per conntrack table (two per flow: original and reply), by
    /// table name (`established`, `new`).
    pub conntrack_entries: Option<Vec<(&'static str, u64)>>,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    sync_duration: Histogram,
    syncs: BTreeMap<&'static str, u64>,
    last_success_unix: Option<f64>,
    services: u64,
    frontends: u64,
    backends: u64,
    slots: u64,
    health_check_servers: u64,
    /// Per reason; a reason once seen stays, at 0 when nothing is skipped
    /// for it any more, so the series does not vanish mid-graph.
    skipped_now: BTreeMap<&'static str, u64>,
    skip_events: BTreeMap<&'static str, u64>,
    map_write_failures: u64,
    /// Host UDP sockets aborted because their backend left the Service.
    pub udp_sockets_aborted: u64,
    /// Conntrack entries of flows that were over, deleted by the collector.
    pub conntrack_gc_deleted: u64,
    pub attachments: AttachFigures,
}

/// Where the programs are, as the agent last saw it.
#[derive(Clone, Debug, Default)]
pub struct AttachFigures {
    pub node_devices: u64,
    pub pod_devices: u64,
    pub socket_lb: bool,
    /// Attach attempts that failed (each is retried while its device is
    /// there).
    pub failures: u64,
    /// Reasons the datapath cannot serve what the maps hold (`/healthz`
    /// says which).
    pub problems: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sync_duration: Histogram::new(sync_buckets()),
            syncs: [RESULT_SUCCESS, RESULT_MAP_WRITE_FAILED, RESULT_SOURCE_ERROR]
                .into_iter()
                .map(|r| (r, 0))
                .collect(),
            last_success_unix: None,
            services: 0,
            frontends: 0,
            backends: 0,
            slots: 0,
            health_check_servers: 0,
            skipped_now: BTreeMap::new(),
            skip_events: BTreeMap::new(),
            map_write_failures: 0,
            udp_sockets_aborted: 0,
            conntrack_gc_deleted: 0,
            attachments: AttachFigures::default(),
        }
    }
}

/// Sizes of what one sync left programmed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Programmed {
    pub services: usize,
    pub frontends: usize,
    pub backends: usize,
    /// Entries of the backend-slot map (one per backend of each frontend).
    pub slots: usize,
    pub health_check_servers: usize,
}

impl Metrics {
    pub fn sync_done(&mut self, seconds: f64, result: &'static str, unix_now: f64) {
        self.sync_duration.observe(seconds);
        *self.syncs.entry(result).or_default() += 1;
        if result == RESULT_SUCCESS {
            self.last_success_unix = Some(unix_now);
        }
    }

    pub fn programmed(&mut self, p: Programmed, failed_writes: usize) {
        self.services = p.services as u64;
        self.frontends = p.frontends as u64;
        self.backends = p.backends as u64;
        self.slots = p.slots as u64;
        self.health_check_servers = p.health_check_servers as u64;
        self.map_write_failures += failed_writes as u64;
    }

    /// `now` is every object skipped by this sync; those not in `before`
    /// are new skip events.
    pub fn skipped(&mut self, before: &[Skipped], now: &[Skipped]) {
        for count in self.skipped_now.values_mut() {
            *count = 0;
        }
        // A set, not `contains` on the list: a cluster can skip thousands.
        let before: HashSet<(&str, &str)> = before.iter().map(|s| (s.object.as_str(), s.reason.label())).collect();
        for s in now {
            *self.skipped_now.entry(s.reason.label()).or_default() += 1;
            if !before.contains(&(s.object.as_str(), s.reason.label())) {
                *self.skip_events.entry(s.reason.label()).or_default() += 1;
            }
        }
    }

    pub fn render(&self, datapath: &DatapathFigures) -> String {
        let mut out = Exposition::default();
        let h = &self.sync_duration;
        out.family("ebpf_proxy_sync_duration_seconds", "histogram", "Time to turn the source's objects into map writes and apply them.");
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = h.bounds.get(i).map_or("+Inf".to_string(), |b| format_float(*b));
            out.sample("ebpf_proxy_sync_duration_seconds_bucket", &[("le", &le)], cumulative as f64);
        }
        out.sample("ebpf_proxy_sync_duration_seconds_sum", &[], h.sum);
        out.sample("ebpf_proxy_sync_duration_seconds_count", &[], h.count as f64);

        out.family("ebpf_proxy_syncs_total", "counter", "Syncs by result: success, map_write_failed (retried), source_error (retried).");
        for (result, n) in &self.syncs {
            out.sample("ebpf_proxy_syncs_total", &[("result", result)], *n as f64);
        }
        if let Some(t) = self.last_success_unix {
            out.family("ebpf_proxy_last_successful_sync_timestamp_seconds", "gauge", "Unix time of the last sync that left the maps as wanted.");
            out.sample("ebpf_proxy_last_successful_sync_timestamp_seconds", &[], t);
        }
        for (name, help, value) in [
            ("ebpf_proxy_services", "Services with at least one frontend programmed.", self.services),
            ("ebpf_proxy_frontends", "Frontends (address, port, protocol, scope) in the service map.", self.frontends),
            ("ebpf_proxy_backends", "Backends in the backend map.", self.backends),
            ("ebpf_proxy_health_check_servers", "healthCheckNodePort servers wanted for Services with externalTrafficPolicy Local.", self.health_check_servers),
        ] {
            out.family(name, "gauge", help);
            out.sample(name, &[], value as f64);
        }
        // Cilium's bpf_map_pressure: how full each map is, so an operator
        // sees a capacity coming before a write fails.
        out.family("ebpf_proxy_map_pressure", "gauge", "Fill ratio of each map: entries wanted (or counted, for conntrack) over capacity.");
        use proxy_common::maps::{MAX_BACKENDS, MAX_BACKEND_SLOTS, MAX_CONNTRACK, MAX_CONNTRACK_NEW, MAX_SERVICES};
        for (map, entries, capacity) in [
            ("SERVICES", self.frontends, MAX_SERVICES),
            ("BACKEND_SLOTS", self.slots, MAX_BACKEND_SLOTS),
            ("BACKENDS", self.backends, MAX_BACKENDS),
        ] {
            out.sample("ebpf_proxy_map_pressure", &[("map", map)], entries as f64 / capacity as f64);
        }
        if let Some(tables) = &datapath.conntrack_entries {
            for (table, n) in tables {
                let (map, capacity) = if *table == "new" { ("CONNTRACK_NEW", MAX_CONNTRACK_NEW) } else { ("CONNTRACK", MAX_CONNTRACK) };
                out.sample("ebpf_proxy_map_pressure", &[("map", map)], *n as f64 / capacity as f64);
            }
        }
        out.family("ebpf_proxy_skipped_objects", "gauge", "Objects or parts of objects left out by the last sync, by reason.");
        for (reason, n) in &self.skipped_now {
            out.sample("ebpf_proxy_skipped_objects", &[("reason", reason)], *n as f64);
        }
        out.family("ebpf_proxy_skip_events_total", "counter", "Objects newly left out, by reason (each counted when it first appears).");
        for (reason, n) in &self.skip_events {
            out.sample("ebpf_proxy_skip_events_total", &[("reason", reason)], *n as f64);
        }
        out.family("ebpf_proxy_map_write_failures_total", "counter", "Map writes the kernel refused; each is retried.");
        out.sample("ebpf_proxy_map_write_failures_total", &[], self.map_write_failures as f64);
        out.family(
            "ebpf_proxy_stale_udp_sockets_aborted_total",
            "counter",
            "Host UDP sockets connected through the socket hooks to a backend that left the Service, aborted so the application reconnects.",
        );
        out.sample("ebpf_proxy_stale_udp_sockets_aborted_total", &[], self.udp_sockets_aborted as f64);
        out.family("ebpf_proxy_conntrack_gc_deleted_total", "counter", "Conntrack entries of flows that were over, deleted by the agent's collector.");
        out.sample("ebpf_proxy_conntrack_gc_deleted_total", &[], self.conntrack_gc_deleted as f64);
        let a = &self.attachments;
        out.family("ebpf_proxy_attached_devices", "gauge", "Devices with the agent's programs: the node's own (role node) and pods' (role pod).");
        out.sample("ebpf_proxy_attached_devices", &[("role", "node")], a.node_devices as f64);
        out.sample("ebpf_proxy_attached_devices", &[("role", "pod")], a.pod_devices as f64);
        out.family("ebpf_proxy_socket_lb_attached", "gauge", "1 when the socket hooks are attached to the node's root cgroup.");
        out.sample("ebpf_proxy_socket_lb_attached", &[], if a.socket_lb { 1.0 } else { 0.0 });
        out.family("ebpf_proxy_attach_failures_total", "counter", "Attempts to attach programs that failed (retried while the device exists).");
        out.sample("ebpf_proxy_attach_failures_total", &[], a.failures as f64);
        out.family("ebpf_proxy_datapath_problems", "gauge", "Places the datapath cannot serve (a device or cgroup without its programs); /healthz says which.");
        out.sample("ebpf_proxy_datapath_problems", &[], a.problems as f64);

        if !datapath.verdicts.is_empty() {
            out.family("ebpf_proxy_datapath_verdicts_total", "counter", "Packets seen by the datapath, by what it did with them.");
            for (verdict, n) in &datapath.verdicts {
                out.sample("ebpf_proxy_datapath_verdicts_total", &[("verdict", verdict)], *n as f64);
            }
        }
        if let Some(tables) = &datapath.conntrack_entries {
            out.family(
                "ebpf_proxy_conntrack_entries",
                "gauge",
                "Entries in each conntrack table (two per flow; established flows, and new ones not yet established), counted at most every 10 s.",
            );
            for (table, n) in tables {
                out.sample("ebpf_proxy_conntrack_entries", &[("table", table)], *n as f64);
            }
        }
        out.0
    }
}

#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = write!(self.0, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.0, " {}", format_float(value));
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn format_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skip::SkipReason;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let mut m = Metrics::default();
        for seconds in [0.00005, 0.0003, 0.0003, 100.0] {
            m.sync_done(seconds, RESULT_SUCCESS, 1.0);
        }
        let text = m.render(&DatapathFigures::default());
        assert_eq!(value(&text, "ebpf_proxy_sync_duration_seconds_bucket{le=\"0.0001\"}"), 1.0);
        assert_eq!(value(&text, "ebpf_proxy_sync_duration_seconds_bucket{le=\"0.0002\"}"), 1.0);
        assert_eq!(value(&text, "ebpf_proxy_sync_duration_seconds_bucket{le=\"0.0004\"}"), 3.0);
        assert_eq!(value(&text, "ebpf_proxy_sync_duration_seconds_bucket{le=\"+Inf\"}"), 4.0);
        assert_eq!(value(&text, "ebpf_proxy_sync_duration_seconds_count"), 4.0);
        assert!((value(&text, "ebpf_proxy_sync_duration_seconds_sum") - 100.00065).abs() < 1e-9);
        assert_eq!(value(&text, "ebpf_proxy_syncs_total{result=\"success\"}"), 4.0);
        assert_eq!(value(&text, "ebpf_proxy_syncs_total{result=\"source_error\"}"), 0.0);
        // Every family is announced once, before its samples.
        assert_eq!(text.matches("# TYPE ebpf_proxy_sync_duration_seconds histogram").count(), 1);
    }

    #[test]
    fn skipped_gauge_follows_the_last_sync_and_events_count_new_ones() {
        let bad_ip = Skipped::new("default", "bad", SkipReason::InvalidClusterIp);
        let bad_port = Skipped::port("default", "web", "http", SkipReason::PortOutOfRange);
        let mut m = Metrics::default();
        m.skipped(&[], &[bad_ip.clone(), bad_port.clone()]);
        m.skipped(&[bad_ip.clone(), bad_port.clone()], std::slice::from_ref(&bad_ip));
        let text = m.render(&DatapathFigures::default());
        assert_eq!(value(&text, "ebpf_proxy_skipped_objects{reason=\"invalid_cluster_ip\"}"), 1.0);
        assert_eq!(value(&text, "ebpf_proxy_skipped_objects{reason=\"port_out_of_range\"}"), 0.0);
        assert_eq!(value(&text, "ebpf_proxy_skip_events_total{reason=\"invalid_cluster_ip\"}"), 1.0);
        assert_eq!(value(&text, "ebpf_proxy_skip_events_total{reason=\"port_out_of_range\"}"), 1.0);
    }

    #[test]
    fn gauges_counters_and_datapath_figures() {
        let mut m = Metrics::default();
        let p = Programmed {
            services: 3,
            frontends: 5,
            backends: 6,
            slots: 65_536,
            health_check_servers: 1,
        };
        m.programmed(p, 2);
        m.programmed(p, 1);
        let figures = DatapathFigures {
            verdicts: vec![("translated", 60), ("no_backend", 0)],
            conntrack_entries: Some(vec![("established", 120), ("new", 7)]),
        };
        let text = m.render(&figures);
        assert_eq!(value(&text, "ebpf_proxy_services"), 3.0);
        assert_eq!(value(&text, "ebpf_proxy_frontends"), 5.0);
        assert_eq!(value(&text, "ebpf_proxy_backends"), 6.0);
        assert_eq!(value(&text, "ebpf_proxy_map_write_failures_total"), 3.0);
        assert_eq!(value(&text, "ebpf_proxy_datapath_verdicts_total{verdict=\"translated\"}"), 60.0);
        assert_eq!(value(&text, "ebpf_proxy_conntrack_entries{table=\"established\"}"), 120.0);
        assert_eq!(value(&text, "ebpf_proxy_conntrack_entries{table=\"new\"}"), 7.0);
        assert_eq!(value(&text, "ebpf_proxy_map_pressure{map=\"BACKEND_SLOTS\"}"), 0.25);
        assert_eq!(value(&text, "ebpf_proxy_map_pressure{map=\"SERVICES\"}"), 5.0 / 65_536.0);
        assert_eq!(value(&text, "ebpf_proxy_map_pressure{map=\"CONNTRACK\"}"), 120.0 / 262_144.0);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("x", &[("a", "q\"b\\n\n")], 1.5);
        assert_eq!(out.0, "x{a=\"q\\\"b\\\\n\\n\"} 1.5\n");
    }
}
