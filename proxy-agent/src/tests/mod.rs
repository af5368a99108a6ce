//! Unit tests of the agent's pure logic (model, tables, diff, YAML directory
//! source), driven by Services and EndpointSlices as `kubectl get -o yaml`
//! prints them. The fixtures live in `proxy-agent/testdata`.

mod bad_frontends;
mod diff;
mod frontends;
mod hostile;
mod live;
mod model;
mod ownership;
mod policy;
mod tables;
mod topology;
mod yaml_dir;

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use proxy_common::{maps::scope, BackendSlotKey, ServiceKey};

use crate::model::{node_config_from, Config, Frontend, FrontendKind, Model, Protocol};
use crate::skip::{SkipReason, Skipped};
use crate::source::{yaml_dir::parse_documents, Snapshot};
use crate::tables::Tables;

/// `kubectl get svc,endpointslices -A -o yaml` of a small kind cluster:
/// kubernetes, kube-dns, web (two named ports) and redis (one unnamed port).
pub const CLUSTER: &str = include_str!("../../testdata/cluster.yaml");

/// `kubectl get nodes -o yaml` of kind-worker (eu-west-1a, 172.18.0.3 and
/// ExternalIP 203.0.113.10), kind-worker2 (eu-west-1b, 172.18.0.4) and
/// kind-worker3 (eu-west-1c, 172.18.0.5).
pub const NODES: &str = include_str!("../../testdata/nodes.yaml");

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// Parses fixture text. Fixtures are meant to parse, so a skip is a bug in
/// the fixture, not something to test.
pub fn load(text: &str) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let mut skipped = Vec::new();
    parse_documents(text, "fixture", &mut snapshot, &mut skipped);
    assert!(skipped.is_empty(), "fixture does not parse: {skipped:?}");
    snapshot
}

/// Several fixtures as one cluster.
pub fn load_all(texts: &[&str]) -> Snapshot {
    let mut all = Snapshot::default();
    for text in texts {
        let one = load(text);
        all.services.extend(one.services);
        all.slices.extend(one.slices);
    }
    all
}

pub fn build(snapshot: &Snapshot, config: &Config) -> (Model, Vec<Skipped>) {
    crate::model::build(&snapshot.services, &snapshot.slices, config)
}

/// Builds with the default config and insists nothing was skipped.
pub fn build_clean(snapshot: &Snapshot) -> Model {
    let (model, skipped) = build(snapshot, &Config::default());
    assert!(skipped.is_empty(), "unexpected skips: {skipped:?}");
    model
}

/// The Node objects of [`NODES`].
pub fn nodes() -> Vec<Node> {
    let list: serde_yaml::Value = serde_yaml::from_str(NODES).expect("nodes fixture");
    list["items"]
        .as_sequence()
        .expect("a List")
        .iter()
        .map(|item| serde_yaml::from_value(item.clone()).expect("a Node"))
        .collect()
}

/// The config the agent builds on `name`, from that Node object.
pub fn on_node(name: &str) -> Config {
    let node = nodes()
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no node {name}"));
    let (node_zone, node_ips) = node_config_from(&node);
    Config {
        node_name: Some(name.into()),
        node_zone,
        node_ips,
        ..Config::default()
    }
}

pub fn frontend_at(kind: FrontendKind, ip: &str, port: u16, proto: Protocol) -> Frontend {
    Frontend {
        ip: ip.parse().expect("test IPv4 address"),
        port,
        proto,
        kind,
    }
}

/// [`endpoints`] for a frontend of any kind.
pub fn endpoints_at(model: &Model, kind: FrontendKind, ip: &str, port: u16, proto: Protocol) -> Option<Vec<String>> {
    let entry = model.frontends.get(&frontend_at(kind, ip, port, proto))?;
    Some(entry.endpoints.iter().map(|e| format!("{}:{}", e.ip, e.port)).collect())
}

/// Every frontend of one Service (`namespace/name`), as `Frontend` prints.
pub fn frontends_of(model: &Model, service: &str) -> Vec<String> {
    model
        .frontends
        .iter()
        .filter(|(_, e)| format!("{}/{}", e.service.namespace, e.service.name) == service)
        .map(|(f, _)| f.to_string())
        .collect()
}

/// The key of a frontend in any scope, written out as [`key`] does.
pub fn key_in(scope: u8, ip: [u8; 4], port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        scope,
        ..key(ip, port, proto)
    }
}

pub fn frontend(ip: &str, port: u16, proto: Protocol) -> Frontend {
    Frontend {
        ip: ip.parse().expect("test IPv4 address"),
        port,
        proto,
        kind: FrontendKind::ClusterIp,
    }
}

