//! meta.k8s.io/v1 Table answers, for `kubectl get` without `-o`: the columns
//! kubectl shows for these kinds from a real server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::resource::Resource;

pub fn table(res: Resource, items: &[Value], rv: u64) -> Value {
    let columns: &[(&str, &str)] = match res {
        Resource::Services => {
            &[("Name", "name"), ("Type", ""), ("Cluster-IP", ""), ("External-IP", ""), ("Port(s)", ""), ("Age", "")]
        }
        Resource::EndpointSlices => {
            &[("Name", "name"), ("AddressType", ""), ("Ports", ""), ("Endpoints", ""), ("Age", "")]
        }
        Resource::Nodes => &[("Name", "name"), ("Status", ""), ("Roles", ""), ("Age", ""), ("Version", "")],
    };
    let column_definitions: Vec<Value> = columns
        .iter()
        .map(|(name, format)| {
            json!({"name": name, "type": "string", "format": format, "description": "", "priority": 0})
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![s(o, "/metadata/name")];
            cells.extend(match res {
                Resource::Services => service_cells(o),
                Resource::EndpointSlices => slice_cells(o),
                Resource::Nodes => node_cells(o),
            });
            let age = age(o);
            match res {
                Resource::Nodes => cells.insert(3, age),
                _ => cells.push(age),
            }
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

fn s(o: &Value, pointer: &str) -> String {
    o.pointer(pointer).and_then(Value::as_str).unwrap_or("").to_string()
}

fn or_none(v: Vec<String>, none: &str) -> String {
    if v.is_empty() {
        none.to_string()
    } else {
        v.join(",")
    }
}

fn array<'a>(o: &'a Value, pointer: &str) -> &'a [Value] {
    o.pointer(pointer).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn service_cells(o: &Value) -> Vec<String> {
    let ty = o.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
    let cluster_ip = o.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("<none>").to_string();
    let mut external: Vec<String> =
        array(o, "/spec/externalIPs").iter().filter_map(Value::as_str).map(String::from).collect();
    external.extend(
        array(o, "/status/loadBalancer/ingress")
            .iter()
            .filter_map(|i| i.get("ip").or_else(|| i.get("hostname")).and_then(Value::as_str))
            .map(String::from),
    );
    let none = if ty == "LoadBalancer" { "<pending>" } else { "<none>" };
    let ports = array(o, "/spec/ports")
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_u64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_u64) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    vec![ty, cluster_ip, or_none(external, none), or_none(ports, "<none>")]
}

fn slice_cells(o: &Value) -> Vec<String> {
    let ports = array(o, "/ports")
        .iter()
        .filter_map(|p| p.get("port").and_then(Value::as_u64))
        .map(|p| p.to_string())
        .collect();
    let addrs: Vec<String> = array(o, "/endpoints")
        .iter()
        .flat_map(|e| array(e, "/addresses").iter().filter_map(Value::as_str))
        .map(String::from)
        .collect();
    let endpoints = match addrs.len() {
        0 => "<unset>".to_string(),
        1..=3 => addrs.join(","),
        n => format!("{} + {} more...", addrs[..3].join(","), n - 3),
    };
    vec![s(o, "/addressType"), or_none(ports, "<unset>"), endpoints]
}

fn node_cells(o: &Value) -> Vec<String> {
    let ready = array(o, "/status/conditions")
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .and_then(|c| c.get("status").and_then(Value::as_str));
    let mut status = match ready {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    }
    .to_string();
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let roles = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).map(String::from).collect())
        .unwrap_or_default();
    vec![status, or_none(roles, "<none>"), s(o, "/status/nodeInfo/kubeletVersion")]
}

/// Time since creationTimestamp, as kubectl shows it ("5s", "3m", "2d").
fn age(o: &Value) -> String {
    let Some(created) = o.pointer("/metadata/creationTimestamp").and_then(Value::as_str).and_then(parse_timestamp)
    else {
        return "<unknown>".to_string();
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64;
    let d = (now - created).max(0);
    match d {
        0..120 => format!("{d}s"),
        120..7200 => format!("{}m", d / 60),
        7200..172_800 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86_400),
    }
}

/// Seconds since the epoch of a "YYYY-MM-DDTHH:MM:SSZ" timestamp.
fn parse_timestamp(t: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_round_trip() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_735_000_123);
        let s = super::super::meta::timestamp(t);
        assert_eq!(s, "2024-12-24T00:28:43Z");
        assert_eq!(super::parse_timestamp(&s), Some(1_735_000_123));
    }
}
