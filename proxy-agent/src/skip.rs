//! Objects, or parts of them, that the agent could not serve, and why. Each
//! reason is a metric label, so the set is closed and the names are stable.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    MissingSpec,
    MissingClusterIp,
    InvalidClusterIp,
    PortOutOfRange,
    UnsupportedProtocol,
    DuplicateFrontend,
    EndpointPortOutOfRange,
    InvalidEndpointAddress,
    TooManyEndpoints,
    Unparsable,
    /// `nodePort` outside 1..=65535; the port's NodePort frontends are left out.
    NodePortOutOfRange,
    /// A NodePort Service's port has no `nodePort` (only the API server
    /// allocates one); that port gets no NodePort frontend.
    MissingNodePort,
    /// An `spec.externalIPs` entry is not an IP address; that address is left out.
    InvalidExternalIp,
    /// A `status.loadBalancer.ingress[].ip` is not an IP address; that address is left out.
    InvalidLoadBalancerIp,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` outside 1..=86400; the Service is left out.
    AffinityTimeoutOutOfRange,
    /// `sessionAffinity` neither `None` nor `ClientIP`; the Service is left out.
    UnsupportedSessionAffinity,
    /// A traffic policy neither `Cluster` nor `Local`; the Service is left out.
    InvalidTrafficPolicy,
    /// More than `model::MAX_SERVICE_PORTS` ports; the Service is left out.
    TooManyPorts,
    /// A LoadBalancer Service with `externalTrafficPolicy: Local` has no
    /// `healthCheckNodePort`; it is served, without a health check.
    MissingHealthCheckNodePort,
    /// `healthCheckNodePort` outside 1..=65535; served without a health check.
    HealthCheckNodePortOutOfRange,
    /// A `loadBalancerSourceRanges` entry is not an IPv4 CIDR; it admits no
    /// one (if no entry is valid, the LoadBalancer addresses admit no one).
    InvalidSourceRange,
    /// An externalIP equal to another Service's ClusterIP, NodePort or
    /// LoadBalancer IP (same port and protocol): left out, so no Service
    /// takes another's addresses by listing them as its externalIPs.
    ExternalIpConflict,
    /// An externalIP outside the operator's `--external-ip-cidrs`: left out.
    ExternalIpNotAllowed,
    /// A ClusterIP, LoadBalancer IP or externalIP no client can reach a
    /// Service at (unspecified, broadcast, multicast, loopback): that
    /// address is left out (a ClusterIP: the Service).
    UnusableAddress,
    /// An endpoint address traffic must never be sent to (unspecified,
    /// broadcast, multicast, loopback, link-local such as a cloud's
    /// metadata server 169.254.169.254): that endpoint is left out.
    UnusableEndpointAddress,
    /// A `nodePort` on which the node's own server listens (the agent's
    /// health or metrics port): that NodePort is left out.
    NodePortReserved,
}

impl SkipReason {
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::MissingSpec => "missing_spec",
            SkipReason::MissingClusterIp => "missing_cluster_ip",
            SkipReason::InvalidClusterIp => "invalid_cluster_ip",
            SkipReason::PortOutOfRange => "port_out_of_range",
            SkipReason::UnsupportedProtocol => "unsupported_protocol",
            SkipReason::DuplicateFrontend => "duplicate_frontend",
            SkipReason::EndpointPortOutOfRange => "endpoint_port_out_of_range",
            SkipReason::InvalidEndpointAddress => "invalid_endpoint_address",
            SkipReason::TooManyEndpoints => "too_many_endpoints",
            SkipReason::Unparsable => "unparsable",
            SkipReason::NodePortOutOfRange => "node_port_out_of_range",
            SkipReason::MissingNodePort => "missing_node_port",
            SkipReason::InvalidExternalIp => "invalid_external_ip",
            SkipReason::InvalidLoadBalancerIp => "invalid_load_balancer_ip",
            SkipReason::AffinityTimeoutOutOfRange => "affinity_timeout_out_of_range",
            SkipReason::UnsupportedSessionAffinity => "unsupported_session_affinity",
            SkipReason::InvalidTrafficPolicy => "invalid_traffic_policy",
            SkipReason::TooManyPorts => "too_many_ports",
            SkipReason::MissingHealthCheckNodePort => "missing_health_check_node_port",
            SkipReason::HealthCheckNodePortOutOfRange => "health_check_node_port_out_of_range",
            SkipReason::InvalidSourceRange => "invalid_source_range",
            SkipReason::ExternalIpConflict => "external_ip_conflict",
            SkipReason::ExternalIpNotAllowed => "external_ip_not_allowed",
            SkipReason::UnusableAddress => "unusable_address",
            SkipReason::UnusableEndpointAddress => "unusable_endpoint_address",
            SkipReason::NodePortReserved => "node_port_reserved",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// `namespace/name`, with `:port` when only one port was skipped.
    pub object: String,
    pub reason: SkipReason,
    /// For a frontend another Service holds: that Service (and port).
    pub held_by: Option<String>,
}

impl Skipped {
    pub fn new(namespace: &str, name: &str, reason: SkipReason) -> Self {
        Skipped {
            object: format!("{namespace}/{name}"),
            reason,
            held_by: None,
        }
    }

    pub fn port(namespace: &str, name: &str, port: &str, reason: SkipReason) -> Self {
        let object = if port.is_empty() {
            format!("{namespace}/{name}")
        } else {
            format!("{namespace}/{name}:{port}")
        };
        Skipped { object, reason, held_by: None }
    }

    /// The same, for a frontend that `holder` holds.
    pub fn held_by(mut self, holder: impl fmt::Display) -> Self {
        self.held_by = Some(holder.to_string());
        self
    }
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.held_by {
            Some(holder) => write!(f, "{} ({}, held by {holder})", self.object, self.reason.label()),
            None => write!(f, "{} ({})", self.object, self.reason.label()),
        }
    }
}
