//! Map writes between two table states: ordering, minimality, and a replay
//! that checks every intermediate state a packet could see.

use std::collections::BTreeSet;

use proxy_common::Backend;

use super::*;
use crate::diff::{diff, Op};
use crate::model::{Endpoint, FrontendEntry, ServicePortName};
use crate::tables::{from_model, Ids};

const ENDPOINTS: &str = include_str!("../../testdata/endpoints.yaml");
const TERMINATING: &str = include_str!("../../testdata/terminating.yaml");
const DUAL_STACK: &str = include_str!("../../testdata/dual-stack.yaml");

fn lay_out(snapshot: &Snapshot, ids: &mut Ids) -> Tables {
    let (tables, skipped) = from_model(&build_clean(snapshot), ids);
    assert_eq!(skipped, []);
    tables
}

/// The order the agent promises: backends, slots (and source ranges),
/// services are written; then services, source ranges and slots, backends
/// are removed.
fn phase(op: &Op) -> u8 {
    match op {
        Op::PutBackend(..) => 0,
        Op::PutSlot(..) | Op::PutSourceRange(..) => 1,
        Op::PutService(..) => 2,
        Op::DeleteService(..) => 3,
        Op::DeleteSlot(..) | Op::DeleteSourceRange(..) => 4,
        Op::DeleteBackend(..) => 5,
    }
}

fn apply(tables: &mut Tables, op: &Op) {
    match op {
        Op::PutBackend(id, backend) => drop(tables.backends.insert(*id, *backend)),
        Op::PutSlot(key, id) => drop(tables.slots.insert(*key, *id)),
        Op::PutService(key, value) => drop(tables.services.insert(*key, *value)),
        Op::DeleteService(key) => drop(tables.services.remove(key)),
        Op::DeleteSlot(key) => drop(tables.slots.remove(key)),
        Op::DeleteBackend(id) => drop(tables.backends.remove(id)),
        Op::PutSourceRange(len, data) => drop(tables.source_ranges.insert((*len, *data), crate::tables::SOURCE_RANGE_ALLOWED)),
        Op::DeleteSourceRange(len, data) => drop(tables.source_ranges.remove(&(*len, *data))),
    }
}

/// Applies `diff(old, new)` one op at a time to a copy of `old`, as the
/// datapath would see it, checking the invariant after every op.
fn replay(old: &Tables, new: &Tables) -> Vec<Op> {
    check_invariant(old).expect("old tables");
    let ops = diff(old, new);
    let mut maps = old.clone();
    for (i, op) in ops.iter().enumerate() {
        apply(&mut maps, op);
        if let Err(e) = check_invariant(&maps) {
            panic!("after op {i} {op:?}: {e}\nops: {ops:#?}");
        }
    }
    assert_eq!(&maps, new, "replaying the diff does not reach the new tables");
    ops
}

fn position(ops: &[Op], wanted: impl Fn(&Op) -> bool) -> usize {
    ops.iter()
        .position(wanted)
        .unwrap_or_else(|| panic!("op not found in {ops:#?}"))
}

const WEB_HTTP: ([u8; 4], u16) = ([10, 96, 120, 15], 80);
const WEB_HTTPS: ([u8; 4], u16) = ([10, 96, 120, 15], 443);

#[test]
fn creating_everything_writes_backends_then_slots_then_services() {
    let tables = lay_out(&load(CLUSTER), &mut Ids::default());
    let ops = replay(&Tables::default(), &tables);
    assert!(ops.windows(2).all(|w| phase(&w[0]) <= phase(&w[1])), "{ops:#?}");
    let count = |p| ops.iter().filter(|op| phase(op) == p).count();
    assert_eq!(
        [count(0), count(1), count(2)],
        [tables.backends.len(), tables.slots.len(), tables.services.len()]
    );
    assert_eq!(ops.len(), count(0) + count(1) + count(2));
}

#[test]
fn removing_everything_deletes_services_then_slots_then_backends() {
    let tables = lay_out(&load(CLUSTER), &mut Ids::default());
    let ops = replay(&tables, &Tables::default());
    let phases: Vec<u8> = ops.iter().map(phase).collect();
    assert!(phases.windows(2).all(|w| w[0] <= w[1]), "{ops:#?}");
    assert_eq!(phases.first(), Some(&3));
    assert_eq!(
        ops.len(),
        tables.services.len() + tables.slots.len() + tables.backends.len()
    );
}

