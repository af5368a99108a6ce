//! The dataplane model: a pure function of Services, EndpointSlices and this
//! node's configuration. Every kube-proxy semantic is decided here, so it is
//! tested from real Kubernetes objects without a kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::skip::{SkipReason, Skipped};

pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Services labelled `service-proxy-name` with this value are ours; any
    /// other value means another proxy owns them.
    pub proxy_name: Option<String>,
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
    ClusterIp,
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
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// Which Service port a frontend belongs to, for logs and inspection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendEntry {
    pub service: ServicePortName,
    /// Usable endpoints, sorted and without duplicates.
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub frontends: BTreeMap<Frontend, FrontendEntry>,
}

/// Builds the model. Objects that cannot be served are reported in the second
/// value and left out; everything else is still served.
pub fn build(services: &[Service], slices: &[EndpointSlice], config: &Config) -> (Model, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let slices_by_service = index_slices(slices);
    let mut model = Model::default();

    // Sorted so that, when two Services claim the same frontend, the same one
    // wins on every node and every restart.
    let mut services: Vec<&Service> = services.iter().collect();
    services.sort_by(|a, b| object_name(&a.metadata).cmp(&object_name(&b.metadata)));

    for svc in services {
        let (namespace, name) = object_name(&svc.metadata);
        if !is_proxied(svc, config) {
            continue;
        }
        let Some(spec) = &svc.spec else {
            skipped.push(Skipped::new(&namespace, &name, SkipReason::MissingSpec));
            continue;
        };
        let cluster_ips = match cluster_ipv4s(spec.cluster_ips.as_deref(), spec.cluster_ip.as_deref()) {
            Ok(ips) => ips,
            Err(reason) => {
                skipped.push(Skipped::new(&namespace, &name, reason));
                continue;
            }
        };
        let svc_slices = slices_by_service
            .get(&(namespace.as_str(), name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for sp in spec.ports.iter().flatten() {
            let port_name = sp.name.clone().unwrap_or_default();
            let (proto, port) = match service_port(sp) {
                Ok(v) => v,
                Err(reason) => {
                    skipped.push(Skipped::port(&namespace, &name, &port_name, reason));
                    continue;
                }
            };
            let endpoints = usable_endpoints(svc_slices, &port_name, proto, &namespace, &name, &mut skipped);
            let service = ServicePortName {
                namespace: namespace.clone(),
                name: name.clone(),
                port: port_name,
            };
            for ip in &cluster_ips {
                let frontend = Frontend {
                    ip: *ip,
                    port,
                    proto,
                    kind: FrontendKind::ClusterIp,
                };
                if model.frontends.contains_key(&frontend) {
                    skipped.push(Skipped::port(&namespace, &name, &service.port, SkipReason::DuplicateFrontend));
                    continue;
                }
                model.frontends.insert(
                    frontend,
                    FrontendEntry {
                        service: service.clone(),
                        endpoints: endpoints.clone(),
                    },
                );
            }
        }
    }
    (model, skipped)
}

fn object_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
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
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => v4.push(ip),
            Ok(std::net::IpAddr::V6(_)) => {}
            Err(_) => return Err(SkipReason::InvalidClusterIp),
        }
    }
    Ok(v4)
}

fn service_port(sp: &ServicePort) -> Result<(Protocol, u16), SkipReason> {
    let proto = Protocol::parse(sp.protocol.as_deref())?;
    let port = valid_port(sp.port).ok_or(SkipReason::PortOutOfRange)?;
    Ok((proto, port))
}

fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

fn index_slices(slices: &[EndpointSlice]) -> HashMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(LABEL_SERVICE_NAME)) else {
            continue;
        };
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
        by_service.entry((namespace, service.as_str())).or_default().push(slice);
    }
    by_service
}

/// Ready endpoints of one Service port; when there are none, the serving and
/// terminating ones (kube-proxy's terminating fallback, KEP-1669). An address
/// listed in two slices, as during a slice hand-over, counts once.
fn usable_endpoints(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: Protocol,
    namespace: &str,
    service: &str,
    skipped: &mut Vec<Skipped>,
) -> Vec<Endpoint> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && Protocol::parse(p.protocol.as_deref()).ok() == Some(proto)
        });
        let Some(port) = port else { continue };
        let Some(port) = port.port.and_then(valid_port) else {
            skipped.push(Skipped::port(namespace, service, port_name, SkipReason::EndpointPortOutOfRange));
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            // Consumers use the first address only (EndpointSlice API).
            let Some(addr) = ep.addresses.first() else { continue };
            let Ok(ip) = addr.parse::<Ipv4Addr>() else {
                skipped.push(Skipped::port(namespace, service, port_name, SkipReason::InvalidEndpointAddress));
                continue;
            };
            // The API's defaults for unset conditions: ready and serving
            // true, terminating false.
            let cond = ep.conditions.as_ref();
            let is_ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(true);
            let is_terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let endpoint = Endpoint { ip, port };
            if is_ready {
                ready.insert(endpoint);
            } else if serving && is_terminating {
                terminating.insert(endpoint);
            }
        }
    }
    if ready.is_empty() {
        terminating.into_iter().collect()
    } else {
        ready.into_iter().collect()
    }
}
