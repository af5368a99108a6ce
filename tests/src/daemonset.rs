//! The agent as `manifests/` starts it: `kubectl kustomize manifests/`
//! rendered, the DaemonSet's containers read back, `$(VAR)` references
//! expanded from the ConfigMap and the container's environment, as the
//! kubelet expands them. The lab then swaps only what a lab node has in
//! other places: the binary, the API server, the node's name and the host
//! paths behind the DaemonSet's volumes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use serde_json::Value;

/// One container of the DaemonSet, as the kubelet would start it.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    /// `command` then `args`, `$(VAR)` not yet expanded.
    pub argv: Vec<String>,
    /// Environment: `envFrom` ConfigMaps first, then `env` (later wins).
    pub env: Vec<EnvVar>,
    /// (mountPath, hostPath) of each volume mount.
    pub mounts: Vec<(String, String)>,
    /// `securityContext.capabilities.add`, upper case without `CAP_`.
    pub caps_add: Vec<String>,
    pub privileged: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvVar {
    Value(String, String),
    /// `valueFrom.fieldRef`: (name, fieldPath).
    Field(String, String),
}

#[derive(Clone, Debug)]
pub struct DaemonSet {
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
}

impl DaemonSet {
    pub fn container(&self, name: &str) -> anyhow::Result<&Container> {
        self.containers
            .iter()
            .chain(&self.init_containers)
            .find(|c| c.name == name)
            .with_context(|| format!("no container {name} in the DaemonSet"))
    }
}

impl Container {
    /// The environment the kubelet gives the container on `node_name`.
    pub fn environment(&self, node_name: &str) -> anyhow::Result<BTreeMap<String, String>> {
        self.environment_with(node_name, &[])
    }

    /// Like `environment`, with `config` values in place of the
    /// ConfigMap's (as a kustomize patch of it would set them).
    pub fn environment_with(&self, node_name: &str, config: &[(&str, &str)]) -> anyhow::Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        for var in &self.env {
            match var {
                EnvVar::Value(name, value) => {
                    let value = config.iter().find(|(k, _)| k == name).map_or(value.as_str(), |(_, v)| v);
                    let value = expand(value, &env);
                    env.insert(name.clone(), value);
                }
                EnvVar::Field(name, path) if path == "spec.nodeName" => {
                    env.insert(name.clone(), node_name.to_string());
                }
                EnvVar::Field(name, path) => bail!("env {name}: fieldRef {path} has no lab value"),
            }
        }
        Ok(env)
    }

    /// `argv` with `$(VAR)` expanded from `env`.
    pub fn expanded_argv(&self, env: &BTreeMap<String, String>) -> Vec<String> {
        self.argv.iter().map(|a| expand(a, env)).collect()
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an
/// undefined reference is left as written, `$$` is a literal `$`.
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(close) = after.strip_prefix('(').and_then(|s| s.find(')')) {
            let name = &after[1..1 + close];
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&rest[i..i + 2 + close + 1]),
            }
            rest = &after[1 + close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `kubectl kustomize manifests/`, read once per process.
pub fn rendered() -> anyhow::Result<&'static DaemonSet> {
    static CACHE: OnceLock<DaemonSet> = OnceLock::new();
    if let Some(ds) = CACHE.get() {
        return Ok(ds);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let yaml = crate::cmd::run("kubectl", &["kustomize", &root.join("manifests").to_string_lossy()])?;
    let ds = parse(&yaml)?;
    Ok(CACHE.get_or_init(|| ds))
}

pub fn parse(rendered: &str) -> anyhow::Result<DaemonSet> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(rendered) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    let config_maps: BTreeMap<String, BTreeMap<String, String>> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .map(|o| {
            let data = o["data"]
                .as_object()
                .map(|d| d.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                .unwrap_or_default();
            (o["metadata"]["name"].as_str().unwrap_or_default().to_string(), data)
        })
        .collect();
    let ds = objects.iter().find(|o| o["kind"] == "DaemonSet").context("no DaemonSet in the rendered manifests")?;
    let pod = &ds["spec"]["template"]["spec"];
    let host_paths: BTreeMap<&str, &str> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
        .collect();
    let containers = |key: &str| -> anyhow::Result<Vec<Container>> {
        pod[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| container(c, &config_maps, &host_paths))
            .collect()
    };
    Ok(DaemonSet {
        init_containers: containers("initContainers")?,
        containers: containers("containers")?,
    })
}

fn container(
    c: &Value,
    config_maps: &BTreeMap<String, BTreeMap<String, String>>,
    host_paths: &BTreeMap<&str, &str>,
) -> anyhow::Result<Container> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
    };
    let name = c["name"].as_str().unwrap_or_default().to_string();
    let mut argv = strings(&c["command"]);
    argv.extend(strings(&c["args"]));
    let mut env = Vec::new();
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let map = from["configMapRef"]["name"].as_str().context("envFrom without configMapRef")?;
        let data = config_maps.get(map).with_context(|| format!("{name}: no ConfigMap {map}"))?;
        env.extend(data.iter().map(|(k, v)| EnvVar::Value(k.clone(), v.clone())));
    }
    for var in c["env"].as_array().into_iter().flatten() {
        let var_name = var["name"].as_str().unwrap_or_default().to_string();
        if let Some(value) = var["value"].as_str() {
            env.push(EnvVar::Value(var_name, value.to_string()));
        } else if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            env.push(EnvVar::Field(var_name, path.to_string()));
        } else {
            bail!("{name}: env {var_name} has a source the lab does not know");
        }
    }
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let volume = m["name"].as_str().unwrap_or_default();
        let host = host_paths.get(volume).with_context(|| format!("{name}: volume {volume} is not a hostPath"))?;
        mounts.push((m["mountPath"].as_str().unwrap_or_default().to_string(), host.to_string()));
    }
    let security = &c["securityContext"];
    Ok(Container {
        name,
        argv,
        env,
        mounts,
        caps_add: strings(&security["capabilities"]["add"]),
        privileged: security["privileged"].as_bool().unwrap_or(false),
    })
}

