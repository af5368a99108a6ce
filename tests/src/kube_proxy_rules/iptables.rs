//! kube-proxy's iptables mode (pkg/proxy/iptables/proxier.go,
//! `syncProxyRules`): the `iptables-restore` input it writes for a set of
//! Services, line for line, for a full sync and for a partial sync after an
//! endpoint change. Defaults as kube-proxy's: masquerade bit 14, a
//! cluster CIDR for the local-traffic detector, localhost NodePorts on,
//! `--random-fully` (iptables 1.8.9 has it), conntrack not liberal.

use std::fmt::Write;

use super::cluster::{Cluster, Service};
use super::names;

pub const MASQ_MARK: &str = "0x4000";
/// kube-proxy drops per-endpoint comments above this many endpoints.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The rules kube-proxy writes: two tables, each a list of chain lines and
/// a list of rules.
#[derive(Default)]
struct Buffers {
    filter_chains: String,
    filter_rules: String,
    nat_chains: String,
    nat_rules: String,
}

/// What a sync writes for the Services it does not rewrite: their
/// KUBE-SERVICES and KUBE-NODEPORTS jumps (those chains are always
/// rewritten whole) but not their own chains.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Everything,
    JumpsOnly,
}

/// The input of a full sync (kube-proxy's first sync, and every hour).
pub fn full_restore(cluster: &Cluster) -> String {
    render(cluster, |_| Scope::Everything, &[])
}

/// The input of a partial sync after the Services at `changed` changed:
/// all jumps, the changed Services' chains, and `stale_chains` flushed and
/// deleted. kube-proxy deletes stale chains only outside large-cluster
/// mode (there it waits for the periodic cleanup), so pass them only then;
/// see `stale_chains_to_delete`.
pub fn partial_restore(cluster: &Cluster, changed: &[usize], stale_chains: &[String]) -> String {
    render(
        cluster,
        |i| if changed.contains(&i) { Scope::Everything } else { Scope::JumpsOnly },
        stale_chains,
    )
}

pub fn large_cluster_mode(cluster: &Cluster) -> bool {
    cluster.endpoint_count() > LARGE_CLUSTER_ENDPOINTS
}

/// KUBE-SEP chains of `service` for an endpoint address no longer there,
/// which the next sync deletes unless in large-cluster mode.
pub fn stale_chains_to_delete(cluster: &Cluster, service: &Service, removed: std::net::Ipv4Addr) -> Vec<String> {
    if large_cluster_mode(cluster) {
        return Vec::new();
    }
    service
        .ports
        .iter()
        .map(|p| names::iptables_sep_chain(&service.port_name(p), p.protocol.lower(), &format!("{removed}:{}", p.target_port)))
        .collect()
}