#[test]
fn identical_tables_need_no_write() {
    let tables = lay_out(&load(CLUSTER), &mut Ids::default());
    assert_eq!(diff(&tables, &tables.clone()), []);
}

#[test]
fn growing_a_service_writes_the_new_slot_before_the_count() {
    let mut snapshot = load(CLUSTER);
    let mut ids = Ids::default();
    let old = lay_out(&snapshot, &mut ids);
    add_web_pod(&mut snapshot, "10.244.2.8"); // sorts last: slot 3
    let new = lay_out(&snapshot, &mut ids);
    let ops = replay(&old, &new);

    for (ip, port) in [WEB_HTTP, WEB_HTTPS] {
        let k = key(ip, port, TCP);
        let id = new.services[&k].service_id;
        let slot = BackendSlotKey {
            service_id: id,
            slot: 3,
        };
        let put_slot = position(&ops, |op| matches!(op, Op::PutSlot(s, _) if *s == slot));
        let put_count = position(&ops, |op| matches!(op, Op::PutService(s, v) if *s == k && v.count == 4));
        assert!(put_slot < put_count, "{ops:#?}");
    }
    assert!(
        ops.iter().all(|op| phase(op) <= 2),
        "scaling up deletes nothing: {ops:#?}"
    );
}

#[test]
fn shrinking_a_service_writes_the_count_before_deleting_the_slot() {
    let mut snapshot = load(CLUSTER);
    let mut ids = Ids::default();
    let old = lay_out(&snapshot, &mut ids);
    remove_web_pod(&mut snapshot); // 10.244.2.7 sorts last: slot 2 goes
    let new = lay_out(&snapshot, &mut ids);
    let ops = replay(&old, &new);

    for (ip, port) in [WEB_HTTP, WEB_HTTPS] {
        let k = key(ip, port, TCP);
        let id = old.services[&k].service_id;
        let slot = BackendSlotKey {
            service_id: id,
            slot: 2,
        };
        let gone = old.slots[&slot];
        let put_count = position(&ops, |op| matches!(op, Op::PutService(s, v) if *s == k && v.count == 2));
        let del_slot = position(&ops, |op| *op == Op::DeleteSlot(slot));
        let del_backend = position(&ops, |op| *op == Op::DeleteBackend(gone));
        assert!(put_count < del_slot && del_slot < del_backend, "{ops:#?}");
    }
}

#[test]
fn replacing_one_pod_among_many_services_touches_only_its_entries() {
    let mut snapshot = load_all(&[CLUSTER, ENDPOINTS, TERMINATING, DUAL_STACK]);
    let mut ids = Ids::default();
    let old = lay_out(&snapshot, &mut ids);
    assert!(old.services.len() > 15);
    // redis-0 restarted with a new pod IP.
    slice_mut(&mut snapshot, "default", "redis-q9w4d")
        .endpoints
        .as_mut()
        .unwrap()[0]
        .addresses = vec!["10.244.2.19".into()];
    let new = lay_out(&snapshot, &mut ids);
    let ops = replay(&old, &new);

    let redis = new.services[&key([10, 96, 44, 201], 6379, TCP)].service_id;
    let slot = BackendSlotKey {
        service_id: redis,
        slot: 0,
    };
    let (old_id, new_id) = (old.slots[&slot], new.slots[&slot]);
    let pod = Backend {
        addr: u32::from_ne_bytes([10, 244, 2, 19]),
        port: 6379u16.to_be(),
        proto: TCP,
        flags: 0,
    };
    assert_eq!(
        ops,
        [
            Op::PutBackend(new_id, pod),
            Op::PutSlot(slot, new_id),
            Op::DeleteBackend(old_id)
        ]
    );
}

