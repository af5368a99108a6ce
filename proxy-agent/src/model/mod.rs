//! The dataplane model: a pure function of Services, EndpointSlices and this
//! node's configuration. Every kube-proxy semantic is decided here, so it is
//! tested from real Kubernetes objects without a kernel.
//!
//! - [`service`]: what a Service asks for (addresses, policies, affinity).
//! - [`endpoints`]: the endpoints its EndpointSlices list, once each.
//! - [`topology`]: which of them each kind of traffic may use on this node
//!   (kube-proxy's `CategorizeEndpoints`).
//! - [`node`]: this node's identity and which of its addresses serve NodePorts.

mod endpoints;
mod live;
mod node;
#[cfg(test)]
mod reference;
mod service;
mod slice;
mod topology;

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Service, ServicePort};

use crate::skip::{SkipReason, Skipped};

pub use node::node_config_from;
pub use endpoints::owner as slice_owner;
pub use live::{LiveModel, ServiceName, ServiceObjects};
#[cfg(test)]
pub use reference::build;
pub use node::{node_port_ips, Cidr};
pub use slice::Slice;

pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The Node label that names its zone, as topology hints name it.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// A Service with more ports than this is left out whole. The API sets no
/// limit, but an EndpointSlice holds at most 100 ports, and a list this long
/// is a generated mistake that would otherwise multiply into frontends.
pub const MAX_SERVICE_PORTS: usize = 1000;

/// This node and the agent's options. `Config::default()` is a node that
/// knows nothing about itself: no endpoint is local, topology hints never
/// match, and NodePorts listen nowhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Services labelled `service-proxy-name` with this value are ours; any
    /// other value means another proxy owns them.
    pub proxy_name: Option<String>,
    /// This node's name, as endpoints' `nodeName` and `hints.forNodes` spell
    /// it. An endpoint is local when its `nodeName` equals this.
    pub node_name: Option<String>,
    /// The Node's `topology.kubernetes.io/zone` label.
    pub node_zone: Option<String>,
    /// The node's own addresses (its InternalIP and ExternalIP addresses).
    pub node_ips: Vec<Ipv4Addr>,
    /// kube-proxy's `--nodeport-addresses`: NodePorts listen on the node
    /// addresses inside one of these. Empty means every address in
    /// `node_ips`. Loopback is never used unless a CIDR narrower than
    /// `0.0.0.0/0` contains it (kube-proxy's route_localnet exposure,
    /// CVE-2020-8558, is not repeated).
    pub nodeport_addresses: Vec<Cidr>,
    /// `--external-ip-cidrs`: externalIPs are served only inside one of
    /// these. Empty: any (kube-proxy's behaviour, and the CVE-2020-8554
    /// exposure: whoever may create a Service may claim any address).
    pub external_ip_cidrs: Vec<Cidr>,
    /// Ports of the node's own servers (the agent's `/healthz` and
    /// `/metrics`): a NodePort there would answer for them from outside,
    /// with a pod. Such NodePorts are left out.
    pub reserved_node_ports: Vec<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Kubernetes' protocol field; unset means TCP.
    fn parse(field: Option<&str>) -> Result<Self, SkipReason> {
        match field.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            _ => Err(SkipReason::UnsupportedProtocol),
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proxy_common::IPPROTO_TCP,
            Protocol::Udp => proxy_common::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// An entry of `spec.clusterIPs` and `spec.ports[].port`.
    ClusterIp,
    /// One of this node's addresses and `spec.ports[].nodePort`.
    NodePort,
    /// A `status.loadBalancer.ingress[].ip` and `spec.ports[].port`.
    LoadBalancer,
    /// An entry of `spec.externalIPs` and `spec.ports[].port`.
    ExternalIp,
}

impl FrontendKind {
    /// Traffic from outside the cluster, subject to `externalTrafficPolicy`.
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }

    /// Frontends of kinds in the same address space cannot share an
    /// address, port and protocol; the datapath looks them up alike.
    fn address_space(self) -> u8 {
        match self {
            FrontendKind::ClusterIp => 0,
            FrontendKind::NodePort => 1,
            FrontendKind::LoadBalancer | FrontendKind::ExternalIp => 2,
        }
    }
}

