//! The incremental model and tables the agent keeps against the whole-world
//! `build` and `from_model`, over random sequences of Service and
//! EndpointSlice changes. The objects are drawn from small pools of
//! addresses and ports so that Services fight over frontends, share
//! backends, move slices between each other and break in the ways the model
//! skips.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use super::*;
use crate::diff::{diff, diff_touched};
use crate::model::{slice_owner, LiveModel, ServiceName, ServiceObjects, Slice};
use crate::tables::{from_model, Ids, LiveTables};

/// xorshift64*: deterministic, so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const NAMESPACES: &[&str] = &["default", "shop"];
const NAMES: &[&str] = &["web", "api", "db", "cache", "dns"];
/// Few enough that Services collide on them.
const VIPS: &[&str] = &["10.96.0.1", "10.96.0.2", "10.96.0.3", "10.96.0.4", "bad-ip"];
const EXTERNAL: &[&str] = &["192.0.2.1", "192.0.2.2", "198.51.100.7"];
const POD_IPS: &[&str] = &["10.244.1.10", "10.244.1.11", "10.244.2.10", "10.244.2.11", "10.244.2.12", "not-an-ip"];
const PORTS: [u16; 3] = [53, 80, 443];
const PORT_NAMES: &[&str] = &["", "http", "dns"];

fn random_service(rng: &mut Rng, namespace: &str, name: &str) -> Service {
    let mut ports = Vec::new();
    for _ in 0..1 + rng.below(2) {
        let port_name = rng.pick(PORT_NAMES);
        let mut port = json!({
            "port": PORTS[rng.below(3)],
            "protocol": rng.pick(&["TCP", "TCP", "UDP", "SCTP"]),
            "targetPort": 8080,
        });
        if !port_name.is_empty() {
            port["name"] = json!(port_name);
        }
        if rng.chance(50) {
            port["nodePort"] = json!(30000 + rng.below(3));
        }
        ports.push(port);
    }
    let service_type = rng.pick(&["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"]);
    let mut spec = json!({
        "type": service_type,
        "clusterIP": rng.pick(VIPS),
        "ports": ports,
        "externalTrafficPolicy": rng.pick(&["Cluster", "Local"]),
        "internalTrafficPolicy": rng.pick(&["Cluster", "Cluster", "Local"]),
    });
    if service_type == "LoadBalancer" {
        spec["healthCheckNodePort"] = json!(32000);
        if rng.chance(50) {
            let ranges = rng.pick(&["10.100.0.0/24", "192.0.2.0/24,10.0.0.0/8", "not-a-cidr", "0.0.0.0/0"]);
            spec["loadBalancerSourceRanges"] = json!(ranges.split(',').collect::<Vec<_>>());
        }
    }
    if rng.chance(30) {
        // Now and then another Service's ClusterIP, which it must not take.
        spec["externalIPs"] = json!([rng.pick(&[EXTERNAL, &VIPS[..2]].concat())]);
    }
    if rng.chance(20) {
        spec["sessionAffinity"] = json!("ClientIP");
    }
    let mut svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    // Ages decide between Services claiming one frontend: some undated (a
    // manifest directory's), some of the same second (the uid decides).
    if rng.chance(70) {
        svc["metadata"]["creationTimestamp"] = json!(rng.pick(&["2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"]));
        svc["metadata"]["uid"] = json!(rng.pick(&["uid-a", "uid-b", "uid-c"]));
    }
    if service_type == "LoadBalancer" && rng.chance(70) {
        svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": rng.pick(EXTERNAL)}]}});
    }
    serde_json::from_value(svc).expect("a Service")
}

fn random_slice(rng: &mut Rng, namespace: &str, name: &str, service: &str) -> EndpointSlice {
    let endpoints: Vec<Value> = (0..rng.below(4))
        .map(|_| {
            let mut ep = json!({
                "addresses": [rng.pick(POD_IPS)],
                "conditions": {
                    "ready": rng.chance(70),
                    "serving": rng.chance(80),
                    "terminating": rng.chance(30),
                },
                "nodeName": rng.pick(&["node-1", "node-2"]),
            });
            if rng.chance(30) {
                ep["hints"] = json!({"forZones": [{"name": rng.pick(&["zone-a", "zone-b"])}]});
            }
            ep
        })
        .collect();
    let port_name = rng.pick(PORT_NAMES);
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": rng.pick(&["IPv4", "IPv4", "IPv4", "IPv6"]),
        "ports": [{"name": port_name, "port": 8080 + rng.below(2), "protocol": rng.pick(&["TCP", "UDP"])}],
        "endpoints": endpoints,
    });
    serde_json::from_value(slice).expect("an EndpointSlice")
}

