//! Building, using and tearing down the lab.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cmd::{in_ns, ip, ns_command, run, sysctl};
use crate::daemonset;
use crate::node::{self, CGROUP_MOUNT};
use crate::traffic::{self, Reply};

/// Every lab namespace and run directory starts with this, followed by the
/// pid of the process that made it, so leftovers of a killed run can be
/// recognised and removed.
pub const PREFIX: &str = "kpl";
pub const BACKEND_PORT: u16 = 8080;
/// The lab's Service range: every ClusterIP in its manifests is inside it
/// (kind's default, which the DaemonSet's config names).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The pods of every node: 10.244.<node>.0/24 each.
pub const POD_NETWORK: &str = "10.244.0.0/16";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The programs the lab runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    pub backend: PathBuf,
    pub client: PathBuf,
    pub apiserver: PathBuf,
}

impl Binaries {
    /// The binaries of a cargo target directory's profile folder.
    pub fn in_dir(dir: &Path) -> Self {
        Binaries {
            agent: dir.join("proxy-agent"),
            backend: dir.join("lab-backend"),
            client: dir.join("lab-client"),
            apiserver: dir.join("lab-apiserver"),
        }
    }

    pub fn check(&self) -> anyhow::Result<()> {
        for b in [&self.agent, &self.backend, &self.client, &self.apiserver] {
            if !b.exists() {
                bail!("{} is missing; build it first (cargo xtask test does)", b.display());
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub ns: String,
    pub underlay_ip: Ipv4Addr,
    /// This node's pod /24: 10.244.<index>.0.
    pub pod_net: u8,
    /// Stands for the node's root filesystem where the DaemonSet's hostPath
    /// volumes point: `/sys/fs/bpf` is `host_root/sys/fs/bpf`, and so on.
    pub host_root: PathBuf,
    /// The node's root cgroup (a kind node's is a cgroup of the machine's,
    /// seen by the node's processes through their cgroup namespace).
    pub cgroup: PathBuf,
}

impl Node {
    /// Where the DaemonSet's bpffs volume is on this node, pins below it.
    pub fn bpffs(&self) -> PathBuf {
        self.host_root.join("sys/fs/bpf")
    }
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub node: usize,
    /// The host side of its veth, in the node namespace, named as kindnet
    /// names it (`veth` and 8 random hex digits).
    pub host_if: String,
    /// The cgroup its processes run in (kubepods-style, below the node's).
    pub cgroup: PathBuf,
}

/// The default lab: two nodes, each with a client pod; one backend pod on
/// node 1 and two on node 2.
pub const DEFAULT_PODS: &[(&str, usize)] = &[("client-a", 0), ("web-1", 0), ("web-2", 1), ("web-3", 1), ("client-b", 1)];

pub struct Lab {
    pub id: String,
    pub dir: PathBuf,
    pub manifests: PathBuf,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub client_ns: String,
    pub control_plane_ns: String,
    switch_ns: String,
    offloads: Offloads,
    pub(crate) binaries: Binaries,
    children: Mutex<Vec<(String, Child)>>,
}

pub struct Agent {
    pub node: usize,
    pub log: PathBuf,
    /// Where this agent's lines start in a log shared with earlier agents.
    log_start: usize,
    child: Child,
}

impl Lab {
    pub fn up(binaries: Binaries) -> anyhow::Result<Lab> {
        Self::with_pods(binaries, DEFAULT_PODS)
    }

    pub fn with_pods(binaries: Binaries, pods: &[(&str, usize)]) -> anyhow::Result<Lab> {
        Self::with_options(binaries, pods, Offloads::KERNEL_DEFAULTS)
    }

    /// A lab whose veths keep or lose their transmit offloads (see
    /// `Offloads`).
    pub fn with_options(binaries: Binaries, pods: &[(&str, usize)], offloads: Offloads) -> anyhow::Result<Lab> {
        binaries.check()?;
        remove_stale_labs();
        let id = format!("{PREFIX}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let dir = PathBuf::from("/run").join(&id);
        std::fs::create_dir_all(dir.join("manifests"))?;
        let mut lab = Lab {
            manifests: dir.join("manifests"),
            dir,
            nodes: Vec::new(),
            pods: Vec::new(),
            client_ns: format!("{id}-client"),
            control_plane_ns: format!("{id}-cp"),
            switch_ns: format!("{id}-sw"),
            offloads,
            id,
            binaries,
            children: Mutex::new(Vec::new()),
        };
        // From here on, Drop tears down whatever was built, also on error.
        lab.build(pods)?;
        Ok(lab)
    }

    fn build(&mut self, pods: &[(&str, usize)]) -> anyhow::Result<()> {
        let sw = self.switch_ns.clone();
        add_ns(&sw)?;
        ip(&sw, &["link", "add", "name", "br0", "type", "bridge"])?;
        ip(&sw, &["link", "set", "br0", "up"])?;

        let node_count = pods.iter().map(|(_, n)| n + 1).max().unwrap_or(1).max(2);
        let cgroups = node::mount_cgroup2(&self.dir)?;
        for i in 0..node_count {
            let name = format!("node-{}", i + 1);
            let node = Node {
                ns: format!("{}-{name}", self.id),
                underlay_ip: underlay(11 + i as u8),
                pod_net: (i + 1) as u8,
                host_root: self.dir.join(&name).join("host"),
                cgroup: cgroups.join(format!("{}-{name}", self.id)),
                name,
            };
            self.attach_to_underlay(&node.ns, &node.name, node.underlay_ip)?;
            sysctl(&node.ns, "net.ipv4.ip_forward", "1")?;
            // The node answers ARP for its pods' gateway address.
            ip(&node.ns, &["addr", "add", &format!("10.244.{}.1/32", node.pod_net), "dev", "lo"])?;
            node::kindnet_masquerade(&node.ns, POD_NETWORK)?;
            std::fs::create_dir_all(&node.cgroup)?;
            // The node's processes see its root cgroup as theirs: the
            // host's /proc/1/ns/cgroup, to a DaemonSet's hostPath of /proc.
            node::make_cgroup_namespace(&node.cgroup, &node.host_root.join("proc/1/ns/cgroup"))?;
            self.nodes.push(node);
        }
        // Each node routes the other nodes' pod networks over the underlay.
        for a in &self.nodes {
            for b in &self.nodes {
                if a.ns != b.ns {
                    ip(&a.ns, &["route", "add", &format!("10.244.{}.0/24", b.pod_net), "via", &b.underlay_ip.to_string()])?;
                }
            }
        }
        let client_ns = self.client_ns.clone();
        self.attach_to_underlay(&client_ns, "client", underlay(100))?;
        let cp_ns = self.control_plane_ns.clone();
        self.attach_to_underlay(&cp_ns, "control-plane", underlay(2))?;

        for (name, node) in pods {
            self.add_pod(name, *node)?;
        }
        Ok(())
    }

    fn attach_to_underlay(&self, ns: &str, label: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        add_ns(ns)?;
        let port = switch_port(label);
        ip(ns, &["link", "add", "name", "eth0", "type", "veth", "peer", "name", &port, "netns", &self.switch_ns])?;
        ip(&self.switch_ns, &["link", "set", &port, "master", "br0", "up"])?;
        ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip(ns, &["link", "set", "eth0", "up"])?;
        if !self.offloads.underlay {
            no_checksum_offload(ns, "eth0")?;
            no_checksum_offload(&self.switch_ns, &port)?;
        }
        Ok(())
    }

    /// Wires a pod to `node` the way kindnet's CNI does (a ptp veth with a
    /// random `veth<hex>` host side, a /32 route to it), also after the
    /// agents started, as a pod scheduled later is.
    pub fn add_pod(&mut self, name: &str, node: usize) -> anyhow::Result<()> {
        let node_ref = self.nodes[node].clone();
        let index = self.pods.iter().filter(|p| p.node == node).count() as u8;
        let pod_ip = Ipv4Addr::new(10, 244, node_ref.pod_net, 10 + index);
        let gateway = format!("10.244.{}.1", node_ref.pod_net);
        let ns = format!("{}-{name}", self.id);
        let host_if = node::kindnet_veth_name();
        add_ns(&ns)?;
        ip(&ns, &["link", "add", "name", "eth0", "type", "veth", "peer", "name", &host_if, "netns", &node_ref.ns])?;
        ip(&ns, &["addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"])?;
        ip(&ns, &["link", "set", "eth0", "up"])?;
        ip(&ns, &["route", "add", &gateway, "dev", "eth0", "scope", "link"])?;
        ip(&ns, &["route", "add", "default", "via", &gateway, "dev", "eth0"])?;
        ip(&node_ref.ns, &["link", "set", &host_if, "up"])?;
        ip(&node_ref.ns, &["route", "add", &format!("{pod_ip}/32"), "dev", &host_if])?;
        if !self.offloads.pods {
            no_checksum_offload(&ns, "eth0")?;
            no_checksum_offload(&node_ref.ns, &host_if)?;
        }
        let cgroup = node::pod_cgroup(&node_ref.cgroup);
        std::fs::create_dir_all(&cgroup)?;
        self.pods.push(Pod {
            name: name.to_string(),
            ns,
            ip: pod_ip,
            node,
            host_if,
            cgroup,
        });
        Ok(())
    }

    /// The cgroup processes started in namespace `ns` run in: a pod's own;
    /// none for nodes and the lab's other hosts, whose processes stay
    /// where the test runs (outside every node's cgroup tree).
    fn cgroup_of(&self, ns: &str) -> Option<&Path> {
        self.pods.iter().find(|p| p.ns == ns).map(|p| p.cgroup.as_path())
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name} in the lab"))
    }

    /// The node's address on the underlay, where its NodePorts listen.
    pub fn node_ip(&self, node: usize) -> Ipv4Addr {
        self.nodes[node].underlay_ip
    }

    /// Starts `lab-backend` in each named pod, answering on `BACKEND_PORT`.
    pub fn start_backends(&self, pods: &[&str]) -> anyhow::Result<()> {
        for name in pods {
            let pod = self.pod(name);
            let backend = self.binaries.backend.to_string_lossy().into_owned();
            let port = BACKEND_PORT.to_string();
            self.spawn_in(&pod.ns, &[&backend, &pod.name, &port], &format!("backend-{name}"))?;
        }
        // Wait until each one listens, with a bound.
        for name in pods {
            let pod = self.pod(name);
            wait_until(Duration::from_secs(5), || {
                in_ns(&pod.ns, &["ss", "-Hltn", &format!("sport = :{BACKEND_PORT}")])
                    .map(|out| !out.trim().is_empty())
                    .unwrap_or(false)
            })
            .with_context(|| format!("backend {name} did not start listening"))?;
        }
        Ok(())
    }

    /// Starts `lab-backend` answering as `name` in a namespace that is not a
    /// pod's (the control plane's, standing for an endpoint outside the pod
    /// network, as the API server is behind `default/kubernetes`).
    pub fn start_backend_in(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        let backend = self.binaries.backend.to_string_lossy().into_owned();
        self.spawn_in(ns, &[&backend, name, &BACKEND_PORT.to_string()], &format!("backend-{name}"))?;
        wait_until(Duration::from_secs(5), || {
            in_ns(ns, &["ss", "-Hltn", &format!("sport = :{BACKEND_PORT}")])
                .map(|out| !out.trim().is_empty())
                .unwrap_or(false)
        })
        .with_context(|| format!("backend {name} did not start listening"))
    }

    /// Deletes a pod: its processes, its network namespace (and with it the
    /// veth pair, as the CNI's DEL does) and its cgroup.
    pub fn remove_pod(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self.pods.iter().position(|p| p.name == name).with_context(|| format!("no pod {name}"))?;
        let pod = self.pods.remove(index);
        node::remove_cgroup_tree(&pod.cgroup);
        run("ip", &["netns", "del", &pod.ns])?;
        Ok(())
    }

    fn spawn_in(&self, ns: &str, argv: &[&str], label: &str) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{label}.log")))?;
        let mut cmd = self.command_in(ns, argv[0])?;
        let child = cmd
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        self.children.lock().unwrap().push((label.to_string(), child));
        Ok(())
    }

    /// Starts the agent of `node` on the lab's manifest directory.
    pub fn start_agent(&self, node: usize) -> anyhow::Result<Agent> {
        self.start_agent_with(node, &[])
    }

    /// Starts the agent of `node` on the lab's API server (see `start_apiserver`).
    pub fn start_agent_on_api(&self, node: usize) -> anyhow::Result<Agent> {
        self.spawn_agent(node, AgentSource::Api, &[], &[])
    }

    /// Like `start_agent_on_api`, with keys of the DaemonSet's ConfigMap
    /// set otherwise, as a kustomize patch of it would.
    pub fn start_agent_on_api_with_config(&self, node: usize, config: &[(&str, &str)]) -> anyhow::Result<Agent> {
        self.spawn_agent(node, AgentSource::Api, &[], config)
    }

    /// Starts the agent of `node` as the DaemonSet of `manifests/` starts it
    /// (see `daemonset`): its init container's command first, with full
    /// privileges, then the agent container's command, arguments and
    /// environment with `$(VAR)` expanded from the ConfigMap, run with the
    /// container's capabilities only, in the node's network namespace and a
    /// pod cgroup of the node. Swapped for the lab's: the binary, the API
    /// server (the lab's kubeconfig, or a manifest directory), the node's
    /// name, and the host paths behind the volumes. `extra` flags are added,
    /// replacing the DaemonSet's of the same name.
    fn spawn_agent(&self, node: usize, source: AgentSource, extra: &[&str], config: &[(&str, &str)]) -> anyhow::Result<Agent> {
        let n = &self.nodes[node];
        let ds = daemonset::rendered()?;
        self.prepare_node(node, ds)?;
        let container = ds.container("agent")?;
        let mut env = container.environment_with(&n.name, config)?;
        env.remove("KUBERNETES_SERVICE_HOST");
        env.remove("KUBERNETES_SERVICE_PORT");
        let mut argv = daemonset::swap_host_paths(&container.expanded_argv(&env), &container.mounts, &n.host_root)?;
        argv[0] = self.binaries.agent.to_string_lossy().into_owned();
        let mut flags: Vec<String> = Vec::new();
        match source {
            AgentSource::Api => {
                env.insert("KUBECONFIG".into(), self.kubeconfig().to_string_lossy().into_owned());
            }
            AgentSource::Manifests => {
                // Without a Node object, the node's address comes from a flag.
                flags.extend(["--manifests".into(), self.manifests.to_string_lossy().into_owned()]);
                flags.extend(["--node-ip".into(), self.node_ip(node).to_string()]);
            }
        }
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let argv = with_flags(&with_flags(&argv, &flags), &extra);

        let log_path = self.dir.join(format!("agent-{}.log", n.name));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let log_start = log.metadata()?.len() as usize;
        let caps: Vec<String> = container.caps_add.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", n.ns))
            .arg("--")
            .arg("setpriv")
            .arg(format!("--bounding-set=-all,{}", caps.join(",")))
            .arg("--no-new-privs")
            .arg("--")
            .args(&argv)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        node::start_in_cgroup(&mut cmd, &node::agent_cgroup(&n.cgroup))?;
        let child = cmd.spawn().context("starting proxy-agent")?;
        Ok(Agent {
            node,
            log: log_path,
            log_start,
            child,
        })
    }

    /// The DaemonSet's init container on `node`, as root with every
    /// privilege: it mounts bpffs and the node's cgroup2. Then the lab
    /// checks that the cgroup the agent will attach to is the node's root
    /// and nothing above it.
    fn prepare_node(&self, node: usize, ds: &daemonset::DaemonSet) -> anyhow::Result<()> {
        let n = &self.nodes[node];
        for init in &ds.init_containers {
            let env = init.environment(&n.name)?;
            let mut argv = daemonset::swap_host_paths(&init.expanded_argv(&env), &init.mounts, &n.host_root)?;
            argv[0] = self.binaries.agent.to_string_lossy().into_owned();
            let mut full = vec![format!("--net=/run/netns/{}", n.ns), "--".to_string()];
            full.extend(argv);
            let full: Vec<&str> = full.iter().map(String::as_str).collect();
            run("nsenter", &full).with_context(|| format!("init container {} on {}", init.name, n.name))?;
        }
        let agent = ds.container("agent")?;
        let argv = daemonset::swap_host_paths(&agent.argv, &agent.mounts, &n.host_root)?;
        let root = argv
            .iter()
            .find_map(|a| a.strip_prefix("--cgroup-root="))
            .context("the DaemonSet passes no --cgroup-root")?;
        // Not mounted is safe (the agent finds no cgroup2 there and says
        // so); mounted anywhere but the node's root is not.
        if node::is_cgroup2_mount(Path::new(root)) && !node::is_mount_of(Path::new(root), &n.cgroup) {
            let _ = run("umount", &[root]);
            bail!("{root} is a cgroup2 mount of something else than {}'s root cgroup; refusing to let an agent attach there", n.name);
        }
        Ok(())
    }

    /// Takes away what the init container mounts the node's cgroup2 from
    /// (the host's cgroup namespace), as on a host where it cannot be done.
    pub fn break_cgroup_namespace(&self, node: usize) -> anyhow::Result<()> {
        let file = self.nodes[node].host_root.join("proc/1/ns/cgroup");
        run("umount", &[&file.to_string_lossy()])?;
        std::fs::remove_file(&file)?;
        Ok(())
    }

    /// Runs the agent binary's inspection or cleanup command for `node`.
    /// Runs in the node's network namespace (`list attachments` names the
    /// node's devices), as `kubectl exec` into the agent's pod would.
    pub fn agent_command(&self, node: usize, args: &[&str]) -> anyhow::Result<String> {
        let agent = self.binaries.agent.to_string_lossy().into_owned();
        let bpffs = self.nodes[node].bpffs().to_string_lossy().into_owned();
        let net = format!("--net=/run/netns/{}", self.nodes[node].ns);
        let mut argv = vec![net.as_str(), "--", agent.as_str(), "--bpffs", bpffs.as_str()];
        argv.extend_from_slice(args);
        run("nsenter", &argv)
    }

    pub fn write_manifest(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        // Written aside and renamed, so the agent never reads half a file.
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.manifests.join(file))?;
        Ok(())
    }

    /// Sends `count` requests from a namespace (a pod's: from its cgroup);
    /// each has `timeout_ms`.
    pub fn requests(&self, from_ns: &str, proto: &str, target: &str, count: u32, timeout_ms: u32) -> anyhow::Result<Vec<Reply>> {
        self.requests_in_background(from_ns, proto, target, count, timeout_ms, 0)?.wait()
    }

    /// Like `requests`, every UDP socket bound to source port `port` (as a
    /// client reusing a port does).
    pub fn requests_from_port(&self, from_ns: &str, proto: &str, target: &str, count: u32, timeout_ms: u32, port: u16) -> anyhow::Result<Vec<Reply>> {
        let child = self
            .client_command(from_ns, proto, target, count, timeout_ms, 0)?
            .env("LAB_CLIENT_SOURCE_PORT", port.to_string())
            .spawn()
            .context("starting lab-client")?;
        BackgroundRequests { child }.wait()
    }

    /// A command that runs `program` in namespace `ns`, and in the cgroup of
    /// the pod that namespace belongs to, as a container's process runs.
    pub fn command_in(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let mut cmd = ns_command(ns, program);
        if let Some(cgroup) = self.cgroup_of(ns) {
            node::start_in_cgroup(&mut cmd, cgroup)?;
        }
        Ok(cmd)
    }

    /// Like `requests`, but in the background, one every `interval_ms`;
    /// `wait` on the result collects the replies.
    pub fn requests_in_background(
        &self,
        from_ns: &str,
        proto: &str,
        target: &str,
        count: u32,
        timeout_ms: u32,
        interval_ms: u32,
    ) -> anyhow::Result<BackgroundRequests> {
        let child = self
            .client_command(from_ns, proto, target, count, timeout_ms, interval_ms)?
            .spawn()
            .context("starting lab-client")?;
        Ok(BackgroundRequests { child })
    }

    /// Like `requests_in_background` (each request with a 1 s timeout), every
    /// socket bound to source port `port`, from a namespace or from a node's
    /// own processes.
    pub fn requests_in_background_from_port(
        &self,
        from: Origin,
        proto: &str,
        target: &str,
        count: u32,
        interval_ms: u32,
        port: u16,
    ) -> anyhow::Result<BackgroundRequests> {
        let mut cmd = match from {
            Origin::Namespace(ns) => self.client_command(ns, proto, target, count, 1000, interval_ms)?,
            Origin::Node(node) => {
                let mut cmd = self.client_command(&self.nodes[node].ns, proto, target, count, 1000, interval_ms)?;
                node::start_in_cgroup(&mut cmd, &node::host_cgroup(&self.nodes[node].cgroup))?;
                cmd
            }
        };
        let child = cmd.env("LAB_CLIENT_SOURCE_PORT", port.to_string()).spawn().context("starting lab-client")?;
        Ok(BackgroundRequests { child })
    }

    /// lab-client in `ns`, its output piped for `BackgroundRequests`.
    fn client_command(&self, ns: &str, proto: &str, target: &str, count: u32, timeout_ms: u32, interval_ms: u32) -> anyhow::Result<Command> {
        let mut cmd = self.command_in(ns, &self.binaries.client)?;
        cmd.args([proto, target, &count.to_string(), &timeout_ms.to_string(), &interval_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    all.push_str(&format!("----- {} -----\n", path.display()));
                    all.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
                }
            }
        }
        all
    }

