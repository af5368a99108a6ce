//! The `run` command: load, attach, then keep the maps equal to what the
//! source describes until told to stop. On SIGTERM the programs and maps stay:
//! the dataplane outlives the agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

use crate::attacher::{Attacher, LocalEndpoints, Xdp};
use crate::attachments::{self, DeviceSelection, NamePattern};
use crate::conntrack_gc;
use crate::datapath::{self, PinLayout, PinnedMaps};
use crate::datapath_config::{self, PortRange, Switches};
use crate::port_protection;
use crate::diff::{diff, diff_touched, Op};
use crate::model::{self, Cidr, Config, LiveModel, Slice};
use crate::skip::Skipped;
use crate::source::kube::KubeSource;
use crate::stale_sockets;
use crate::source::dir_changes::ByService;
use crate::source::{self, yaml_dir, Changes};
use crate::tables::{Ids, LiveTables, Tables};
use crate::telemetry::{self, Served, SyncReport, Telemetry};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Serve the Services in this directory of manifests instead of the
    /// Kubernetes API (for running without a cluster).
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Kubeconfig for the API server; without it: KUBECONFIG, ~/.kube/config,
    /// then the in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name, as in its Node object.
    #[arg(long = "hostname-override", env = "NODE_NAME")]
    node_name: Option<String>,
    /// The node's own network device, where NodePort, LoadBalancer and
    /// external IP traffic arrives from outside (repeat for each, or
    /// comma-separated, as a DaemonSet passes it from its config). One that
    /// does not exist yet is attached when it appears.
    #[arg(long = "device", value_delimiter = ',')]
    devices: Vec<String>,
    /// Names of pods' host-side devices (comma-separated; `*` matches any
    /// run of characters). The agent follows the node's devices and
    /// attaches to each one that matches, as pods come and go.
    #[arg(long, value_delimiter = ',', default_value = attachments::DEFAULT_POD_DEVICE_PATTERNS)]
    pod_device_patterns: Vec<NamePattern>,
    /// The node's root cgroup (v2), where the socket hooks attach, as the
    /// init container `prepare-node` mounts it; empty turns socket-level
    /// load balancing off.
    #[arg(long, default_value = DEFAULT_CGROUP_ROOT)]
    cgroup_root: PathBuf,
    /// Socket-level load balancing for host processes only: pods are
    /// served per packet on their devices, so a service mesh's sidecar or a
    /// sandboxed runtime sees the address the application dialled.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    socket_lb_host_namespace_only: bool,
    /// Serve ClusterIPs to traffic routed to the node from outside the
    /// cluster (SNATed to the node, as a NodePort), as kube-proxy does. Off
    /// by default, as in Cilium: a ClusterIP is the cluster's own address;
    /// NodePorts, LoadBalancer IPs and externalIPs are for the outside.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    external_cluster_ip: bool,
    /// The Service IP range(s) (comma-separated CIDRs, at most 4): traffic
    /// from pods to an address there that no Service holds is refused, as
    /// kube-proxy rejects traffic to unallocated ClusterIPs. Empty: none.
    #[arg(long = "service-cidr")]
    service_cidr_lists: Vec<CidrList>,
    /// Source ports for flows SNATed to the node (externalTrafficPolicy
    /// Cluster) whose client port is taken by another flow or a node socket,
    /// or is a NodePort's (the others keep the client's port), and for the
    /// node's own flows moved off a SNATed flow's tuple. LOW-HIGH. Keep it
    /// clear of the kernel's ip_local_port_range and of the NodePort range;
    /// the agent warns if not.
    #[arg(long, default_value_t = PortRange::default())]
    snat_port_range: PortRange,
    /// Add the NodePort and SNAT port ranges to the kernel's reserved ports
    /// (net.ipv4.ip_local_reserved_ports) where they meet its ephemeral
    /// range, so local sockets are never given them; false only warns.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    protect_port_ranges: bool,
    /// How often to look for changes in the manifest directory.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Value of the `service.kubernetes.io/service-proxy-name` label that
    /// names this proxy.
    #[arg(long)]
    proxy_name: Option<String>,
    /// Which node addresses NodePorts listen on (comma-separated CIDRs);
    /// default: all of the node's addresses, never loopback.
    #[arg(long = "nodeport-addresses")]
    nodeport_address_lists: Vec<CidrList>,
    /// Serve externalIPs only inside these (comma-separated CIDRs). Empty:
    /// any, as kube-proxy does, which lets whoever may create a Service
    /// claim any address for the cluster's traffic (CVE-2020-8554).
    #[arg(long = "external-ip-cidrs")]
    external_ip_cidr_lists: Vec<CidrList>,
    /// This node's addresses (repeat for each). With the Kubernetes source
    /// they come from the Node object; this flag is for `--manifests`, or
    /// overrides the Node's when given.
    #[arg(long = "node-ip")]
    node_ips: Vec<std::net::Ipv4Addr>,
    /// Also attach the XDP fast path for NodePort, LoadBalancer and external
    /// IP traffic to the `--device` devices that are NICs (not veths).
    /// `--xdp` alone is `--xdp=true`.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    xdp: bool,
    /// With `--xdp`, attach it to veth devices too. Only where every frame a
    /// veth receives has a complete checksum (its peer's transmit checksum
    /// offload off): XDP cannot see a partial one, and would break it.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    xdp_on_veth: bool,
    /// Seconds between passes that delete the conntrack entries of flows
    /// that are over; 0 leaves them to the map's LRU eviction.
    #[arg(long, default_value_t = 10)]
    conntrack_gc_interval: u64,
    #[command(flatten)]
    telemetry: telemetry::Flags,
}

