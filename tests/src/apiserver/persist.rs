//! `--state FILE`: the objects and the resourceVersion counter saved as
//! JSON after every change and loaded at start, so that a restarted server
//! keeps its objects, as one backed by etcd would. The event history is not
//! kept: watches resuming from before the restart get 410 Expired and list
//! again.

use std::io;
use std::path::Path;

use serde_json::{json, Value};

use super::Resource;

/// One stored object with its key.
pub struct Loaded {
    pub resource: Resource,
    pub namespace: String,
    pub name: String,
    pub object: Value,
}

/// The resourceVersion and objects saved in `path`, None if it does not exist.
pub fn load(path: &Path) -> io::Result<Option<(u64, Vec<Loaded>)>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {m}", path.display()));
    let v: Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let rv =
        v["resourceVersion"].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| bad("no resourceVersion".into()))?;
    let mut out = Vec::new();
    for object in v["objects"].as_array().cloned().unwrap_or_default() {
        let kind = object["kind"].as_str().unwrap_or("");
        let resource =
            Resource::ALL.into_iter().find(|r| r.kind() == kind).ok_or_else(|| bad(format!("kind {kind:?}")))?;
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
        out.push(Loaded { resource, namespace, name, object });
    }
    Ok(Some((rv, out)))
}

/// Writes the state to `path` (through a temporary file and a rename).
pub fn save<'a>(path: &Path, rv: u64, objects: impl Iterator<Item = &'a Value>) -> io::Result<()> {
    let state = json!({"resourceVersion": rv.to_string(), "objects": objects.collect::<Vec<_>>()});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&state).map_err(io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}