    fn teardown(&mut self) {
        for (_, child) in self.children.lock().unwrap().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        destroy_lab(&self.id);
    }

    /// Starts the agent of `node` on the lab's manifest directory with more
    /// `run` flags (replacing the DaemonSet's of the same name).
    pub fn start_agent_with(&self, node: usize, extra: &[&str]) -> anyhow::Result<Agent> {
        self.spawn_agent(node, AgentSource::Manifests, extra, &[])
    }

    /// Like `start_agent_with`, with keys of the DaemonSet's ConfigMap set
    /// otherwise.
    pub fn start_agent_with_config(&self, node: usize, extra: &[&str], config: &[(&str, &str)]) -> anyhow::Result<Agent> {
        self.spawn_agent(node, AgentSource::Manifests, extra, config)
    }

    /// Lets XDP programs on the nodes transmit: a veth accepts frames
    /// redirected to it by XDP only when its peer runs in NAPI mode, which
    /// GRO turns on. So GRO goes on at the far end of every node's devices:
    /// the switch ports and the pods' own interfaces, as a NIC's receive
    /// path would have it.
    pub fn enable_xdp_transmit(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            let port = switch_port(&node.name);
            in_ns(&self.switch_ns, &["ethtool", "-K", &port, "gro", "on"])?;
        }
        for pod in &self.pods {
            in_ns(&pod.ns, &["ethtool", "-K", "eth0", "gro", "on"])?;
        }
        Ok(())
    }

    /// A client behind a router, on a link of `mtu` bytes that only the
    /// router's side knows of (the client's own device keeps 1500, so its
    /// TCP advertises a full MSS and packets towards it must be cut down by
    /// path MTU discovery): router 10.100.0.200 on the underlay, client
    /// 10.150.0.2 behind it; the nodes route 10.150.0.0/24 through the
    /// router. Returns the client's namespace.
    pub fn add_client_behind_narrow_link(&self, mtu: u32) -> anyhow::Result<String> {
        let router = format!("{}-router", self.id);
        let far = format!("{}-far", self.id);
        self.attach_to_underlay(&router, "router", underlay(200))?;
        sysctl(&router, "net.ipv4.ip_forward", "1")?;
        add_ns(&far)?;
        ip(&far, &["link", "add", "name", "eth0", "type", "veth", "peer", "name", "narrow", "netns", &router])?;
        ip(&far, &["addr", "add", "10.150.0.2/24", "dev", "eth0"])?;
        ip(&far, &["link", "set", "eth0", "up"])?;
        ip(&far, &["route", "add", "default", "via", "10.150.0.1"])?;
        ip(&router, &["addr", "add", "10.150.0.1/24", "dev", "narrow"])?;
        ip(&router, &["link", "set", "narrow", "mtu", &mtu.to_string(), "up"])?;
        for node in &self.nodes {
            ip(&node.ns, &["route", "add", "10.150.0.0/24", "via", &underlay(200).to_string()])?;
        }
        Ok(far)
    }

    /// Routes `dest` (a CIDR) from namespace `ns` through `node`'s underlay
    /// address, as a router in front of the cluster routes LoadBalancer and
    /// external IPs to a node.
    pub fn route_via_node(&self, ns: &str, dest: &str, node: usize) -> anyhow::Result<()> {
        ip(ns, &["route", "add", dest, "via", &self.node_ip(node).to_string()]).map(drop)
    }

    /// Like `requests`, from a host-network process of `node`: lab-client in
    /// the node's namespace and in a cgroup of the node's own services, as
    /// the kubelet or any other host process runs.
    pub fn host_requests(&self, node: usize, proto: &str, target: &str, count: u32, timeout_ms: u32) -> anyhow::Result<Vec<Reply>> {
        self.host_requests_in_background(node, proto, target, count, timeout_ms, 0)?.wait()
    }

    /// `host_requests` in the background, one every `interval_ms`.
    pub fn host_requests_in_background(
        &self,
        node: usize,
        proto: &str,
        target: &str,
        count: u32,
        timeout_ms: u32,
        interval_ms: u32,
    ) -> anyhow::Result<BackgroundRequests> {
        let mut cmd = self.client_command(&self.nodes[node].ns, proto, target, count, timeout_ms, interval_ms)?;
        node::start_in_cgroup(&mut cmd, &node::host_cgroup(&self.nodes[node].cgroup))?;
        let child = cmd.spawn().context("starting lab-client")?;
        Ok(BackgroundRequests { child })
    }
}

