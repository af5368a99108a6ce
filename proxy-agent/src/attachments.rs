//! Which of the node's devices get which programs, and what is missing: the
//! pure half of attaching. The agent feeds it the node's links as netlink
//! reports them and the outcome of each attach; it answers which devices
//! need programs and what `/healthz` must report. No device names come from
//! outside but the node's own (`--device`): pods' devices are recognised by
//! their names as the CNI makes them, whenever they appear.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::datapath::DeviceRole;

/// Host-side device names of the common CNIs' pod interfaces: kindnet,
/// flannel, kube-router, Weave and the bridge/ptp plugins (`veth`), Calico
/// (`cali`), Cilium (`lxc`), AWS VPC CNI (`eni`), GKE (`gke`), Azure CNI
/// (`azv`).
pub const DEFAULT_POD_DEVICE_PATTERNS: &str = "veth*,cali*,lxc*,eni*,gke*,azv*";

/// A device name, or a glob with `*` standing for any run of characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

impl FromStr for NamePattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        // Linux device names: at most 15 bytes, no '/' or whitespace.
        if s.is_empty() || s.trim_matches('*').is_empty() {
            return Err(format!("{s:?} would match every device"));
        }
        if s.contains(|c: char| c == '/' || c.is_whitespace()) {
            return Err(format!("{s:?} is not a device name pattern"));
        }
        Ok(NamePattern(s.to_string()))
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| glob_match(rest, &name[skip..])),
        Some((c, rest)) => name.split_first().is_some_and(|(n, tail)| n == c && glob_match(rest, tail)),
    }
}

/// Which devices get programs: the node's own by name, pods' by pattern.
#[derive(Clone, Debug)]
pub struct DeviceSelection {
    pub external: Vec<String>,
    pub pod_patterns: Vec<NamePattern>,
}

impl DeviceSelection {
    /// The role of the device called `name`, if it gets programs. A node
    /// device is never taken for a pod's, whatever its name (a kind node's
    /// eth0 is a veth too).
    pub fn role(&self, name: &str) -> Option<DeviceRole> {
        if self.external.iter().any(|d| d == name) {
            return Some(DeviceRole::External);
        }
        self.pod_patterns.iter().any(|p| p.matches(name)).then_some(DeviceRole::Pod)
    }
}

/// A network device as netlink names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The bridge (or bond) it is a port of, by index.
    pub master: Option<u32>,
    /// A veth (rtnetlink's link kind).
    pub veth: bool,
}

/// What the agent should do about a link that appeared or changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Attach the programs of this role (replacing any it had under another
    /// name first: see `detach_first`).
    Attach { role: DeviceRole, detach_first: Option<String> },
    /// It had our programs under this name and is no longer selected
    /// (renamed): detach them.
    Detach { old_name: String },
    Nothing,
}

#[derive(Clone, Debug)]
struct Device {
    name: String,
    role: DeviceRole,
    /// `None` when attached; the error of the last attempt otherwise.
    failure: Option<String>,
}

/// Local endpoints without programs named in `problems`; the rest counted.
const UNSERVED_NAMED: usize = 5;

/// The socket hooks' state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketLb {
    NotYet,
    Attached { cgroup: String },
    Failed { cgroup: String, error: String },
}

/// The agent's view of what is attached where, by interface index (a
/// device's name can change; its index cannot).
#[derive(Debug)]
pub struct Attachments {
    selection: DeviceSelection,
    devices: BTreeMap<u32, Device>,
    socket_lb: SocketLb,
    /// Whether the node's links have been listed once.
    listed: bool,
    /// Every link of the node, selected or not, by index.
    links: BTreeMap<u32, Link>,
    /// Bumped on every change of `links` or `devices`.
    generation: u64,
    /// Local endpoints whose device has no programs: the device's name.
    unserved: BTreeMap<std::net::Ipv4Addr, String>,
}

impl Attachments {
    pub fn new(selection: DeviceSelection) -> Self {
        Attachments {
            selection,
            devices: BTreeMap::new(),
            socket_lb: SocketLb::NotYet,
            listed: false,
            links: BTreeMap::new(),
            generation: 0,
            unserved: BTreeMap::new(),
        }
    }

    /// Whether the node has a device of this index.
    pub fn has_link(&self, index: u32) -> bool {
        self.links.contains_key(&index)
    }