/// The objects a source holds, by namespace and name.
#[derive(Default)]
struct World {
    services: BTreeMap<(String, String), Arc<Service>>,
    slices: BTreeMap<(String, String), Arc<EndpointSlice>>,
}

impl World {
    fn services(&self) -> Vec<Arc<Service>> {
        self.services.values().cloned().collect()
    }
    fn slices(&self) -> Vec<Arc<EndpointSlice>> {
        self.slices.values().cloned().collect()
    }
    fn kept_slices(&self) -> Vec<Arc<Slice>> {
        self.slices.values().map(|s| Arc::new(Slice::from(&**s))).collect()
    }
    fn owner(&self, key: &(String, String)) -> Option<ServiceName> {
        let slice = Slice::from(&**self.slices.get(key)?);
        slice_owner(&slice).map(|(ns, name)| ServiceName::new(ns, name))
    }

    /// One random change; returns the Services it concerns.
    fn change(&mut self, rng: &mut Rng) -> BTreeSet<ServiceName> {
        let namespace = rng.pick(NAMESPACES).to_string();
        let mut concerned = BTreeSet::new();
        if rng.chance(40) {
            let name = rng.pick(NAMES).to_string();
            concerned.insert(ServiceName::new(&namespace, &name));
            let key = (namespace.clone(), name.clone());
            if rng.chance(25) {
                self.services.remove(&key);
            } else {
                self.services.insert(key, Arc::new(random_service(rng, &namespace, &name)));
            }
        } else {
            // Slices named after a Service may be labelled for another: a
            // label change moves a slice between Services.
            let key = (namespace.clone(), format!("{}-{}", rng.pick(NAMES), rng.below(2)));
            concerned.extend(self.owner(&key));
            if rng.chance(25) {
                self.slices.remove(&key);
            } else {
                let service = if rng.chance(80) { key.1[..key.1.len() - 2].to_string() } else { rng.pick(NAMES).to_string() };
                self.slices.insert(key.clone(), Arc::new(random_slice(rng, &namespace, &key.1, &service)));
                concerned.extend(self.owner(&key));
            }
        }
        concerned
    }

    /// What the Kubernetes source hands the sync for these Services.
    fn objects(&self, names: &BTreeSet<ServiceName>) -> Vec<ServiceObjects> {
        names
            .iter()
            .map(|name| ServiceObjects {
                name: name.clone(),
                service: self.services.get(&(name.namespace.clone(), name.name.clone())).cloned(),
                slices: self
                    .kept_slices()
                    .into_iter()
                    .filter(|s| slice_owner(s) == Some((&name.namespace, &name.name)))
                    .collect(),
            })
            .collect()
    }
}

/// The slices as the agent keeps them.
fn kept(snapshot: &Snapshot) -> Vec<Arc<Slice>> {
    snapshot.slices.iter().map(|s| Arc::new(Slice::from(&**s))).collect()
}

fn sorted(mut skipped: Vec<Skipped>) -> Vec<(String, &'static str)> {
    skipped.sort_by(|a, b| (&a.object, a.reason).cmp(&(&b.object, b.reason)));
    skipped.into_iter().map(|s| (s.object, s.reason.label())).collect()
}

fn node(name: &str, zone: &str, ip: &str) -> Config {
    Config {
        node_name: Some(name.into()),
        node_zone: Some(zone.into()),
        node_ips: vec![ip.parse().unwrap()],
        ..Config::default()
    }
}

