//! /version and the legacy (unaggregated) discovery documents. Clients
//! that ask for aggregated discovery (`Accept: ...;as=APIGroupDiscoveryList`)
//! get these with `Content-Type: application/json` and fall back to
//! fetching each group version, as they do with older servers.

use serde_json::{json, Value};

use super::resource::Resource;

const GROUP: &str = "discovery.k8s.io";

/// The discovery document at this path, if it is one.
pub fn document(segs: &[&str]) -> Option<Value> {
    Some(match segs {
        ["version"] => json!({
            "major": "1",
            "minor": "32",
            "gitVersion": "v1.32.0",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2024-12-11T00:00:00Z",
            "goVersion": "go1.23.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }),
        ["api"] => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }),
        ["apis"] => json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [group()],
        }),
        ["apis", GROUP] => {
            let mut g = group();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            g
        }
        ["api", "v1"] => resource_list(""),
        ["apis", GROUP, "v1"] => resource_list(GROUP),
        _ => return None,
    })
}

fn group() -> Value {
    let v = json!({"groupVersion": format!("{GROUP}/v1"), "version": "v1"});
    json!({"name": GROUP, "versions": [v.clone()], "preferredVersion": v})
}

fn resource_list(group: &str) -> Value {
    let resources: Vec<Value> = Resource::ALL
        .into_iter()
        .filter(|r| r.group() == group)
        .map(|r| {
            json!({
                "name": r.plural(),
                "singularName": r.singular(),
                "namespaced": r.namespaced(),
                "kind": r.kind(),
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                "shortNames": r.short_names(),
            })
        })
        .collect();
    let group_version = if group.is_empty() { "v1".to_string() } else { format!("{group}/v1") };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}
