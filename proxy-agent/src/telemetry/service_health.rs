//! healthCheckNodePort servers, as kube-proxy's service health server
//! (pkg/proxy/healthcheck/service_health.go) runs them: for each LoadBalancer
//! Service with `externalTrafficPolicy: Local`, HTTP on its
//! `healthCheckNodePort` on every node address, answering any path with 200
//! while this node has a ready endpoint of the Service (and the proxy itself
//! is healthy), 503 otherwise. Cloud load balancers probe it to send traffic
//! only to nodes that can serve it without leaving the node.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use super::http::{self, Handler, Reply};
use crate::model::Model;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    pub namespace: String,
    pub name: String,
    /// Ready endpoints of the Service on this node.
    pub local_endpoints: u32,
}

/// One health check per port. Two Services cannot share a port through the
/// API server's allocator; should a manifest directory do it, the first
/// Service in name order keeps it, on every node alike.
pub fn health_checks(model: &Model) -> Vec<HealthCheck> {
    let mut by_port: BTreeMap<u16, HealthCheck> = BTreeMap::new();
    // Only the few with a health check are sorted, not every frontend.
    let mut entries: Vec<_> = model.frontends.values().filter(|e| e.health_check_node_port.is_some()).collect();
    entries.sort_by(|a, b| a.service.cmp(&b.service));
    for entry in entries {
        let Some(port) = entry.health_check_node_port else { continue };
        let wanted = HealthCheck {
            port,
            namespace: entry.service.namespace.clone(),
            name: entry.service.name.clone(),
            local_endpoints: entry.local_endpoint_count,
        };
        match by_port.get(&port) {
            None => {
                by_port.insert(port, wanted);
            }
            Some(holder) if (&holder.namespace, &holder.name) != (&wanted.namespace, &wanted.name) => {
                tracing::warn!(port, holder = %format!("{}/{}", holder.namespace, holder.name),
                    service = %format!("{}/{}", wanted.namespace, wanted.name), "healthCheckNodePort already taken");
            }
            Some(_) => {}
        }
    }
    by_port.into_values().collect()
}

/// kube-proxy's answer: 200 only with local endpoints and a healthy proxy.
pub fn reply(check: &HealthCheck, proxy_healthy: bool) -> Reply {
    let body = serde_json::json!({
        "service": {"namespace": check.namespace, "name": check.name},
        "localEndpoints": check.local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    });
    let mut reply = Reply::json(check.local_endpoints > 0 && proxy_healthy, body.to_string());
    reply
        .headers
        .push(("x-load-balancing-endpoint-weight", check.local_endpoints.to_string()));
    reply
}

pub type ProxyHealthy = Arc<dyn Fn() -> bool + Send + Sync>;

struct Running {
    check: Arc<Mutex<HealthCheck>>,
    /// One server per address listened on.
    tasks: Vec<JoinHandle<()>>,
    addresses: Vec<Ipv4Addr>,
}

/// The set of listening servers, made equal to the wanted set after each sync.
pub struct ServiceHealthServers {
    running: HashMap<u16, Running>,
    proxy_healthy: ProxyHealthy,
}

impl ServiceHealthServers {
    pub fn new(proxy_healthy: ProxyHealthy) -> Self {
        ServiceHealthServers {
            running: HashMap::new(),
            proxy_healthy,
        }
    }

    /// Runs a server for each of `wanted` on each of `addresses` (empty:
    /// every address), and no other.
    pub fn reconcile(&mut self, wanted: &[HealthCheck], addresses: &[Ipv4Addr]) {
        self.running.retain(|port, running| {
            let keep = wanted.iter().any(|w| w.port == *port) && running.addresses == addresses;
            if !keep {
                running.tasks.iter().for_each(JoinHandle::abort);
                tracing::info!(port, "stopped health check server");
            }
            keep
        });
        for check in wanted {
            if let Some(running) = self.running.get(&check.port) {
                // Same port, new counts (or, rarely, a new owner): answered
                // from the next request on, no rebind.
                *running.check.lock().unwrap() = check.clone();
                continue;
            }
            let shared = Arc::new(Mutex::new(check.clone()));
            let tasks = listen_addresses(check.port, addresses)
                .into_iter()
                .map(|addr| http::serve("health check node port", addr, self.handler(shared.clone())))
                .collect();
            tracing::info!(port = check.port, service = %format!("{}/{}", check.namespace, check.name), ?addresses, "started health check server");
            self.running.insert(
                check.port,
                Running {
                    check: shared,
                    tasks,
                    addresses: addresses.to_vec(),
                },
            );
        }
    }

    fn handler(&self, check: Arc<Mutex<HealthCheck>>) -> Handler {
        let proxy_healthy = self.proxy_healthy.clone();
        Arc::new(move |_method, _path| {
            let check = check.lock().unwrap().clone();
            let reply = reply(&check, proxy_healthy());
            Box::pin(async move { reply })
        })
    }
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for running in self.running.values() {
            running.tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

/// kube-proxy listens on every address by default, and on each node address
/// `--nodeport-addresses` admits when it is set: where NodePorts are served
/// is where a cloud load balancer's probe arrives.
fn listen_addresses(port: u16, addresses: &[Ipv4Addr]) -> Vec<SocketAddr> {
    if addresses.is_empty() {
        return vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))];
    }
    addresses.iter().map(|ip| SocketAddr::from((*ip, port))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Frontend, FrontendEntry, FrontendKind, Protocol, ServicePortName};

    fn entry(ns: &str, name: &str, port: Option<u16>, local: u32) -> FrontendEntry {
        FrontendEntry {
            service: ServicePortName {
                namespace: ns.into(),
                name: name.into(),
                port: String::new(),
            },
            health_check_node_port: port,
            local_endpoint_count: local,
            ..Default::default()
        }
    }

    fn frontend(last: u8, port: u16) -> Frontend {
        Frontend {
            ip: Ipv4Addr::new(10, 96, 0, last),
            port,
            proto: Protocol::Tcp,
            kind: FrontendKind::ClusterIp,
        }
    }

    #[test]
    fn one_check_per_port_first_service_wins() {
        let mut model = Model::default();
        model.frontends.insert(frontend(1, 80), entry("default", "web", Some(32000), 2));
        model.frontends.insert(frontend(1, 443), entry("default", "web", Some(32000), 2));
        model.frontends.insert(frontend(2, 80), entry("default", "api", Some(32000), 0));
        model.frontends.insert(frontend(3, 80), entry("default", "plain", None, 5));
        model.frontends.insert(frontend(4, 80), entry("other", "lb", Some(32001), 0));
        let checks = health_checks(&model);
        assert_eq!(
            checks,
            vec![
                HealthCheck {
                    port: 32000,
                    namespace: "default".into(),
                    name: "api".into(),
                    local_endpoints: 0
                },
                HealthCheck {
                    port: 32001,
                    namespace: "other".into(),
                    name: "lb".into(),
                    local_endpoints: 0
                },
            ]
        );
    }

    #[test]
    fn reply_is_kube_proxys() {
        let check = HealthCheck {
            port: 32000,
            namespace: "ns".into(),
            name: "n".into(),
            local_endpoints: 2,
        };
        let ok = reply(&check, true);
        assert_eq!(ok.status, 200);
        let json: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"service": {"namespace": "ns", "name": "n"}, "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        assert!(ok.headers.contains(&("x-load-balancing-endpoint-weight", "2".into())));
        assert_eq!(reply(&check, false).status, 503, "unhealthy proxy");
        let none = HealthCheck { local_endpoints: 0, ..check };
        assert_eq!(reply(&none, true).status, 503, "no local endpoint");
    }
}
