//! `cargo xtask e2e-kind`: the agent in a real cluster. Creates a kind cluster
//! without kube-proxy, loads the image, installs `manifests/` as they are,
//! deploys `manifests/e2e/workloads.yaml`, and checks from real pods: a
//! ClusterIP, a Service name resolved through CoreDNS (itself behind a
//! ClusterIP), another node's NodePort, a pod created after the agent, an
//! endpoint change; and from a client container on kind's network, outside
//! every node: NodePort on every node, a LoadBalancer address with its
//! healthCheckNodePort per node, and a ClusterIP not served from outside
//! (the agent's default, as Cilium's). Then it deletes the cluster.
//!
//! It needs a container engine and the internet (kind's node image, the
//! agnhost test image); where either is missing it says so and exits with
//! code 2, and the lab tests of `cargo xtask test` stand in for it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use proxy_lab::cmd::{output, run};

use crate::image::{self, cannot_run};
use crate::workspace;

const CLUSTER: &str = "ebpf-proxy";
const CONTEXT: &str = "kind-ebpf-proxy";
const CLIENT: &str = "ebpf-proxy-e2e-client";
/// From manifests/e2e/workloads.yaml.
const CLUSTER_IP: &str = "10.96.100.10";
const NODE_PORT: u16 = 30080;
const HEALTH_CHECK_PORT: u16 = 32500;
/// TEST-NET-1: written into the LoadBalancer's status, routed to a worker
/// inside the client container only.
const LB_IP: &str = "192.0.2.10";
const REQUESTS: u32 = 40;

/// kube-proxy off: the agent is the only service proxy. Two workers so
/// traffic crosses nodes and per-node health checks differ.
const KIND_CONFIG: &str = "kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  kubeProxyMode: none
nodes:
- role: control-plane
- role: worker
- role: worker
";

