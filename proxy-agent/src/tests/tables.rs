//! The model laid out as map entries: byte order, consistency and ids.

use std::collections::BTreeSet;

use proxy_common::maps::MAX_BACKENDS_PER_SERVICE;
use proxy_common::Backend;

use super::*;
use crate::diff::diff;
use crate::model::{Endpoint, FrontendEntry, ServicePortName};
use crate::tables::{from_model, Ids};

const TERMINATING: &str = include_str!("../../testdata/terminating.yaml");

fn lay_out(model: &Model, ids: &mut Ids) -> Tables {
    let (tables, skipped) = from_model(model, ids);
    assert_eq!(skipped, []);
    tables
}

fn cluster_tables(ids: &mut Ids) -> Tables {
    lay_out(&build_clean(&load(CLUSTER)), ids)
}

fn backend_id(tables: &Tables, ip: [u8; 4], port: u16) -> u32 {
    let wanted = (u32::from_ne_bytes(ip), port.to_be());
    *tables
        .backends
        .iter()
        .find(|(_, b)| (b.addr, b.port) == wanted)
        .unwrap_or_else(|| panic!("no backend {ip:?}:{port}"))
        .0
}

fn service_id(tables: &Tables, key: &ServiceKey) -> u32 {
    tables.services[key].service_id
}

#[test]
fn addresses_and_ports_are_stored_in_network_byte_order() {
    let tables = cluster_tables(&mut Ids::default());
    // 10.96.0.10:9153/TCP, the kube-dns metrics port (0x23C1).
    let metrics = key([10, 96, 0, 10], 9153, TCP);
    let value = tables
        .services
        .get(&metrics)
        .expect("kube-dns metrics frontend by its wire-format key");
    assert_eq!(value.count, 2);
    let slot0 = BackendSlotKey {
        service_id: value.service_id,
        slot: 0,
    };
    let backend = tables.backends[&tables.slots[&slot0]];
    assert_eq!(
        backend,
        Backend {
            addr: u32::from_ne_bytes([10, 244, 0, 3]),
            port: 9153u16.to_be(),
            proto: TCP,
            flags: 0,
        }
    );
    // In memory exactly as on the wire, whatever the host's endianness.
    assert_eq!(backend.addr.to_ne_bytes(), [10, 244, 0, 3]);
    assert_eq!(backend.port.to_ne_bytes(), [0x23, 0xC1]);
    assert!(tables.services.contains_key(&key([10, 96, 0, 10], 53, UDP)));
    assert!(tables.services.contains_key(&key([10, 96, 0, 10], 53, TCP)));
}

#[test]
fn every_frontend_resolves_through_its_slots_to_its_endpoints() {
    let model = build_clean(&load_all(&[CLUSTER, TERMINATING]));
    let tables = lay_out(&model, &mut Ids::default());
    assert_eq!(tables.services.len(), model.frontends.len());
    for (frontend, entry) in &model.frontends {
        let want: Vec<String> = entry.endpoints.iter().map(|e| format!("{}:{}", e.ip, e.port)).collect();
        assert_eq!(resolve(&tables, &key_of(frontend)), Some(want), "{frontend}");
    }
    check_invariant(&tables).unwrap();
    // Nothing stored that no frontend reaches.
    let used: BTreeSet<u32> = tables.slots.values().copied().collect();
    assert_eq!(used, tables.backends.keys().copied().collect());
    let counted: u32 = tables.services.values().map(|v| v.count).sum();
    assert_eq!(tables.slots.len(), counted as usize);
}

#[test]
fn service_without_endpoints_is_kept_with_count_zero() {
    let tables = lay_out(&build_clean(&load(TERMINATING)), &mut Ids::default());
    // shop/inventory: every pod still starting.
    let value = tables
        .services
        .get(&key([10, 96, 88, 4], 80, TCP))
        .expect("inventory frontend");
    assert_eq!(value.count, 0);
    assert!(tables.slots.keys().all(|k| k.service_id != value.service_id));
}

#[test]
fn ids_are_nonzero_and_distinct() {
    let tables = cluster_tables(&mut Ids::default());
    let ids: BTreeSet<u32> = tables.services.values().map(|v| v.service_id).collect();
    assert_eq!(ids.len(), tables.services.len());
    assert!(!ids.contains(&0) && !tables.backends.contains_key(&0));
    assert!(tables.services.values().all(|v| v.rev_nat_index != 0));
}

#[test]
fn same_model_twice_gives_identical_tables_and_an_empty_diff() {
    let model = build_clean(&load(CLUSTER));
    let mut ids = Ids::default();
    let first = lay_out(&model, &mut ids);
    let second = lay_out(&model, &mut ids);
    assert_eq!(first, second);
    assert_eq!(diff(&first, &second), []);
}

#[test]
fn adding_a_service_keeps_every_existing_id() {
    let mut ids = Ids::default();
    let before = cluster_tables(&mut ids);
    let after = lay_out(&build_clean(&load_all(&[CLUSTER, TERMINATING])), &mut ids);
    for (key, value) in &before.services {
        assert_eq!(after.services.get(key), Some(value));
    }
    for (id, backend) in &before.backends {
        assert_eq!(after.backends.get(id), Some(backend));
    }
}

