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

use proxy_common::maps::backend_flags;

use crate::attachments::{role_name, Action, Attachments, DeviceSelection, Link, SocketLb};
use crate::diff::Op;
use crate::tables::Tables;
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
    /// serve, at the cost of what changed: routes are looked up for new
    /// endpoints only and kept; when the node's devices change (a pod's
    /// route appears with its device), again for those without a route or
    /// whose device went, and every endpoint is judged again.
    pub async fn check_local_endpoints(&mut self, local: &mut LocalEndpoints) {
        let Some(routes) = &self.routes else { return };
        let generation = self.state.generation();
        let devices_changed = self.checked_generation != Some(generation);
        let changes = local.take_changes();
        let mut judge: Vec<Ipv4Addr> = Vec::new();
        if changes.rebuilt {
            self.route_of.clear();
            self.state.clear_unserved();
            judge.extend(local.addresses());
        } else {
            for addr in &changes.removed {
                self.route_of.remove(addr);
                self.state.set_unserved(*addr, None);
            }
            judge.extend(&changes.added);
        }
        for addr in &judge {
            self.route_of.insert(*addr, routes.device_for(*addr).await);
        }
        if devices_changed {
            let stale: Vec<Ipv4Addr> = self
                .route_of
                .iter()
                .filter(|(_, index)| index.is_none_or(|i| !self.state.has_link(i)))
                .map(|(addr, _)| *addr)
                .collect();
            for addr in stale {
                self.route_of.insert(addr, routes.device_for(addr).await);
            }
            judge = self.route_of.keys().copied().collect();
        }
        for addr in judge {
            let device = self.route_of.get(&addr).copied().flatten().and_then(|i| self.state.unserved_device(i)).map(String::from);
            self.state.set_unserved(addr, device);
        }
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

/// This node's endpoints (backends with the local flag): built from the
/// tables, then kept up to date from each sync's backend writes, so a sync
/// of one Service costs its own backends, not a walk of every backend; the
/// addresses that came and went since the last check are handed to it.
#[derive(Default)]
pub struct LocalEndpoints {
    by_id: HashMap<u32, Ipv4Addr>,
    /// How many local backends (ports, protocols) share each address.
    count: HashMap<Ipv4Addr, u32>,
    added: Vec<Ipv4Addr>,
    removed: Vec<Ipv4Addr>,
    rebuilt: bool,
}

pub struct LocalChanges {
    pub rebuilt: bool,
    pub added: Vec<Ipv4Addr>,
    pub removed: Vec<Ipv4Addr>,
}

impl LocalEndpoints {
    pub fn rebuild(&mut self, tables: &Tables) {
        *self = LocalEndpoints::default();
        for (id, backend) in &tables.backends {
            if backend.flags & backend_flags::LOCAL != 0 {
                self.insert(*id, Ipv4Addr::from(backend.addr.to_ne_bytes()));
            }
        }
        self.added.clear();
        self.removed.clear();
        self.rebuilt = true;
    }

    pub fn apply(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::PutBackend(id, b) if b.flags & backend_flags::LOCAL != 0 => {
                    self.remove(*id);
                    self.insert(*id, Ipv4Addr::from(b.addr.to_ne_bytes()));
                }
                Op::PutBackend(id, _) | Op::DeleteBackend(id) => self.remove(*id),
                _ => {}
            }
        }
    }

    fn insert(&mut self, id: u32, addr: Ipv4Addr) {
        self.by_id.insert(id, addr);
        let n = self.count.entry(addr).or_default();
        *n += 1;
        if *n == 1 {
            self.added.push(addr);
        }
    }

    fn remove(&mut self, id: u32) {
        let Some(addr) = self.by_id.remove(&id) else { return };
        if let Some(n) = self.count.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.count.remove(&addr);
                self.removed.push(addr);
            }
        }
    }

    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.count.keys().copied()
    }

    /// What changed since the last call. An address that went and came
    /// back in between is in both lists: removed, then added.
    pub fn take_changes(&mut self) -> LocalChanges {
        LocalChanges {
            rebuilt: std::mem::take(&mut self.rebuilt),
            added: std::mem::take(&mut self.added).into_iter().filter(|a| self.count.contains_key(a)).collect(),
            removed: std::mem::take(&mut self.removed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_common::Backend;

    fn backend(last: u8, local: bool) -> Backend {
        Backend {
            addr: u32::from_ne_bytes([10, 244, 1, last]),
            port: 8080u16.to_be(),
            proto: 6,
            flags: if local { backend_flags::LOCAL } else { 0 },
        }
    }

    #[test]
    fn local_endpoints_follow_backend_writes() {
        let mut tables = Tables::default();
        tables.backends.insert(1, backend(10, true));
        tables.backends.insert(2, backend(11, false));
        let mut local = LocalEndpoints::default();
        local.rebuild(&tables);
        let first = local.take_changes();
        assert!(first.rebuilt);
        assert_eq!(local.addresses().collect::<Vec<_>>(), vec![Ipv4Addr::new(10, 244, 1, 10)]);
        // A second backend (UDP) on the same address: nothing new to check.
        let mut udp = backend(10, true);
        udp.proto = 17;
        local.apply(&[Op::PutBackend(3, udp), Op::PutBackend(4, backend(12, true))]);
        let c = local.take_changes();
        assert_eq!((c.rebuilt, c.added, c.removed), (false, vec![Ipv4Addr::new(10, 244, 1, 12)], vec![]));
        // One of the two at .10 goes: .10 stays; .12 turns remote: it goes.
        local.apply(&[Op::DeleteBackend(1), Op::PutBackend(4, backend(12, false))]);
        let c = local.take_changes();
        assert_eq!((c.added, c.removed), (vec![], vec![Ipv4Addr::new(10, 244, 1, 12)]));
        // Gone and back between two checks: checked again.
        local.apply(&[Op::DeleteBackend(3), Op::PutBackend(3, udp)]);
        let c = local.take_changes();
        assert_eq!((c.added, c.removed), (vec![Ipv4Addr::new(10, 244, 1, 10)], vec![Ipv4Addr::new(10, 244, 1, 10)]));
    }
}
