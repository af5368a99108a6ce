//! The Services a benchmark programs: one description that the iptables and
//! nftables generators and our agent's manifests are all made from, so the
//! three modes serve exactly the same thing.

use std::fmt::Write;
use std::net::Ipv4Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Lower case, as kube-proxy uses it in chain names and rules.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    pub fn upper(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: u16,
    pub node_port: Option<u16>,
}

/// A Service with `externalTrafficPolicy: Cluster`, no affinity, every
/// endpoint ready: the common case, and the one kube-proxy is fastest at.
#[derive(Clone, Debug)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Ipv4Addr>,
}

impl Service {
    /// `namespace/name:port` for one of its ports.
    pub fn port_name(&self, port: &ServicePort) -> String {
        super::names::service_port_name(&self.namespace, &self.name, &port.name)
    }
}

#[derive(Clone, Debug)]
pub struct Cluster {
    /// In kube-proxy's iteration order: the order of the rules in
    /// KUBE-SERVICES, which a packet walks one by one in iptables mode.
    pub services: Vec<Service>,
    /// Pod CIDR: traffic from outside it to a ClusterIP is masqueraded.
    pub cluster_cidr: String,
    pub service_cidr: String,
    /// A real backend no target uses: what an endpoint change on a target
    /// swaps in, so traffic keeps being answered.
    pub spare_endpoint: Option<Ipv4Addr>,
}

/// What `Cluster::synthetic` builds.
#[derive(Clone, Debug)]
pub struct SyntheticSpec {
    /// Services in total, the targets included.
    pub services: usize,
    pub endpoints_per_service: usize,
    /// The real backends of the target Services.
    pub target_endpoints: Vec<Ipv4Addr>,
    pub spare_endpoint: Option<Ipv4Addr>,
    /// Index of the second target Service (the first is always last);
    /// `None` when there is room for only one.
    pub random_position: Option<usize>,
}

pub const NAMESPACE: &str = "bench";
pub const TARGET_LAST: &str = "target-last";
pub const TARGET_RANDOM: &str = "target-random";
pub const TARGET_PORT: u16 = crate::lab::BACKEND_PORT;
pub const HTTP_PORT: u16 = 80;
pub const DNS_PORT: u16 = 53;
/// NodePorts of the target Services: (TCP, UDP) for the last one, then the random one.
pub const TARGET_NODE_PORTS: [(u16, u16); 2] = [(32700, 32701), (32710, 32711)];
/// The other Services get NodePorts from here up while the range lasts.
const FIRST_NODE_PORT: u16 = 30000;
const LAST_OTHER_NODE_PORT: u16 = 32699;

impl Cluster {
    /// `spec.services` Services in 10.96.0.0/16: the targets answer from
    /// real lab pods; every other Service's endpoints are addresses in
    /// 10.128.0.0/10 that nothing routes to and no packet is ever sent to
    /// (they only fill the tables, as idle Services do on a real node).
    pub fn synthetic(spec: &SyntheticSpec) -> Cluster {
        let n = spec.services.max(1);
        let mut services = Vec::with_capacity(n);
        let mut next_node_port = FIRST_NODE_PORT;
        for i in 0..n {
            let cluster_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32);
            let target = if i == n - 1 {
                Some((TARGET_LAST, TARGET_NODE_PORTS[0]))
            } else if Some(i) == spec.random_position {
                Some((TARGET_RANDOM, TARGET_NODE_PORTS[1]))
            } else {
                None
            };
            let service = match target {
                Some((name, (tcp_node_port, udp_node_port))) => Service {
                    namespace: NAMESPACE.into(),
                    name: name.into(),
                    cluster_ip,
                    ports: vec![
                        port("http", Protocol::Tcp, HTTP_PORT, Some(tcp_node_port)),
                        port("dns", Protocol::Udp, DNS_PORT, Some(udp_node_port)),
                    ],
                    endpoints: spec.target_endpoints.clone(),
                },
                None => {
                    let node_port = (next_node_port <= LAST_OTHER_NODE_PORT).then_some(next_node_port);
                    next_node_port += 1;
                    Service {
                        namespace: NAMESPACE.into(),
                        name: format!("svc-{i:05}"),
                        cluster_ip,
                        ports: vec![port("http", Protocol::Tcp, HTTP_PORT, node_port)],
                        endpoints: (0..spec.endpoints_per_service).map(|j| idle_endpoint(i, j)).collect(),
                    }
                }
            };
            services.push(service);
        }
        Cluster {
            services,
            cluster_cidr: "10.244.0.0/16".into(),
            service_cidr: "10.96.0.0/16".into(),
            spare_endpoint: spec.spare_endpoint,
        }
    }

    pub fn find(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Total endpoints over all service ports, as kube-proxy counts them to
    /// decide its "large cluster" mode.
    pub fn endpoint_count(&self) -> usize {
        self.services.iter().map(|s| s.endpoints.len() * s.ports.len()).sum()
    }

    /// The Service an endpoint-change measurement changes: one in the
    /// middle that is not a target, so traffic is never affected.
    pub fn change_candidate(&self) -> usize {
        let mid = self.services.len() / 2;
        (mid..self.services.len())
            .chain(0..mid)
            .find(|&i| !self.services[i].name.starts_with("target-"))
            .unwrap_or(0)
    }

    /// Replaces the first endpoint of Service `index`: on a target with the
    /// spare backend, elsewhere with a fresh idle address (`generation`
    /// makes successive changes differ). Returns the address removed.
    pub fn replace_first_endpoint(&mut self, index: usize, generation: u32) -> Option<Ipv4Addr> {
        let spare = self.spare_endpoint;
        let service = &mut self.services[index];
        let is_target = service.name.starts_with("target-");
        let first = service.endpoints.first_mut()?;
        let old = *first;
        *first = match spare {
            Some(spare) if is_target => spare,
            _ => Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 190, 0, 0)) + (index as u32) * 64 + generation % 64),
        };
        Some(old)
    }

    /// Services and EndpointSlices as `kubectl get -o yaml` prints them, for
    /// the agent's manifest directory.
    pub fn manifests(&self) -> String {
        let mut out = String::with_capacity(self.services.len() * 1200);
        for s in &self.services {
            out.push_str(&service_yaml(s));
        }
        out
    }
}