#[test]
fn incremental_model_and_tables_equal_a_full_build_over_random_changes() {
    let configs = [node("node-1", "zone-a", "172.18.0.3"), node("node-2", "zone-b", "172.18.0.4")];
    // Steps where the cases that make incremental upkeep hard were present.
    let (mut contested, mut shared_backends, mut shadowing) = (0, 0, 0);
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut world = World::default();
        let mut config = configs[0].clone();
        let mut live = LiveModel::default();
        live.replace_all(&[], &[], &config);
        let mut live_tables = LiveTables::new(Ids::default());
        let mut full_ids = Ids::default();
        for step in 0..150 {
            let at = format!("seed {seed} step {step}");
            let before = live_tables.tables().clone();
            let touched = if rng.chance(3) {
                // The node changed: everything is laid out again (and the
                // agent diffs every entry).
                config = configs[rng.below(2)].clone();
                live.replace_all(&world.services(), &world.kept_slices(), &config);
                live_tables.replace_all(live.model());
                None
            } else {
                let mut concerned = world.change(&mut rng);
                if rng.chance(10) {
                    concerned.extend(world.change(&mut rng));
                }
                let changed = live.update(&world.objects(&concerned));
                Some(live_tables.update(live.model(), &changed))
            };

            let (model, skipped) = crate::model::build(&world.services(), &world.slices(), &config);
            assert_eq!(live.model(), &model, "{at}: model");
            contested += skipped.iter().any(|s| s.reason == SkipReason::DuplicateFrontend) as u32;
            shadowing += skipped.iter().any(|s| s.reason == SkipReason::ExternalIpConflict) as u32;
            assert_eq!(sorted(live.skipped().to_vec()), sorted(skipped), "{at}: skips");

            let (tables, table_skipped) = from_model(&model, &mut full_ids);
            shared_backends += (tables.slots.values().collect::<BTreeSet<_>>().len() < tables.slots.len()) as u32;
            assert_eq!(live_tables.tables(), &tables, "{at}: tables");
            assert_eq!(sorted(live_tables.skipped(live.model())), sorted(table_skipped), "{at}: table skips");
            if let Some(touched) = touched {
                assert_eq!(diff_touched(&touched, &tables), diff(&before, &tables), "{at}: diff of touched keys");
                assert_eq!(touched.revert(tables.clone()), before, "{at}: the touched entries' old values");
            }
        }
    }
    println!("steps with duplicates {contested}, shared backends {shared_backends}, externalIP conflicts {shadowing}");
    assert!(contested > 500 && shared_backends > 500 && shadowing > 100, "weak generator: {contested} {shared_backends} {shadowing} of 6000 steps");
}

#[test]
fn an_unchanged_service_changes_nothing() {
    let snapshot = load(CLUSTER);
    let config = Config::default();
    let mut live = LiveModel::default();
    live.replace_all(&snapshot.services, &kept(&snapshot), &config);
    let mut tables = LiveTables::new(Ids::default());
    tables.replace_all(live.model());
    let web = ServiceName::new("default", "web");
    let objects = ServiceObjects {
        service: snapshot.services.iter().find(|s| ServiceName::of(s) == web).cloned(),
        slices: kept(&snapshot),
        name: web,
    };
    let changed = live.update(&[objects]);
    assert_eq!(changed, BTreeSet::new());
    assert_eq!(tables.update(live.model(), &changed), Default::default());
}

#[test]
fn a_moved_endpoint_touches_only_its_own_entries() {
    let snapshot = load(CLUSTER);
    let mut live = LiveModel::default();
    live.replace_all(&snapshot.services, &kept(&snapshot), &Config::default());
    let mut tables = LiveTables::new(Ids::default());
    tables.replace_all(live.model());
    let before = tables.tables().clone();

    let redis = ServiceName::new("default", "redis");
    let mut slices = Vec::new();
    for slice in kept(&snapshot) {
        if slice_owner(&slice) == Some(("default", "redis")) {
            let mut moved = (*slice).clone();
            moved.endpoints.as_mut().expect("endpoints")[0].address = Some("10.244.9.9".into());
            slices.push(Arc::new(moved));
        }
    }
    let service = snapshot.services.iter().find(|s| ServiceName::of(s) == redis).cloned();
    let changed = live.update(&[ServiceObjects { name: redis, service, slices }]);
    assert_eq!(changed.len(), 1, "only redis's one frontend: {changed:?}");
    let touched = tables.update(live.model(), &changed);
    let ops = diff_touched(&touched, tables.tables());
    assert!(ops.len() <= 3, "a put of the new backend and its slot, a delete of the old backend: {ops:?}");
    assert_eq!(ops, diff(&before, tables.tables()));
}

#[test]
fn slices_read_from_json_keep_what_the_model_reads() {
    let fixtures = load_all(&[CLUSTER, include_str!("../../testdata/topology.yaml"), include_str!("../../testdata/terminating.yaml")]);
    for slice in &fixtures.slices {
        let json = serde_json::to_value(&**slice).unwrap();
        let read: Slice = serde_json::from_value(json).unwrap();
        assert_eq!(read, Slice::from(&**slice));
    }
    assert!(fixtures.slices.len() > 5);
}
