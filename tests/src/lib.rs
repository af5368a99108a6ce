//! The lab: a virtual cluster made of network namespaces, for tests and the
//! demo. Nothing in it links to the root namespace and no route leads out
//! of it; every address used belongs to a namespace the lab created.
//!
//! ```text
//!             [ switch ns: bridge br0 ]  underlay 10.100.0.0/24
//!      /             |              |               \
//!  node-1 .11     node-2 .12    client .100    control-plane .2
//!   | veth<hex>      | veth<hex>
//!  pods 10.244.1.x  pods 10.244.2.x
//! ```
//!
//! Each node is wired as kindnet wires a kind node (ptp veths with random
//! names, a /32 route per pod, masquerade to anything outside the pod
//! network), has a root cgroup of its own with a cgroup namespace rooted
//! there, and runs each pod's processes in a kubepods-style cgroup. Agents
//! start as the DaemonSet of `manifests/` starts them (`daemonset`).

pub mod apiserver;
pub mod bench_sync;
pub mod cmd;
pub mod control_plane;
pub mod daemonset;
pub mod foreign_prog;
pub mod kube_proxy_rules;
pub mod lab;
pub mod manifests;
pub mod node;
pub mod privilege;
pub mod traffic;

pub use lab::{Agent, Binaries, Lab, Offloads, Origin, Pod};
pub use traffic::{Reply, Summary};
