//! Object metadata: what the server checks and fills in on writes, merge
//! patches, uids and timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::{ApiError, Resource};

/// Checks and completes kind, apiVersion, namespace; returns the name.
pub(super) fn prepare(res: Resource, ns: &str, obj: &mut Value) -> Result<String, ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request("the body is not a JSON object"));
    };
    for (field, want) in [("kind", res.kind()), ("apiVersion", res.api_version())] {
        match map.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == want || s.is_empty() => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!("{field} {other} does not match {want} on the URL")));
            }
        }
        map.insert(field.into(), Value::String(want.into()));
    }
    let meta = metadata(obj);
    if !meta.contains_key("name") {
        if let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
            let name = format!("{prefix}{}", random_suffix());
            meta.insert("name".into(), Value::String(name));
        }
    }
    let name = match meta.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(ApiError::bad_request("metadata.name: Required value: name or generateName is required")),
    };
    if res.namespaced() {
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {}
            Some(n) if n == ns => {}
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({n}) does not match the namespace sent on the request ({ns})"
                )));
            }
        }
        meta.insert("namespace".into(), Value::String(ns.into()));
    } else {
        meta.remove("namespace");
    }
    Ok(name)
}

/// `obj.metadata` as a map, created if missing; `obj` must be an object.
pub(super) fn metadata(obj: &mut Value) -> &mut Map<String, Value> {
    let map = obj.as_object_mut().expect("object");
    let meta = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("object")
}

pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// A UUID-shaped identifier, unique within this process and likely across.
pub(super) fn uid(rv: u64) -> String {
    let h = (nanos() as u64 ^ (u64::from(std::process::id()) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (rv >> 48) & 0xfff,
        rv & 0xffff_ffff_ffff
    )
}

fn random_suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = nanos().wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..5)
        .map(|_| {
            let c = CHARS[(n % CHARS.len() as u128) as usize] as char;
            n /= CHARS.len() as u128;
            c
        })
        .collect()
}

/// RFC 3339 in UTC, seconds precision, as Kubernetes writes timestamps.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
