//! Settings the agent hands the datapath through a one-entry array map.

use core::mem::size_of;

pub const CONFIG_MAP: &str = "CONFIG";

/// How many service ranges (`--service-cidr`) the datapath knows.
pub const MAX_SERVICE_CIDRS: usize = 4;

/// Source ports for SNATed external flows. Linux hands out ephemeral ports
/// from `ip_local_port_range`, 32768-60999 by default, and NodePorts live in
/// 30000-32767, so this range collides with neither; the agent warns when the
/// node's ephemeral range overlaps it.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Kubernetes' default `--service-node-port-range`.
pub const NODE_PORT_MIN: u16 = 30_000;
pub const NODE_PORT_MAX: u16 = 32_767;

/// Whether a SNATed flow may keep the client's source port `port` (host
/// byte order) as netfilter does, tuple permitting. Not a NodePort's: a
/// packet to the node at that port would be a reply to the flow first and
/// a NodePort's only after, so a backend using its serving socket as a
/// client of that NodePort (a DNS forwarder) would reach the external client
/// instead.
#[inline(always)]
pub const fn may_keep_client_port(port: u16) -> bool {
    port < NODE_PORT_MIN || port > NODE_PORT_MAX
}

/// An IPv4 network, address and mask both in network byte order. A zero mask
/// marks an unused entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cidr4 {
    pub addr: u32,
    pub mask: u32,
}

impl Cidr4 {
    #[inline(always)]
    pub const fn contains(&self, addr: u32) -> bool {
        self.mask != 0 && addr & self.mask == self.addr
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The node address external flows are SNATed to when the backend may be
    /// elsewhere (`externalTrafficPolicy: Cluster`), network byte order;
    /// 0 when the node has none, and such flows are not translated.
    pub snat_addr: u32,
    /// Inclusive range of SNAT source ports, host byte order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Service ranges: a packet from a pod to an address inside one that no
    /// frontend claims is refused, as kube-proxy rejects traffic to
    /// unallocated ClusterIPs.
    pub service_cidrs: [Cidr4; MAX_SERVICE_CIDRS],
    /// The node's own network namespace, as `bpf_get_netns_cookie` names it:
    /// the socket hooks tell host sockets from pods' by it. 0 until the
    /// agent has written it; then every socket counts as the host's.
    pub host_netns_cookie: u64,
    /// [`config_flags`] bits.
    pub flags: u32,
    pub _pad: u32,
}

/// Bits of [`DatapathConfig::flags`].
pub mod config_flags {
    /// The socket hooks translate host sockets only; pods are served per
    /// packet by the programs on their devices, so a service mesh sidecar
    /// or a sandboxed runtime sees the address the application dialled
    /// (Cilium's `socketLB.hostNamespaceOnly`).
    pub const SOCKET_LB_HOST_ONLY: u32 = 1 << 0;
    /// ClusterIPs are served to traffic routed to the node from outside the
    /// cluster too (kube-proxy does; Cilium only with
    /// `bpf-lb-external-clusterip`), SNATed to the node like a NodePort
    /// under `externalTrafficPolicy: Cluster`.
    pub const EXTERNAL_CLUSTER_IP: u32 = 1 << 1;
}

impl DatapathConfig {
    /// Whether a socket of network namespace `netns_cookie` is the node's
    /// own (every socket is, until the agent has said which namespace that
    /// is).
    #[inline(always)]
    pub fn is_host_netns(&self, netns_cookie: u64) -> bool {
        self.host_netns_cookie == 0 || netns_cookie == self.host_netns_cookie
    }

