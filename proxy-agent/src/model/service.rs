//! What one Service asks for, read as kube-proxy reads it (serviceport.go and
//! `k8s.io/kubernetes/pkg/api/v1/service`): its addresses, traffic policies,
//! session affinity and health check port.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Service, ServicePort};

use super::{valid_port, Cidr, MAX_SERVICE_PORTS};
use crate::skip::SkipReason;

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (the API's
/// default) and the largest value the API accepts.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

pub(super) struct ServiceInfo<'a> {
    pub ports: &'a [ServicePort],
    pub cluster_ips: Vec<Ipv4Addr>,
    /// VIP-mode LoadBalancer ingress addresses, IPv4, each once.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.externalIPs`, IPv4, each once.
    pub external_ips: Vec<Ipv4Addr>,
    /// kube-proxy's `ExternalPolicyLocal`: `externalTrafficPolicy: Local` on
    /// a Service reachable from outside.
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    pub session_affinity: Option<u32>,
    pub health_check_node_port: Option<u16>,
    /// `loadBalancerSourceRanges`, when given: the only clients the
    /// LoadBalancer addresses admit.
    pub source_ranges: Option<Vec<Cidr>>,
    service_type: ServiceType,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

impl<'a> ServiceInfo<'a> {
    /// The Service, or why none of it can be served. Parts that cannot be
    /// served (one external address, the health check port) are left out and
    /// their reasons added to `partly`.
    pub fn parse(svc: &'a Service, partly: &mut Vec<SkipReason>) -> Result<Self, SkipReason> {
        let spec = svc.spec.as_ref().ok_or(SkipReason::MissingSpec)?;
        let cluster_ips = cluster_ipv4s(spec.cluster_ips.as_deref(), spec.cluster_ip.as_deref())?;
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ports.len() > MAX_SERVICE_PORTS {
            return Err(SkipReason::TooManyPorts);
        }
        // The API defaults an empty type to ClusterIP; ExternalName never
        // gets here.
        let service_type = match spec.type_.as_deref() {
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            _ => ServiceType::ClusterIp,
        };
        let external_local = policy_is_local(spec.external_traffic_policy.as_deref())?;
        let internal_policy_local = policy_is_local(spec.internal_traffic_policy.as_deref())?;
        let session_affinity = session_affinity(svc)?;

        let raw_external_ips = spec.external_ips.as_deref().unwrap_or_default();
        // k8s.io/kubernetes/pkg/api/v1/service: ExternallyAccessible.
        let externally_accessible = match service_type {
            ServiceType::NodePort | ServiceType::LoadBalancer => true,
            ServiceType::ClusterIp => !raw_external_ips.is_empty(),
        };
        let external_policy_local = externally_accessible && external_local;

        let mut external_ips = Vec::new();
        for ip in raw_external_ips {
            match ipv4(ip) {
                Ok(Some(ip)) if !usable_frontend(ip) => partly.push(SkipReason::UnusableAddress),
                Ok(Some(ip)) if !external_ips.contains(&ip) => external_ips.push(ip),
                Ok(_) => {}
                Err(()) => partly.push(SkipReason::InvalidExternalIp),
            }
        }

        let mut load_balancer_ips = Vec::new();
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_deref())
            .unwrap_or_default();
        for ing in ingress {
            let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue; // hostname only: the load balancer proxies
            };
            // kube-proxy's IsVIPMode: unset or "VIP". A "Proxy" load balancer
            // rewrites the destination itself; kube-proxy leaves it alone.
            if !matches!(ing.ip_mode.as_deref(), None | Some("VIP")) {
                continue;
            }
            match ipv4(ip) {
                Ok(Some(ip)) if !usable_frontend(ip) => partly.push(SkipReason::UnusableAddress),
                Ok(Some(ip)) if !load_balancer_ips.contains(&ip) => load_balancer_ips.push(ip),
                Ok(_) => {}
                Err(()) => partly.push(SkipReason::InvalidLoadBalancerIp),
            }
        }

        // kube-proxy's NeedsHealthCheck: LoadBalancer with the Local policy.
        let mut health_check_node_port = None;
        if service_type == ServiceType::LoadBalancer && external_policy_local {
            match spec.health_check_node_port {
                None | Some(0) => partly.push(SkipReason::MissingHealthCheckNodePort),
                Some(port) => match valid_port(port) {
                    Some(port) => health_check_node_port = Some(port),
                    None => partly.push(SkipReason::HealthCheckNodePortOutOfRange),
                },
            }
        }

        let source_ranges = source_ranges(spec.load_balancer_source_ranges.as_deref(), partly);

        Ok(ServiceInfo {
            ports,
            source_ranges,
            cluster_ips,
            load_balancer_ips,
            external_ips,
            external_policy_local,
            internal_policy_local,
            session_affinity,
            health_check_node_port,
            service_type,
        })
    }

    /// The port's `nodePort`, for NodePort and LoadBalancer Services. A
    /// LoadBalancer may have none (`allocateLoadBalancerNodePorts: false`);
    /// a NodePort Service without one gets it from the API server's
    /// allocator, which a manifest directory does not have.
    pub fn node_port(&self, sp: &ServicePort) -> Result<Option<u16>, SkipReason> {
        if self.service_type == ServiceType::ClusterIp {
            return Ok(None);
        }
        match sp.node_port {
            None | Some(0) if self.service_type == ServiceType::NodePort => Err(SkipReason::MissingNodePort),
            None | Some(0) => Ok(None),
            Some(port) => valid_port(port).map(Some).ok_or(SkipReason::NodePortOutOfRange),
        }
    }
}

