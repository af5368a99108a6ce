//! This node: its identity from the Node object, and the addresses its
//! NodePorts listen on (kube-proxy's `--nodeport-addresses`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Node;

use super::{Config, LABEL_TOPOLOGY_ZONE};

/// An IPv4 network such as `192.168.0.0/16`; host bits are cleared, as Go's
/// `net.ParseCIDR` (which kube-proxy uses) reports the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Cidr {
    /// `None` when `prefix_len` is over 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= 32).then(|| Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix_len)),
            prefix_len,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix_len) == u32::from(self.network)
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrError(String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an IPv4 CIDR (a.b.c.d/n): {:?}", self.0)
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || CidrError(text.to_string());
        let (addr, len) = text.trim().split_once('/').ok_or_else(error)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| error())?;
        // Digits only: u8's parser would take a leading '+'.
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error());
        }
        let len: u8 = len.parse().map_err(|_| error())?;
        Cidr::new(addr, len).ok_or_else(error)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// What the agent needs from its own Node object: the zone label
/// (`topology.kubernetes.io/zone`) and the node's InternalIP and ExternalIP
/// addresses, IPv4 only, in the order listed, each once.
pub fn node_config_from(node: &Node) -> (Option<String>, Vec<Ipv4Addr>) {
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
        .filter(|z| !z.is_empty())
        .cloned();
    let mut ips = Vec::new();
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    for address in addresses {
        if !matches!(address.type_.as_str(), "InternalIP" | "ExternalIP") {
            continue;
        }
        if let Ok(ip) = address.address.parse::<Ipv4Addr>() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    (zone, ips)
}

/// The addresses NodePorts listen on, sorted. With no `nodeport_addresses`
/// (or with `0.0.0.0/0` among them), all of the node's addresses except loopback; else
/// those inside one of the CIDRs. 127.0.0.1 is added only when a CIDR
/// narrower than /0 contains it, i.e. when it was asked for by name.
pub fn node_port_ips(config: &Config) -> Vec<Ipv4Addr> {
    let cidrs = &config.nodeport_addresses;
    let everywhere = cidrs.is_empty() || cidrs.iter().any(|c| c.prefix_len() == 0);
    let asked_for = |ip: Ipv4Addr| cidrs.iter().any(|c| c.prefix_len() > 0 && c.contains(ip));
    let mut ips: Vec<Ipv4Addr> = config
        .node_ips
        .iter()
        .copied()
        .chain([Ipv4Addr::LOCALHOST])
        .filter(|ip| {
            if ip.is_loopback() {
                asked_for(*ip)
            } else {
                everywhere || asked_for(*ip)
            }
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}