const RETRY: Duration = Duration::from_secs(1);
const LISTING_TIMEOUT: Duration = Duration::from_secs(5);

/// Comma-separated CIDRs; empty is none (a DaemonSet passes an empty config
/// value as `--flag=`).
#[derive(Clone, Debug)]
struct CidrList(Vec<Cidr>);

impl std::str::FromStr for CidrList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| c.parse::<Cidr>().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()
            .map(CidrList)
    }
}

impl RunArgs {
    fn service_cidrs(&self) -> Vec<Cidr> {
        self.service_cidr_lists.iter().flat_map(|l| l.0.iter().cloned()).collect()
    }
}

/// Where the DaemonSet's init container mounts the host's cgroup2.
pub const DEFAULT_CGROUP_ROOT: &str = "/run/ebpf-proxy/cgroupv2";

pub async fn run(bpffs: &Path, layout: PinLayout, args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let node_name = node_name(&args)?;
    let mut telemetry = Telemetry::start(&args.telemetry);
    let mut source = Source::new(&args, &node_name).await?;
    if let Source::Kube(kube) = &source {
        telemetry.watch_source(kube.health.clone());
    }
    datapath::ensure_bpffs(bpffs)?;
    let _only_agent = datapath::lock_node(&layout.root).await?;
    let mut ebpf = datapath::load(&layout)?;
    if args.xdp {
        datapath::load_xdp(&mut ebpf)?;
    }
    let _logger = spawn_ebpf_logger(&mut ebpf);
    let mut maps = PinnedMaps::open(&layout)?;
    let cgroup_root = Some(args.cgroup_root.clone()).filter(|p| !p.as_os_str().is_empty());
    // Host sockets translated by the cgroup hooks, for aborting the UDP ones
    // whose backend leaves (see stale_sockets).
    let sock_rev_nat = match cgroup_root {
        Some(_) => Some(datapath::SockRevNat::open(&layout)?),
        None => None,
    };
    let switches = Switches {
        host_netns_cookie: datapath::own_netns_cookie().unwrap_or_else(|error| {
            tracing::warn!(%error, "no network namespace cookie: the socket hooks will treat pods' sockets as the host's");
            0
        }),
        socket_lb_host_namespace_only: args.socket_lb_host_namespace_only,
        external_cluster_ip: args.external_cluster_ip,
    };
    let mut attacher = Attacher::new(
        layout.clone(),
        DeviceSelection {
            external: args.devices.clone(),
            pod_patterns: args.pod_device_patterns.clone(),
        },
        cgroup_root,
        match (args.xdp, args.xdp_on_veth) {
            (false, true) => {
                tracing::warn!("--xdp-on-veth without --xdp: no XDP program is attached");
                Xdp::Off
            }
            (false, false) => Xdp::Off,
            (true, false) => Xdp::On,
            (true, true) => Xdp::OnVethsToo,
        },
    );
    // Subscribed now, handled once the first sync is in the maps.
    let mut link_events = datapath::links::watch();
    let mut attached = false;
    let service_cidrs = args.service_cidrs();
    datapath_config::warn_about(&service_cidrs, args.snat_port_range);
    port_protection::apply(
        &[("NodePorts", port_protection::NODE_PORTS), ("SNAT ports", args.snat_port_range)],
        args.protect_port_ranges,
    );
    let mut written_config = None;
    telemetry.attach_datapath(&layout);
    let mut sync = Sync::adopt(&maps)?;
    if args.conntrack_gc_interval > 0 {
        conntrack_gc::spawn(layout.clone(), Duration::from_secs(args.conntrack_gc_interval), telemetry.gc_reporter())?;
    }
    let mut config = Config {
        proxy_name: args.proxy_name.clone(),
        node_name: Some(node_name),
        nodeport_addresses: args.nodeport_address_lists.iter().flat_map(|l| l.0.iter().copied()).collect(),
        external_ip_cidrs: args.external_ip_cidr_lists.iter().flat_map(|l| l.0.iter().copied()).collect(),
        reserved_node_ports: args.telemetry.own_ports(),
        node_ips: args.node_ips.clone(),
        ..Config::default()
    };

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    source.wait_ready(started).await?;
    let mut resync = true;
    // This node's endpoints, followed through each sync's map writes.
    let mut local = LocalEndpoints::default();
    loop {
        if resync {
            source.update_node(&mut config, !args.node_ips.is_empty());
            datapath_config::write(&mut maps, &config, &service_cidrs, args.snat_port_range, switches, &mut written_config);
            // A new node address or zone changes every Service's frontends.
            let node_changed = &config != sync.model.config();
            let sync_started = telemetry.sync_started();
            match source.read(node_changed) {
                Ok((changes, skipped)) => {
                    let outcome = sync.run(&mut maps, changes, &config, skipped);
                    telemetry.synced(sync_started, sync.report());
                    if outcome.incremental {
                        local.apply(&outcome.ops);
                    } else {
                        local.rebuild(sync.tables.tables());
                    }
                    if let Some(rev_nat) = sock_rev_nat.as_ref().filter(|_| !outcome.ops.is_empty()) {
                        telemetry.udp_sockets_aborted(stale_sockets::abort_stale(rev_nat, sync.tables.tables()));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the source failed; keeping what is programmed");
                    telemetry.source_failed(sync_started, &error);
                }
            }
        }
        // Attached once the maps hold the first sync, so programs replaced
        // over maps that had to be recreated never serve from empty maps.
        if !attached {
            attacher.attach_socket_lb(&mut ebpf);
            // The node's devices as they are now, attached before the agent
            // says it serves; changes follow in the loop below.
            match tokio::time::timeout(LISTING_TIMEOUT, link_events.recv()).await {
                Ok(Some(listing)) => attacher.handle(&mut ebpf, listing),
                _ => tracing::error!("the node's devices could not be listed; attaching as they are reported"),
            }
            attached = true;
            tracing::info!("datapath serving");
        }
        attacher.check_local_endpoints(&mut local).await;
        attacher.report(&telemetry);
        resync = false;
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = source.changed() => resync = true,
            Some(event) = link_events.recv() => attacher.handle(&mut ebpf, event),
            _ = tokio::time::sleep(RETRY), if sync.diverged.is_some() => resync = true,
            _ = tokio::time::sleep(RETRY), if attacher.has_failures() => attacher.retry(&mut ebpf),
        }
    }
    tracing::info!("stopping; programs and maps stay pinned in {}", layout.root.display());
    Ok(())
}

