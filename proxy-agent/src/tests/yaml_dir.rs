//! The YAML directory source, on real files in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::*;
use crate::source::yaml_dir::{fingerprint, read};

const SKIPS: &str = include_str!("../../testdata/skips.yaml");
const KUBE_DNS_JSON: &str = include_str!("../../testdata/kube-dns.json");

/// A directory of its own under the system temp dir, removed on drop (also
/// when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let name = format!(
            "proxy-agent-test-{tag}-{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).expect("write manifest");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn names<T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(
    objects: &[std::sync::Arc<T>],
) -> Vec<String> {
    let mut names: Vec<String> = objects
        .iter()
        .map(|o| {
            let meta = o.metadata();
            format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or(""),
                meta.name.as_deref().unwrap_or("")
            )
        })
        .collect();
    names.sort();
    names
}

#[test]
fn multi_document_file_yields_every_object() {
    let dir = TempDir::new("multidoc");
    // Leading and trailing `---` give null documents: neither objects nor errors.
    dir.write("apps.yaml", &format!("---\n{SKIPS}---\n"));
    let (snapshot, skipped) = read(dir.path()).unwrap();
    assert_eq!(skipped, []);
    assert_eq!(
        names(&snapshot.services),
        [
            "default/db-headless",
            "default/db-replicas",
            "default/edge",
            "default/external-db",
            "default/frontend",
            "default/metrics-gw"
        ]
    );
    assert_eq!(snapshot.slices.len(), 5);
    let labels = snapshot.slices[0].metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
}

#[test]
fn kind_list_items_are_read() {
    let dir = TempDir::new("list");
    dir.write("cluster.yml", CLUSTER);
    let (snapshot, skipped) = read(dir.path()).unwrap();
    assert_eq!(skipped, []);
    let services = [
        "default/kubernetes",
        "default/redis",
        "default/web",
        "kube-system/kube-dns",
    ];
    assert_eq!(names(&snapshot.services), services);
    assert_eq!(
        names(&snapshot.slices),
        [
            "default/kubernetes",
            "default/redis-q9w4d",
            "default/web-7xk2p",
            "kube-system/kube-dns-8kq2v"
        ]
    );
    let web = snapshot
        .slices
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("web-7xk2p"))
        .unwrap();
    let pod = &web.endpoints.as_ref().unwrap()[0];
    assert_eq!(pod.node_name.as_deref(), Some("kind-worker"));
    assert_eq!(pod.zone.as_deref(), Some("eu-west-1a"));
    assert_eq!(
        pod.target_ref.as_ref().unwrap().name.as_deref(),
        Some("web-6d4cf56db6-8hx2k")
    );
}

#[test]
fn json_file_reads_the_same_as_its_yaml() {
    let dir = TempDir::new("json");
    dir.write("kube-dns.json", KUBE_DNS_JSON);
    let (snapshot, skipped) = read(dir.path()).unwrap();
    assert_eq!(skipped, []);
    let from_json = build_clean(&snapshot);
    let mut from_yaml = build_clean(&load(CLUSTER));
    from_yaml.frontends.retain(|_, e| e.service.name == "kube-dns");
    assert_eq!(from_json.frontends.len(), 3);
    assert_eq!(from_json, from_yaml);
}

const BROKEN: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: before-the-typo
  namespace: lab
spec:
  clusterIP: 10.96.31.1
  ports:
  - port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: typo
  namespace: lab