fn port(name: &str, protocol: Protocol, port: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol,
        port,
        target_port: TARGET_PORT,
        node_port,
    }
}

fn idle_endpoint(service: usize, endpoint: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (service as u32) * 16 + endpoint as u32)
}

fn service_yaml(s: &Service) -> String {
    let kind = if s.ports.iter().any(|p| p.node_port.is_some()) { "NodePort" } else { "ClusterIP" };
    let mut y = String::new();
    let _ = write!(
        y,
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  type: {kind}\n  clusterIP: {ip}\n  clusterIPs: [\"{ip}\"]\n  ipFamilies: [IPv4]\n  externalTrafficPolicy: Cluster\n  ports:\n",
        s.name,
        s.namespace,
        ip = s.cluster_ip
    );
    for p in &s.ports {
        let _ = write!(y, "  - name: {}\n    port: {}\n    protocol: {}\n    targetPort: {}\n", p.name, p.port, p.protocol.upper(), p.target_port);
        if let Some(np) = p.node_port {
            let _ = writeln!(y, "    nodePort: {np}");
        }
    }
    let _ = write!(
        y,
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-abc12\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n",
        name = s.name,
        ns = s.namespace
    );
    for p in &s.ports {
        let _ = write!(y, "- name: {}\n  port: {}\n  protocol: {}\n", p.name, p.target_port, p.protocol.upper());
    }
    y.push_str("endpoints:\n");
    for ep in &s.endpoints {
        let _ = writeln!(y, "- addresses: [\"{ep}\"]\n  conditions: {{ready: true}}");
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(services: usize, random_position: Option<usize>) -> SyntheticSpec {
        SyntheticSpec {
            services,
            endpoints_per_service: 10,
            target_endpoints: vec![Ipv4Addr::new(10, 244, 1, 11), Ipv4Addr::new(10, 244, 2, 10)],
            spare_endpoint: Some(Ipv4Addr::new(10, 244, 2, 11)),
            random_position,
        }
    }

    #[test]
    fn targets_sit_last_and_at_the_chosen_position() {
        let c = Cluster::synthetic(&spec(1000, Some(417)));
        assert_eq!(c.services.len(), 1000);
        assert_eq!(c.services[999].name, TARGET_LAST);
        assert_eq!(c.services[417].name, TARGET_RANDOM);
        assert_eq!(c.services[999].endpoints.len(), 2);
        assert_eq!(c.services[3].endpoints.len(), 10);
        // Distinct ClusterIPs and idle endpoints.
        let ips: std::collections::BTreeSet<_> = c.services.iter().map(|s| s.cluster_ip).collect();
        assert_eq!(ips.len(), 1000);
        let eps: std::collections::BTreeSet<_> = c.services.iter().flat_map(|s| s.endpoints.clone()).collect();
        assert_eq!(eps.len(), 998 * 10 + 2);
    }

    #[test]
    fn node_ports_stay_in_range_and_unique() {
        let c = Cluster::synthetic(&spec(10_000, Some(5)));
        let ports: Vec<u16> = c.services.iter().flat_map(|s| s.ports.iter().filter_map(|p| p.node_port)).collect();
        let unique: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| (30000..=32767).contains(p)));
        assert_eq!(c.find(TARGET_LAST).unwrap().ports[1].node_port, Some(32701));
    }

    #[test]
    fn a_single_service_is_the_target_and_changes_to_the_spare() {
        let mut c = Cluster::synthetic(&spec(1, None));
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].name, TARGET_LAST);
        assert_eq!(c.change_candidate(), 0);
        c.replace_first_endpoint(0, 1);
        assert_eq!(c.services[0].endpoints, vec![Ipv4Addr::new(10, 244, 2, 11), Ipv4Addr::new(10, 244, 2, 10)]);
    }

    #[test]
    fn endpoint_change_touches_one_idle_service() {
        let mut c = Cluster::synthetic(&spec(100, Some(50)));
        let i = c.change_candidate();
        assert!(!c.services[i].name.starts_with("target-"));
        let old = c.replace_first_endpoint(i, 1).unwrap();
        assert_ne!(c.services[i].endpoints[0], old);
    }

    #[test]
    fn manifests_describe_every_service_and_slice() {
        let c = Cluster::synthetic(&spec(3, Some(0)));
        let y = c.manifests();
        assert_eq!(y.matches("kind: Service\n").count(), 3);
        assert_eq!(y.matches("kind: EndpointSlice").count(), 3);
        assert!(y.contains("name: target-last\n  namespace: bench\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.12"));
        assert!(y.contains("  - name: dns\n    port: 53\n    protocol: UDP\n    targetPort: 8080\n    nodePort: 32701\n"));
    }
}
