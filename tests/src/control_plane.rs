//! The lab's control plane: the test API server in the control-plane
//! namespace on port 6443, reached over the underlay, and kubectl against it.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::cmd::{in_ns, ns_command};
use crate::lab::{wait_until, Lab};

pub const API_PORT: u16 = 6443;

pub struct ApiServer {
    child: Child,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ApiServer {
    /// Stops it, as a crash would (SIGKILL).
    pub fn kill(self) {}
}

impl Lab {
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr())
    }

    /// Where the API server listens, on the underlay.
    pub fn api_addr(&self) -> std::net::SocketAddr {
        (std::net::Ipv4Addr::new(10, 100, 0, 2), API_PORT).into()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Starts the API server (its state kept in the lab directory, so a
    /// restart keeps the objects, as etcd would) and writes a kubeconfig.
    pub fn start_apiserver(&self) -> anyhow::Result<ApiServer> {
        let state = self.dir.join("apiserver-state.json");
        self.spawn_apiserver(&["--state".as_ref(), state.as_os_str()])
    }

    /// Starts the API server on the objects of a state file, keeping
    /// changes in memory only and logging no requests (for benchmarks).
    pub fn start_apiserver_from(&self, initial_state: &std::path::Path) -> anyhow::Result<ApiServer> {
        self.spawn_apiserver(&["--initial-state".as_ref(), initial_state.as_os_str(), "--quiet".as_ref()])
    }

    fn spawn_apiserver(&self, args: &[&std::ffi::OsStr]) -> anyhow::Result<ApiServer> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("apiserver.log"))?;
        let child = ns_command(&self.control_plane_ns, &self.binaries.apiserver)
            .args(["--listen", &format!("0.0.0.0:{API_PORT}")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting lab-apiserver")?;
        let server = ApiServer { child };
        std::fs::write(
            self.kubeconfig(),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: lab}}\ncurrent-context: lab\nusers:\n- name: lab\n  user: {{}}\n",
                self.api_url()
            ),
        )?;
        let url = format!("{}/version", self.api_url());
        wait_until(Duration::from_secs(10), || in_ns(&self.control_plane_ns, &["curl", "-sf", "-m", "1", &url]).is_ok())
            .context("API server did not answer /version")?;
        Ok(server)
    }

    /// Runs kubectl against the lab's API server, from the control-plane
    /// namespace; stdin is `input` when given (for `-f -`).
    pub fn kubectl(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        let kubeconfig = self.kubeconfig().to_string_lossy().into_owned();
        let cache = self.dir.join("kube-cache").to_string_lossy().into_owned();
        let mut cmd = ns_command(&self.control_plane_ns, "kubectl");
        cmd.args(["--kubeconfig", &kubeconfig, "--cache-dir", &cache])
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running kubectl")?;
        if let Some(input) = input {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply`-like for the tests: create, or replace when present.
    pub fn kubectl_apply(&self, yaml: &str) -> anyhow::Result<()> {
        if self.kubectl(&["create", "--validate=false", "-f", "-"], Some(yaml)).is_err() {
            self.kubectl(&["replace", "--validate=false", "-f", "-"], Some(yaml))?;
        }
        Ok(())
    }

    /// Node objects for the lab's nodes, with their underlay addresses.
    pub fn register_nodes(&self) -> anyhow::Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            let zone = if i % 2 == 0 { "zone-a" } else { "zone-b" };
            let yaml = format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n    topology.kubernetes.io/zone: {zone}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {ip}}}\n  - {{type: Hostname, address: {name}}}\n",
                name = node.name,
                ip = node.underlay_ip
            );
            self.kubectl_apply(&yaml)?;
        }
        Ok(())
    }
}
