//! Slots of the tail-call program array: which program handles what the
//! tc entry points hand on.

pub const TAIL_CALLS_MAP: &str = "TAIL_CALLS";
pub const SLOTS: u32 = 3;

/// ICMP errors arriving on a device, translated and forwarded
/// (`proxy_tc_icmp`).
pub const ICMP_INGRESS: u32 = 0;
/// ICMP errors leaving into a pod, translated only
/// (`proxy_tc_icmp_egress`).
pub const ICMP_EGRESS: u32 = 1;

/// A packet to refuse (a frontend without usable endpoints): answered with
/// a reset or a port unreachable (`proxy_tc_refuse`).
pub const REFUSE: u32 = 2;

/// (slot, program) pairs the agent loads and puts in the array.
pub const PROGRAMS: [(u32, &str); 3] = [
    (ICMP_INGRESS, "proxy_tc_icmp"),
    (ICMP_EGRESS, "proxy_tc_icmp_egress"),
    (REFUSE, "proxy_tc_refuse"),
];