/// `Local` or `Cluster`; unset means Cluster. kube-proxy reads anything but
/// `Local` as Cluster; the API accepts only the two, so anything else is a
/// typo that would otherwise silently open a Local Service to every node.
fn policy_is_local(policy: Option<&str>) -> Result<bool, SkipReason> {
    match policy {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(_) => Err(SkipReason::InvalidTrafficPolicy),
    }
}

fn session_affinity(svc: &Service) -> Result<Option<u32>, SkipReason> {
    let spec = svc.spec.as_ref().ok_or(SkipReason::MissingSpec)?;
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT_S)),
                Some(t) => u32::try_from(t)
                    .ok()
                    .filter(|t| (1..=MAX_AFFINITY_TIMEOUT_S).contains(t))
                    .map(Some)
                    .ok_or(SkipReason::AffinityTimeoutOutOfRange),
            }
        }
        Some(_) => Err(SkipReason::UnsupportedSessionAffinity),
    }
}

/// Whether clients can reach a Service at `ip`: not the unspecified or
/// broadcast address, a multicast group or loopback (a Service there would
/// answer the node's own loopback traffic, or traffic no router sends).
pub fn usable_frontend(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

/// `Ok(None)` for an IPv6 address: the other family, not an error.
fn ipv4(text: &str) -> Result<Option<Ipv4Addr>, ()> {
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(Some(ip)),
        Ok(IpAddr::V6(_)) => Ok(None),
        Err(_) => Err(()),
    }
}

/// The IPv4 cluster IPs; `clusterIPs` wins over the older `clusterIP`.
/// IPv6 entries belong to the other family and are not an error.
fn cluster_ipv4s(cluster_ips: Option<&[String]>, cluster_ip: Option<&str>) -> Result<Vec<Ipv4Addr>, SkipReason> {
    let listed: Vec<&str> = match cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => cluster_ip.into_iter().collect(),
    };
    let listed: Vec<&str> = listed.into_iter().filter(|s| !s.is_empty()).collect();
    if listed.is_empty() {
        return Err(SkipReason::MissingClusterIp);
    }
    let mut v4 = Vec::new();
    for ip in listed {
        match ipv4(ip) {
            Ok(Some(ip)) if !usable_frontend(ip) => return Err(SkipReason::UnusableAddress),
            Ok(Some(ip)) => v4.push(ip),
            Ok(None) => {}
            Err(()) => return Err(SkipReason::InvalidClusterIp),
        }
    }
    Ok(v4)
}

/// Parses `loadBalancerSourceRanges` (kube-proxy trims spaces around each
/// entry). An invalid entry is reported and admits no one; it never widens
/// what the others admit, so a Service whose ranges are all invalid is
/// reachable from nowhere rather than from everywhere.
fn source_ranges(raw: Option<&[String]>, partly: &mut Vec<SkipReason>) -> Option<Vec<Cidr>> {
    let raw = raw.filter(|r| !r.is_empty())?;
    let mut ranges = Vec::new();
    for entry in raw {
        match entry.trim().parse::<Cidr>() {
            Ok(cidr) if !ranges.contains(&cidr) => ranges.push(cidr),
            Ok(_) => {}
            Err(_) => partly.push(SkipReason::InvalidSourceRange),
        }
    }
    Some(ranges)
}