/// Where a lab client runs.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// A namespace (a pod's: in its cgroup; the external client's).
    Namespace(&'a str),
    /// A node's own processes (its namespace, a cgroup of its services).
    Node(usize),
}

/// Transmit offloads (checksum, and with it TSO and GSO) of the lab's veths.
/// On, the kernel's default: packets cross veths with checksums left
/// partial (the receiver trusts them) and large packets unsegmented, as
/// between a kind node's containers. Off, each veth computes full checksums
/// and segments before sending, so the receiver verifies every checksum: a
/// wrong incremental update in the datapath shows up as a lost packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offloads {
    /// The nodes', clients' and switch's underlay devices. Off, the
    /// underlay behaves as a wire between NICs: every frame on it is MTU
    /// sized with a complete checksum, as NICs send and receive them.
    pub underlay: bool,
    /// The pods' veths (both ends).
    pub pods: bool,
}

impl Offloads {
    pub const KERNEL_DEFAULTS: Offloads = Offloads { underlay: true, pods: true };
    /// Every checksum computed and verified: for checking the datapath's
    /// checksum arithmetic.
    pub const NONE: Offloads = Offloads { underlay: false, pods: false };
    /// Pods as on any node, the underlay as a wire between physical NICs.
    pub const NIC_UNDERLAY: Offloads = Offloads { underlay: false, pods: true };
}

