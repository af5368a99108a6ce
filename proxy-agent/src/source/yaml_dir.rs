//! A directory of Kubernetes YAML (or JSON), as `kubectl get -o yaml` prints
//! it: single objects, multi-document files and `kind: List`. For running
//! without a cluster. Polled rather than watched with inotify: editors replace
//! files in ways inotify reports unevenly, and a 200 ms poll of a few stat
//! calls costs nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

use super::Snapshot;
use crate::skip::{SkipReason, Skipped};

/// What the directory looked like: names, sizes and modification times.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

pub fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    let mut files = Vec::new();
    for path in manifest_files(dir)? {
        let meta = std::fs::metadata(&path)?;
        files.push((path, meta.len(), meta.modified().ok()));
    }
    Ok(Fingerprint(files))
}

fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if is_manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every manifest in `dir`. A file or object that does not parse is
/// reported and left out; the rest is returned.
pub fn read(dir: &Path) -> std::io::Result<(Snapshot, Vec<Skipped>)> {
    let mut snapshot = Snapshot::default();
    let mut skipped = Vec::new();
    for path in manifest_files(dir)? {
        let text = std::fs::read_to_string(&path)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        parse_documents(&text, &name, &mut snapshot, &mut skipped);
    }
    Ok((snapshot, skipped))
}

pub fn parse_documents(text: &str, origin: &str, snapshot: &mut Snapshot, skipped: &mut Vec<Skipped>) {
    for document in serde_yaml::Deserializer::from_str(text) {
        let yaml: Result<serde_yaml::Value, _> = serde::Deserialize::deserialize(document);
        // After a syntax error serde_yaml 0.9 yields the same failing
        // document forever (dtolnay/serde-yaml#193), so the rest of the
        // file is given up.
        let stop = yaml.is_err();
        let value = match yaml
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
        {
            Ok(value) => value,
            Err(error) => {
                tracing::warn!(file = origin, %error, "manifest does not parse; skipped");
                skipped.push(Skipped {
                    object: origin.to_string(),
                    reason: SkipReason::Unparsable,
                    held_by: None,
                });
                if stop {
                    break;
                }
                continue;
            }
        };
        add_object(value, origin, snapshot, skipped);
    }
}

fn add_object(value: Value, origin: &str, snapshot: &mut Snapshot, skipped: &mut Vec<Skipped>) {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = || {
        let meta = value.get("metadata");
        let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str).unwrap_or("").to_string();
        format!("{}/{}", field("namespace"), field("name"))
    };
    let result = match kind.as_str() {
        "List" | "ServiceList" | "EndpointSliceList" => {
            if let Some(Value::Array(items)) = value.get("items") {
                for item in items.clone() {
                    add_object(item, origin, snapshot, skipped);
                }
            }
            Ok(())
        }
        "Service" => {
            let object = name();
            serde_json::from_value(value).map(|s| snapshot.services.push(Arc::new(s))).map_err(|e| (object, e))
        }
        "EndpointSlice" => {
            let object = name();
            serde_json::from_value(value).map(|s| snapshot.slices.push(Arc::new(s))).map_err(|e| (object, e))
        }
        // Null documents (a trailing `---`) and other kinds are not ours.
        _ => Ok(()),
    };
    if let Err((object, error)) = result {
        tracing::warn!(file = origin, %object, kind, %error, "object does not match its kind's schema; skipped");
        skipped.push(Skipped {
            object,
            reason: SkipReason::Unparsable,
            held_by: None,
        });
    }
}