spec:
  clusterIP: 10.96.31.2
  ports: [{port: 80}
";

#[test]
fn file_that_is_not_yaml_is_reported_and_the_rest_of_the_directory_is_read() {
    let dir = TempDir::new("broken");
    dir.write("cluster.yaml", CLUSTER);
    dir.write("broken.yaml", BROKEN);
    dir.write("half.json", "{\"apiVersion\": \"v1\", \"kind\": \"Service\",");
    let (snapshot, skipped) = read(dir.path()).unwrap();
    let unparsable = |name: &str| Skipped {
        object: name.into(),
        reason: SkipReason::Unparsable,
        held_by: None,
    };
    assert_eq!(skipped, [unparsable("broken.yaml"), unparsable("half.json")]);
    // The cluster is read as if the broken files were not there, and a
    // document before the broken one in the same file still counts.
    let mut expected = load(CLUSTER).services;
    expected.extend(load(&BROKEN[..BROKEN.find("---").unwrap()]).services);
    assert_eq!(names(&snapshot.services), names(&expected));
    assert_eq!(names(&snapshot.slices), names(&load(CLUSTER).slices));
}

#[test]
fn syntax_error_ends_the_file_in_bounded_time() {
    // serde_yaml 0.9 repeats a syntax error forever if asked for more
    // documents; a hang here would stall every later sync.
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut snapshot, mut skipped) = (Snapshot::default(), Vec::new());
        crate::source::yaml_dir::parse_documents(BROKEN, "broken.yaml", &mut snapshot, &mut skipped);
        let _ = done.send((names(&snapshot.services), skipped.len()));
    });
    let (services, reports) = result
        .recv_timeout(std::time::Duration::from_secs(2))
        .expect("parse hangs");
    assert_eq!(services, ["lab/before-the-typo"]);
    assert_eq!(reports, 1);
}

#[test]
fn object_that_does_not_fit_its_schema_is_reported_and_its_file_neighbours_read() {
    let dir = TempDir::new("schema");
    let text = "\
apiVersion: v1
kind: Service
metadata:
  name: ports-as-string
  namespace: lab
spec:
  clusterIP: 10.96.31.3
  ports: \"80\"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
addressType: IPv4
metadata:
  name: named-port-number
  namespace: lab
  labels:
    kubernetes.io/service-name: ports-as-string
endpoints:
- addresses:
  - 10.244.1.1
ports:
- name: http
  port: http
---
apiVersion: v1
kind: Service
metadata:
  name: fine
  namespace: lab
spec:
  clusterIP: 10.96.31.4
  ports:
  - port: 80
";
    dir.write("lab.yaml", text);
    let (snapshot, skipped) = read(dir.path()).unwrap();
    let objects: Vec<(&str, SkipReason)> = skipped.iter().map(|s| (s.object.as_str(), s.reason)).collect();
    assert_eq!(
        objects,
        [
            ("lab/ports-as-string", SkipReason::Unparsable),
            ("lab/named-port-number", SkipReason::Unparsable)
        ]
    );
    assert_eq!(names(&snapshot.services), ["lab/fine"]);
    assert!(snapshot.slices.is_empty());
}

#[test]
fn other_kinds_are_ignored_silently() {
    let dir = TempDir::new("kinds");
    let text = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  uid: 9b2f4c1d-5e6a-47b8-8c9d-0e1f2a3b4c5d
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - image: nginx:1.27
        name: nginx
        ports:
        - containerPort: 8080
          name: http
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-root-ca.crt
  namespace: default
data:
  ca.crt: |
    -----BEGIN CERTIFICATE-----
---
apiVersion: v1
kind: Endpoints
metadata:
  name: web
  namespace: default
subsets:
- addresses:
  - ip: 10.244.1.12
  ports:
  - name: http
    port: 8080
    protocol: TCP
";
    dir.write("all.yaml", text);
    dir.write("cluster.yaml", CLUSTER);
    let (snapshot, skipped) = read(dir.path()).unwrap();
    assert_eq!(skipped, []);
    assert_eq!(snapshot.services.len(), 4);
    assert_eq!(snapshot.slices.len(), 4);
}