/// glibc gives each thread that allocates its own arena, and memory freed
/// in one arena serves only that arena's threads: what the program load
/// (main thread) frees is not reused for the objects the watches (worker
/// threads) keep, and the agent's resident memory grows by the sum. One
/// arena costs nothing at the agent's rate of allocation. Must run before
/// any thread starts.
pub fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// `--hostname-override`, else the kernel's host name, as kube-proxy does.
fn node_name(args: &RunArgs) -> anyhow::Result<String> {
    match &args.node_name {
        Some(name) => Ok(name.clone()),
        None => Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string()),
    }
}

/// Where the Services come from.
enum Source {
    Dir {
        path: PathBuf,
        poll: Duration,
        seen: Option<yaml_dir::Fingerprint>,
        /// What the last read found, to tell which Services changed.
        last: Option<ByService>,
        reader: yaml_dir::DirReader,
    },
    Kube(KubeSource),
}

impl Source {
    async fn new(args: &RunArgs, node_name: &str) -> anyhow::Result<Self> {
        if let Some(path) = &args.manifests {
            return Ok(Source::Dir {
                path: path.clone(),
                poll: Duration::from_millis(args.poll_ms),
                seen: yaml_dir::fingerprint(path).ok(),
                last: None,
                reader: yaml_dir::DirReader::default(),
            });
        }
        let client = source::kube::client(args.kubeconfig.as_deref()).await?;
        tracing::info!(node = node_name, "watching Services, EndpointSlices and this node");
        Ok(Source::Kube(KubeSource::start(client, node_name, args.proxy_name.as_deref())))
    }