#[test]
fn restarted_agent_adopts_ids_from_the_maps_and_writes_nothing() {
    // A history that leaves ids out of any fresh allocator's order.
    let mut snapshot = load(CLUSTER);
    let mut ids = Ids::default();
    let mut shrunk = snapshot.clone();
    shrunk
        .services
        .retain(|s| s.metadata.name.as_deref() != Some("kubernetes"));
    lay_out(&build_clean(&shrunk), &mut ids);
    remove_web_pod(&mut snapshot);
    add_web_pod(&mut snapshot, "10.244.2.8");
    let model = build_clean(&snapshot);
    let in_maps = lay_out(&model, &mut ids);

    // Restart: only the maps survive.
    let mut adopted = Ids::adopt(&in_maps);
    let rebuilt = lay_out(&model, &mut adopted);
    assert_eq!(diff(&in_maps, &rebuilt), []);
    assert_eq!(rebuilt, in_maps);

    // Without adoption the same model would be rewritten.
    let fresh = lay_out(&model, &mut Ids::default());
    assert_ne!(diff(&in_maps, &fresh), []);

    // A new endpoint after the restart gets an id no one holds.
    add_web_pod(&mut snapshot, "10.244.2.9");
    let next = lay_out(&build_clean(&snapshot), &mut adopted);
    let new_id = backend_id(&next, [10, 244, 2, 9], 8080);
    assert!(!in_maps.backends.contains_key(&new_id));
}

#[test]
fn removed_backend_id_is_not_reused_right_away() {
    let mut snapshot = load(CLUSTER);
    let mut ids = Ids::default();
    let first = cluster_tables(&mut ids);
    let old_http = backend_id(&first, [10, 244, 2, 7], 8080);
    let old_https = backend_id(&first, [10, 244, 2, 7], 8443);

    remove_web_pod(&mut snapshot);
    let second = lay_out(&build_clean(&snapshot), &mut ids);
    assert!(!second.backends.contains_key(&old_http) && !second.backends.contains_key(&old_https));

    // A conntrack entry may still name old_http: a new pod must not get it.
    add_web_pod(&mut snapshot, "10.244.2.8");
    let third = lay_out(&build_clean(&snapshot), &mut ids);
    let new_ids = [
        backend_id(&third, [10, 244, 2, 8], 8080),
        backend_id(&third, [10, 244, 2, 8], 8443),
    ];
    for id in new_ids {
        assert!(!first.backends.contains_key(&id), "id {id} handed out again");
    }
}

#[test]
fn removed_service_id_is_not_reused_right_away() {
    let mut snapshot = load(CLUSTER);
    let mut ids = Ids::default();
    let first = cluster_tables(&mut ids);
    let redis = key([10, 96, 44, 201], 6379, TCP);
    let old = service_id(&first, &redis);

    snapshot
        .services
        .retain(|s| s.metadata.name.as_deref() != Some("redis"));
    lay_out(&build_clean(&snapshot), &mut ids);
    let third = lay_out(&build_clean(&load(CLUSTER)), &mut ids);
    assert_ne!(service_id(&third, &redis), old);
    assert!(third.services.values().all(|v| v.service_id != old));
}

#[test]
fn backend_shared_by_two_frontends_is_stored_once() {
    let mut model = build_clean(&load(CLUSTER));
    let web_http = model.frontends[&frontend("10.96.120.15", 80, Protocol::Tcp)].clone();
    model
        .frontends
        .insert(frontend("10.96.120.16", 80, Protocol::Tcp), web_http);
    let tables = lay_out(&model, &mut Ids::default());
    let a = resolve(&tables, &key([10, 96, 120, 15], 80, TCP)).unwrap();
    let b = resolve(&tables, &key([10, 96, 120, 16], 80, TCP)).unwrap();
    assert_eq!(a, b);
    let once = lay_out(&build_clean(&load(CLUSTER)), &mut Ids::default());
    assert_eq!(tables.backends.len(), once.backends.len());
}

fn huge_entry(name: &str, count: u32) -> FrontendEntry {
    FrontendEntry {
        service: ServicePortName {
            namespace: "load".into(),
            name: name.into(),
            port: "http".into(),
        },
        // 10.64.0.0 onwards; sorted and unique like the model's.
        endpoints: (0..count)
            .map(|i| Endpoint {
                ip: Ipv4Addr::from(0x0A40_0000 + i),
                port: 8080,
                local: false,
                terminating: false,
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn frontend_with_too_many_endpoints_is_left_out_whole_and_reported() {
    let mut model = build_clean(&load(CLUSTER));
    let normal = model.frontends.len();
    model.frontends.insert(
        frontend("10.96.33.33", 80, Protocol::Tcp),
        huge_entry("huge", MAX_BACKENDS_PER_SERVICE + 1),
    );
    model.frontends.insert(
        frontend("10.96.33.34", 80, Protocol::Tcp),
        huge_entry("full", MAX_BACKENDS_PER_SERVICE),
    );

    let (tables, skipped) = from_model(&model, &mut Ids::default());
    assert_eq!(
        skipped,
        [Skipped {
            object: "load/huge:http".into(),
            reason: SkipReason::TooManyEndpoints,
            held_by: None,
        }]
    );
    assert!(!tables.services.contains_key(&key([10, 96, 33, 33], 80, TCP)));
    assert_eq!(
        tables.services[&key([10, 96, 33, 34], 80, TCP)].count,
        MAX_BACKENDS_PER_SERVICE
    );
    assert_eq!(tables.services.len(), normal + 1);
    check_invariant(&tables).unwrap();
}