/// Rewrites every reference to a volume's mount path in `argv` (an argument
/// that is the path, starts with it, or has it after `=`) to the lab's
/// stand-in for the volume's host path, `host_root` joined with it. Fails
/// when a mount is referenced by no argument: the program would then use
/// it by a default the lab cannot see, on the machine's own filesystem.
pub fn swap_host_paths(argv: &[String], mounts: &[(String, String)], host_root: &Path) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = argv.to_vec();
    for (mount_path, host_path) in mounts {
        let lab_path = host_root.join(host_path.trim_start_matches('/')).to_string_lossy().into_owned();
        let mut used = false;
        for arg in out.iter_mut() {
            let (prefix, value) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with('-') => (format!("{flag}="), value.to_string()),
                _ => (String::new(), arg.clone()),
            };
            if value == *mount_path || value.starts_with(&format!("{mount_path}/")) {
                *arg = format!("{prefix}{lab_path}{}", &value[mount_path.len()..]);
                used = true;
            }
        }
        if !used {
            bail!("volume mounted at {mount_path} is named by no argument of {argv:?}: the lab cannot point it at a lab path");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let env: BTreeMap<String, String> = [("A".to_string(), "1".to_string()), ("B".to_string(), "".to_string())].into();
        assert_eq!(expand("--x=$(A)", &env), "--x=1");
        assert_eq!(expand("--x=$(B)", &env), "--x=");
        assert_eq!(expand("$(A)$(A)-$(C)", &env), "11-$(C)");
        assert_eq!(expand("$$(A) $5 $", &env), "$(A) $5 $");
    }

    #[test]
    fn host_paths_are_swapped_where_arguments_name_them() {
        let mounts = vec![
            ("/sys/fs/bpf".to_string(), "/sys/fs/bpf".to_string()),
            ("/hostproc".to_string(), "/proc".to_string()),
        ];
        let argv: Vec<String> = ["agent", "--bpffs=/sys/fs/bpf", "--ns", "/hostproc/1/ns/cgroup", "--other=/sys/fs/bpfx"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = swap_host_paths(&argv, &mounts, Path::new("/run/lab/node-1/host")).unwrap();
        assert_eq!(
            out,
            vec!["agent", "--bpffs=/run/lab/node-1/host/sys/fs/bpf", "--ns", "/run/lab/node-1/host/proc/1/ns/cgroup", "--other=/sys/fs/bpfx"]
        );
        let unnamed = vec![("/var/run".to_string(), "/var/run".to_string())];
        assert!(swap_host_paths(&argv, &unnamed, Path::new("/x")).is_err());
    }

    #[test]
    fn parses_a_daemonset_with_its_config_map() {
        let yaml = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {DEVICES: eth0, EMPTY: ""}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds}
spec:
  template:
    spec:
      initContainers:
      - name: init
        command: [/bin/x, --bpffs=/sys/fs/bpf, prepare]
        securityContext: {privileged: true}
        volumeMounts: [{name: bpffs, mountPath: /sys/fs/bpf}]
      containers:
      - name: agent
        command: [/bin/x]
        args: [run, --device=$(DEVICES), --e=$(EMPTY), --node=$(NODE_NAME)]
        envFrom: [{configMapRef: {name: cfg}}]
        env: [{name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]
        securityContext: {capabilities: {drop: [ALL], add: [BPF, NET_ADMIN]}}
      volumes: [{name: bpffs, hostPath: {path: /sys/fs/bpf}}]
"#;
        let ds = parse(yaml).unwrap();
        let init = ds.container("init").unwrap();
        assert!(init.privileged);
        assert_eq!(init.mounts, vec![("/sys/fs/bpf".to_string(), "/sys/fs/bpf".to_string())]);
        let agent = ds.container("agent").unwrap();
        let env = agent.environment("node-1").unwrap();
        assert_eq!(agent.expanded_argv(&env), vec!["/bin/x", "run", "--device=eth0", "--e=", "--node=node-1"]);
        assert_eq!(agent.caps_add, vec!["BPF", "NET_ADMIN"]);
    }
}