fn render(cluster: &Cluster, scope: impl Fn(usize) -> Scope, stale_chains: &[String]) -> String {
    let large = large_cluster_mode(cluster);
    let mut b = Buffers::default();
    for chain in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"] {
        chain_line(&mut b.filter_chains, chain);
    }
    for chain in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        chain_line(&mut b.nat_chains, chain);
    }
    let _ = writeln!(b.nat_rules, "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN");
    let _ = writeln!(b.nat_rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    b.nat_rules.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    let _ = writeln!(b.nat_rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    // Localhost NodePorts are on by default: kube-proxy adds kubelet's
    // anti-martian rule (issue 90259).
    chain_line(&mut b.filter_chains, "KUBE-FIREWALL");
    b.filter_rules.push_str("-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n");

    for (i, service) in cluster.services.iter().enumerate() {
        write_service(&mut b, cluster, service, scope(i), large);
    }
    for chain in stale_chains {
        chain_line(&mut b.nat_chains, chain);
        let _ = writeln!(b.nat_rules, "-X {chain}");
    }
    b.nat_rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    b.filter_rules.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        b.filter_rules,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    b.filter_rules.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");

    let mut out = String::with_capacity(b.nat_chains.len() + b.nat_rules.len() + b.filter_rules.len() + 64);
    out.push_str("*filter\n");
    out.push_str(&b.filter_chains);
    out.push_str(&b.filter_rules);
    out.push_str("COMMIT\n*nat\n");
    out.push_str(&b.nat_chains);
    out.push_str(&b.nat_rules);
    out.push_str("COMMIT\n");
    out
}

fn chain_line(buf: &mut String, chain: &str) {
    let _ = writeln!(buf, ":{chain} - [0:0]");
}

fn write_service(b: &mut Buffers, cluster: &Cluster, service: &Service, scope: Scope, large: bool) {
    for port in &service.ports {
        let name = service.port_name(port);
        let proto = port.protocol.lower();
        let svc_chain = names::iptables_svc_chain(&name, proto);
        let ext_chain = names::iptables_ext_chain(&name, proto);
        let ip = service.cluster_ip;
        let dport = port.port;
        let has_endpoints = !service.endpoints.is_empty();

        if has_endpoints {
            let _ = writeln!(
                b.nat_rules,
                "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {ip} --dport {dport} -j {svc_chain}"
            );
        } else {
            let _ = writeln!(
                b.filter_rules,
                "-A KUBE-SERVICES -m comment --comment \"{name} has no endpoints\" -m {proto} -p {proto} -d {ip} --dport {dport} -j REJECT"
            );
        }
        if let Some(node_port) = port.node_port {
            if has_endpoints {
                let _ = writeln!(b.nat_rules, "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {ext_chain}");
            } else {
                let _ = writeln!(
                    b.filter_rules,
                    "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} has no endpoints\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j REJECT"
                );
            }
        }
        if scope == Scope::JumpsOnly || !has_endpoints {
            continue;
        }

        let _ = writeln!(
            b.nat_rules,
            "-A {svc_chain} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {ip} --dport {dport} ! -s {} -j KUBE-MARK-MASQ",
            cluster.cluster_cidr
        );
        if port.node_port.is_some() {
            chain_line(&mut b.nat_chains, &ext_chain);
            let _ = writeln!(
                b.nat_rules,
                "-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(b.nat_rules, "-A {ext_chain} -j {svc_chain}");
        }
        chain_line(&mut b.nat_chains, &svc_chain);
        let endpoints: Vec<(String, String)> = service
            .endpoints
            .iter()
            .map(|ep| {
                let endpoint = format!("{ep}:{}", port.target_port);
                (names::iptables_sep_chain(&name, proto, &endpoint), endpoint)
            })
            .collect();
        let count = endpoints.len();
        for (i, (sep_chain, endpoint)) in endpoints.iter().enumerate() {
            let _ = write!(b.nat_rules, "-A {svc_chain}");
            if !large {
                let _ = write!(b.nat_rules, " -m comment --comment \"{name} -> {endpoint}\"");
            }
            if i < count - 1 {
                let _ = write!(b.nat_rules, " -m statistic --mode random --probability {}", probability(count - i));
            }
            let _ = writeln!(b.nat_rules, " -j {sep_chain}");
        }
        for (ep, (sep_chain, endpoint)) in service.endpoints.iter().zip(&endpoints) {
            chain_line(&mut b.nat_chains, sep_chain);
            let comment = if large { String::new() } else { format!(" -m comment --comment {name}") };
            let _ = writeln!(b.nat_rules, "-A {sep_chain}{comment} -s {ep} -j KUBE-MARK-MASQ");
            let _ = writeln!(b.nat_rules, "-A {sep_chain}{comment} -m {proto} -p {proto} -j DNAT --to-destination {endpoint}");
        }
    }
}

/// `proxier.probability(n)`: `%0.10f` of 1/n.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// What kube-proxy ensures with single iptables calls before its first
/// restore: its top-level chains, and the jumps into them from the
/// built-in chains (`iptablesJumpChains` and `iptablesKubeletJumpChains`),
/// each inserted first. One argument list per `iptables -w` call.
pub fn jump_commands() -> Vec<Vec<String>> {
    const NEW: &[&str] = &["-m", "conntrack", "--ctstate", "NEW"];
    let jumps: &[(&str, &str, &str, &str, &[&str])] = &[
        ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT", "kubernetes externally-visible service portals", NEW),
        ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD", "kubernetes externally-visible service portals", NEW),
        ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", &[]),
        ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals", NEW),
        ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", NEW),
        ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", &[]),
        ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall", NEW),
        ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall", NEW),
        ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall", NEW),
        ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", &[]),
        ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", &[]),
        ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", &[]),
        ("filter", "KUBE-FIREWALL", "INPUT", "", &[]),
        ("filter", "KUBE-FIREWALL", "OUTPUT", "", &[]),
    ];
    let mut commands = Vec::new();
    let mut created = std::collections::BTreeSet::new();
    for (table, chain, _, _, _) in jumps {
        if created.insert((*table, *chain)) {
            commands.push(strings(&["-t", table, "-N", chain]));
        }
    }
    for (table, chain, from, comment, extra) in jumps {
        let mut args = strings(&["-t", table, "-I", from]);
        args.extend(strings(extra));
        if !comment.is_empty() {
            args.extend(strings(&["-m", "comment", "--comment", comment]));
        }
        args.extend(strings(&["-j", chain]));
        commands.push(args);
    }
    commands
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests;