/// The endpoints behind a frontend as `ip:port`, or `None` when the model has
/// no such frontend.
pub fn endpoints(model: &Model, ip: &str, port: u16, proto: Protocol) -> Option<Vec<String>> {
    let entry = model.frontends.get(&frontend(ip, port, proto))?;
    Some(entry.endpoints.iter().map(|e| format!("{}:{}", e.ip, e.port)).collect())
}

/// `namespace/name` of every Service that got at least one frontend.
pub fn served(model: &Model) -> Vec<String> {
    let mut names: Vec<String> = model
        .frontends
        .values()
        .map(|e| format!("{}/{}", e.service.namespace, e.service.name))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What was reported about one object, e.g. `lab/sip:sip-sctp`.
pub fn reasons(skipped: &[Skipped], object: &str) -> Vec<SkipReason> {
    skipped
        .iter()
        .filter(|s| s.object == object)
        .map(|s| s.reason)
        .collect()
}

pub fn service_mut<'a>(snapshot: &'a mut Snapshot, name: &str) -> &'a mut k8s_openapi::api::core::v1::Service {
    snapshot
        .services
        .iter_mut()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .map(std::sync::Arc::make_mut)
        .unwrap_or_else(|| panic!("no service {name}"))
}

pub fn slice_mut<'a>(snapshot: &'a mut Snapshot, namespace: &str, name: &str) -> &'a mut EndpointSlice {
    snapshot
        .slices
        .iter_mut()
        .find(|s| s.metadata.namespace.as_deref() == Some(namespace) && s.metadata.name.as_deref() == Some(name))
        .map(std::sync::Arc::make_mut)
        .unwrap_or_else(|| panic!("no slice {namespace}/{name}"))
}

/// The endpoints of web's slice in [`CLUSTER`]: three pods.
pub fn web_pods(snapshot: &mut Snapshot) -> &mut Vec<Endpoint> {
    slice_mut(snapshot, "default", "web-7xk2p").endpoints.as_mut().unwrap()
}

/// web's pod on kind-worker2 (10.244.2.7) goes away.
pub fn remove_web_pod(snapshot: &mut Snapshot) {
    web_pods(snapshot).retain(|e| e.addresses[0] != "10.244.2.7");
}

/// web scales up by one pod.
pub fn add_web_pod(snapshot: &mut Snapshot, ip: &str) {
    let pods = web_pods(snapshot);
    let mut pod = pods[0].clone();
    pod.addresses = vec![ip.to_string()];
    pods.push(pod);
}

/// The key the datapath looks up for a ClusterIP frontend, written out
/// byte by byte: address and port in network byte order.
pub fn key(ip: [u8; 4], port: u16, proto: u8) -> ServiceKey {
    ServiceKey {
        addr: u32::from_ne_bytes(ip),
        port: port.to_be(),
        proto,
        scope: scope::CLUSTER_IP,
    }
}

pub fn key_of(frontend: &Frontend) -> ServiceKey {
    let proto = match frontend.proto {
        Protocol::Tcp => TCP,
        Protocol::Udp => UDP,
    };
    key(frontend.ip.octets(), frontend.port, proto)
}

/// Follows a frontend through its slots to its backends, as the datapath
/// does, and returns them as `ip:port` in slot order. `None` when the
/// frontend is absent; panics when a slot or backend is missing.
pub fn resolve(tables: &Tables, key: &ServiceKey) -> Option<Vec<String>> {
    let value = tables.services.get(key)?;
    let backends = (0..value.count)
        .map(|slot| {
            let slot_key = BackendSlotKey {
                service_id: value.service_id,
                slot,
            };
            let id = tables
                .slots
                .get(&slot_key)
                .unwrap_or_else(|| panic!("missing {slot_key:?}"));
            let b = tables
                .backends
                .get(id)
                .unwrap_or_else(|| panic!("missing backend {id}"));
            assert_eq!(b.proto, key.proto, "backend protocol differs from its frontend's");
            format!("{}:{}", Ipv4Addr::from(b.addr.to_ne_bytes()), u16::from_be(b.port))
        })
        .collect();
    Some(backends)
}

/// What the datapath relies on at every instant: each service's slots
/// `0..count` exist, and each slot names a backend that exists.
pub fn check_invariant(tables: &Tables) -> Result<(), String> {
    for (key, value) in &tables.services {
        for slot in 0..value.count {
            let slot_key = BackendSlotKey {
                service_id: value.service_id,
                slot,
            };
            if !tables.slots.contains_key(&slot_key) {
                return Err(format!("service {key:?} (count {}) lacks slot {slot}", value.count));
            }
        }
    }
    for (slot_key, id) in &tables.slots {
        if !tables.backends.contains_key(id) {
            return Err(format!("slot {slot_key:?} names missing backend {id}"));
        }
    }
    Ok(())
}
