//! What operators and load balancers see of a running agent: `/healthz` and
//! `/livez` (kube-proxy's probes, on :10256), Prometheus `/metrics` (on
//! 127.0.0.1:10249), and the healthCheckNodePort servers of Services with
//! `externalTrafficPolicy: Local`. The sync loop reports to one [`Telemetry`];
//! the servers are tokio tasks reading shared state.

pub mod health;
mod http;
pub mod metrics;
pub mod service_health;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};


use crate::datapath::{CtTable, PinLayout, PinnedMaps};
use crate::source::watch_health::{WatchHealth, WATCH_TIMEOUT};
use crate::skip::Skipped;
use crate::tables::Tables;
use health::{SyncHealth, HEALTH_TIMEOUT};
use http::{Handler, Reply};
use metrics::{DatapathFigures, Metrics, Programmed};
use service_health::{HealthCheck, ServiceHealthServers};

/// Counting a full conntrack map walks every key (a syscall each): at most
/// once per this interval, whatever the scrape rate.
const CONNTRACK_COUNT_INTERVAL: Duration = Duration::from_secs(10);

/// kube-proxy's flag names and defaults.
#[derive(clap::Args, Clone, Debug)]
pub struct Flags {
    /// Where `/healthz` and `/livez` listen (IP:port); empty turns them off.
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: BindAddress,
    /// Where Prometheus `/metrics` listens (IP:port); empty turns it off.
    /// Loopback by default, as kube-proxy's: expose it on purpose.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: BindAddress,
}

impl Flags {
    /// The ports the agent's own servers listen on, which no NodePort may
    /// take: from outside, the NodePort would answer in their place.
    pub fn own_ports(&self) -> Vec<u16> {
        [self.healthz_bind_address.0, self.metrics_bind_address.0].into_iter().flatten().map(|a| a.port()).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindAddress(Option<SocketAddr>);

impl FromStr for BindAddress {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(BindAddress(None));
        }
        s.parse().map(|a| BindAddress(Some(a)))
    }
}

/// What the model serves beyond the map entries: how many Services, and
/// which health check node ports.
#[derive(Clone, Debug, Default)]
pub struct Served {
    pub services: usize,
    pub health_checks: Vec<HealthCheck>,
    /// Where health check servers listen: every address (empty), as
    /// kube-proxy does by default, or, with `--nodeport-addresses`, the
    /// node addresses NodePorts are served on, as kube-proxy binds them.
    pub health_check_addresses: Vec<std::net::Ipv4Addr>,
}

impl Served {
    /// `services`: how many Services the model serves (the sync keeps
    /// that count; recounting names here would cost milliseconds per sync
    /// at 10,000 Services).
    pub fn of(model: &crate::model::LiveModel, services: usize) -> Self {
        let config = model.config();
        Served {
            services,
            health_checks: service_health::health_checks(model.model()),
            health_check_addresses: if config.nodeport_addresses.is_empty() {
                Vec::new()
            } else {
                crate::model::node_port_ips(config)
            },
        }
    }
}

/// One sync, as the sync loop saw it.
pub struct SyncReport<'a> {
    pub tables: &'a Tables,
    pub skipped: &'a [Skipped],
    pub served: &'a Served,
    pub failed_writes: usize,
}

