//! `proxy-agent list services|backends|conntrack|attachments`: the pinned maps as
//! readable tables, in the spirit of `cilium bpf lb list`. The maps hold no
//! Service names, only what the datapath uses; the tables show that, so what
//! is printed is exactly what packets meet.
//!
//! Flag bits are printed by name from the tables below; a bit without a name
//! (added to proxy-common later) prints as hex instead of being hidden.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

use proxy_common::conntrack::ct_flags;
use proxy_common::maps::{backend_flags, scope, service_flags};
use proxy_common::{BackendSlotKey, CtDirection, CtKey, CtValue, ServiceKey, ServiceValue};

use crate::datapath::{PinLayout, PinnedMaps};
use crate::tables::Tables;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Frontends and the backends each one maps to, slot by slot.
    Services,
    /// Backends by id, with how many slots use each.
    Backends,
    /// Tracked flows: client -> frontend, translated to which backend.
    Conntrack,
    /// Where the programs are attached: devices and the cgroup.
    Attachments,
}

const SERVICE_FLAG_NAMES: &[(u32, &str)] = &[
    (service_flags::SESSION_AFFINITY, "affinity"),
    (service_flags::EXTERNAL_LOCAL, "external-local"),
    (service_flags::INTERNAL_LOCAL, "internal-local"),
    (service_flags::NO_LOCAL_ENDPOINTS, "no-local-endpoints"),
    (service_flags::SOURCE_RANGES, "source-ranges"),
];

const BACKEND_FLAG_NAMES: &[(u32, &str)] = &[
    (backend_flags::LOCAL as u32, "local"),
    (backend_flags::TERMINATING as u32, "terminating"),
];

pub fn list(layout: &PinLayout, what: What, limit: usize) -> anyhow::Result<()> {
    if what == What::Attachments {
        print!("{}", attachments_table(&crate::datapath::attachments(layout)));
        return Ok(());
    }
    let maps = PinnedMaps::open(layout)?;
    let text = match what {
        What::Services => services_table(&maps.read_tables()?),
        What::Backends => backends_table(&maps.read_tables()?),
        What::Conntrack => conntrack_table(maps.conntrack_entries()?, crate::conntrack_gc::monotonic_ns(), limit),
        What::Attachments => unreachable!(),
    };
    print!("{text}");
    Ok(())
}

/// One line per pinned link: the hook, what it is attached to, and the
/// program it runs.
pub fn attachments_table(attachments: &[crate::datapath::Attachment]) -> String {
    let mut rows = vec![row(["HOOK", "TARGET", "PROGRAM", "PIN"])];
    for a in attachments {
        rows.push(row([a.hook.as_str(), a.target.as_str(), a.program.as_str(), a.pin.as_str()]));
    }
    columns(&rows)
}

pub fn services_table(tables: &Tables) -> String {
    let mut rows = vec![row(["FRONTEND", "SCOPE", "ID", "FLAGS", "SLOT", "BACKEND", "BACKEND-ID", "BACKEND-FLAGS"])];
    // By scope, then address and port as people read them (the map's key
    // order is network byte order, which sorts 10.x after 192.x).
    let mut services: Vec<_> = tables.services.iter().collect();
    services.sort_by_key(|(k, _)| (k.scope, u32::from_be(k.addr), u16::from_be(k.port), k.proto));
    for (key, value) in services {
        let front = [frontend(key), scope_name(key.scope), value.service_id.to_string(), service_flag_text(value)];
        if value.count == 0 {
            let why = if value.flags & service_flags::NO_LOCAL_ENDPOINTS != 0 {
                "(none on this node: dropped)"
            } else {
                "(no backend: refused)"
            };
            rows.push(row([&front[0], &front[1], &front[2], &front[3], "-", why, "", ""]));
            continue;
        }
        for slot in 0..value.count {
            let slot_key = BackendSlotKey {
                service_id: value.service_id,
                slot,
            };
            let id = tables.slots.get(&slot_key);
            let backend = id.and_then(|id| tables.backends.get(id));
            let (addr, flags) = match backend {
                Some(b) => (socket(b.addr, b.port), flag_text(b.flags.into(), BACKEND_FLAG_NAMES)),
                None => ("<missing>".to_string(), String::new()),
            };
            let id = id.map_or("-".to_string(), u32::to_string);
            // The frontend's columns only on its first row, as cilium prints.
            let lead: [&str; 4] = if slot == 0 {
                [&front[0], &front[1], &front[2], &front[3]]
            } else {
                ["", "", "", ""]
            };
            rows.push(row([lead[0], lead[1], lead[2], lead[3], &slot.to_string(), &addr, &id, &flags]));
        }
    }
    columns(&rows)
}

