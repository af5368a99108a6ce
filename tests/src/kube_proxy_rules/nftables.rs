//! kube-proxy's nftables mode (pkg/proxy/nftables/proxier.go,
//! `setupNFTables` and `syncProxyRules`): the transaction it hands to
//! `nft -f` for a set of Services, for its first sync and for a partial
//! sync after an endpoint change. IPv4, table `ip kube-proxy`, all node
//! addresses accept NodePorts (the default), masquerade bit 14.

use std::fmt::Write;

use super::cluster::{Cluster, Service};
use super::names;

pub const TABLE: &str = "ip kube-proxy";
const MASQ_MARK: &str = "0x4000";

/// Base chains: (name, type, hook, priority). kube-proxy writes the
/// priorities as `dstnat-10` and so on; these are their values.
const BASE_CHAINS: &[(&str, &str, &str, i32)] = &[
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// `nftablesJumpChains`: (destination, source, match before the jump).
const JUMP_CHAINS: &[(&str, &str, &str)] = &[
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
];

/// A transaction being written, with the chains it already created (each
/// is added and flushed once, as `ensureChain` does).
struct Tx {
    out: String,
    created: std::collections::BTreeSet<String>,
}

impl Tx {
    fn new() -> Self {
        Tx {
            out: String::new(),
            created: Default::default(),
        }
    }

    fn line(&mut self, args: std::fmt::Arguments) {
        let _ = self.out.write_fmt(args);
        self.out.push('\n');
    }

    fn ensure_chain(&mut self, chain: &str) {
        if self.created.insert(chain.to_string()) {
            self.line(format_args!("add chain {TABLE} {chain}"));
            self.line(format_args!("flush chain {TABLE} {chain}"));
        }
    }

    fn rule(&mut self, chain: &str, rule: &str) {
        self.line(format_args!("add rule {TABLE} {chain} {rule}"));
    }
}

/// The transaction of kube-proxy's first sync on a node.
pub fn full_transaction(cluster: &Cluster) -> String {
    let mut tx = Tx::new();
    setup(&mut tx, cluster);
    for service in &cluster.services {
        write_service(&mut tx, cluster, service, true);
    }
    tx.out
}

/// The transaction of a partial sync after the Services at `changed`
/// changed their endpoints: their chains rewritten, and the chains of
/// removed endpoints flushed (kube-proxy deletes those a second later).
/// The verdict map elements are unchanged, so nothing is written for them.
pub fn partial_transaction(cluster: &Cluster, changed: &[usize], stale_chains: &[String]) -> String {
    let mut tx = Tx::new();
    for &i in changed {
        write_service(&mut tx, cluster, &cluster.services[i], false);
    }
    for chain in stale_chains {
        tx.line(format_args!("flush chain {TABLE} {chain}"));
    }
    tx.out
}

/// Endpoint chains of `service` for an address no longer there.
pub fn stale_endpoint_chains(service: &Service, removed: std::net::Ipv4Addr) -> Vec<String> {
    service
        .ports
        .iter()
        .map(|p| {
            let base = names::nft_endpoint_base(&service.namespace, &service.name, p.protocol.lower(), &p.name, &removed.to_string(), p.target_port);
            format!("endpoint-{base}")
        })
        .collect()
}

fn setup(tx: &mut Tx, cluster: &Cluster) {
    tx.line(format_args!("add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}"));
    // First sync of this kube-proxy: add and delete each base chain, so any
    // old one with other properties is recreated.
    for (name, ..) in BASE_CHAINS {
        tx.line(format_args!("add chain {TABLE} {name}"));
        tx.line(format_args!("delete chain {TABLE} {name}"));
    }
    for (name, kind, hook, priority) in BASE_CHAINS {
        tx.line(format_args!("add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority} ; }}"));
        tx.line(format_args!("flush chain {TABLE} {name}"));
    }
    for (dst, src, extra) in JUMP_CHAINS {
        tx.ensure_chain(dst);
        let rule = if extra.is_empty() { format!("jump {dst}") } else { format!("{extra} jump {dst}") };
        tx.rule(src, &rule);
    }
    for chain in ["services", "cluster-ips-check", "masquerading", "mark-for-masquerade"] {
        tx.ensure_chain(chain);
    }
    tx.rule("mark-for-masquerade", &format!("mark set mark or {MASQ_MARK}"));
    tx.rule("masquerading", &format!("mark and {MASQ_MARK} == 0 return"));
    tx.rule("masquerading", &format!("mark set mark xor {MASQ_MARK}"));
    tx.rule("masquerading", "masquerade fully-random");

    tx.line(format_args!("add set {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"));
    tx.rule("cluster-ips-check", "ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"");
    tx.rule(
        "cluster-ips-check",
        &format!("ip daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"", cluster.service_cidr),
    );
    // Every node address accepts NodePorts: the set is not needed.
    tx.line(format_args!("add set {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"));
    tx.line(format_args!("delete set {TABLE} nodeport-ips"));

    tx.line(format_args!(
        "add map {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    ));
    tx.line(format_args!(
        "add map {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
    ));
    tx.line(format_args!("add chain {TABLE} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"));
    tx.line(format_args!("flush chain {TABLE} reject-chain"));
    tx.rule("reject-chain", "reject");
    tx.rule("service-endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services");
    tx.rule("nodeport-endpoints-check", "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports");

    tx.line(format_args!(
        "add map {TABLE} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
    ));
    tx.ensure_chain("firewall-check");
    tx.rule("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips");

    tx.line(format_args!(
        "add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    ));
    tx.line(format_args!("add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"));
    tx.rule("services", "ip daddr . meta l4proto . th dport vmap @service-ips");
    tx.rule("services", "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports");

    tx.line(format_args!("flush set {TABLE} cluster-ips"));
    for map in ["service-ips", "firewall-ips", "no-endpoint-services", "no-endpoint-nodeports", "service-nodeports"] {
        tx.line(format_args!("flush map {TABLE} {map}"));
    }
}

fn write_service(tx: &mut Tx, cluster: &Cluster, service: &Service, with_elements: bool) {
    for port in &service.ports {
        let proto = port.protocol.lower();
        let base = names::nft_service_base(&service.namespace, &service.name, proto, &port.name);
        let service_chain = format!("service-{base}");
        let external_chain = format!("external-{base}");
        let endpoint_chains: Vec<String> = service
            .endpoints
            .iter()
            .map(|ep| format!("endpoint-{}", names::nft_endpoint_base(&service.namespace, &service.name, proto, &port.name, &ep.to_string(), port.target_port)))
            .collect();
        let ip = service.cluster_ip;
        let has_endpoints = !service.endpoints.is_empty();

        for chain in &endpoint_chains {
            tx.ensure_chain(chain);
        }
        if has_endpoints {
            tx.ensure_chain(&service_chain);
            if port.node_port.is_some() {
                tx.ensure_chain(&external_chain);
            }
        }
        if with_elements {
            tx.line(format_args!("add element {TABLE} cluster-ips {{ {ip} }}"));
            if has_endpoints {
                tx.line(format_args!("add element {TABLE} service-ips {{ {ip} . {proto} . {} : goto {service_chain} }}", port.port));
                if let Some(node_port) = port.node_port {
                    tx.line(format_args!("add element {TABLE} service-nodeports {{ {proto} . {node_port} : goto {external_chain} }}"));
                }
            } else {
                let name = service.port_name(port);
                tx.line(format_args!("add element {TABLE} no-endpoint-services {{ {ip} . {proto} . {} comment \"{name}\" : goto reject-chain }}", port.port));
                if let Some(node_port) = port.node_port {
                    tx.line(format_args!("add element {TABLE} no-endpoint-nodeports {{ {proto} . {node_port} comment \"{name}\" : goto reject-chain }}"));
                }
            }
        }
        if !has_endpoints {
            continue;
        }
        tx.rule(
            &service_chain,
            &format!("ip daddr {ip} {proto} dport {} ip saddr != {} jump mark-for-masquerade", port.port, cluster.cluster_cidr),
        );
        if port.node_port.is_some() {
            tx.rule(&external_chain, "jump mark-for-masquerade");
            tx.rule(&external_chain, &format!("goto {service_chain}"));
        }
        let arms: Vec<String> = endpoint_chains.iter().enumerate().map(|(i, c)| format!("{i} : goto {c}")).collect();
        tx.rule(&service_chain, &format!("numgen random mod {} vmap {{ {} }}", arms.len(), arms.join(" , ")));
        for (ep, chain) in service.endpoints.iter().zip(&endpoint_chains) {
            tx.rule(chain, &format!("ip saddr {ep} jump mark-for-masquerade"));
            tx.rule(chain, &format!("meta l4proto {proto} dnat to {ep}:{}", port.target_port));
        }
    }
}

#[cfg(test)]
mod tests;
