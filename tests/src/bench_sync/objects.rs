//! The benchmark's cluster: N Services of one TCP port, each with one
//! EndpointSlice of ten endpoints, written as the API server's state file.
//! Every address is unique and inside the lab's ranges (ClusterIPs in
//! 10.96.0.0/12, endpoints in 10.244.0.0/14); nothing needs to answer, the
//! benchmark only reads the maps.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

pub const NAMESPACE: &str = "bench";
pub const PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;

pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

pub fn slice_name(i: usize) -> String {
    format!("svc-{i}-bench")
}

pub fn cluster_ip(i: usize) -> Ipv4Addr {
    offset(Ipv4Addr::new(10, 96, 4, 0), i)
}

/// The endpoints Service `i` starts with.
pub fn endpoints(i: usize, per_service: usize) -> Vec<Ipv4Addr> {
    (0..per_service).map(|j| offset(Ipv4Addr::new(10, 244, 16, 0), i * per_service + j)).collect()
}

/// The `k`th address a change brings in: never one an endpoint had before.
pub fn fresh_endpoint(k: usize) -> Ipv4Addr {
    offset(Ipv4Addr::new(10, 247, 0, 1), k)
}

fn offset(base: Ipv4Addr, by: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + by as u32)
}

fn metadata(name: &str, rv: u64) -> Value {
    json!({
        "name": name,
        "namespace": NAMESPACE,
        "uid": format!("00000000-0000-4000-8000-{rv:012x}"),
        "resourceVersion": rv.to_string(),
        "creationTimestamp": "2025-01-01T00:00:00Z",
    })
}

pub fn service(i: usize, rv: u64) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(&service_name(i), rv),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip(i).to_string(),
            "clusterIPs": [cluster_ip(i).to_string()],
            "ports": [{"name": "http", "port": PORT, "protocol": "TCP", "targetPort": TARGET_PORT}],
        },
    })
}

/// The `endpoints` list of a slice, spread over the lab's two nodes.
pub fn endpoint_list(addresses: &[Ipv4Addr]) -> Value {
    let list: Vec<Value> = addresses
        .iter()
        .enumerate()
        .map(|(j, ip)| {
            json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", 1 + j % 2),
            })
        })
        .collect();
    Value::Array(list)
}

pub fn slice(i: usize, addresses: &[Ipv4Addr], rv: u64) -> Value {
    let mut meta = metadata(&slice_name(i), rv);
    meta["labels"] = json!({"kubernetes.io/service-name": service_name(i), "endpointslice.kubernetes.io/managed-by": "bench"});
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoint_list(addresses),
    })
}

/// A Node object with its InternalIP.
pub fn node(name: &str, ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "resourceVersion": "1", "labels": {"kubernetes.io/hostname": name}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]},
    })
}

/// The API server's state file (see `apiserver::persist`) for `services`
/// Services of `per_service` endpoints each, and the nodes.
pub fn state(services: usize, per_service: usize, nodes: &[(String, Ipv4Addr)]) -> Value {
    let mut objects: Vec<Value> = nodes.iter().map(|(name, ip)| node(name, *ip)).collect();
    for i in 0..services {
        objects.push(service(i, 2 + 2 * i as u64));
        objects.push(slice(i, &endpoints(i, per_service), 3 + 2 * i as u64));
    }
    json!({"resourceVersion": (2 + 2 * services as u64).to_string(), "objects": objects})
}

/// The merge patch that gives Service `i`'s slice these endpoints.
pub fn endpoints_patch(addresses: &[Ipv4Addr]) -> Vec<u8> {
    serde_json::to_vec(&json!({"endpoints": endpoint_list(addresses)})).expect("serializable")
}

pub fn slice_path(i: usize) -> String {
    format!("/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices/{}", slice_name(i))
}