pub fn run_e2e() -> anyhow::Result<()> {
    let why_not = "the lab tests (`cargo xtask test`) stand in for it here";
    let Some(engine) = image::engine() else {
        cannot_run("e2e-kind", &format!("no container engine answers (`docker info`, `podman info`); kind needs one; {why_not}"))
    };
    if output("kind", &["version"]).map_or(true, |o| !o.status.success()) {
        cannot_run("e2e-kind", &format!("`kind` is not installed (https://kind.sigs.k8s.io); {why_not}"));
    }
    let online = output("curl", &["-sS", "-o", "/dev/null", "--max-time", "5", "https://registry.k8s.io/v2/"]).is_ok_and(|o| o.status.success());
    if !online {
        cannot_run("e2e-kind", &format!("registry.k8s.io is unreachable; kind's node image and agnhost need the internet; {why_not}"));
    }

    let started = Instant::now();
    image::build(engine)?;
    let cluster = Cluster::create()?;
    cluster.install()?;
    let nodes = cluster.nodes()?;
    let pods = cluster.echo_pods()?;
    println!("e2e-kind: nodes {nodes:?}; echo pods {pods:?}");
    let worker = nodes.iter().find(|n| n.name.contains("worker")).context("no worker node")?;
    cluster.start_client(&worker.ip)?;

    let all: BTreeSet<String> = pods.iter().map(|p| p.name.clone()).collect();
    let clusterip = format!("http://{CLUSTER_IP}/hostname");
    // From pods, created after the agent was installed: one on each worker.
    let workers: Vec<&Node> = nodes.iter().filter(|n| n.name.contains("worker")).collect();
    ensure!(workers.len() == 2, "want two workers, have {workers:?}");
    for (client, node) in [("client-1", workers[0]), ("client-2", workers[1])] {
        cluster.start_client_pod(client, &node.name)?;
        check(&format!("ClusterIP from pod {client} on {}", node.name), &cluster.pod_answered_by(client, &clusterip)?, &all)?;
        // By name: resolved by CoreDNS, which the pod reaches through the
        // kube-dns ClusterIP, like every other pod's resolver.
        let by_name = "http://echo.e2e.svc.cluster.local/hostname";
        check(&format!("Service name through CoreDNS from pod {client}"), &cluster.pod_answered_by(client, by_name)?, &all)?;
        let other = if node.name == workers[0].name { workers[1] } else { workers[0] };
        let nodeport = format!("http://{}:{NODE_PORT}/hostname", other.ip);
        check(&format!("NodePort of {} from pod {client}", other.name), &cluster.pod_answered_by(client, &nodeport)?, &all)?;
    }
    // From outside the cluster, a ClusterIP is not served (see the
    // ConfigMap's EXTERNAL_CLUSTER_IP).
    let outside = cluster.answered_by_n(&clusterip, 3)?;
    ensure!(outside.iter().all(String::is_empty), "a ClusterIP answered from outside the cluster: {outside:?}");
    println!("e2e-kind: ok  ClusterIP from outside the cluster: not served ({} requests)", outside.len());
    for node in &nodes {
        let nodeport = format!("http://{}:{NODE_PORT}/hostname", node.ip);
        check(&format!("NodePort on {}", node.name), &cluster.answered_by(&nodeport)?, &all)?;
    }
    // externalTrafficPolicy Local: the worker the route leads to answers
    // with its own pods only.
    let local: BTreeSet<String> = pods.iter().filter(|p| p.node == worker.name).map(|p| p.name.clone()).collect();
    check("LoadBalancer (Local)", &cluster.answered_by(&format!("http://{LB_IP}/hostname"))?, &local)?;
    for node in &nodes {
        let has_local = pods.iter().any(|p| p.node == node.name);
        let status = cluster.status(&format!("http://{}:{HEALTH_CHECK_PORT}/", node.ip))?;
        let wanted = if has_local { "200" } else { "503" };
        ensure!(status == wanted, "healthCheckNodePort on {}: {status}, wanted {wanted}", node.name);
        println!("e2e-kind: ok  healthCheckNodePort on {}: {status}", node.name);
    }

    // Endpoint change: down to one pod; within seconds only it answers.
    cluster.kubectl(&["-n", "e2e", "scale", "deploy/echo", "--replicas=1"])?;
    let changed = Instant::now();
    loop {
        let left = cluster.echo_pods()?;
        let last = cluster.pod_answered_by("client-1", &clusterip)?;
        let answered: BTreeSet<String> = last.iter().cloned().collect();
        if left.len() == 1 && answered == BTreeSet::from([left[0].name.clone()]) {
            println!("e2e-kind: ok  endpoint change: only {} answers {} ms after scaling down", left[0].name, changed.elapsed().as_millis());
            break;
        }
        if changed.elapsed() > Duration::from_secs(60) {
            bail!("after scaling to one pod, still answered by {last:?}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(cluster);
    println!("e2e-kind: passed in {:.0} s; cluster deleted", started.elapsed().as_secs_f64());
    Ok(())
}

/// Every request answered, by exactly the `wanted` pods.
fn check(what: &str, answers: &[String], wanted: &BTreeSet<String>) -> anyhow::Result<()> {
    let failed = answers.iter().filter(|a| a.is_empty()).count();
    let answered: BTreeSet<String> = answers.iter().filter(|a| !a.is_empty()).cloned().collect();
    ensure!(failed == 0, "{what}: {failed} of {} requests failed", answers.len());
    ensure!(&answered == wanted, "{what}: answered by {answered:?}, wanted {wanted:?}");
    println!("e2e-kind: ok  {what}: {} requests answered by {answered:?}", answers.len());
    Ok(())
}

#[derive(Debug)]
struct Node {
    name: String,
    ip: String,
}

#[derive(Debug)]
struct Pod {
    name: String,
    node: String,
}

/// Deletes the cluster and the client container when dropped, also when a
/// check fails half-way.
struct Cluster;

impl Cluster {
    fn create() -> anyhow::Result<Self> {
        let dir = workspace::root().join("target/e2e-kind");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("kind.yaml");
        std::fs::write(&config, KIND_CONFIG)?;
        let _ = run("kind", &["delete", "cluster", "--name", CLUSTER]);
        println!("e2e-kind: creating kind cluster {CLUSTER} without kube-proxy");
        run("kind", &["create", "cluster", "--name", CLUSTER, "--config", &config.to_string_lossy(), "--wait", "120s"])?;
        Ok(Cluster)
    }

    fn install(&self) -> anyhow::Result<()> {
        run("kind", &["load", "docker-image", image::IMAGE, "--name", CLUSTER])?;
        let manifests = workspace::root().join("manifests");
        self.kubectl(&["apply", "-k", &manifests.to_string_lossy()])?;
        self.kubectl(&["-n", "ebpf-proxy", "rollout", "status", "ds/ebpf-proxy", "--timeout=180s"])?;
        self.kubectl(&["apply", "-f", &manifests.join("e2e/workloads.yaml").to_string_lossy()])?;
        self.kubectl(&["-n", "e2e", "rollout", "status", "deploy/echo", "--timeout=180s"])?;
        let status = format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{LB_IP}"}}]}}}}}}"#);
        self.kubectl(&["-n", "e2e", "patch", "service", "echo-lb", "--subresource=status", "--type=merge", "-p", &status])?;
        Ok(())
    }

    fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["--context", CONTEXT];
        full.extend_from_slice(args);
        run("kubectl", &full)
    }

    fn nodes(&self) -> anyhow::Result<Vec<Node>> {
        let jsonpath = r#"jsonpath={range .items[*]}{.metadata.name} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}"#;
        let out = self.kubectl(&["get", "nodes", "-o", jsonpath])?;
        Ok(pairs(&out).map(|(name, ip)| Node { name, ip }).collect())
    }

    /// Ready echo pods and their nodes.
    fn echo_pods(&self) -> anyhow::Result<Vec<Pod>> {
        let jsonpath = r#"jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.metadata.deletionTimestamp}{"\n"}{end}"#;
        let out = self.kubectl(&["-n", "e2e", "get", "pods", "-l", "app=echo", "-o", jsonpath])?;
        // Terminating pods carry a third field, their deletion time.
        Ok(out
            .lines()
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>().as_slice() {
                [name, node] => Some(Pod {
                    name: name.to_string(),
                    node: node.to_string(),
                }),
                _ => None,
            })
            .collect())
    }

    /// A container on kind's network, outside every node, that routes the
    /// service range and the LoadBalancer address to one worker: the path
    /// external traffic takes to a node.
    fn start_client(&self, worker_ip: &str) -> anyhow::Result<()> {
        let node_image = run("docker", &["inspect", "--format", "{{.Config.Image}}", &format!("{CLUSTER}-control-plane")])?;
        let _ = run("docker", &["rm", "-f", CLIENT]);
        run(
            "docker",
            &["run", "-d", "--name", CLIENT, "--network", "kind", "--cap-add", "NET_ADMIN", "--entrypoint", "sleep", node_image.trim(), "infinity"],
        )?;
        run("docker", &["exec", CLIENT, "ip", "route", "add", "10.96.0.0/12", "via", worker_ip])?;
        run("docker", &["exec", CLIENT, "ip", "route", "add", &format!("{LB_IP}/32"), "via", worker_ip])?;
        Ok(())
    }

    /// A client pod on `node` (agnhost has curl and a shell), ready.
    fn start_client_pod(&self, name: &str, node: &str) -> anyhow::Result<()> {
        let overrides = format!(r#"{{"spec":{{"nodeName":"{node}"}}}}"#);
        self.kubectl(&[
            "-n", "e2e", "run", name, "--image=registry.k8s.io/e2e-test-images/agnhost:2.53", "--restart=Never",
            &format!("--overrides={overrides}"), "--", "pause",
        ])?;
        self.kubectl(&["-n", "e2e", "wait", "--for=condition=Ready", &format!("pod/{name}"), "--timeout=120s"])?;
        Ok(())
    }

    /// Like `answered_by`, from inside pod `client`.
    fn pod_answered_by(&self, client: &str, url: &str) -> anyhow::Result<Vec<String>> {
        let script = format!("for i in $(seq {REQUESTS}); do curl -s --max-time 2 {url}; echo; done");
        let out = self.kubectl(&["-n", "e2e", "exec", client, "--", "sh", "-c", &script])?;
        Ok(out.lines().map(|l| l.trim().to_string()).collect())
    }

    /// What each of `REQUESTS` new connections answered; empty when one failed.
    fn answered_by(&self, url: &str) -> anyhow::Result<Vec<String>> {
        self.answered_by_n(url, REQUESTS)
    }

    fn answered_by_n(&self, url: &str, requests: u32) -> anyhow::Result<Vec<String>> {
        let script = format!("for i in $(seq {requests}); do curl -s --max-time 2 {url}; echo; done");
        let out = run("docker", &["exec", CLIENT, "sh", "-c", &script])?;
        Ok(out.lines().map(|l| l.trim().to_string()).collect())
    }

    fn status(&self, url: &str) -> anyhow::Result<String> {
        let out = run("docker", &["exec", CLIENT, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url])?;
        Ok(out.trim().to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run("docker", &["rm", "-f", CLIENT]);
        match run("kind", &["delete", "cluster", "--name", CLUSTER]) {
            Ok(_) => println!("e2e-kind: deleted cluster {CLUSTER}"),
            Err(error) => eprintln!("e2e-kind: deleting cluster {CLUSTER}: {error:#}"),
        }
    }
}

fn pairs(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.lines().filter_map(|l| {
        let (a, b) = l.trim().split_once(' ')?;
        Some((a.to_string(), b.trim().to_string()))
    })
}
