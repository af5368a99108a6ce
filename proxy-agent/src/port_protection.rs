//! Keeping the node's own sockets off the ports the datapath answers for.
//! A NodePort is matched by destination port on the node's addresses, and a
//! SNAT port by the reply tuple: a local connection that the kernel gave
//! such a port would have its replies taken by the datapath. Linux hands out
//! ephemeral ports from `net.ipv4.ip_local_port_range`, skipping those in
//! `net.ipv4.ip_local_reserved_ports`; when a range of ours overlaps the
//! ephemeral range, the agent adds it to the reserved ports (as Cilium's
//! auto-protect-node-port-range does), or, with protection off, warns.

use std::fmt::Write;

use crate::datapath_config::PortRange;

const EPHEMERAL: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Kubernetes' default `--service-node-port-range`.
pub const NODE_PORTS: PortRange = PortRange {
    min: proxy_common::config::NODE_PORT_MIN,
    max: proxy_common::config::NODE_PORT_MAX,
};

/// The reserved-port list (the sysctl's `a-b,c` format) with `add` merged in.
pub fn with_ranges(existing: &str, add: &[PortRange]) -> String {
    let mut ranges: Vec<(u32, u32)> = existing
        .trim()
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            let (low, high) = part.split_once('-').unwrap_or((part, part));
            Some((low.trim().parse().ok()?, high.trim().parse().ok()?))
        })
        .chain(add.iter().map(|r| (u32::from(r.min), u32::from(r.max))))
        .collect();
    ranges.sort();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (low, high) in ranges {
        match merged.last_mut() {
            Some(last) if low <= last.1 + 1 => last.1 = last.1.max(high),
            _ => merged.push((low, high)),
        }
    }
    let mut out = String::new();
    for (i, (low, high)) in merged.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = if low == high { write!(out, "{sep}{low}") } else { write!(out, "{sep}{low}-{high}") };
    }
    out
}

/// Whether every port of `range` is in the reserved list `reserved`.
pub fn covers(reserved: &str, range: PortRange) -> bool {
    with_ranges(reserved, &[range]) == with_ranges(reserved, &[])
}

/// Once at start-up: each of `ranges` (named for the log) that meets the
/// kernel's ephemeral range is reserved (`protect`) or warned about.
pub fn apply(ranges: &[(&str, PortRange)], protect: bool) {
    let Some(ephemeral) = std::fs::read_to_string(EPHEMERAL).ok().and_then(|t| {
        let mut parts = t.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
        Some(PortRange { min: parts.next()?, max: parts.next()? })
    }) else {
        return;
    };
    let reserved = std::fs::read_to_string(RESERVED).unwrap_or_default();
    let meeting: Vec<(&str, PortRange)> = ranges
        .iter()
        .copied()
        .filter(|(_, r)| r.overlaps(ephemeral) && !covers(&reserved, *r))
        .collect();
    if !protect {
        for (what, range) in &meeting {
            tracing::warn!(%ephemeral, %range, what, "the kernel's ephemeral port range overlaps a range the datapath answers for; a local connection given such a port could lose its replies");
        }
        return;
    }
    if meeting.is_empty() {
        return;
    }
    let wanted = with_ranges(&reserved, &meeting.iter().map(|(_, r)| *r).collect::<Vec<_>>());
    match std::fs::write(RESERVED, &wanted) {
        Ok(()) => tracing::info!(%ephemeral, reserved = wanted, ranges = ?meeting, "reserved ports the datapath answers for, so local sockets are never given them"),
        Err(error) => tracing::warn!(%error, ranges = ?meeting, "could not reserve the ports the datapath answers for; a local connection given such a port could lose its replies"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(min: u16, max: u16) -> PortRange {
        PortRange { min, max }
    }

    #[test]
    fn ranges_are_merged_into_the_existing_list() {
        assert_eq!(with_ranges("", &[r(61000, 65535)]), "61000-65535");
        assert_eq!(with_ranges("\n", &[]), "");
        assert_eq!(with_ranges("8080,50000-50010\n", &[r(30000, 32767)]), "8080,30000-32767,50000-50010");
        assert_eq!(with_ranges("30000-31000,32000", &[r(30000, 32767)]), "30000-32767", "inside ours");
        assert_eq!(with_ranges("32768", &[r(30000, 32767)]), "30000-32768", "adjacent");
        assert_eq!(with_ranges("", &[r(100, 100)]), "100");
    }

    #[test]
    fn covered_only_when_every_port_is_reserved() {
        assert!(covers("30000-32767", NODE_PORTS));
        assert!(covers("1000-40000,61000", NODE_PORTS));
        assert!(!covers("30000-32000", NODE_PORTS));
        assert!(!covers("", r(61000, 65535)));
    }
}