    /// Whether the socket hooks translate a socket of the network namespace
    /// `netns_cookie`, for a `connect` (`connect`) or a `sendto`. Host
    /// sockets always. A pod's connected UDP socket never: its datagrams go
    /// per packet through the pod's device, where conntrack moves the flow
    /// to a live backend when its endpoint leaves (a socket bound at connect
    /// time would keep talking to the removed one, and aborting it would
    /// need entering every pod's namespace). Other pod sockets unless
    /// [`config_flags::SOCKET_LB_HOST_ONLY`].
    #[inline(always)]
    pub fn socket_lb_serves(&self, netns_cookie: u64, connect: bool, udp: bool) -> bool {
        if self.is_host_netns(netns_cookie) {
            return true;
        }
        self.flags & config_flags::SOCKET_LB_HOST_ONLY == 0 && !(connect && udp)
    }

    #[inline(always)]
    pub fn in_service_range(&self, addr: u32) -> bool {
        let mut i = 0;
        while i < MAX_SERVICE_CIDRS {
            if self.service_cidrs[i].contains(addr) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// A candidate SNAT port (host byte order) spread over `min..=max` by
/// `random`, without the bias of a modulo.
#[inline(always)]
pub const fn snat_port(random: u32, min: u16, max: u16) -> u16 {
    if max <= min {
        return min;
    }
    let span = (max - min) as u32 + 1;
    min + ((random as u64 * span as u64) >> 32) as u16
}

const _: () = assert!(size_of::<Cidr4>() == 8);
const _: () = assert!(size_of::<DatapathConfig>() == 56);

#[cfg(test)]
mod tests {
    use super::*;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn client_ports_kept_outside_the_node_port_range() {
        assert!(may_keep_client_port(1023));
        assert!(may_keep_client_port(29_999));
        assert!(!may_keep_client_port(30_000));
        assert!(!may_keep_client_port(32_767));
        assert!(may_keep_client_port(32_768));
        assert!(may_keep_client_port(61_000));
    }

    #[test]
    fn service_range_membership() {
        let mut config = DatapathConfig::default();
        assert!(!config.in_service_range(be([10, 96, 0, 10])), "no range configured");
        config.service_cidrs[1] = Cidr4 {
            addr: be([10, 96, 0, 0]),
            mask: be([255, 240, 0, 0]),
        };
        assert!(config.in_service_range(be([10, 96, 0, 10])));
        assert!(config.in_service_range(be([10, 111, 255, 255])));
        assert!(!config.in_service_range(be([10, 112, 0, 1])));
        assert!(!config.in_service_range(be([0, 0, 0, 0])), "unused entries match nothing");
    }

    #[test]
    fn socket_lb_serves_host_sockets_and_pods_but_their_connected_udp() {
        let mut config = DatapathConfig::default();
        assert!(config.socket_lb_serves(7, true, true), "no cookie known yet: everything, as before");
        config.host_netns_cookie = 1;
        for (connect, udp) in [(true, true), (true, false), (false, true)] {
            assert!(config.socket_lb_serves(1, connect, udp), "host socket");
        }
        assert!(config.socket_lb_serves(7, true, false), "pod TCP connect");
        assert!(config.socket_lb_serves(7, false, true), "pod UDP sendto");
        assert!(!config.socket_lb_serves(7, true, true), "pod connected UDP goes per packet");
        config.flags |= config_flags::SOCKET_LB_HOST_ONLY;
        assert!(config.socket_lb_serves(1, true, true));
        for (connect, udp) in [(true, true), (true, false), (false, true)] {
            assert!(!config.socket_lb_serves(7, connect, udp), "host-only: no pod socket");
        }
    }

    #[test]
    fn snat_ports_stay_in_range_and_cover_it() {
        for random in [0, 1, u32::MAX / 2, u32::MAX] {
            let p = snat_port(random, SNAT_PORT_MIN, SNAT_PORT_MAX);
            assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&p));
        }
        assert_eq!(snat_port(0, 100, 103), 100);
        assert_eq!(snat_port(u32::MAX, 100, 103), 103);
        assert_eq!(snat_port((3 << 30) - 1, 100, 103), 102, "equal shares of the random space");
        assert_eq!(snat_port(3 << 30, 100, 103), 103);
        assert_eq!(snat_port(7, 5, 5), 5);
    }
}