    /// Changes whenever the node's links or the attachments change: a
    /// check of the local endpoints' devices is only stale then.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn selection(&self) -> &DeviceSelection {
        &self.selection
    }

    /// A link exists (listed, added or changed).
    pub fn link_seen(&mut self, link: &Link) -> Action {
        if self.links.get(&link.index) != Some(link) {
            self.links.insert(link.index, link.clone());
            self.generation += 1;
        }
        let role = self.selection.role(&link.name);
        match (self.devices.get(&link.index), role) {
            (Some(known), Some(role)) if known.name == link.name && known.role == role => Action::Nothing,
            (Some(known), Some(role)) => Action::Attach {
                role,
                detach_first: Some(known.name.clone()),
            },
            (Some(known), None) => {
                let old_name = known.name.clone();
                self.devices.remove(&link.index);
                Action::Detach { old_name }
            }
            (None, Some(role)) => Action::Attach { role, detach_first: None },
            (None, None) => Action::Nothing,
        }
    }

    /// The outcome of attaching `role`'s programs to `link`.
    pub fn attach_done(&mut self, link: &Link, role: DeviceRole, result: Result<(), String>) {
        self.generation += 1;
        self.devices.insert(
            link.index,
            Device {
                name: link.name.clone(),
                role,
                failure: result.err(),
            },
        );
    }

    /// A link went away: its programs went with it (the kernel detaches
    /// them). Returns the name it had if it had ours, so its pins can go.
    pub fn link_gone(&mut self, index: u32) -> Option<String> {
        self.links.remove(&index);
        self.generation += 1;
        self.devices.remove(&index).map(|d| d.name)
    }

    /// After a full listing: forgets devices that are not in it (removed
    /// while the agent was not listening) and returns their names.
    pub fn listed(&mut self, links: &[Link]) -> Vec<String> {
        self.listed = true;
        self.links.retain(|index, _| links.iter().any(|l| l.index == *index));
        self.generation += 1;
        let gone: Vec<u32> = self
            .devices
            .keys()
            .filter(|index| !links.iter().any(|l| l.index == **index))
            .copied()
            .collect();
        gone.into_iter().filter_map(|index| self.link_gone(index)).collect()
    }

    /// Devices whose last attach failed and that still exist: try again.
    pub fn to_retry(&self) -> Vec<(Link, DeviceRole)> {
        self.devices
            .iter()
            .filter(|(_, d)| d.failure.is_some())
            .map(|(index, d)| {
                let link = self.links.get(index).cloned().unwrap_or(Link { index: *index, name: d.name.clone(), master: None, veth: false });
                (link, d.role)
            })
            .collect()
    }

    pub fn set_socket_lb(&mut self, state: SocketLb) {
        self.socket_lb = state;
    }

    pub fn socket_lb(&self) -> &SocketLb {
        &self.socket_lb
    }

    /// Devices with our programs, by role.
    pub fn attached(&self, role: DeviceRole) -> Vec<&str> {
        self.devices
            .values()
            .filter(|d| d.role == role && d.failure.is_none())
            .map(|d| d.name.as_str())
            .collect()
    }

    /// For a local endpoint the node routes to device `index` (as `ip route
    /// get` answers): the device's name when the endpoint cannot be served
    /// there, a pod device without our programs (replies of its NodePort
    /// flows, its pods' connected UDP), or a bridge none of whose ports has
    /// them. Endpoints on the node's own devices or its loopback
    /// (host-network pods) need no pod device.
    pub fn unserved_device(&self, index: u32) -> Option<&str> {
        let link = self.links.get(&index)?;
        if link.name == "lo" || self.selection.role(&link.name) == Some(DeviceRole::External) {
            return None;
        }
        let served = self.devices.get(&index).is_some_and(|d| d.failure.is_none())
            || self
                .devices
                .iter()
                .any(|(i, d)| d.role == DeviceRole::Pod && d.failure.is_none() && self.links.get(i).and_then(|l| l.master) == Some(index));
        (!served).then_some(link.name.as_str())
    }

    /// Records whether local endpoint `addr` is served (`None`) or which
    /// device it sits behind without programs.
    pub fn set_unserved(&mut self, addr: std::net::Ipv4Addr, device: Option<String>) {
        match device {
            Some(device) => self.unserved.insert(addr, device),
            None => self.unserved.remove(&addr),
        };
    }

    pub fn clear_unserved(&mut self) {
        self.unserved.clear();
    }

    /// `set_unserved` for each (address, route device) at once.
    #[cfg(test)]
    pub fn check_endpoints(&mut self, routes: &[(std::net::Ipv4Addr, u32)]) {
        self.clear_unserved();
        for (addr, index) in routes {
            let device = self.unserved_device(*index).map(String::from);
            self.set_unserved(*addr, device);
        }
    }

    /// Why the datapath cannot serve everything the maps hold: a node
    /// device that does not exist or has no program, a pod device that
    /// exists without its programs, socket hooks that are not attached.
    /// Empty when it can.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.socket_lb {
            SocketLb::NotYet | SocketLb::Attached { .. } => {}
            SocketLb::Failed { cgroup, error } => {
                out.push(format!("socket hooks not attached to cgroup {cgroup}: {error}"))
            }
        }
        if self.listed {
            for name in &self.selection.external {
                if !self.devices.values().any(|d| &d.name == name) {
                    out.push(format!("device {name} (--device) does not exist"));
                }
            }
        }
        for d in self.devices.values() {
            if let Some(error) = &d.failure {
                out.push(format!("{} device {}: programs not attached: {error}", role_name(d.role), d.name));
            }
        }
        // A few by name, then how many more: /healthz stays readable with a
        // CNI that matches nothing on a full node.
        for (addr, device) in self.unserved.iter().take(UNSERVED_NAMED) {
            out.push(format!(
                "local endpoint {addr} is behind device {device}, which has no programs (does --pod-device-patterns match it?)"
            ));
        }
        if self.unserved.len() > UNSERVED_NAMED {
            out.push(format!("{} more local endpoints behind devices without programs", self.unserved.len() - UNSERVED_NAMED));
        }
        out
    }
}