struct Shared {
    health: Mutex<SyncHealth>,
    /// Why the datapath cannot serve what the maps hold; `/healthz` is
    /// unready while there is any.
    datapath_problems: Mutex<Vec<String>>,
    metrics: Mutex<Metrics>,
    /// Opened once the programs are loaded and the maps pinned.
    datapath: OnceLock<Mutex<PinnedMaps>>,
    conntrack: Mutex<Option<(Instant, Vec<(&'static str, u64)>)>>,
    /// The API server's watches, when the source is the API server.
    watches: OnceLock<Arc<WatchHealth>>,
}

pub struct Telemetry {
    shared: Arc<Shared>,
    service_health: ServiceHealthServers,
    last_skipped: Vec<Skipped>,
    _servers: Vec<AbortOnDrop>,
}

impl Telemetry {
    /// Starts the probe and metrics servers. Called before anything slow, so
    /// probes answer while the agent loads and waits for the API server.
    pub fn start(flags: &Flags) -> Self {
        let shared = Arc::new(Shared {
            health: Mutex::new(SyncHealth::new(Instant::now(), HEALTH_TIMEOUT)),
            datapath_problems: Mutex::new(Vec::new()),
            metrics: Mutex::new(Metrics::default()),
            datapath: OnceLock::new(),
            conntrack: Mutex::new(None),
            watches: OnceLock::new(),
        });
        let mut servers = Vec::new();
        let probes = flags.healthz_bind_address.0;
        let metrics = flags.metrics_bind_address.0;
        if let Some(addr) = probes {
            let handler = route(shared.clone(), probes == metrics);
            servers.push(AbortOnDrop(http::serve("healthz", addr, handler)));
        }
        if let Some(addr) = metrics.filter(|m| Some(*m) != probes) {
            servers.push(AbortOnDrop(http::serve("metrics", addr, metrics_only(shared.clone()))));
        }
        let for_lb = shared.clone();
        let proxy_healthy = Arc::new(move || for_lb.healthz().healthy);
        Telemetry {
            shared,
            service_health: ServiceHealthServers::new(proxy_healthy),
            last_skipped: Vec::new(),
            _servers: servers,
        }
    }

    /// Lets `/metrics` read the verdict counters and conntrack map.
    pub fn attach_datapath(&self, layout: &PinLayout) {
        match PinnedMaps::open(layout) {
            Ok(maps) => {
                let _ = self.shared.datapath.set(Mutex::new(maps));
            }
            Err(error) => tracing::warn!(%error, "metrics will lack datapath figures"),
        }
    }

    pub fn sync_started(&self) -> Instant {
        let now = Instant::now();
        self.shared.health.lock().unwrap().sync_started(now);
        now
    }

    pub fn synced(&mut self, started: Instant, report: SyncReport<'_>) {
        let now = Instant::now();
        let result = if report.failed_writes == 0 {
            self.shared.health.lock().unwrap().sync_succeeded(now, SystemTime::now());
            metrics::RESULT_SUCCESS
        } else {
            let error = format!("{} map writes failed", report.failed_writes);
            self.shared.health.lock().unwrap().sync_failed(now, error);
            metrics::RESULT_MAP_WRITE_FAILED
        };
        self.service_health.reconcile(&report.served.health_checks, &report.served.health_check_addresses);
        let mut m = self.shared.metrics.lock().unwrap();
        m.sync_done((now - started).as_secs_f64(), result, unix_now());
        let programmed = Programmed {
            services: report.served.services,
            frontends: report.tables.services.len(),
            backends: report.tables.backends.len(),
            slots: report.tables.slots.len(),
            health_check_servers: report.served.health_checks.len(),
        };
        m.programmed(programmed, report.failed_writes);
        m.skipped(&self.last_skipped, report.skipped);
        self.last_skipped = report.skipped.to_vec();
    }

    /// What the conntrack collector reports each pass with.
    pub fn gc_reporter(&self) -> impl Fn(crate::conntrack_gc::Pass) + Send + 'static {
        let shared = self.shared.clone();
        move |pass| shared.metrics.lock().unwrap().conntrack_gc_deleted += pass.deleted as u64
    }

    /// Where the programs are now and what is missing.
    pub fn attachments(&self, figures: metrics::AttachFigures, problems: Vec<String>) {
        self.shared.metrics.lock().unwrap().attachments = metrics::AttachFigures {
            problems: problems.len() as u64,
            ..figures
        };
        let mut current = self.shared.datapath_problems.lock().unwrap();
        for problem in problems.iter().filter(|p| !current.contains(p)) {
            tracing::warn!(%problem, "datapath cannot serve everything");
        }
        *current = problems;
    }

    /// Lets `/healthz` see the source's watches fail.
    pub fn watch_source(&self, watches: Arc<WatchHealth>) {
        let _ = self.shared.watches.set(watches);
    }

    pub fn udp_sockets_aborted(&self, count: usize) {
        self.shared.metrics.lock().unwrap().udp_sockets_aborted += count as u64;
    }

    pub fn source_failed(&self, started: Instant, error: &anyhow::Error) {
        let now = Instant::now();
        self.shared.health.lock().unwrap().sync_failed(now, format!("reading the source: {error:#}"));
        let mut m = self.shared.metrics.lock().unwrap();
        m.sync_done((now - started).as_secs_f64(), metrics::RESULT_SOURCE_ERROR, unix_now());
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Shared {
    fn probe(&self, path: &str) -> Option<Reply> {
        let verdict = match path {
            "/healthz" => self.healthz(),
            "/livez" => self.health.lock().unwrap().livez(Instant::now()),
            _ => return None,
        };
        Some(Reply::json(verdict.healthy, health::body(&verdict, SystemTime::now())))
    }

    /// The sync's health, and the datapath's: maps as the API says them are
    /// no use where no program reads them.
    fn healthz(&self) -> health::Verdict {
        let now = Instant::now();
        let verdict = self.health.lock().unwrap().healthz(now);
        let mut problems = self.datapath_problems.lock().unwrap().clone();
        if let Some(watches) = self.watches.get() {
            problems.extend(watches.problem(now, WATCH_TIMEOUT));
        }
        health::with_datapath_problems(verdict, &problems)
    }

    /// Blocking: reads maps.
    fn render_metrics(&self) -> String {
        let figures = self.datapath_figures();
        self.metrics.lock().unwrap().render(&figures)
    }

    fn datapath_figures(&self) -> DatapathFigures {
        let Some(maps) = self.datapath.get() else {
            return DatapathFigures::default();
        };
        let maps = maps.lock().unwrap();
        let verdicts = match maps.verdicts() {
            Ok(v) => v.into_iter().map(|(verdict, n)| (verdict.name(), n)).collect(),
            Err(error) => {
                tracing::warn!(%error, "reading verdict counters");
                Vec::new()
            }
        };
        let mut cached = self.conntrack.lock().unwrap();
        let fresh = cached.as_ref().filter(|(at, _)| at.elapsed() < CONNTRACK_COUNT_INTERVAL);
        let conntrack_entries = match fresh {
            Some((_, tables)) => Some(tables.clone()),
            // A walk restarted by concurrent deletions could go on; it
            // stops at the map's capacity.
            None => match CtTable::ALL
                .into_iter()
                .map(|t| maps.count_conntrack(t, t.capacity() as usize).map(|n| (t.name(), n as u64)))
                .collect::<anyhow::Result<Vec<_>>>()
            {
                Ok(tables) => {
                    *cached = Some((Instant::now(), tables.clone()));
                    Some(tables)
                }
                Err(error) => {
                    tracing::warn!(%error, "counting conntrack entries");
                    None
                }
            },
        };
        DatapathFigures {
            verdicts,
            conntrack_entries,
        }
    }
}

/// `/healthz`, `/livez`, and `/metrics` too when both share one address.
fn route(shared: Arc<Shared>, with_metrics: bool) -> Handler {
    let metrics = metrics_only(shared.clone());
    Arc::new(move |method, path| match shared.probe(path) {
        Some(reply) => Box::pin(async move { reply }),
        None if with_metrics => metrics(method, path),
        None => Box::pin(async { Reply::not_found() }),
    })
}

fn metrics_only(shared: Arc<Shared>) -> Handler {
    Arc::new(move |_method, path| {
        let shared = shared.clone();
        let wanted = path == "/metrics";
        Box::pin(async move {
            if !wanted {
                return Reply::not_found();
            }
            match tokio::task::spawn_blocking(move || shared.render_metrics()).await {
                Ok(text) => Reply::new(hyper::StatusCode::OK, metrics::CONTENT_TYPE, text),
                Err(error) => Reply::new(
                    hyper::StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("{error}\n"),
                ),
            }
        })
    })
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_address_empty_disables() {
        assert_eq!("".parse::<BindAddress>().unwrap(), BindAddress(None));
        assert_eq!(
            "0.0.0.0:10256".parse::<BindAddress>().unwrap(),
            BindAddress(Some("0.0.0.0:10256".parse().unwrap()))
        );
        assert!("10256".parse::<BindAddress>().is_err());
    }
}
