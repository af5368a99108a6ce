//! Services shaped like those of kube-proxy's own tests: one TCP port
//! named `p80`, port and target port 80, cluster CIDR 10.0.0.0/8.

use std::net::Ipv4Addr;

use super::cluster::{Cluster, Protocol, Service, ServicePort};

pub fn svc(ns: &str, name: &str, ip: [u8; 4], node_port: Option<u16>, endpoints: &[[u8; 4]]) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        cluster_ip: Ipv4Addr::from(ip),
        ports: vec![ServicePort {
            name: "p80".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 80,
            node_port,
        }],
        endpoints: endpoints.iter().map(|e| Ipv4Addr::from(*e)).collect(),
    }
}

pub fn cluster(services: Vec<Service>) -> Cluster {
    Cluster {
        services,
        cluster_cidr: "10.0.0.0/8".into(),
        service_cidr: "172.30.0.0/16".into(),
        spare_endpoint: None,
    }
}