pub fn backends_table(tables: &Tables) -> String {
    let mut used: BTreeMap<u32, usize> = BTreeMap::new();
    for id in tables.slots.values() {
        *used.entry(*id).or_default() += 1;
    }
    let mut rows = vec![row(["ID", "ADDRESS", "PROTO", "FLAGS", "SLOTS"])];
    for (id, b) in &tables.backends {
        rows.push(row([
            &id.to_string(),
            &socket(b.addr, b.port),
            proto_name(b.proto),
            &flag_text(b.flags.into(), BACKEND_FLAG_NAMES),
            &used.get(id).copied().unwrap_or(0).to_string(),
        ]));
    }
    columns(&rows)
}

/// One row per flow, from its original-direction entry; a reply entry whose
/// original the LRU evicted is listed on its own so nothing in the map is
/// hidden.
pub fn conntrack_table(mut entries: Vec<(CtKey, CtValue)>, now_ns: u64, limit: usize) -> String {
    entries.sort_by_key(|(k, _)| (k.direction, k.proto, u32::from_be(k.saddr), u16::from_be(k.sport), u32::from_be(k.daddr)));
    let replies: HashSet<CtKey> = entries
        .iter()
        .filter(|(k, _)| k.direction == CtDirection::Reply as u8)
        .map(|(k, _)| *k)
        .collect();
    let mut matched_replies = HashSet::new();
    let mut rows = vec![row(["PROTO", "CLIENT", "FRONTEND", "BACKEND", "BACKEND-ID", "REV-NAT", "AGE", "IDLE", "REPLY-ENTRY", "SOURCE-AS"])];
    let mut shown = 0;
    let mut flows = 0;
    for (k, v) in entries.iter().filter(|(k, _)| k.direction == CtDirection::Original as u8) {
        flows += 1;
        let snat = v.flags & ct_flags::SNAT != 0;
        let (src_addr, src_port) = if snat { (v.peer_addr, v.peer_port) } else { (k.saddr, k.sport) };
        let reply = k.reply_after_nat(v.nat_addr, v.nat_port, src_addr, src_port);
        let has_reply = replies.contains(&reply);
        if has_reply {
            matched_replies.insert(reply);
        }
        if shown >= limit {
            continue;
        }
        shown += 1;
        let mut cells = entry_cells(k, v);
        cells.extend(row([
            &duration(now_ns.saturating_sub(v.created_ns)),
            &duration(now_ns.saturating_sub(v.last_seen_ns)),
            if has_reply { "yes" } else { "missing" },
            // The source the backend sees, when SNAT or hairpin rewrote it.
            &if snat { socket(src_addr, src_port) } else { "-".into() },
        ]));
        rows.push(cells);
    }
    let mut out = columns(&rows);
    let orphans: Vec<_> = entries
        .iter()
        .filter(|(k, _)| k.direction == CtDirection::Reply as u8 && !matched_replies.contains(k))
        .collect();
    if flows > shown {
        let _ = writeln!(out, "({} more flows not shown; --limit)", flows - shown);
    }
    let _ = writeln!(out, "{flows} flows, {} entries", entries.len());
    if !orphans.is_empty() {
        let mut rows = vec![row(["PROTO", "BACKEND", "CLIENT", "RESTORES-SOURCE", "BACKEND-ID", "REV-NAT", "IDLE"])];
        for (k, v) in orphans.iter().take(limit) {
            let mut cells = entry_cells(k, v);
            cells.push(duration(now_ns.saturating_sub(v.last_seen_ns)));
            rows.push(cells);
        }
        let _ = writeln!(out, "\nreply entries without their original (evicted by the LRU; replies are still translated):");
        out.push_str(&columns(&rows));
    }
    out
}