/// An address, port and protocol that clients dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
    pub kind: FrontendKind,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)?;
        match self.kind {
            FrontendKind::ClusterIp => Ok(()),
            FrontendKind::NodePort => f.write_str(" (NodePort)"),
            FrontendKind::LoadBalancer => f.write_str(" (LoadBalancer)"),
            FrontendKind::ExternalIp => f.write_str(" (ExternalIP)"),
        }
    }
}

/// A backend address and what the agent knows of it. A frontend lists each
/// address and port once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Its `nodeName` is this node.
    pub local: bool,
    /// Not ready but serving and terminating: in the list only through the
    /// terminating fallback.
    pub terminating: bool,
}

/// Which Service port a frontend belongs to, for logs and inspection.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendEntry {
    pub service: ServicePortName,
    /// The endpoints this frontend may use on this node, after traffic
    /// policy, topology and the terminating fallback; sorted, each address
    /// and port once. Empty: refuse (or drop, see `no_local_endpoints`).
    pub endpoints: Vec<Endpoint>,
    /// The Service's `externalTrafficPolicy` is Local and it is reachable
    /// from outside (kube-proxy's `ExternalPolicyLocal`): external frontends
    /// use local endpoints only and keep the client's source address.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`: ClusterIP frontends use local
    /// endpoints only.
    pub internal_policy_local: bool,
    /// `sessionAffinity: ClientIP`: the timeout in seconds (1..=86400).
    pub session_affinity: Option<u32>,
    /// The Service's `healthCheckNodePort`, set for a LoadBalancer Service
    /// with `externalTrafficPolicy: Local` (kube-proxy's `NeedsHealthCheck`).
    pub health_check_node_port: Option<u16>,
    /// Ready endpoints of the Service on this node, counted as kube-proxy's
    /// health check server counts them: distinct addresses over all of the
    /// Service's ports, so the same for every frontend of the Service.
    pub local_endpoint_count: u32,
    /// `endpoints` is empty only because a Local traffic policy leaves none
    /// on this node, while the Service has usable endpoints elsewhere:
    /// kube-proxy drops such traffic instead of refusing it.
    pub no_local_endpoints: bool,
    /// LoadBalancer frontends of a Service with `loadBalancerSourceRanges`:
    /// the client networks admitted (empty: none).
    pub source_ranges: Option<Vec<Cidr>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub frontends: BTreeMap<Frontend, FrontendEntry>,
}


/// What one Service contributes to the model, before frontends claimed by
/// two Services are settled (see [`Claim`]). A pure function of the Service,
/// its EndpointSlices and this node, so it can be recomputed for one Service
/// alone when only its objects changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFragment {
    /// In the order the Service asks for them: by port, then ClusterIPs,
    /// NodePorts, LoadBalancer IPs, external IPs. An earlier one wins a
    /// frontend that the Service lists twice.
    pub frontends: Vec<(Frontend, FrontendEntry)>,
    pub skipped: Vec<Skipped>,
    pub age: Age,
}

impl ServiceFragment {
    /// Asks for nothing and reports nothing: the Service may as well not
    /// exist.
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.skipped.is_empty()
    }
}

/// How old a Service is, which decides between two Services that ask for
/// one frontend: the older one (by creation time, then uid) was there
/// first and keeps it, whatever the names. Objects without a creation time
/// (a manifest directory's) come after dated ones, in name order.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Age {
    undated: bool,
    created_ns: i128,
    uid: String,
}

impl Age {
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Age {
        match &meta.creation_timestamp {
            Some(created) => Age {
                undated: false,
                created_ns: created.0.as_nanosecond(),
                uid: meta.uid.clone().unwrap_or_default(),
            },
            // The uid alone says nothing of age: the name decides.
            None => Age {
                undated: true,
                ..Age::default()
            },
        }
    }
}

