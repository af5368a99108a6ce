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
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// `namespace/name`, with `:port` when only one port was skipped.
    pub object: String,
    pub reason: SkipReason,
}

impl Skipped {
    pub fn new(namespace: &str, name: &str, reason: SkipReason) -> Self {
        Skipped {
            object: format!("{namespace}/{name}"),
            reason,
        }
    }

    pub fn port(namespace: &str, name: &str, port: &str, reason: SkipReason) -> Self {
        let object = if port.is_empty() {
            format!("{namespace}/{name}")
        } else {
            format!("{namespace}/{name}:{port}")
        };
        Skipped { object, reason }
    }
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.object, self.reason.label())
    }
}