/// An entry's tuple, where it was translated to, and its ids: the columns
/// both directions print.
fn entry_cells(k: &CtKey, v: &CtValue) -> Vec<String> {
    row([
        proto_name(k.proto),
        &socket(k.saddr, k.sport),
        &socket(k.daddr, k.dport),
        &socket(v.nat_addr, v.nat_port),
        &v.backend_id.to_string(),
        &v.rev_nat_index.to_string(),
    ])
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Left-aligned columns two spaces apart, no trailing blanks.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

/// Address and port as they sit in the maps: network byte order.
fn socket(addr: u32, port: u16) -> String {
    format!("{}:{}", ip(addr), u16::from_be(port))
}

fn frontend(key: &ServiceKey) -> String {
    format!("{}/{}", socket(key.addr, key.port), proto_name(key.proto))
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        proxy_common::IPPROTO_TCP => "TCP",
        proxy_common::IPPROTO_UDP => "UDP",
        _ => "?",
    }
}

fn scope_name(value: u8) -> String {
    match value {
        scope::CLUSTER_IP => "ClusterIP".into(),
        scope::NODE_PORT => "NodePort".into(),
        scope::EXTERNAL => "External".into(),
        other => format!("scope-{other}"),
    }
}

fn service_flag_text(value: &ServiceValue) -> String {
    let text = flag_text(value.flags, SERVICE_FLAG_NAMES);
    if value.flags & service_flags::SESSION_AFFINITY != 0 {
        return text.replacen("affinity", &format!("affinity={}s", value.affinity_timeout_s), 1);
    }
    text
}