#[test]
fn scaling_one_service_writes_nothing_for_the_others() {
    let mut snapshot = load_all(&[CLUSTER, ENDPOINTS, TERMINATING]);
    let mut ids = Ids::default();
    let old = lay_out(&snapshot, &mut ids);
    remove_web_pod(&mut snapshot);
    add_web_pod(&mut snapshot, "10.244.1.14");
    let new = lay_out(&snapshot, &mut ids);
    let ops = replay(&old, &new);

    let web: BTreeSet<u32> = [WEB_HTTP, WEB_HTTPS]
        .iter()
        .map(|(ip, p)| new.services[&key(*ip, *p, TCP)].service_id)
        .collect();
    let web_backends: BTreeSet<u32> = old
        .slots
        .iter()
        .chain(&new.slots)
        .filter(|(k, _)| web.contains(&k.service_id))
        .map(|(_, b)| *b)
        .collect();
    for op in &ops {
        let ours = match op {
            Op::PutService(_, v) => web.contains(&v.service_id),
            Op::DeleteService(_) => false,
            Op::PutSlot(k, _) | Op::DeleteSlot(k) => web.contains(&k.service_id),
            Op::PutBackend(id, _) | Op::DeleteBackend(id) => web_backends.contains(id),
            Op::PutSourceRange(_, r) | Op::DeleteSourceRange(_, r) => web.contains(&u32::from_be(r.service_id_be)),
        };
        assert!(ours, "{op:?} is not web's");
    }
}

/// Moves the maps to what `snapshot` asks for, through `replay`.
fn step(maps: &mut Tables, snapshot: &Snapshot, ids: &mut Ids) {
    let next = lay_out(snapshot, ids);
    replay(maps, &next);
    *maps = next;
}

#[test]
fn rollout_and_teardown_never_expose_a_missing_slot_or_backend() {
    let mut snapshot = load_all(&[CLUSTER, TERMINATING]);
    let mut ids = Ids::default();
    let mut maps = lay_out(&snapshot, &mut ids);
    // Surge: a new pod; then the old ones go one by one.
    add_web_pod(&mut snapshot, "10.244.3.5");
    step(&mut maps, &snapshot, &mut ids);
    for old in ["10.244.1.12", "10.244.2.7", "10.244.1.13"] {
        web_pods(&mut snapshot).retain(|e| e.addresses[0] != old);
        step(&mut maps, &snapshot, &mut ids);
    }
    assert_eq!(
        resolve(&maps, &key(WEB_HTTP.0, WEB_HTTP.1, TCP)).unwrap(),
        ["10.244.3.5:8080"]
    );
    // kube-dns loses every pod, then web is deleted, then the agent restarts
    // and everything comes back.
    slice_mut(&mut snapshot, "kube-system", "kube-dns-8kq2v").endpoints = None;
    step(&mut maps, &snapshot, &mut ids);
    snapshot.services.retain(|s| s.metadata.name.as_deref() != Some("web"));
    step(&mut maps, &snapshot, &mut ids);
    let mut restarted = Ids::adopt(&maps);
    step(&mut maps, &load_all(&[CLUSTER, TERMINATING]), &mut restarted);
}

/// A small deterministic generator (64-bit LCG), so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % u64::from(n)) as u32
    }
}

fn random_model(rng: &mut Lcg) -> Model {
    let mut model = Model::default();
    for svc in 0..6u8 {
        if rng.next(5) == 0 {
            continue; // deleted this round
        }
        let proto = if svc % 2 == 0 { Protocol::Tcp } else { Protocol::Udp };
        let endpoints: BTreeSet<Endpoint> = (0..rng.next(6))
            .map(|_| Endpoint {
                ip: Ipv4Addr::new(10, 244, 0, 1 + rng.next(10) as u8),
                port: 8080,
                local: false,
                terminating: false,
            })
            .collect();
        model.frontends.insert(
            Frontend {
                ip: Ipv4Addr::new(10, 96, 1, svc),
                port: 80,
                proto,
                kind: FrontendKind::ClusterIp,
            },
            FrontendEntry {
                service: ServicePortName {
                    namespace: "fuzz".into(),
                    name: format!("svc-{svc}"),
                    port: String::new(),
                },
                endpoints: endpoints.into_iter().collect(),
                ..Default::default()
            },
        );
    }
    model
}

#[test]
fn random_model_sequences_never_expose_a_missing_slot_or_backend() {
    let mut rng = Lcg(0x5eed);
    let mut ids = Ids::default();
    let mut maps = Tables::default();
    for round in 0..400 {
        if round % 50 == 49 {
            ids = Ids::adopt(&maps); // agent restart
        }
        let (next, skipped) = from_model(&random_model(&mut rng), &mut ids);
        assert_eq!(skipped, []);
        replay(&maps, &next);
        maps = next;
    }
}