    /// `agent_started`: when `run` began, for the log.
    async fn wait_ready(&self, agent_started: Instant) -> anyhow::Result<()> {
        if let Source::Kube(kube) = self {
            let started = Instant::now();
            kube.wait_ready().await;
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                since_start_ms = agent_started.elapsed().as_millis() as u64,
                "initial list complete"
            );
        }
        Ok(())
    }

    /// Returns once there may be something new to read.
    async fn changed(&mut self) {
        match self {
            Source::Dir { path, poll, seen, .. } => loop {
                tokio::time::sleep(*poll).await;
                match yaml_dir::fingerprint(path) {
                    Ok(now) if seen.as_ref() != Some(&now) => {
                        *seen = Some(now);
                        return;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(dir = %path.display(), %error, "cannot read manifest directory; keeping what is programmed")
                    }
                }
            },
            Source::Kube(kube) => kube.changed.notified().await,
        }
    }

    /// This node's zone and addresses, from its Node object when the source
    /// has one; `keep_ips` when `--node-ip` named the addresses.
    fn update_node(&self, config: &mut Config, keep_ips: bool) {
        if let Source::Kube(kube) = self {
            if let Some(node) = kube.node() {
                let (zone, ips) = model::node_config_from(&node);
                config.node_zone = zone;
                if !keep_ips {
                    config.node_ips = ips;
                }
            }
        }
    }

    /// What changed since the last read; everything when `all`.
    fn read(&mut self, all: bool) -> anyhow::Result<(Changes, Vec<Skipped>)> {
        match self {
            Source::Dir { path, last, reader, .. } => {
                let (snapshot, skipped) = reader.read(path)?;
                let slices: Vec<_> = snapshot.slices.iter().map(|s| Arc::new(Slice::from(&**s))).collect();
                let now = ByService::group(&snapshot.services, &slices);
                let changes = match last.as_ref().filter(|_| !all) {
                    Some(before) => Changes::Services(now.changed_since(before)),
                    None => Changes::All { services: snapshot.services, slices },
                };
                *last = Some(now);
                Ok((changes, skipped))
            }
            Source::Kube(kube) => Ok((kube.take_changes(all), Vec::new())),
        }
    }
}

