//! The lab API server (`lab-apiserver`): verbs, watch semantics, selectors,
//! and the clients it is for: kube-rs watchers and kubectl. Needs no root:
//! everything listens on 127.0.0.1, ephemeral ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proxy_lab::apiserver::{self, ApiServer, Config};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(10);

/// An in-process server on its own runtime.
struct Server {
    addr: SocketAddr,
    state: Arc<ApiServer>,
    _rt: tokio::runtime::Runtime,
}

fn server(config: Config) -> Server {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = Config { log_requests: false, ..config };
    let (addr, state) = rt.block_on(apiserver::spawn("127.0.0.1:0".parse().unwrap(), config)).unwrap();
    Server { addr, state, _rt: rt }
}

fn fast() -> Config {
    Config { bookmark_interval: Duration::from_millis(200), ..Config::default() }
}

/// One request on its own connection; the status and the JSON body.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let (status, chunked) = read_head(&mut r);
    let mut raw = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut r) {
            raw.extend(chunk);
        }
    } else {
        r.read_to_end(&mut raw).unwrap();
    }
    (status, serde_json::from_slice(&raw).unwrap_or(Value::Null))
}

/// Reads the status line and headers; returns the status and whether the
/// body is chunked.
fn read_head(r: &mut impl BufRead) -> (u16, bool) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            return (status, chunked);
        }
        let l = line.to_ascii_lowercase();
        chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
        if l.starts_with("content-type:") {
            assert!(l.contains("application/json"), "{line}");
        }
    }
}

/// The next chunk of a chunked body; None at its end.
fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = String::new();
    if r.read_line(&mut line).unwrap() == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim(), 16).unwrap();
    let mut data = vec![0; size + 2];
    r.read_exact(&mut data).unwrap();
    data.truncate(size);
    (size > 0).then_some(data)
}

/// A watch response being read event by event.
struct Watch {
    r: BufReader<TcpStream>,
    pending: Vec<u8>,
}

impl Watch {
    fn open(addr: SocketAddr, path: &str) -> Watch {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n").unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut r = BufReader::new(s);
        let (status, chunked) = read_head(&mut r);
        assert_eq!((status, chunked), (200, true), "{path}");
        Watch { r, pending: Vec::new() }
    }

    /// The next event within `wait`: Ok(None) if the stream ended, Err if
    /// nothing came.
    fn next_within(&mut self, wait: Duration) -> Result<Option<Value>, ()> {
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Ok(Some(serde_json::from_slice(&line).unwrap()));
            }
            self.r.get_ref().set_read_timeout(Some(wait)).unwrap();
            if self.r.buffer().is_empty() {
                match self.r.fill_buf() {
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        return Err(());
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            match read_chunk(&mut self.r) {
                Some(data) => self.pending.extend(data),
                None => return Ok(None),
            }
        }
    }

    /// The next event that is not a BOOKMARK.
    fn next(&mut self) -> Value {
        loop {
            let e = self.next_within(TIMEOUT).expect("no watch event in time").expect("watch ended");
            if e["type"] != "BOOKMARK" {
                return e;
            }
        }
    }

    /// Asserts that only bookmarks arrive for `wait`.
    fn quiet(&mut self, wait: Duration) {
        let end = Instant::now() + wait;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.next_within(left.max(Duration::from_millis(1))) {
                Err(()) => return,
                Ok(Some(e)) if e["type"] == "BOOKMARK" => {}
                Ok(other) => panic!("unexpected: {other:?}"),
            }
        }
    }
}

