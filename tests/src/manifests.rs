//! Services and EndpointSlices for the lab, written as `kubectl get -o yaml`
//! would print them.

use std::net::Ipv4Addr;

/// A ClusterIP Service with one TCP and one UDP port of the same number, as
/// DNS has, and an EndpointSlice listing `endpoints` (address, ready).
pub fn service(name: &str, cluster_ip: &str, port: u16, endpoints: &[(Ipv4Addr, bool)]) -> String {
    let mut spec = ServiceSpec::new(name, cluster_ip, port);
    spec.endpoints = endpoints
        .iter()
        .map(|(addr, ready)| EndpointSpec {
            addr: *addr,
            node: None,
            ready: *ready,
        })
        .collect();
    spec.yaml()
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    pub addr: Ipv4Addr,
    /// `nodeName`, which traffic policies use to tell local from remote.
    pub node: Option<String>,
    /// `ready` and `serving` (never terminating).
    pub ready: bool,
}

/// A Service of any type, with a TCP and a UDP port of the same number
/// (and the same `nodePort`), and its EndpointSlice. Endpoints name their
/// node, so traffic policies can tell local from remote.
#[derive(Clone, Debug, Default)]
pub struct ServiceSpec {
    pub name: String,
    pub cluster_ip: String,
    pub port: u16,
    /// Makes it a NodePort Service (LoadBalancer when `load_balancer_ips`
    /// is not empty).
    pub node_port: Option<u16>,
    pub load_balancer_ips: Vec<String>,
    pub external_ips: Vec<String>,
    pub source_ranges: Vec<String>,
    pub external_local: bool,
    pub internal_local: bool,
    pub health_check_node_port: Option<u16>,
    /// `sessionAffinity: ClientIP` with this timeout in seconds.
    pub session_affinity: Option<u32>,
    pub endpoints: Vec<EndpointSpec>,
    /// The endpoints' port, when not the lab backends' own (for a port
    /// nothing listens on).
    pub target_port: Option<u16>,
}

impl ServiceSpec {
    pub fn new(name: &str, cluster_ip: &str, port: u16) -> Self {
        ServiceSpec {
            name: name.into(),
            cluster_ip: cluster_ip.into(),
            port,
            ..Default::default()
        }
    }

    /// Adds a ready endpoint for each of the lab's `pods`, on its node.
    pub fn on_pods(mut self, lab: &crate::Lab, pods: &[&str]) -> Self {
        for pod in pods {
            let p = lab.pod(pod);
            self = self.endpoint(p.ip, &lab.nodes[p.node].name);
        }
        self
    }

    /// Adds a ready endpoint on `node`.
    pub fn endpoint(mut self, addr: Ipv4Addr, node: &str) -> Self {
        self.endpoints.push(EndpointSpec {
            addr,
            node: Some(node.into()),
            ready: true,
        });
        self
    }

    pub fn yaml(&self) -> String {
        let target = self.target_port.unwrap_or(crate::lab::BACKEND_PORT);
        let (name, port) = (&self.name, self.port);
        let kind = match (self.node_port, self.load_balancer_ips.is_empty()) {
            (_, false) => "LoadBalancer",
            (Some(_), true) => "NodePort",
            (None, true) => "ClusterIP",
        };
        let node_port = self.node_port.map(|p| format!("\n    nodePort: {p}")).unwrap_or_default();
        let mut spec_extra = String::new();
        let list = |items: &[String]| items.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ");
        if !self.external_ips.is_empty() {
            spec_extra.push_str(&format!("  externalIPs: [{}]\n", list(&self.external_ips)));
        }
        if !self.source_ranges.is_empty() {
            spec_extra.push_str(&format!("  loadBalancerSourceRanges: [{}]\n", list(&self.source_ranges)));
        }
        if kind != "ClusterIP" || !self.external_ips.is_empty() {
            let policy = if self.external_local { "Local" } else { "Cluster" };
            spec_extra.push_str(&format!("  externalTrafficPolicy: {policy}\n"));
        }
        if self.internal_local {
            spec_extra.push_str("  internalTrafficPolicy: Local\n");
        }
        if let Some(t) = self.session_affinity {
            spec_extra.push_str(&format!(
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}\n"
            ));
        }
        if let Some(p) = self.health_check_node_port {
            spec_extra.push_str(&format!("  healthCheckNodePort: {p}\n"));
        }
        let status = if self.load_balancer_ips.is_empty() {
            String::new()
        } else {
            let ingress: Vec<String> = self.load_balancer_ips.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
            format!("status:\n  loadBalancer:\n    ingress: [{}]\n", ingress.join(", "))
        };
        let mut eps = String::new();
        for ep in &self.endpoints {
            let node = ep.node.as_ref().map(|n| format!("  nodeName: {n}\n")).unwrap_or_default();
            eps.push_str(&format!(
                "- addresses: [\"{}\"]\n{node}  conditions:\n    ready: {ready}\n    serving: {ready}\n    terminating: false\n",
                ep.addr,
                ready = ep.ready
            ));
        }
        if eps.is_empty() {
            eps.push_str(" []\n");
        }
        format!(
            r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: {kind}
  clusterIP: {cluster_ip}
  clusterIPs: ["{cluster_ip}"]
  ipFamilies: [IPv4]
{spec_extra}  ports:
  - name: tcp
    port: {port}
    protocol: TCP
    targetPort: {target}{node_port}
  - name: udp
    port: {port}
    protocol: UDP
    targetPort: {target}{node_port}
  selector:
    app: {name}
{status}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abc12
  namespace: default
  labels:
    kubernetes.io/service-name: {name}
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
addressType: IPv4
ports:
- name: tcp
  port: {target}
  protocol: TCP
- name: udp
  port: {target}
  protocol: UDP
endpoints:
{eps}"#,
            cluster_ip = self.cluster_ip
        )
    }
}
