//! Shared by the lab test files.
#![allow(dead_code)]

use std::time::Duration;

use proxy_lab::{Binaries, Summary};

pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// ConfigMap settings (`manifests/config.yaml` keys) an agent is started
/// with, as an operator's kustomize patch would set them.
pub type Config<'a> = &'a [(&'a str, &'a str)];

/// Socket-level load balancing for host processes only: pods' flows go per
/// packet through the tc programs on their devices and conntrack.
pub const HOST_ONLY: (&str, &str) = ("SOCKET_LB_HOST_NAMESPACE_ONLY", "true");
/// The XDP fast path, on the lab nodes' devices, which are veths.
pub const XDP_ON_VETHS: [(&str, &str); 2] = [("XDP", "true"), ("XDP_ON_VETH", "true")];

/// A lab with its API server running (kept alive by the returned handle),
/// the nodes registered, and lab-backend serving in `backends`.
pub fn api_lab(backends: &[&str]) -> (proxy_lab::Lab, proxy_lab::control_plane::ApiServer) {
    let lab = proxy_lab::Lab::up(binaries()).expect("lab up");
    let api = lab.start_apiserver().expect("API server");
    lab.register_nodes().unwrap();
    lab.start_backends(backends).unwrap();
    (lab, api)
}

pub fn binaries() -> Binaries {
    // proxy-agent belongs to another package of the workspace: it sits next
    // to this package's binaries in the target directory, unless
    // PROXY_AGENT_BIN (set by `cargo xtask test`) says where it is.
    let backend = std::path::Path::new(env!("CARGO_BIN_EXE_lab-backend"));
    let mut b = Binaries::in_dir(backend.parent().unwrap());
    if let Ok(agent) = std::env::var("PROXY_AGENT_BIN") {
        b.agent = agent.into();
    }
    b.backend = env!("CARGO_BIN_EXE_lab-backend").into();
    b.client = env!("CARGO_BIN_EXE_lab-client").into();
    b.apiserver = env!("CARGO_BIN_EXE_lab-apiserver").into();
    b
}

/// The value of one verdict counter in `proxy-agent counters` output.
pub fn counter(output: &str, name: &str) -> u64 {
    output
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no counter {name} in {output}"))
}

pub fn answered_by(s: &Summary) -> Vec<&str> {
    s.by_backend.keys().map(String::as_str).collect()
}

/// GET `url` from inside namespace `ns`: (status, body).
pub fn http_get(ns: &str, url: &str) -> anyhow::Result<(u16, String)> {
    let out = proxy_lab::cmd::in_ns(ns, &["curl", "-sS", "--max-time", "2", "-w", "\n%{http_code}", url])?;
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    Ok((status.trim().parse()?, body.to_string()))
}

/// The value of one series in Prometheus text, e.g. `name{label="v"}`.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
        .parse()
        .unwrap()
}