pub fn role_name(role: DeviceRole) -> &'static str {
    match role {
        DeviceRole::Pod => "pod",
        DeviceRole::External => "node",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection() -> DeviceSelection {
        DeviceSelection {
            external: vec!["eth0".into()],
            pod_patterns: DEFAULT_POD_DEVICE_PATTERNS.split(',').map(|p| p.parse().unwrap()).collect(),
        }
    }

    fn link(index: u32, name: &str) -> Link {
        Link { index, name: name.into(), master: None, veth: false }
    }

    #[test]
    fn patterns_match_the_common_cnis_devices_and_nothing_else() {
        let s = selection();
        for pod in ["veth3f2a9c1b", "cali1234567890a", "lxc8a7b6c5d4e3f", "eni0a1b2c3d4e5", "gke1234", "azv0"] {
            assert_eq!(s.role(pod), Some(DeviceRole::Pod), "{pod}");
        }
        for other in ["lo", "eth1", "docker0", "cni0", "flannel.1", "vxlan.calico", "cilium_host", "tunl0", "ens3"] {
            assert_eq!(s.role(other), None, "{other}");
        }
        assert_eq!(s.role("eth0"), Some(DeviceRole::External));
        // A node device that matches a pod pattern stays the node's.
        let s = DeviceSelection { external: vec!["veth-uplink".into()], ..selection() };
        assert_eq!(s.role("veth-uplink"), Some(DeviceRole::External));
    }

    #[test]
    fn glob_matching() {
        let p = |s: &str| s.parse::<NamePattern>().unwrap();
        assert!(p("veth*").matches("veth"));
        assert!(p("veth*").matches("veth0"));
        assert!(!p("veth*").matches("xveth0"));
        assert!(p("*-host").matches("pod1-host"));
        assert!(!p("*-host").matches("pod1-hostx"));
        assert!(p("a*b*c").matches("a-b-c"));
        assert!(!p("a*b*c").matches("a-c-b"));
        assert!(p("eth0").matches("eth0"));
        assert!(!p("eth0").matches("eth01"));
        for bad in ["", "*", "**", "a/b", "a b"] {
            assert!(bad.parse::<NamePattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_pod_device_is_attached_once_and_forgotten_when_it_goes() {
        let mut a = Attachments::new(selection());
        let veth = link(7, "veth1a2b3c4d");
        assert_eq!(a.link_seen(&veth), Action::Attach { role: DeviceRole::Pod, detach_first: None });
        a.attach_done(&veth, DeviceRole::Pod, Ok(()));
        // netlink repeats a link on every change (up, MTU, ...): no new attach.
        assert_eq!(a.link_seen(&veth), Action::Nothing);
        assert_eq!(a.attached(DeviceRole::Pod), vec!["veth1a2b3c4d"]);
        assert_eq!(a.link_gone(7), Some("veth1a2b3c4d".into()));
        assert_eq!(a.link_gone(7), None);
        assert!(a.attached(DeviceRole::Pod).is_empty());
        assert_eq!(a.link_seen(&link(3, "docker0")), Action::Nothing);
    }

    #[test]
    fn renames_move_or_drop_the_programs() {
        let mut a = Attachments::new(selection());
        // A CNI that makes the device under a temporary name, then renames it.
        assert_eq!(a.link_seen(&link(9, "tmp0123")), Action::Nothing);
        assert_eq!(a.link_seen(&link(9, "veth99")), Action::Attach { role: DeviceRole::Pod, detach_first: None });
        a.attach_done(&link(9, "veth99"), DeviceRole::Pod, Ok(()));
        assert_eq!(
            a.link_seen(&link(9, "cali99")),
            Action::Attach { role: DeviceRole::Pod, detach_first: Some("veth99".into()) }
        );
        a.attach_done(&link(9, "cali99"), DeviceRole::Pod, Ok(()));
        assert_eq!(a.link_seen(&link(9, "other")), Action::Detach { old_name: "cali99".into() });
        assert!(a.attached(DeviceRole::Pod).is_empty());
    }

    #[test]
    fn problems_name_what_cannot_be_served() {
        let mut a = Attachments::new(selection());
        assert!(a.problems().is_empty(), "nothing known yet is nothing missing");
        let veth = link(5, "veth5");
        a.attach_done(&veth, DeviceRole::Pod, Err("No such device".into()));
        a.listed(&[veth.clone()]);
        let problems = a.problems();
        assert!(problems.iter().any(|p| p == "device eth0 (--device) does not exist"), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("pod device veth5: programs not attached: No such device")), "{problems:?}");
        assert_eq!(a.to_retry(), vec![(veth.clone(), DeviceRole::Pod)]);
        a.attach_done(&veth, DeviceRole::Pod, Ok(()));
        a.attach_done(&link(2, "eth0"), DeviceRole::External, Ok(()));
        assert!(a.problems().is_empty(), "{:?}", a.problems());
        a.set_socket_lb(SocketLb::Failed { cgroup: "/run/x".into(), error: "not cgroup2".into() });
        assert_eq!(a.problems(), vec!["socket hooks not attached to cgroup /run/x: not cgroup2".to_string()]);
    }

    #[test]
    fn local_endpoints_behind_devices_without_programs_are_problems() {
        let mut a = Attachments::new(selection());
        let ip = |last: u8| std::net::Ipv4Addr::new(10, 244, 1, last);
        let lo = link(1, "lo");
        let eth0 = link(2, "eth0");
        let veth = link(3, "veth3");
        let other = link(4, "enx9"); // a CNI naming its devices otherwise
        let cni0 = link(5, "cni0");
        let port = Link { master: Some(5), ..link(6, "veth6") };
        let lonely_bridge = link(7, "br-x");
        for l in [&lo, &eth0, &veth, &other, &cni0, &port, &lonely_bridge] {
            if let Action::Attach { role, .. } = a.link_seen(l) {
                a.attach_done(l, role, Ok(()));
            }
        }
        a.listed(&[lo, eth0, veth, other, cni0, port, lonely_bridge]);
        let before = a.generation();
        a.check_endpoints(&[(ip(1), 1), (ip(2), 2), (ip(3), 3), (ip(5), 5), (ip(9), 99)]);
        assert!(a.problems().is_empty(), "lo, node device, attached veth, bridge with an attached port, no route: {:?}", a.problems());
        a.check_endpoints(&[(ip(4), 4), (ip(7), 7)]);
        assert_eq!(
            a.problems(),
            vec![
                "local endpoint 10.244.1.4 is behind device enx9, which has no programs (does --pod-device-patterns match it?)".to_string(),
                "local endpoint 10.244.1.7 is behind device br-x, which has no programs (does --pod-device-patterns match it?)".to_string(),
            ]
        );
        assert_eq!(a.generation(), before, "a check changes no link");
    }

    #[test]
    fn a_listing_forgets_devices_that_left_unnoticed() {
        let mut a = Attachments::new(selection());
        a.attach_done(&link(4, "veth4"), DeviceRole::Pod, Ok(()));
        a.attach_done(&link(6, "veth6"), DeviceRole::Pod, Ok(()));
        assert_eq!(a.listed(&[link(6, "veth6")]), vec!["veth4".to_string()]);
        assert_eq!(a.attached(DeviceRole::Pod), vec!["veth6"]);
    }
}