/// The fragment of `svc`; `slices` are the EndpointSlices labelled with its
/// name, `node_port_ips` what [`node_port_ips`] says for `config`.
pub fn service_fragment(
    svc: &Service,
    slices: &[&Slice],
    config: &Config,
    node_port_ips: &[Ipv4Addr],
) -> ServiceFragment {
    let mut fragment = ServiceFragment {
        age: Age::of(&svc.metadata),
        ..Default::default()
    };
    let (namespace, name) = object_name(&svc.metadata);
    if !is_proxied(svc, config) {
        return fragment;
    }
    let mut partly = Vec::new();
    let mut info = match service::ServiceInfo::parse(svc, &mut partly) {
        Ok(info) => info,
        Err(reason) => {
            fragment.skipped.push(Skipped::new(&namespace, &name, reason));
            return fragment;
        }
    };
    if !config.external_ip_cidrs.is_empty() {
        let before = info.external_ips.len();
        info.external_ips.retain(|ip| config.external_ip_cidrs.iter().any(|c| c.contains(*ip)));
        partly.extend(std::iter::repeat_n(SkipReason::ExternalIpNotAllowed, before - info.external_ips.len()));
    }
    for reason in partly {
        fragment.skipped.push(Skipped::new(&namespace, &name, reason));
    }
    let local_endpoint_count = endpoints::local_ready_count(slices, config);
    for sp in info.ports {
        let port_name = sp.name.clone().unwrap_or_default();
        let skip_port = |reason| Skipped::port(&namespace, &name, &port_name, reason);
        let (proto, port) = match service_port(sp) {
            Ok(v) => v,
            Err(reason) => {
                fragment.skipped.push(skip_port(reason));
                continue;
            }
        };
        let node_port = match info.node_port(sp) {
            Ok(Some(p)) if config.reserved_node_ports.contains(&p) => Err(SkipReason::NodePortReserved),
            other => other,
        }
        .unwrap_or_else(|reason| {
            fragment.skipped.push(skip_port(reason));
            None
        });
        let candidates = endpoints::collect(slices, &port_name, proto, config, &mut |reason| {
            fragment.skipped.push(skip_port(reason))
        });
        let chosen = topology::categorize(&candidates, config);

        let entry = |endpoints: Vec<Endpoint>, policy_local: bool| FrontendEntry {
            service: ServicePortName {
                namespace: namespace.clone(),
                name: name.clone(),
                port: port_name.clone(),
            },
            no_local_endpoints: policy_local && endpoints.is_empty() && chosen.has_any,
            endpoints,
            external_policy_local: info.external_policy_local,
            internal_policy_local: info.internal_policy_local,
            session_affinity: info.session_affinity,
            health_check_node_port: info.health_check_node_port,
            local_endpoint_count,
            source_ranges: None,
        };
        let internal = if info.internal_policy_local {
            entry(chosen.local.clone(), true)
        } else {
            entry(chosen.cluster.clone(), false)
        };
        let external = if info.external_policy_local {
            entry(chosen.local, true)
        } else {
            entry(chosen.cluster, false)
        };

        let frontends = &mut fragment.frontends;
        let mut add = |ip: Ipv4Addr, port: u16, kind: FrontendKind, entry: &FrontendEntry| {
            frontends.push((Frontend { ip, port, proto, kind }, entry.clone()))
        };
        for ip in &info.cluster_ips {
            add(*ip, port, FrontendKind::ClusterIp, &internal);
        }
        if let Some(node_port) = node_port {
            for ip in node_port_ips {
                add(*ip, node_port, FrontendKind::NodePort, &external);
            }
        }
        let load_balancer = FrontendEntry {
            source_ranges: info.source_ranges.clone(),
            ..external.clone()
        };
        for ip in &info.load_balancer_ips {
            add(*ip, port, FrontendKind::LoadBalancer, &load_balancer);
        }
        for ip in &info.external_ips {
            add(*ip, port, FrontendKind::ExternalIp, &external);
        }
    }
    fragment
}

/// The address, port and protocol a frontend holds within its address
/// space: two frontends with one claim cannot both be served.
pub type Claim = (Ipv4Addr, u16, Protocol, u8);

pub fn claim(frontend: &Frontend) -> Claim {
    (frontend.ip, frontend.port, frontend.proto, frontend.kind.address_space())
}

