//! The lab: a virtual cluster made of network namespaces, for tests and the
//! demo. Nothing in it links to the root namespace and no route leads out
//! of it; every address used belongs to a namespace the lab created.
//!
//! ```text
//!             [ switch ns: bridge br0 ]  underlay 10.100.0.0/24
//!      /             |              |               \
//!  node-1 .11     node-2 .12    client .100    control-plane .2
//!   | lxc-*          | lxc-*
//!  pods 10.244.1.x  pods 10.244.2.x
//! ```

pub mod apiserver;
pub mod bench_sync;
pub mod cmd;
pub mod control_plane;
pub mod kube_proxy_rules;
pub mod lab;
pub mod manifests;
pub mod privilege;
pub mod traffic;

pub use lab::{Agent, Binaries, Lab, Pod};
pub use traffic::{Reply, Summary};