/// Where an agent reads Services from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AgentSource {
    /// The lab's API server (kube-rs watches over HTTP).
    Api,
    /// The lab's manifest directory (`--manifests`), with `--node-ip`.
    Manifests,
}

/// `base` with `extra` flags added; a flag of `base` that `extra` also
/// names (`--flag=value`, or `--flag` and its value) is dropped, as a
/// patch of the DaemonSet's arguments would replace it.
pub fn with_flags(base: &[String], extra: &[String]) -> Vec<String> {
    let name = |arg: &str| arg.split_once('=').map_or(arg, |(n, _)| n).to_string();
    let named: Vec<String> = extra.iter().filter(|a| a.starts_with("--")).map(|a| name(a)).collect();
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in base {
        if skip_value {
            skip_value = false;
            continue;
        }
        if arg.starts_with("--") && named.contains(&name(arg)) {
            skip_value = !arg.contains('=');
            continue;
        }
        out.push(arg.clone());
    }
    out.extend(extra.iter().cloned());
    out
}

/// Removes the lab's cgroups (their processes killed first), before its
/// cgroup2 mount is unmounted.
fn remove_lab_cgroups(id: &str) {
    let Ok(entries) = std::fs::read_dir(Path::new("/run").join(id).join(CGROUP_MOUNT)) else { return };
    for dir in entries.flatten().map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(id))) {
        node::remove_cgroup_tree(&dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

pub struct BackgroundRequests {
    child: Child,
}

impl BackgroundRequests {
    pub fn wait(self) -> anyhow::Result<Vec<Reply>> {
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!("lab-client failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(traffic::parse(&String::from_utf8_lossy(&out.stdout)))
    }
}

impl Agent {
    /// The agent's process id (nsenter execs it, so this is the agent).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the agent has logged `min` syncs.
    pub fn wait_synced(&self, min: u64, timeout: Duration) -> anyhow::Result<()> {
        wait_until(timeout, || self.generations() >= min)
            .with_context(|| format!("agent did not sync {min} times; log:\n{}", self.own_log()))
    }

    /// How many syncs this agent has logged, once its programs are attached
    /// (they are attached after the first sync); 0 before.
    pub fn generations(&self) -> u64 {
        let log = self.own_log();
        if !log.contains("datapath serving") {
            return 0;
        }
        log.lines().filter(|l| l.contains(" synced generation=")).count() as u64
    }

    /// The log lines written by this agent (not by earlier ones on the node).
    pub fn own_log(&self) -> String {
        let all = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(all.get(self.log_start..).unwrap_or_default()).into_owned()
    }

    /// SIGTERM, as a DaemonSet rollout sends; waits for the exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        bail!("agent did not stop within 5 s of SIGTERM")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.terminate();
        }
    }
}

pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An address on the underlay, 10.100.0.0/24.
/// The switch's side of the underlay veth of the host named `label` (device
/// names are at most 15 bytes).
fn switch_port(label: &str) -> String {
    format!("p-{}", label.chars().take(12).collect::<String>())
}

fn underlay(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, 0, host)
}

