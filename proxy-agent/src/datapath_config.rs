//! The settings the datapath reads from its config map: the SNAT address and
//! port range, the service ranges, and which sockets the socket hooks
//! translate.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use proxy_common::{
    config::{config_flags, MAX_SERVICE_CIDRS, SNAT_PORT_MAX, SNAT_PORT_MIN},
    Cidr4, DatapathConfig,
};

use crate::datapath::PinnedMaps;
use crate::model::{Cidr, Config};

/// The source ports SNATed flows get (`--snat-port-range`), inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange { min: SNAT_PORT_MIN, max: SNAT_PORT_MAX }
    }
}

impl PortRange {
    pub fn overlaps(&self, other: PortRange) -> bool {
        other.min <= self.max && other.max >= self.min
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl FromStr for PortRange {
    type Err = String;

    /// `LOW-HIGH`. Ports below 1024 are refused: they belong to privileged
    /// local services that a SNATed flow would shadow.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (low, high) = s.split_once('-').ok_or_else(|| format!("{s:?} is not LOW-HIGH"))?;
        let port = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p:?}: {e}"));
        let range = PortRange { min: port(low)?, max: port(high)? };
        if range.min < 1024 || range.min > range.max {
            return Err(format!("{s:?}: want 1024 <= LOW <= HIGH"));
        }
        Ok(range)
    }
}

/// What the datapath serves beyond the Services themselves: which sockets
/// the socket hooks translate (see `DatapathConfig::socket_lb_serves`), and
/// whether ClusterIPs answer traffic from outside the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Switches {
    /// The node's network namespace (the agent's own); 0 if unknown.
    pub host_netns_cookie: u64,
    /// `--socket-lb-host-namespace-only`.
    pub socket_lb_host_namespace_only: bool,
    /// `--external-cluster-ip`.
    pub external_cluster_ip: bool,
}

impl Switches {
    fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.socket_lb_host_namespace_only {
            flags |= config_flags::SOCKET_LB_HOST_ONLY;
        }
        if self.external_cluster_ip {
            flags |= config_flags::EXTERNAL_CLUSTER_IP;
        }
        flags
    }
}

/// What the config map should hold for this node. The SNAT address is the
/// node's first address (NodePorts SNAT to the address they were reached
/// on; this one is for LoadBalancer and external IPs). Ranges beyond the
/// map's room are left out and reported.
pub fn datapath_config(config: &Config, service_cidrs: &[Cidr], snat_ports: PortRange, switches: Switches) -> DatapathConfig {
    let mut out = DatapathConfig {
        snat_addr: config
            .node_ips
            .iter()
            .find(|ip| !ip.is_loopback())
            .map(|ip| u32::from_ne_bytes(ip.octets()))
            .unwrap_or(0),
        snat_port_min: snat_ports.min,
        snat_port_max: snat_ports.max,
        host_netns_cookie: switches.host_netns_cookie,
        flags: switches.flags(),
        ..DatapathConfig::default()
    };
    for (slot, cidr) in out.service_cidrs.iter_mut().zip(service_cidrs) {
        *slot = cidr4(cidr);
    }
    out
}

fn cidr4(cidr: &Cidr) -> Cidr4 {
    let mask = u32::MAX.checked_shl(32 - u32::from(cidr.prefix_len())).unwrap_or(0);
    Cidr4 {
        addr: u32::from_ne_bytes(cidr.network().octets()),
        mask: u32::from_ne_bytes(Ipv4Addr::from(mask).octets()),
    }
}

/// Writes the config map when it differs from what was last written there
/// (`written`; read from the map the first time, so a restarted agent
/// rewrites nothing).
pub fn write(
    maps: &mut PinnedMaps,
    config: &Config,
    service_cidrs: &[Cidr],
    snat_ports: PortRange,
    switches: Switches,
    written: &mut Option<DatapathConfig>,
) {
    let wanted = datapath_config(config, service_cidrs, snat_ports, switches);
    if written.is_none() {
        *written = maps.config().ok();
    }
    if *written == Some(wanted) {
        return;
    }
    match maps.set_config(&wanted) {
        Ok(()) => {
            *written = Some(wanted);
            tracing::info!(
                snat_addr = %Ipv4Addr::from(wanted.snat_addr.to_ne_bytes()),
                snat_ports = format!("{}-{}", wanted.snat_port_min, wanted.snat_port_max),
                service_cidrs = ?service_cidrs,
                socket_lb_host_namespace_only = switches.socket_lb_host_namespace_only,
                external_cluster_ip = switches.external_cluster_ip,
                "datapath config written"
            )
        }
        Err(error) => tracing::error!(%error, "writing the datapath config failed"),
    }
}

/// Settings checks worth a warning, once at start-up: service ranges beyond
/// the map's room, and a SNAT range that meets the NodePort range.
pub fn warn_about(service_cidrs: &[Cidr], snat_ports: PortRange) {
    if service_cidrs.len() > MAX_SERVICE_CIDRS {
        tracing::warn!(given = service_cidrs.len(), used = MAX_SERVICE_CIDRS, "too many --service-cidr ranges; the rest are ignored");
    }
    if snat_ports.overlaps(crate::port_protection::NODE_PORTS) {
        tracing::warn!(snat = %snat_ports, "the SNAT port range overlaps the NodePort range 30000-32767; a SNATed flow could shadow a NodePort");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snat_address_is_the_first_non_loopback_node_address() {
        let config = Config {
            node_ips: vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 100, 0, 11), Ipv4Addr::new(10, 1, 0, 1)],
            ..Config::default()
        };
        let cidrs: Vec<Cidr> = vec!["10.96.0.0/12".parse().unwrap()];
        let out = datapath_config(&config, &cidrs, PortRange::default(), Switches::default());
        assert_eq!(out.snat_addr, u32::from_ne_bytes([10, 100, 0, 11]));
        assert!(out.in_service_range(u32::from_ne_bytes([10, 96, 0, 10])));
        assert!(out.in_service_range(u32::from_ne_bytes([10, 111, 1, 1])));
        assert!(!out.in_service_range(u32::from_ne_bytes([10, 112, 0, 1])));
        assert_eq!((out.snat_port_min, out.snat_port_max), (SNAT_PORT_MIN, SNAT_PORT_MAX));
    }

    #[test]
    fn no_node_address_means_no_snat() {
        assert_eq!(datapath_config(&Config::default(), &[], PortRange::default(), Switches::default()).snat_addr, 0);
    }

    #[test]
    fn snat_port_range_flag() {
        let narrow: PortRange = "61000-61499".parse().unwrap();
        assert_eq!(narrow, PortRange { min: 61_000, max: 61_499 });
        let out = datapath_config(&Config::default(), &[], narrow, Switches::default());
        assert_eq!((out.snat_port_min, out.snat_port_max), (61_000, 61_499));
        assert_eq!(PortRange::default().to_string(), "61000-65535");
        for bad in ["61000", "65535-61000", "80-1000", "61000-70000", "a-b", ""] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?} accepted");
        }
        assert!(narrow.overlaps(PortRange { min: 32_768, max: 61_000 }));
        assert!(!narrow.overlaps(PortRange { min: 32_768, max: 60_999 }));
    }
}