fn svc(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

const SVCS: &str = "/api/v1/namespaces/default/services";

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

/// (type, name) of a watch event.
fn ev(e: &Value) -> (String, String) {
    (e["type"].as_str().unwrap().into(), e["object"]["metadata"]["name"].as_str().unwrap().into())
}

fn pair(t: &str, n: &str) -> (String, String) {
    (t.into(), n.into())
}

#[test]
fn create_get_update_delete_with_conflicts_and_not_found() {
    let s = server(fast());
    let a = s.addr;
    // Create fills in what the server owns; kind and apiVersion too.
    let (code, created) = call(a, "POST", SVCS, Some(&json!({"metadata": {"name": "web"}, "spec": {}})));
    assert_eq!(code, 201, "{created}");
    assert_eq!((created["kind"].as_str(), created["apiVersion"].as_str()), (Some("Service"), Some("v1")));
    let meta = &created["metadata"];
    assert_eq!(meta["namespace"], "default");
    assert!(meta["uid"].as_str().is_some_and(|u| u.len() == 36) && meta["creationTimestamp"].is_string());
    let (code, st) = call(a, "POST", SVCS, Some(&svc("web", json!({}))));
    assert_eq!(
        (code, st["kind"].as_str(), st["reason"].as_str(), st["code"].as_u64()),
        (409, Some("Status"), Some("AlreadyExists"), Some(409))
    );
    let (code, st) = call(a, "POST", SVCS, Some(&json!({"metadata": {"name": "x", "namespace": "other"}})));
    assert_eq!((code, st["reason"].as_str()), (400, Some("BadRequest")));

    let (code, got) = call(a, "GET", &format!("{SVCS}/web"), None);
    assert_eq!((code, &got), (200, &created));
    let (code, st) = call(a, "GET", &format!("{SVCS}/nope"), None);
    assert_eq!((code, st["reason"].as_str(), st["code"].as_u64()), (404, Some("NotFound"), Some(404)));

    // Update: a stale resourceVersion conflicts, the current one or none wins.
    let mut stale = got.clone();
    stale["metadata"]["resourceVersion"] = json!((rv(&got) - 1).to_string());
    let (code, st) = call(a, "PUT", &format!("{SVCS}/web"), Some(&stale));
    assert_eq!((code, st["reason"].as_str()), (409, Some("Conflict")));
    let mut next = got.clone();
    next["spec"]["clusterIP"] = json!("10.96.0.11");
    let (code, updated) = call(a, "PUT", &format!("{SVCS}/web"), Some(&next));
    assert_eq!(code, 200, "{updated}");
    assert!(rv(&updated) > rv(&got));
    assert_eq!(updated["metadata"]["uid"], got["metadata"]["uid"]);
    let (code, _) = call(a, "PUT", &format!("{SVCS}/web"), Some(&next)); // now stale
    assert_eq!(code, 409);
    next["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    assert_eq!(call(a, "PUT", &format!("{SVCS}/web"), Some(&next)).0, 200);
    assert_eq!(call(a, "PUT", &format!("{SVCS}/other"), Some(&next)).0, 400, "name differs from URL");
    assert_eq!(call(a, "PUT", &format!("{SVCS}/nope"), Some(&svc("nope", json!({})))).0, 404);

    // Delete answers with the object; then it is gone.
    let (code, deleted) = call(a, "DELETE", &format!("{SVCS}/web"), None);
    assert_eq!((code, deleted["metadata"]["name"].as_str()), (200, Some("web")));
    assert_eq!(call(a, "DELETE", &format!("{SVCS}/web"), None).0, 404);
    assert_eq!(call(a, "GET", &format!("{SVCS}/web"), None).0, 404);

    // Nodes are cluster-scoped, EndpointSlices live in a group.
    assert_eq!(call(a, "POST", "/api/v1/nodes", Some(&json!({"metadata": {"name": "node-1"}}))).0, 201);
    assert_eq!(call(a, "GET", "/api/v1/nodes/node-1", None).1["metadata"].get("namespace"), None);
    assert_eq!(call(a, "GET", "/api/v1/namespaces/default/nodes/node-1", None).0, 404);
    let es = json!({"metadata": {"name": "web-1"}, "addressType": "IPv4", "endpoints": []});
    assert_eq!(call(a, "POST", "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices", Some(&es)).0, 201);
    let (code, list) = call(a, "GET", "/apis/discovery.k8s.io/v1/endpointslices", None);
    assert_eq!(
        (code, list["kind"].as_str(), list["apiVersion"].as_str()),
        (200, Some("EndpointSliceList"), Some("discovery.k8s.io/v1"))
    );
    assert_eq!(list["items"][0]["metadata"]["namespace"], "kube-system");
    assert_eq!(rv(&list), s.state.store.current_rv());
    let (_, list) = call(a, "GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", None);
    assert_eq!(list["items"], json!([]));
    assert_eq!(call(a, "GET", "/api/v1/pods", None).0, 404);
}

#[test]
fn watch_from_list_resource_version_sees_exactly_the_later_changes_in_order() {
    let s = server(fast());
    let a = s.addr;
    call(a, "POST", SVCS, Some(&svc("a", json!({}))));
    call(a, "POST", SVCS, Some(&svc("b", json!({}))));
    let (_, list) = call(a, "GET", "/api/v1/services", None);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    // Changes between the list and the watch, one of another kind.
    let (_, mut obj) = call(a, "GET", &format!("{SVCS}/a"), None);
    obj["spec"]["clusterIP"] = json!("10.96.0.99");
    call(a, "PUT", &format!("{SVCS}/a"), Some(&obj));
    call(a, "POST", "/api/v1/nodes", Some(&json!({"metadata": {"name": "n"}})));
    call(a, "DELETE", &format!("{SVCS}/b"), None);

    let mut w = Watch::open(a, &format!("/api/v1/services?watch=true&resourceVersion={}", rv(&list)));
    call(a, "POST", SVCS, Some(&svc("c", json!({}))));
    let mut seen = Vec::new();
    let mut last = rv(&list);
    for _ in 0..3 {
        let e = w.next();
        assert!(rv(&e["object"]) > last, "resourceVersions increase: {e}");
        last = rv(&e["object"]);
        seen.push(ev(&e));
    }
    assert_eq!(seen, [pair("MODIFIED", "a"), pair("DELETED", "b"), pair("ADDED", "c")]);
    w.quiet(Duration::from_millis(500));

    // No resourceVersion: the current objects as ADDED, then live changes.
    let mut w = Watch::open(a, "/api/v1/namespaces/default/services?watch=1");
    assert_eq!([ev(&w.next()), ev(&w.next())], [pair("ADDED", "a"), pair("ADDED", "c")]);
    call(a, "DELETE", &format!("{SVCS}/a"), None);
    assert_eq!(ev(&w.next()), pair("DELETED", "a"));
    w.quiet(Duration::from_millis(300));
}

#[test]
fn watch_from_a_too_old_resource_version_gets_410_expired() {
    let s = server(Config { history: 3, ..fast() });
    let a = s.addr;
    for i in 0..6 {
        call(a, "POST", SVCS, Some(&svc(&format!("s{i}"), json!({}))));
    }
    let mut w = Watch::open(a, "/api/v1/services?watch=true&resourceVersion=2&allowWatchBookmarks=true");
    let e = w.next_within(TIMEOUT).unwrap().unwrap();
    assert_eq!(e["type"], "ERROR", "{e}");
    let st = &e["object"];
    assert_eq!(
        (st["kind"].as_str(), st["code"].as_u64(), st["reason"].as_str()),
        (Some("Status"), Some(410), Some("Expired"))
    );
    assert!(st["message"].as_str().unwrap().starts_with("too old resource version"));
    assert_eq!(w.next_within(TIMEOUT), Ok(None), "the stream ends after the error");

    // Within the history it resumes.
    let current = s.state.store.current_rv();
    let mut w = Watch::open(a, &format!("/api/v1/services?watch=true&resourceVersion={}", current - 2));
    assert_eq!([ev(&w.next()), ev(&w.next())], [pair("ADDED", "s4"), pair("ADDED", "s5")]);
}

#[test]
fn bookmarks_timeouts_and_disconnects() {
    let s = server(fast());
    let a = s.addr;
    call(
        a,
        "POST",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        Some(&json!({"metadata": {"name": "e"}})),
    );
    let current = s.state.store.current_rv();
    let path = format!(
        "/apis/discovery.k8s.io/v1/endpointslices?watch=true&allowWatchBookmarks=true&resourceVersion={current}"
    );
    let mut w = Watch::open(a, &path);
    let e = w.next_within(Duration::from_secs(2)).unwrap().unwrap();
    assert_eq!(
        e,
        json!({"type": "BOOKMARK", "object": {
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"resourceVersion": current.to_string()}}})
    );
    // A later bookmark carries the newer resourceVersion, after the event.
    call(a, "DELETE", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/e", None);
    assert_eq!(ev(&w.next()), pair("DELETED", "e"));
    let e = w.next_within(Duration::from_secs(2)).unwrap().unwrap();
    assert_eq!((e["type"].as_str(), rv(&e["object"])), (Some("BOOKMARK"), current + 1));

    // No bookmarks unless asked for.
    let mut quiet = Watch::open(a, "/api/v1/services?watch=true");
    assert_eq!(quiet.next_within(Duration::from_millis(700)), Err(()));

    // timeoutSeconds ends the stream.
    let started = Instant::now();
    let mut short = Watch::open(a, "/api/v1/nodes?watch=true&timeoutSeconds=1");
    assert_eq!(short.next_within(TIMEOUT), Ok(None));
    assert!(started.elapsed() >= Duration::from_millis(900) && started.elapsed() < Duration::from_secs(5));

    // A client that goes away frees its watch task, even with nothing to send.
    wait_for_watches(&s, 2);
    drop(w);
    wait_for_watches(&s, 1);
    drop(quiet);
    wait_for_watches(&s, 0);
}

fn wait_for_watches(s: &Server, n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    while s.state.active_watches() != n {
        assert!(Instant::now() < deadline, "{} watch tasks, want {n}", s.state.active_watches());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn label_and_field_selectors_filter_lists_and_watches() {
    let s = server(fast());
    let a = s.addr;
    call(a, "POST", SVCS, Some(&svc("plain", json!({"app": "web"}))));
    call(a, "POST", SVCS, Some(&svc("headless", json!({"service.kubernetes.io/headless": ""}))));
    call(a, "POST", SVCS, Some(&svc("other-proxy", json!({"service.kubernetes.io/service-proxy-name": "x"}))));
    let names = |q: &str| -> Vec<String> {
        let (code, list) = call(a, "GET", &format!("/api/v1/services?{q}"), None);
        assert_eq!(code, 200, "{q}: {list}");
        list["items"].as_array().unwrap().iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_string()).collect()
    };
    let kube_proxy =
        "labelSelector=%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name";
    assert_eq!(names(kube_proxy), ["plain"]);
    assert_eq!(names("labelSelector=app%3Dweb"), ["plain"]);
    assert_eq!(names("labelSelector=app!%3Dweb"), ["headless", "other-proxy"], "absent label satisfies !=");
    assert_eq!(names("labelSelector=service.kubernetes.io/headless"), ["headless"]);
    assert_eq!(names("fieldSelector=metadata.name%3Dheadless"), ["headless"]);
    assert_eq!(call(a, "GET", "/api/v1/services?labelSelector=a+in+(b", None).0, 400);

    // On a watch, starting to match is ADDED and stopping is DELETED.
    let mut w = Watch::open(a, &format!("/api/v1/services?watch=true&{kube_proxy}"));
    assert_eq!(ev(&w.next()), pair("ADDED", "plain"));
    let relabel = |name: &str, labels: Value| {
        let (_, mut o) = call(a, "GET", &format!("{SVCS}/{name}"), None);
        o["metadata"]["labels"] = labels;
        assert_eq!(call(a, "PUT", &format!("{SVCS}/{name}"), Some(&o)).0, 200);
    };
    relabel("headless", json!({}));
    relabel("plain", json!({"service.kubernetes.io/headless": ""}));
    relabel("other-proxy", json!({"service.kubernetes.io/service-proxy-name": "y"}));
    relabel("headless", json!({"app": "now-plain"}));
    call(a, "DELETE", &format!("{SVCS}/other-proxy"), None);
    call(a, "DELETE", &format!("{SVCS}/plain"), None);
    let seen: Vec<_> = (0..3).map(|_| ev(&w.next())).collect();
    assert_eq!(seen, [pair("ADDED", "headless"), pair("DELETED", "plain"), pair("MODIFIED", "headless")]);
    w.quiet(Duration::from_millis(300));

    // A Node watcher for one node.
    let mut w = Watch::open(a, "/api/v1/nodes?watch=true&fieldSelector=metadata.name%3Dnode-1");
    call(a, "POST", "/api/v1/nodes", Some(&json!({"metadata": {"name": "node-2"}})));
    call(a, "POST", "/api/v1/nodes", Some(&json!({"metadata": {"name": "node-1"}})));
    assert_eq!(ev(&w.next()), pair("ADDED", "node-1"));
    w.quiet(Duration::from_millis(300));
}

#[test]
fn kube_rs_watchers_list_watch_and_resume() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::{Node, Service};
    use kube::runtime::watcher::{self, Event};

    let s = server(fast());
    let a = s.addr;
    call(a, "POST", SVCS, Some(&svc("before", json!({}))));
    call(a, "POST", SVCS, Some(&svc("skipped", json!({"service.kubernetes.io/headless": ""}))));
    s._rt.block_on(async {
        let config = kube::Config::new(format!("http://{a}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        // A 1 s watch timeout makes the watcher resume from its bookmarks.
        let wc = watcher::Config::default()
            .labels("!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name")
            .timeout(1);
        let mut services = watcher::watcher(kube::Api::<Service>::all(client.clone()), wc).boxed();
        let mut next = async || {
            let e = tokio::time::timeout(TIMEOUT, services.next()).await.expect("watcher event in time");
            match e.expect("stream open").expect("no watcher error") {
                Event::Init => "init".to_string(),
                Event::InitApply(o) => format!("init-apply {}", o.metadata.name.unwrap()),
                Event::InitDone => "init-done".to_string(),
                Event::Apply(o) => format!("apply {}", o.metadata.name.unwrap()),
                Event::Delete(o) => format!("delete {}", o.metadata.name.unwrap()),
            }
        };
        assert_eq!([next().await, next().await, next().await], ["init", "init-apply before", "init-done"]);
        tokio::time::sleep(Duration::from_millis(2500)).await; // two watch timeouts
        tokio::task::spawn_blocking(move || {
            call(a, "POST", SVCS, Some(&svc("after", json!({}))));
            call(a, "DELETE", &format!("{SVCS}/before"), None);
        })
        .await
        .unwrap();
        // Resumed watches, not relists: no Init again.
        assert_eq!([next().await, next().await], ["apply after", "delete before"]);

        let wc = watcher::Config::default().fields("metadata.name=node-1");
        let mut nodes = watcher::watcher(kube::Api::<Node>::all(client), wc).boxed();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let e = tokio::time::timeout(TIMEOUT, nodes.next()).await.unwrap().unwrap().unwrap();
            if let Event::Apply(n) = &e {
                seen.push(n.metadata.name.clone().unwrap());
            } else {
                seen.push(format!("{e:?}").split('(').next().unwrap().to_string());
            }
            if seen.len() == 2 {
                tokio::task::spawn_blocking(move || {
                    call(a, "POST", "/api/v1/nodes", Some(&json!({"metadata": {"name": "node-2"}})));
                    call(a, "POST", "/api/v1/nodes", Some(&json!({"metadata": {"name": "node-1"}})));
                })
                .await
                .unwrap();
            }
        }
        assert_eq!(seen, ["Init", "InitDone", "node-1"]);
    });
}

/// The built binary, printing its address on stdout's first line.
struct Binary {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_binary(log: &std::path::Path, args: &[&str]) -> Binary {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lab-apiserver"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    Binary { addr: line.trim().parse().expect("address on the first line"), child }
}

/// Runs kubectl against `addr`, bounded in time; (success, stdout, stderr).
fn kubectl(addr: SocketAddr, dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new("kubectl")
        .arg(format!("--server=http://{addr}"))
        .arg(format!("--cache-dir={}", dir.join("cache").display()))
        .arg("--request-timeout=10s")
        .args(args)
        .env("KUBECONFIG", dir.join("no-kubeconfig"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kubectl {args:?} timed out");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    println!("$ kubectl {}\n{o}{e}", args.join(" "));
    (out.status.success(), o, e)
}

const MANIFEST: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  ports:
  - {name: tcp, port: PORT, protocol: TCP, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: tcp, port: 8080, protocol: TCP}
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true}
";

#[test]
fn kubectl_create_replace_get_delete() {
    if Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        println!("\n*** SKIPPED kubectl_create_replace_get_delete: kubectl is not on PATH ***\n");
        return;
    }
    let dir = std::env::temp_dir().join(format!("lab-apiserver-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = start_binary(&dir.join("server.log"), &[]);
    let a = server.addr;
    let file = dir.join("web.yaml");
    let file_s = file.to_str().unwrap();
    std::fs::write(&file, MANIFEST.replace("PORT", "80")).unwrap();

    let (ok, out, _) = kubectl(a, &dir, &["create", "-f", file_s, "--validate=false"]);
    assert!(
        ok && out.contains("service/web created") && out.contains("endpointslice.discovery.k8s.io/web-abc12 created")
    );
    std::fs::write(&file, MANIFEST.replace("PORT", "8081")).unwrap();
    let (ok, out, _) = kubectl(a, &dir, &["replace", "-f", file_s, "--validate=false"]);
    assert!(
        ok && out.contains("service/web replaced") && out.contains("endpointslice.discovery.k8s.io/web-abc12 replaced")
    );

    let (ok, out, _) = kubectl(a, &dir, &["get", "svc,endpointslices", "-A", "-o", "json"]);
    assert!(ok);
    let list: Value = serde_json::from_str(&out).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    assert_eq!(items[0]["spec"]["ports"][0]["port"], 8081);
    assert_eq!(items[1]["endpoints"][0]["addresses"][0], "10.244.1.5");
    let (ok, out, _) = kubectl(a, &dir, &["get", "svc", "-A"]);
    assert!(
        ok && out.contains("NAMESPACE")
            && out.contains("web")
            && out.contains("10.96.0.10")
            && out.contains("8081/TCP")
    );
    let (ok, _, err) = kubectl(a, &dir, &["get", "nodes"]);
    assert!(ok && err.contains("No resources found"));

    let (ok, out, _) = kubectl(a, &dir, &["delete", "-f", file_s]);
    assert!(ok && out.contains("service \"web\" deleted") && out.contains("\"web-abc12\" deleted"));
    let (ok, out, _) = kubectl(a, &dir, &["get", "svc,endpointslices", "-A", "-o", "json"]);
    assert!(ok && serde_json::from_str::<Value>(&out).unwrap()["items"] == json!([]));
    let (ok, _, err) = kubectl(a, &dir, &["delete", "svc", "web"]);
    assert!(!ok && err.contains("NotFound"));

    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    assert!(log.contains("POST /api/v1/namespaces/default/services?") && log.contains(" 201\n"), "{log}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn state_file_keeps_objects_across_restarts() {
    let dir = std::env::temp_dir().join(format!("lab-apiserver-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let args = ["--state", state.to_str().unwrap(), "--quiet"];
    let server = start_binary(&dir.join("log"), &args);
    let (_, created) = call(server.addr, "POST", SVCS, Some(&svc("kept", json!({}))));
    call(server.addr, "POST", "/api/v1/nodes", Some(&json!({"metadata": {"name": "node-1"}})));
    let before = rv(&call(server.addr, "GET", "/api/v1/services", None).1);
    drop(server); // SIGKILL

    let server = start_binary(&dir.join("log"), &args);
    let (code, got) = call(server.addr, "GET", &format!("{SVCS}/kept"), None);
    assert_eq!((code, &got), (200, &created));
    assert_eq!(call(server.addr, "GET", "/api/v1/nodes/node-1", None).0, 200);
    let (_, list) = call(server.addr, "GET", "/api/v1/services", None);
    assert_eq!(rv(&list), before, "the counter carries on");
    // Events from before the restart are gone: resuming there means relisting.
    let mut w = Watch::open(server.addr, &format!("/api/v1/services?watch=true&resourceVersion={}", before - 1));
    assert_eq!(w.next()["object"]["code"], 410);
    let mut w = Watch::open(server.addr, &format!("/api/v1/services?watch=true&resourceVersion={before}"));
    call(server.addr, "DELETE", &format!("{SVCS}/kept"), None);
    let e = w.next();
    assert_eq!((ev(&e), rv(&e["object"])), (pair("DELETED", "kept"), before + 1));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lists_come_in_pages_when_a_limit_is_asked_for() {
    let s = server(fast());
    let a = s.addr;
    for name in ["a", "b", "c", "d", "e"] {
        call(a, "POST", SVCS, Some(&svc(name, json!({"app": "x"}))));
    }
    call(a, "POST", "/api/v1/namespaces/other/services", Some(&svc("f", json!({}))));
    let at = s.state.store.current_rv();
    let names = |list: &Value| -> Vec<String> {
        list["items"].as_array().unwrap().iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_string()).collect()
    };

    let (code, first) = call(a, "GET", "/api/v1/services?limit=2", None);
    assert_eq!((code, names(&first), rv(&first)), (200, vec!["a".to_string(), "b".into()], at));
    let token = first["metadata"]["continue"].as_str().expect("a continue token").to_string();
    // A change between pages: later pages show it, at the first page's version.
    call(a, "DELETE", &format!("{SVCS}/c"), None);
    let (_, second) = call(a, "GET", &format!("/api/v1/services?limit=2&continue={token}"), None);
    assert_eq!((names(&second), rv(&second)), (vec!["d".to_string(), "e".into()], at));
    let token = second["metadata"]["continue"].as_str().expect("one more page").to_string();
    let (_, last) = call(a, "GET", &format!("/api/v1/services?limit=2&continue={token}"), None);
    assert_eq!(names(&last), vec!["f".to_string()]);
    assert_eq!(last["metadata"].get("continue"), None, "the last page has no token");

    // Selectors and namespaces page too; no limit is one page.
    let (_, selected) = call(a, "GET", "/api/v1/namespaces/default/services?limit=3&labelSelector=app%3Dx", None);
    assert_eq!(names(&selected), vec!["a".to_string(), "b".into(), "d".into()]);
    let (_, all) = call(a, "GET", "/api/v1/services", None);
    assert_eq!((names(&all).len(), all["metadata"].get("continue")), (5, None));
    assert_eq!(call(a, "GET", "/api/v1/services?limit=2&continue=garbage", None).0, 400);
}

#[test]
fn writes_answer_with_their_commit_time() {
    use proxy_lab::bench_sync::client::ApiClient;
    let s = server(fast());
    let (_, created) = call(s.addr, "POST", SVCS, Some(&svc("timed", json!({}))));
    let mut client = ApiClient::new(TcpStream::connect(s.addr).unwrap()).unwrap();
    // Two writes on one kept-alive connection.
    for ip in ["10.96.0.21", "10.96.0.22"] {
        let patch = json!({"spec": {"clusterIP": ip}}).to_string();
        let w = client.merge_patch(&format!("{SVCS}/timed"), patch.as_bytes()).unwrap();
        let committed = w.committed_ns.expect("commit time header");
        assert_eq!(w.status, 200);
        assert!(w.sent_ns <= committed && committed <= w.answered_ns, "{w:?}");
    }
    let (_, now) = call(s.addr, "GET", &format!("{SVCS}/timed"), None);
    assert_eq!((now["spec"]["clusterIP"].as_str(), rv(&now)), (Some("10.96.0.22"), rv(&created) + 2));
    let w = client.merge_patch(&format!("{SVCS}/absent"), b"{}").unwrap();
    assert_eq!((w.status, w.committed_ns), (404, None));
}