fn add_ns(ns: &str) -> anyhow::Result<()> {
    run("ip", &["netns", "add", ns])?;
    ip(ns, &["link", "set", "lo", "up"])?;
    for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"] {
        sysctl(ns, key, "0")?;
    }
    Ok(())
}

/// With transmit checksum offload off, veth packets carry real checksums that
/// the receiver verifies, so a wrong incremental update in the datapath shows
/// up as a lost packet instead of being papered over (see `with_options`).
fn no_checksum_offload(ns: &str, dev: &str) -> anyhow::Result<()> {
    in_ns(ns, &["ethtool", "-K", dev, "tx", "off"]).map(|_| ())
}

/// Removes one lab's namespaces, mounts and run directory.
fn destroy_lab(id: &str) {
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(&format!("{id}-")) {
                // Anything still running in it (a backend started by hand).
                if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
                    for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                let _ = run("ip", &["netns", "del", ns]);
            }
        }
    }
    remove_lab_cgroups(id);
    let dir = format!("/run/{id}/");
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = run("umount", &[point]);
        }
    }
    let _ = std::fs::remove_dir_all(format!("/run/{id}"));
}

/// Labs whose creating process is gone (killed mid-test) are removed.
pub fn remove_stale_labs() {
    let mut ids = std::collections::BTreeSet::new();
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            ids.insert(ns.splitn(4, '-').take(3).collect::<Vec<_>>().join("-"));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/run") {
        for e in entries.flatten() {
            ids.insert(e.file_name().to_string_lossy().into_owned());
        }
    }
    for id in ids {
        let parts: Vec<&str> = id.split('-').collect();
        let [PREFIX, pid, _n] = parts.as_slice() else { continue };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            destroy_lab(&id);
        }
    }
}

/// Names of labs present on the machine (for showing that none is left).
pub fn lab_namespaces() -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(PREFIX))
        .map(String::from)
        .collect()
}