/// Names of the set bits, comma-separated; unnamed bits as hex; `-` for none.
fn flag_text(bits: u32, names: &[(u32, &str)]) -> String {
    let mut parts = Vec::new();
    let mut rest = bits;
    for (bit, name) in names {
        if bits & bit != 0 {
            parts.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

fn duration(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_common::Backend;

    fn backend(a: [u8; 4], port: u16, flags: u8) -> Backend {
        Backend {
            addr: u32::from_ne_bytes(a),
            port: port.to_be(),
            proto: proxy_common::IPPROTO_TCP,
            flags,
        }
    }

    fn tables() -> Tables {
        let mut t = Tables::default();
        let key = |a: [u8; 4], port: u16, scope: u8| ServiceKey {
            addr: u32::from_ne_bytes(a),
            port: port.to_be(),
            proto: proxy_common::IPPROTO_TCP,
            scope,
        };
        let value = |id, count, flags| ServiceValue {
            service_id: id,
            count,
            rev_nat_index: id,
            flags,
            affinity_timeout_s: if flags & service_flags::SESSION_AFFINITY != 0 { 10800 } else { 0 },
        };
        t.services.insert(key([10, 96, 0, 10], 80, scope::CLUSTER_IP), value(1, 2, service_flags::SESSION_AFFINITY));
        t.services.insert(
            key([10, 100, 0, 11], 30080, scope::NODE_PORT),
            value(2, 0, service_flags::EXTERNAL_LOCAL | service_flags::NO_LOCAL_ENDPOINTS | 1 << 20),
        );
        t.services.insert(key([10, 96, 0, 40], 80, scope::CLUSTER_IP), value(3, 0, 0));
        t.backends.insert(7, backend([10, 244, 1, 11], 8080, backend_flags::LOCAL));
        t.backends.insert(8, backend([10, 244, 2, 10], 8080, backend_flags::TERMINATING));
        t.slots.insert(BackendSlotKey { service_id: 1, slot: 0 }, 7);
        t.slots.insert(BackendSlotKey { service_id: 1, slot: 1 }, 8);
        t
    }

    #[test]
    fn services_show_each_slot_scope_and_flags_by_name() {
        let text = services_table(&tables());
        println!("{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("FRONTEND"));
        let web = lines.iter().position(|l| l.starts_with("10.96.0.10:80/TCP")).unwrap();
        assert!(lines[web].contains("ClusterIP") && lines[web].contains("affinity=10800s"), "{}", lines[web]);
        assert!(lines[web].contains("10.244.1.11:8080") && lines[web].ends_with("local"), "{}", lines[web]);
        assert!(lines[web + 1].trim_start().starts_with("1 "), "second slot: {}", lines[web + 1]);
        assert!(lines[web + 1].contains("10.244.2.10:8080") && lines[web + 1].ends_with("terminating"));
        let np = lines.iter().find(|l| l.starts_with("10.100.0.11:30080/TCP")).unwrap();
        assert!(np.contains("NodePort") && np.contains("external-local,no-local-endpoints,0x100000"), "{np}");
        assert!(np.contains("dropped"), "{np}");
        let down = lines.iter().find(|l| l.starts_with("10.96.0.40:80/TCP")).unwrap();
        assert!(down.contains("refused"), "{down}");
    }

    #[test]
    fn backends_count_their_slots() {
        let text = backends_table(&tables());
        println!("{text}");
        let line = text.lines().find(|l| l.starts_with("7 ")).unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells, ["7", "10.244.1.11:8080", "TCP", "local", "1"]);
    }

    #[test]
    fn conntrack_pairs_directions_and_lists_orphans() {
        let client = u32::from_ne_bytes([10, 244, 1, 10]);
        let vip = u32::from_ne_bytes([10, 96, 0, 10]);
        let b = backend([10, 244, 2, 10], 8080, 0);
        let sec = 1_000_000_000;
        let orig = CtKey::new(client, vip, 40000u16.to_be(), 80u16.to_be(), 6, CtDirection::Original);
        let value = |addr, port, created| CtValue {
            backend_id: 8,
            rev_nat_index: 1,
            nat_addr: addr,
            nat_port: port,
            flags: 0,
            created_ns: created,
            last_seen_ns: created + 5 * sec,
            peer_addr: 0,
            peer_port: 0,
            _pad: [0; 2],
        };
        let reply = orig.reply_after_dnat(b.addr, b.port);
        let lost = CtKey::new(b.addr, client, b.port, 40001u16.to_be(), 6, CtDirection::Reply);
        let entries = vec![
            (reply, value(vip, 80u16.to_be(), 0)),
            (orig, value(b.addr, b.port, 0)),
            (lost, value(vip, 80u16.to_be(), 0)),
        ];
        let text = conntrack_table(entries, 200 * sec, 100);
        println!("{text}");
        let flow = text.lines().find(|l| l.starts_with("TCP") && l.contains("10.244.1.10:40000")).unwrap();
        let cells: Vec<&str> = flow.split_whitespace().collect();
        assert_eq!(cells, ["TCP", "10.244.1.10:40000", "10.96.0.10:80", "10.244.2.10:8080", "8", "1", "3m20s", "3m15s", "yes", "-"]);
        assert!(text.contains("1 flows, 3 entries"), "{text}");
        assert!(text.contains("without their original"), "{text}");
        assert!(text.contains("10.244.2.10:8080  10.244.1.10:40001  10.96.0.10:80"), "{text}");
    }

    #[test]
    fn limit_hides_rows_and_says_so() {
        let entries: Vec<_> = (0..5u16)
            .map(|i| {
                let k = CtKey::new(1, 2, (1000 + i).to_be(), 80u16.to_be(), 17, CtDirection::Original);
                (k, CtValue { backend_id: 1, rev_nat_index: 1, nat_addr: 3, nat_port: 8080u16.to_be(), flags: 0, created_ns: 0, last_seen_ns: 0, peer_addr: 0, peer_port: 0, _pad: [0; 2] })
            })
            .collect();
        let text = conntrack_table(entries, 0, 2);
        assert_eq!(text.lines().filter(|l| l.starts_with("UDP")).count(), 2);
        assert!(text.contains("(3 more flows not shown; --limit)"), "{text}");
    }
}
