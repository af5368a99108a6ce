//! The kernel state kube-proxy would create, for the benchmark's
//! baselines: no kube-proxy binary can run here, so the benchmark programs
//! a lab node exactly as kube-proxy's iptables and nftables modes would,
//! from the same Services our agent serves. Formats follow kube-proxy's
//! source (pkg/proxy/iptables and pkg/proxy/nftables in kubernetes) and are
//! checked against its own test expectations.

pub mod cluster;
pub mod iptables;
pub mod names;
pub mod nftables;
#[cfg(test)]
mod test_support;

pub use cluster::{Cluster, SyntheticSpec};