#[test]
fn only_yaml_yml_and_json_files_are_read() {
    let dir = TempDir::new("extensions");
    dir.write("cluster.yaml", CLUSTER);
    dir.write("README.md", "# not: [a manifest");
    dir.write("cluster.yaml.bak", "{{{ not yaml");
    std::fs::create_dir(dir.path().join("archive.yaml")).unwrap();
    let (snapshot, skipped) = read(dir.path()).unwrap();
    assert_eq!(skipped, []);
    assert_eq!(snapshot.services.len(), 4);
}

#[test]
fn fingerprint_changes_when_a_file_is_rewritten_or_added() {
    let dir = TempDir::new("fingerprint");
    dir.write("a.yaml", SKIPS);
    let first = fingerprint(dir.path()).unwrap();
    assert_eq!(fingerprint(dir.path()).unwrap(), first, "nothing changed");

    dir.write("notes.txt", "not a manifest");
    assert_eq!(
        fingerprint(dir.path()).unwrap(),
        first,
        "non-manifest files do not count"
    );

    dir.write("a.yaml", CLUSTER);
    let rewritten = fingerprint(dir.path()).unwrap();
    assert_ne!(rewritten, first, "same name, different size");

    dir.write("b.json", KUBE_DNS_JSON);
    let added = fingerprint(dir.path()).unwrap();
    assert_ne!(added, rewritten, "new file");

    std::fs::remove_file(dir.path().join("b.json")).unwrap();
    assert_ne!(fingerprint(dir.path()).unwrap(), added, "removed file");
}

#[test]
fn temp_dirs_are_removed() {
    let path = {
        let dir = TempDir::new("cleanup");
        dir.write("a.yaml", SKIPS);
        dir.path().to_path_buf()
    };
    assert!(!path.exists());
}

fn service_doc(name: &str, ip: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: lab\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n")
}

#[test]
fn a_broken_document_leaves_the_documents_after_it_in_the_file() {
    let text = [service_doc("first", "10.96.32.1"), "kind: Service\nmetadata: {name: [\n".to_string(), service_doc("third", "10.96.32.3")].join("---\n");
    let (mut snapshot, mut skipped) = (Snapshot::default(), Vec::new());
    crate::source::yaml_dir::parse_documents(&text, "three.yaml", &mut snapshot, &mut skipped);
    assert_eq!(names(&snapshot.services), ["lab/first", "lab/third"]);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
}

#[test]
fn a_file_that_stops_parsing_keeps_its_last_good_content_and_the_others_are_read() {
    let dir = TempDir::new("last-good");
    let mut reader = crate::source::yaml_dir::DirReader::default();
    dir.write("a.yaml", &service_doc("a", "10.96.33.1"));
    dir.write("b.yaml", &service_doc("b", "10.96.33.2"));
    let (snapshot, skipped) = reader.read(dir.path()).unwrap();
    assert_eq!(names(&snapshot.services), ["lab/a", "lab/b"]);
    assert!(skipped.is_empty());

    // A typo in a.yaml, a file that is not UTF-8, and a new Service in b.yaml.
    dir.write("a.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: a\n");
    std::fs::write(dir.path().join("c.yaml"), [0xff, 0xfe, b'k', b'i']).unwrap();
    dir.write("b.yaml", &[service_doc("b", "10.96.33.2"), service_doc("b2", "10.96.33.3")].join("---\n"));
    let (snapshot, skipped) = reader.read(dir.path()).unwrap();
    let mut got = names(&snapshot.services);
    got.sort();
    assert_eq!(got, ["lab/a", "lab/b", "lab/b2"], "a.yaml's last good content is kept");
    let mut objects: Vec<&str> = skipped.iter().map(|s| s.object.as_str()).collect();
    objects.sort();
    assert_eq!(objects, ["a.yaml", "c.yaml"], "{skipped:?}");

    // Fixed: its new content counts. Deleted: its Services go.
    dir.write("a.yaml", &service_doc("a-fixed", "10.96.33.4"));
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    let (snapshot, _) = reader.read(dir.path()).unwrap();
    assert_eq!(names(&snapshot.services), ["lab/a-fixed"]);
}
