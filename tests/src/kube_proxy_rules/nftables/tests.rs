//! Golden lines are kube-proxy's own test expectations
//! (pkg/proxy/nftables/proxier_test.go, TestOverallNFTablesRules and its
//! base rules, as knftables dumps them). Where kube-proxy versions differ,
//! the version of proxier.go the generator follows wins: its cluster-IP
//! check runs after DNAT in `filter-output-post-dnat`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::*;
use crate::kube_proxy_rules::cluster::Cluster;
use crate::kube_proxy_rules::test_support::{cluster, svc};

fn golden_cluster() -> Cluster {
    cluster(vec![
        svc("ns1", "svc1", [172, 30, 0, 41], None, &[[10, 180, 0, 1]]),
        svc("ns3", "svc3", [172, 30, 0, 43], Some(3003), &[[10, 180, 0, 3]]),
        svc("ns4", "svc4", [172, 30, 0, 44], None, &[[10, 180, 0, 4], [10, 180, 0, 5]]),
    ])
}

const SERVICES: &str = r#"
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 ip daddr 172.30.0.43 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 }
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 jump mark-for-masquerade
add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 goto service-4AT6LBPK-ns3/svc3/tcp/p80
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 ip saddr 10.180.0.5 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 meta l4proto tcp dnat to 10.180.0.5:80
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 ip saddr 10.180.0.4 jump mark-for-masquerade
add rule ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 meta l4proto tcp dnat to 10.180.0.4:80
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }
"#;

const BASE: &str = r#"
add table ip kube-proxy { comment "rules for kube-proxy" ; }
add chain ip kube-proxy filter-output-post-dnat { type filter hook output priority -90 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy filter-prerouting { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output-post-dnat ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
"#;

fn lines(s: &str) -> BTreeSet<String> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

fn mentions_a_service(line: &str) -> bool {
    ["ns1/", "ns3/", "ns4/"].iter().any(|ns| line.contains(ns)) || line.starts_with("add element")
}

#[test]
fn service_rules_and_elements_match_kube_proxy_exactly() {
    let ours = lines(&full_transaction(&golden_cluster()));
    let ours_services: BTreeSet<String> = ours.iter().filter(|l| mentions_a_service(l) && !l.contains(" chain ")).cloned().collect();
    assert_eq!(ours_services, lines(SERVICES));
}

#[test]
fn base_rules_are_kube_proxys() {
    let ours = lines(&full_transaction(&golden_cluster()));
    let missing: Vec<_> = lines(BASE).difference(&ours).cloned().collect();
    assert!(missing.is_empty(), "missing: {missing:#?}");
}

#[test]
fn every_rule_goes_to_a_chain_created_before_it() {
    let tx = full_transaction(&golden_cluster());
    let mut chains = BTreeSet::new();
    for line in tx.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["add", "chain", "ip", "kube-proxy", name, ..] => {
                chains.insert(name.to_string());
            }
            ["add", "rule", "ip", "kube-proxy", chain, ..] => assert!(chains.contains(*chain), "rule before chain: {line}"),
            _ => {}
        }
    }
    assert!(chains.contains("endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"));
}

#[test]
fn endpoint_change_rewrites_one_service_and_flushes_the_old_endpoint() {
    let mut c = golden_cluster();
    c.services[2].endpoints[0] = Ipv4Addr::new(10, 180, 0, 6);
    let stale = stale_endpoint_chains(&c.services[2], Ipv4Addr::new(10, 180, 0, 4));
    assert_eq!(stale, vec!["endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80".to_string()]);
    let tx = partial_transaction(&c, &[2], &stale);
    assert!(tx.lines().all(|l| l.contains("ns4/svc4")), "{tx}");
    assert!(tx.contains("add chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80\nflush chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80\n"));
    assert!(tx.contains("meta l4proto tcp dnat to 10.180.0.6:80"));
    assert!(tx.ends_with("flush chain ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80\n"));
    assert!(!tx.contains("add element"));
}
