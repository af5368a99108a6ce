//! Puts the programs where the node needs them and keeps them there: the
//! socket hooks on the node's root cgroup, tc (and XDP) on the node's own
//! devices, tc on every pod device as pods come and go. Nothing here ends
//! the agent: a device that vanishes mid-attach, a cgroup that is not
//! there, a device that fails, each is a log line, a metric and a reason in
//! `/healthz`, and the agent keeps serving what it can and retries.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use crate::attachments::{role_name, Action, Attachments, DeviceSelection, Link, SocketLb};
use crate::datapath::links::{LinkEvent, RouteLookup};
use crate::datapath::{self, DeviceRole, PinLayout};
use crate::telemetry::{metrics::AttachFigures, Telemetry};

/// The XDP fast path on the node's devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xdp {
    Off,
    /// On NICs; not on veths (a kind node's eth0), see `attach`.
    On,
    /// On veths too (`--xdp-on-veth`): for veths whose peers send complete
    /// checksums, as a test bench whose veths stand for NICs.
    OnVethsToo,
}

pub struct Attacher {
    layout: PinLayout,
    xdp: Xdp,
    /// The node's root cgroup (v2) for the socket hooks; `None`: off.
    cgroup_root: Option<PathBuf>,
    state: Attachments,
    failures: u64,
    routes: Option<RouteLookup>,
    /// Each local endpoint's route: the device index, `None` without one.
    route_of: HashMap<Ipv4Addr, Option<u32>>,
    /// The devices' generation the last check saw.
    checked_generation: Option<u64>,
}

impl Attacher {
    pub fn new(layout: PinLayout, selection: DeviceSelection, cgroup_root: Option<PathBuf>, xdp: Xdp) -> Self {
        Attacher {
            layout,
            xdp,
            cgroup_root,
            state: Attachments::new(selection),
            failures: 0,
            routes: RouteLookup::new()
                .inspect_err(|error| tracing::warn!(%error, "no route lookups: local endpoints' devices go unchecked"))
                .ok(),
            route_of: HashMap::new(),
            checked_generation: None,
        }
    }

    /// Checks that every local endpoint is behind a device the programs
    /// serve. Routes are looked up once per address and kept: again only
    /// for addresses that had none or whose device went, when the node's
    /// devices changed (a pod's route appears with its device). So a sync
    /// costs lookups for its new endpoints alone, and a new pod for its own.
    pub async fn check_local_endpoints(&mut self, local_endpoints: &[Ipv4Addr]) {
        let Some(routes) = &self.routes else { return };
        let generation = self.state.generation();
        let devices_changed = self.checked_generation != Some(generation);
        if !devices_changed && self.route_of.len() == local_endpoints.len() && local_endpoints.iter().all(|a| self.route_of.contains_key(a)) {
            return;
        }
        self.route_of.retain(|addr, _| local_endpoints.binary_search(addr).is_ok());
        for addr in local_endpoints {
            let stale = match self.route_of.get(addr) {
                None => true,
                Some(index) => devices_changed && index.is_none_or(|i| !self.state.has_link(i)),
            };
            if stale {
                self.route_of.insert(*addr, routes.device_for(*addr).await);
            }
        }
        let found: Vec<(Ipv4Addr, u32)> = self.route_of.iter().filter_map(|(a, i)| i.map(|i| (*a, i))).collect();
        self.state.check_endpoints(&found);
        self.checked_generation = Some(generation);
    }

    /// The socket hooks, once the maps hold the first sync.
    pub fn attach_socket_lb(&mut self, ebpf: &mut aya::Ebpf) {
        let Some(root) = self.cgroup_root.clone() else {
            tracing::warn!("socket-level load balancing off (--cgroup-root empty): host processes reach no Service");
            return;
        };
        let cgroup = root.display().to_string();
        match datapath::attach_cgroup(ebpf, &self.layout, &root) {
            Ok(()) => self.state.set_socket_lb(SocketLb::Attached { cgroup }),
            Err(error) => {
                self.failures += 1;
                tracing::error!(cgroup, error = format!("{error:#}"), "socket hooks not attached");
                self.state.set_socket_lb(SocketLb::Failed { cgroup, error: format!("{error:#}") });
            }
        }
        if self.xdp == Xdp::Off {
            if let Err(error) = datapath::detach_xdp(&self.layout) {
                tracing::warn!(%error, "removing XDP links of an earlier agent");
            }
        }
    }

