//! Golden lines are kube-proxy's own test expectations
//! (pkg/proxy/iptables/proxier_test.go): TestOverallIPTablesRules for a full
//! sync, TestSyncProxyRulesRepeated for an endpoint change.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::*;
use crate::kube_proxy_rules::cluster::Service;
use crate::kube_proxy_rules::test_support::{cluster, svc};

/// Each table's lines, sorted, as kube-proxy's assertIPTablesRulesEqual
/// compares them. kube-proxy's fake iptables has no `--random-fully`.
fn by_table(restore: &str) -> BTreeMap<String, Vec<String>> {
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in restore.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(table) = line.strip_prefix('*') {
            current = table.to_string();
        } else if line != "COMMIT" {
            tables.entry(current.clone()).or_default().push(line.replace(" --random-fully", ""));
        }
    }
    for lines in tables.values_mut() {
        lines.sort();
    }
    tables
}

const POSTROUTING_AND_MASQ: &str = r#"
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
"#;

const FILTER: &str = r#"*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"#;

#[test]
fn full_sync_matches_kube_proxy_line_for_line() {
    let c = cluster(vec![
        svc("ns1", "svc1", [172, 30, 0, 41], None, &[[10, 180, 0, 1]]),
        svc("ns3", "svc3", [172, 30, 0, 43], Some(3003), &[[10, 180, 0, 3]]),
        svc("ns4", "svc4", [172, 30, 0, 44], None, &[[10, 180, 0, 4], [10, 180, 0, 5]]),
    ]);
    let expected = format!(
        r#"{FILTER}*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
:KUBE-SEP-OYPFS5VJICHGATKP - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
:KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
:KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
{POSTROUTING_AND_MASQ}
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
COMMIT
"#
    );
    assert_eq!(by_table(&full_restore(&c)), by_table(&expected));
}

#[test]
fn endpoint_change_rewrites_only_that_service_and_deletes_the_stale_chain() {
    let mut c = cluster(vec![
        svc("ns1", "svc1", [172, 30, 0, 41], None, &[[10, 0, 1, 1]]),
        svc("ns3", "svc3", [172, 30, 0, 43], None, &[[10, 0, 3, 1]]),
        svc("ns4", "svc4", [172, 30, 0, 44], None, &[[10, 0, 4, 1]]),
    ]);
    c.services[1].endpoints[0] = Ipv4Addr::new(10, 0, 3, 2);
    let stale = stale_chains_to_delete(&c, &c.services[1], Ipv4Addr::new(10, 0, 3, 1));
    assert_eq!(stale, vec!["KUBE-SEP-BSWRHOQ77KEXZLNL".to_string()]);
    let expected = format!(
        r#"{FILTER}*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-BSWRHOQ77KEXZLNL - [0:0]
:KUBE-SEP-DKCFIS26GWF2WLWC - [0:0]
:KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
{POSTROUTING_AND_MASQ}
-A KUBE-SEP-DKCFIS26GWF2WLWC -m comment --comment ns3/svc3:p80 -s 10.0.3.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-DKCFIS26GWF2WLWC -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.3.2:80
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.0.3.2:80" -j KUBE-SEP-DKCFIS26GWF2WLWC
-X KUBE-SEP-BSWRHOQ77KEXZLNL
COMMIT
"#
    );
    assert_eq!(by_table(&partial_restore(&c, &[1], &stale)), by_table(&expected));
}

#[test]
fn large_clusters_drop_endpoint_comments_and_keep_stale_chains() {
    let endpoints: Vec<[u8; 4]> = (0..10).map(|i| [10, 180, 0, i]).collect();
    let services: Vec<Service> = (0..101).map(|i| svc("ns", &format!("s{i}"), [172, 30, 1, i as u8], None, &endpoints)).collect();
    let c = cluster(services);
    assert!(large_cluster_mode(&c), "{} endpoints", c.endpoint_count());
    let restore = full_restore(&c);
    let sep = names::iptables_sep_chain("ns/s0:p80", "tcp", "10.180.0.0:80");
    let svc0 = names::iptables_svc_chain("ns/s0:p80", "tcp");
    assert!(restore.contains(&format!("-A {sep} -s 10.180.0.0 -j KUBE-MARK-MASQ\n")));
    assert!(restore.contains(&format!("-A {sep} -m tcp -p tcp -j DNAT --to-destination 10.180.0.0:80\n")));
    assert!(restore.contains(&format!("-A {svc0} -m statistic --mode random --probability 0.1000000000 -j {sep}\n")));
    assert!(stale_chains_to_delete(&c, &c.services[0], Ipv4Addr::new(10, 180, 0, 0)).is_empty());
}

#[test]
fn service_order_is_rule_order_and_probabilities_split_evenly() {
    let c = cluster(vec![
        svc("ns", "first", [172, 30, 0, 1], None, &[[10, 1, 0, 1]]),
        svc("ns", "last", [172, 30, 0, 2], None, &[[10, 1, 0, 2], [10, 1, 0, 3], [10, 1, 0, 4]]),
    ]);
    let restore = full_restore(&c);
    let services: Vec<&str> = restore.lines().filter(|l| l.starts_with("-A KUBE-SERVICES")).collect();
    assert!(services[0].contains("ns/first:p80"));
    assert!(services[1].contains("ns/last:p80"));
    assert!(services[2].contains("kubernetes service nodeports"));
    assert_eq!(probability(3), "0.3333333333");
    assert!(restore.contains("--probability 0.3333333333 -j"));
    assert!(restore.contains("--probability 0.5000000000 -j"));
}

#[test]
fn jump_commands_create_chains_before_jumping_to_them() {
    let commands = jump_commands();
    let first_jump = commands.iter().position(|c| c[2] == "-I").unwrap();
    assert!(commands[..first_jump].iter().all(|c| c[2] == "-N"));
    assert!(commands.contains(&["-t", "nat", "-I", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"].map(String::from).to_vec()));
    assert!(commands.contains(&["-t", "nat", "-N", "KUBE-POSTROUTING"].map(String::from).to_vec()));
}