/// The claims of the same address, port and protocol in the address spaces
/// whose holders an externalIP may not shadow (ClusterIPs and NodePorts);
/// in its own space, LoadBalancer IPs come before it by [`Claimant`] order.
pub fn owned_claims(c: &Claim) -> [Claim; 2] {
    [(c.0, c.1, c.2, FrontendKind::ClusterIp.address_space()), (c.0, c.1, c.2, FrontendKind::NodePort.address_space())]
}

/// The claim of the external address space with the same address, port and
/// protocol: the one an owned claim's changes may settle differently.
pub fn external_claim(c: &Claim) -> Claim {
    (c.0, c.1, c.2, FrontendKind::ExternalIp.address_space())
}

/// Who asks for a claim, in the order that decides who gets it: addresses a
/// Service owns (ClusterIPs, NodePorts, LoadBalancer IPs, which the API
/// server or a load balancer gave it) before externalIPs (which anyone who
/// may create a Service may write); then the older Service; then the
/// Service's name (for objects of the same age); then the frontend's place
/// in the Service's fragment.
pub type Claimant = (u8, Age, (String, String), usize);

pub fn claimant(frontend: &Frontend, age: &Age, namespace: &str, name: &str, index: usize) -> Claimant {
    let rank = u8::from(frontend.kind == FrontendKind::ExternalIp);
    (rank, age.clone(), (namespace.to_string(), name.to_string()), index)
}

/// Whether a frontend that lost its claim to `holder` is reported. A Service
/// port that lists the same address as LoadBalancer ingress and as external
/// IP gets it once, silently; anything else is a conflict.
pub fn is_duplicate(holder: (&Frontend, &FrontendEntry), loser: (&Frontend, &FrontendEntry)) -> bool {
    !(holder.1.service == loser.1.service && holder.0.kind != loser.0.kind)
}

/// What a frontend that lost its claim to `holder` is reported as: an
/// externalIP that met an address its holder owns, or a duplicate.
pub fn conflict_skip(holder: (&Frontend, &FrontendEntry), loser: (&Frontend, &FrontendEntry)) -> Skipped {
    let s = &loser.1.service;
    let reason = if loser.0.kind == FrontendKind::ExternalIp && holder.0.kind != FrontendKind::ExternalIp {
        SkipReason::ExternalIpConflict
    } else {
        SkipReason::DuplicateFrontend
    };
    Skipped::port(&s.namespace, &s.name, &s.port, reason).held_by(&holder.1.service)
}

/// What an externalIP that would shadow `owner`'s address is reported as.
pub fn shadow_skip(entry: &FrontendEntry, owner: &FrontendEntry) -> Skipped {
    let s = &entry.service;
    Skipped::port(&s.namespace, &s.name, &s.port, SkipReason::ExternalIpConflict).held_by(&owner.service)
}

/// Whether `frontend`, an externalIP of the Service `service`, would shadow
/// an address another Service owns: `owner` is the holder of one of its
/// [`owned_claims`].
pub fn shadows(frontend: &Frontend, service: &ServicePortName, owner: &FrontendEntry) -> bool {
    frontend.kind == FrontendKind::ExternalIp && (owner.service.namespace != service.namespace || owner.service.name != service.name)
}

pub fn object_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// kube-proxy's filters: headless and ExternalName Services have no virtual
/// IP, and the two labels hand a Service to another proxy or none.
fn is_proxied(svc: &Service, config: &Config) -> bool {
    let labels = svc.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return false;
    }
    if let Some(owner) = labels.and_then(|l| l.get(LABEL_SERVICE_PROXY_NAME)) {
        if config.proxy_name.as_deref() != Some(owner.as_str()) {
            return false;
        }
    }
    let Some(spec) = &svc.spec else { return true };
    if spec.type_.as_deref() == Some("ExternalName") {
        return false;
    }
    !matches!(spec.cluster_ip.as_deref(), Some("None"))
}

fn service_port(sp: &ServicePort) -> Result<(Protocol, u16), SkipReason> {
    let proto = Protocol::parse(sp.protocol.as_deref())?;
    let port = valid_port(sp.port).ok_or(SkipReason::PortOutOfRange)?;
    Ok((proto, port))
}

fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}