    /// One event of the link watch.
    pub fn handle(&mut self, ebpf: &mut aya::Ebpf, event: LinkEvent) {
        match event {
            LinkEvent::Listing(links) => {
                // Pins of devices that are gone or no longer selected (an
                // earlier agent's, or renamed while none ran): ours to remove.
                for device in datapath::pinned_devices(&self.layout) {
                    let wanted = links.iter().any(|l| l.name == device && self.state.selection().role(&device).is_some());
                    if !wanted {
                        tracing::info!(device, "removing programs from a device that is gone or not selected");
                        datapath::detach_device(&self.layout, &device);
                    }
                }
                for device in self.state.listed(&links) {
                    datapath::forget_device(&self.layout, &device);
                }
                for link in &links {
                    self.link_seen(ebpf, link);
                }
                let attached = |role| self.state.attached(role).join(",");
                tracing::info!(
                    node_devices = attached(DeviceRole::External),
                    pod_devices = attached(DeviceRole::Pod),
                    "devices listed"
                );
            }
            LinkEvent::Changed(link) => self.link_seen(ebpf, &link),
            LinkEvent::Removed(link) => {
                if let Some(name) = self.state.link_gone(link.index) {
                    tracing::info!(device = name, "device removed; its programs went with it");
                    datapath::forget_device(&self.layout, &name);
                }
            }
        }
    }

    fn link_seen(&mut self, ebpf: &mut aya::Ebpf, link: &Link) {
        match self.state.link_seen(link) {
            Action::Nothing => {}
            Action::Detach { old_name } => {
                tracing::info!(device = link.name, old_name, "renamed out of the selection; detaching");
                datapath::detach_device(&self.layout, &old_name);
            }
            Action::Attach { role, detach_first } => {
                if let Some(old) = detach_first {
                    datapath::detach_device(&self.layout, &old);
                }
                self.attach(ebpf, link, role);
            }
        }
    }

    fn attach(&mut self, ebpf: &mut aya::Ebpf, link: &Link, role: DeviceRole) {
        let started = Instant::now();
        let xdp = match self.xdp {
            Xdp::Off => false,
            Xdp::OnVethsToo => true,
            Xdp::On if link.veth && role == DeviceRole::External => {
                tracing::warn!(
                    device = link.name,
                    "XDP not attached: the device is a veth, whose frames may carry checksums its peer left for offload (CHECKSUM_PARTIAL), which XDP cannot see and its rewrite would break; tc serves it. XDP is for NICs (--xdp-on-veth for veths whose peers send complete checksums)"
                );
                false
            }
            Xdp::On => true,
        };
        let result = datapath::attach_device(ebpf, &self.layout, &link.name, role, xdp);
        match &result {
            Ok(()) => tracing::info!(
                device = link.name,
                role = role_name(role),
                elapsed_us = started.elapsed().as_micros() as u64,
                "device served"
            ),
            Err(error) => {
                self.failures += 1;
                // A pod's device can vanish between its event and the attach:
                // its removal event follows and clears the failure.
                tracing::warn!(device = link.name, role = role_name(role), error = format!("{error:#}"), "attach failed; will retry while the device exists");
            }
        }
        self.state.attach_done(link, role, result.map_err(|e| format!("{e:#}")));
    }

    pub fn has_failures(&self) -> bool {
        !self.state.to_retry().is_empty()
    }

    /// Tries the devices whose attach failed again.
    pub fn retry(&mut self, ebpf: &mut aya::Ebpf) {
        for (link, role) in self.state.to_retry() {
            self.attach(ebpf, &link, role);
        }
    }

    pub fn report(&self, telemetry: &Telemetry) {
        let figures = AttachFigures {
            node_devices: self.state.attached(DeviceRole::External).len() as u64,
            pod_devices: self.state.attached(DeviceRole::Pod).len() as u64,
            socket_lb: matches!(self.state.socket_lb(), SocketLb::Attached { .. }),
            failures: self.failures,
            problems: 0,
        };
        telemetry.attachments(figures, self.state.problems());
    }
}