/// Forwards the programs' aya-log records into tracing (through `log`).
fn spawn_ebpf_logger(ebpf: &mut aya::Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(error) => {
            tracing::warn!(%error, "eBPF logs unavailable");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer fd and keeps it open for as long
    // as the AsyncFd (which owns the logger) is registered.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }.ok()?;
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else { return };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

/// What one sync did.
struct SyncOutcome {
    /// The map writes it planned.
    ops: Vec<Op>,
    /// A change of some Services whose writes all went through: `ops` are
    /// exactly what changed in the tables.
    incremental: bool,
}

/// The model and tables the agent wants in the maps, both kept up to date
/// one Service at a time, and what the maps hold when that differs.
struct Sync {
    model: LiveModel,
    tables: LiveTables,
    /// What the maps hold when it is not `tables`: the pinned state before
    /// the first sync, or after a failed write (then retried, comparing
    /// every entry, until a sync goes through).
    diverged: Option<Tables>,
    /// Logged once when they first appear, not on every sync.
    last_skipped: Vec<Skipped>,
    generation: u64,
    /// For telemetry: what the last sync served, and its failed writes.
    served: Served,
    failed_writes: usize,
}

impl Sync {
    fn adopt(maps: &PinnedMaps) -> anyhow::Result<Self> {
        let current = maps.read_tables().context("reading pinned maps")?;
        tracing::info!(
            services = current.services.len(),
            backends = current.backends.len(),
            "adopted pinned datapath state"
        );
        Ok(Sync {
            model: LiveModel::default(),
            tables: LiveTables::new(Ids::adopt(&current)),
            diverged: Some(current),
            last_skipped: Vec::new(),
            generation: 0,
            served: Served::default(),
            failed_writes: 0,
        })
    }

    /// Brings the maps to what `changes` ask for; returns how many map
    /// writes that planned.
    fn run(&mut self, maps: &mut PinnedMaps, changes: Changes, config: &Config, mut skipped: Vec<Skipped>) -> SyncOutcome {
        let started = Instant::now();
        let full = matches!(changes, Changes::All { .. });
        let mut health_checks_changed = full;
        let (changed, before) = match changes {
            Changes::All { services, slices } => {
                let changed = self.model.replace_all(&services, &slices, config);
                (changed.len(), Err(self.tables.replace_all(self.model.model())))
            }
            Changes::Services(services) => {
                health_checks_changed = services.iter().any(|o| self.may_change_health_checks(o));
                let changed = self.model.update(&services);
                (changed.len(), Ok(self.tables.update(self.model.model(), &changed)))
            }
        };
        skipped.extend_from_slice(self.model.skipped());
        skipped.extend(self.tables.skipped(self.model.model()));
        self.report_skipped(skipped);

        let wanted = self.tables.tables();
        let ops = match (&self.diverged, &before) {
            (Some(actual), _) => diff(actual, wanted),
            (None, Ok(touched)) => diff_touched(touched, wanted),
            (None, Err(old)) => diff(old, wanted),
        };
        let planned = started.elapsed();
        let failures = maps.apply(&ops);
        // After the writes, so telemetry never delays them.
        // Health checks are found by visiting every frontend: only when a
        // change can have touched one.
        if health_checks_changed {
            self.served = Served::of(&self.model, self.model.services_with_frontends());
        } else {
            self.served.services = self.model.services_with_frontends();
        }
        self.failed_writes = failures.len();
        self.generation += 1;
        if failures.is_empty() {
            self.diverged = None;
        } else {
            for failure in &failures {
                tracing::error!(op = ?failure.op, error = %failure.error, "map write failed; will retry");
            }
            // Believe the kernel, not the plan, about what is there now.
            match maps.read_tables() {
                Ok(actual) => self.diverged = Some(actual),
                Err(error) => {
                    tracing::error!(%error, "re-reading maps failed");
                    // Believe what was there before this sync, so that the
                    // next one tries all of its writes again.
                    if self.diverged.is_none() {
                        self.diverged = Some(match before {
                            Err(old) => old,
                            Ok(touched) => touched.revert(self.tables.tables().clone()),
                        });
                    }
                }
            }
        }
        tracing::info!(
            generation = self.generation,
            full,
            changed_frontends = changed,
            frontends = self.tables.tables().services.len(),
            backends = self.tables.tables().backends.len(),
            ops = ops.len(),
            failed = failures.len(),
            plan_us = planned.as_micros() as u64,
            elapsed_us = started.elapsed().as_micros() as u64,
            "synced"
        );
        SyncOutcome {
            incremental: !full && failures.is_empty(),
            ops,
        }
    }

    /// Whether a change to this Service can change the health check
    /// servers: it has a health check port now, or had one served.
    fn may_change_health_checks(&self, objects: &model::ServiceObjects) -> bool {
        let has_port = objects
            .service
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .is_some_and(|spec| spec.health_check_node_port.is_some());
        has_port
            || self
                .served
                .health_checks
                .iter()
                .any(|h| h.namespace == objects.name.namespace && h.name == objects.name.name)
    }

    fn report(&self) -> SyncReport<'_> {
        SyncReport {
            tables: self.tables.tables(),
            skipped: &self.last_skipped,
            served: &self.served,
            failed_writes: self.failed_writes,
        }
    }

    fn report_skipped(&mut self, skipped: Vec<Skipped>) {
        for s in &skipped {
            if !self.last_skipped.contains(s) {
                match &s.held_by {
                    // Debug-formatted: names are anyone's text, and a
                    // newline must not start a log line of its own.
                    Some(holder) => tracing::warn!(object = ?s.object, reason = s.reason.label(), held_by = ?holder, "skipped: another Service holds the frontend"),
                    None => tracing::warn!(object = ?s.object, reason = s.reason.label(), "skipped"),
                }
            }
        }
        self.last_skipped = skipped;
    }
}
