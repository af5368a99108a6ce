//! A directory of Kubernetes YAML (or JSON), as `kubectl get -o yaml` prints
//! it: single objects, multi-document files and `kind: List`. For running
//! without a cluster. Polled rather than watched with inotify: editors replace
//! files in ways inotify reports unevenly, and a 200 ms poll of a few stat
//! calls costs nothing.

use std::collections::HashMap;
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

/// Reads every manifest in `dir` once. A file or object that does not
/// parse is reported and left out; the rest is returned.
#[cfg(test)]
pub fn read(dir: &Path) -> std::io::Result<(Snapshot, Vec<Skipped>)> {
    DirReader::default().read(dir)
}

/// Reads a directory again and again, remembering each file's last content
/// that parsed whole: a file that stops parsing (an edit half saved, a
/// typo) or cannot be read (not UTF-8, unreadable) keeps its Services as
/// they were, reported, instead of withdrawing them; the other files are
/// read as ever.
#[derive(Default)]
pub struct DirReader {
    last_good: HashMap<PathBuf, Snapshot>,
}

impl DirReader {
    pub fn read(&mut self, dir: &Path) -> std::io::Result<(Snapshot, Vec<Skipped>)> {
        let mut snapshot = Snapshot::default();
        let mut skipped = Vec::new();
        let files = manifest_files(dir)?;
        self.last_good.retain(|path, _| files.contains(path));
        for path in files {
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let mut part = Snapshot::default();
            let mut file_skipped = Vec::new();
            match std::fs::read(&path).map(String::from_utf8) {
                Ok(Ok(text)) => parse_documents(&text, &name, &mut part, &mut file_skipped),
                Ok(Err(_)) => unparsable(&name, "not UTF-8", &mut file_skipped),
                Err(error) => unparsable(&name, &error.to_string(), &mut file_skipped),
            }
            if file_skipped.iter().any(|s| s.reason == SkipReason::Unparsable) {
                if let Some(good) = self.last_good.get(&path) {
                    tracing::warn!(file = name, "keeping the file's last content that parsed");
                    part = good.clone();
                }
            } else {
                self.last_good.insert(path, part.clone());
            }
            snapshot.services.extend(part.services);
            snapshot.slices.extend(part.slices);
            skipped.extend(file_skipped);
        }
        Ok((snapshot, skipped))
    }
}

fn unparsable(origin: &str, error: &str, skipped: &mut Vec<Skipped>) {
    tracing::warn!(file = origin, error, "manifest does not parse; skipped");
    skipped.push(Skipped {
        object: origin.to_string(),
        reason: SkipReason::Unparsable,
        held_by: None,
    });
}

/// The documents of a multi-document YAML text, split at `---` lines
/// before parsing, so that one that does not parse leaves the others
/// alone (serde_yaml 0.9 would give up the rest of the stream, and repeat a
/// syntax error forever if asked for more: dtolnay/serde-yaml#193).
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(line[3..].trim_start().to_string());
            docs.last_mut().unwrap().push('\n');
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|d| !d.trim().is_empty());
    docs
}

pub fn parse_documents(text: &str, origin: &str, snapshot: &mut Snapshot, skipped: &mut Vec<Skipped>) {
    for document in documents(text) {
        let value = match serde_yaml::from_str::<serde_yaml::Value>(&document)
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
        {
            Ok(value) => value,
            Err(error) => {
                unparsable(origin, &error, skipped);
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
        // Debug-formatted: a name is anyone's text, and a newline in it
        // must not start a log line of its own.
        tracing::warn!(file = origin, ?object, kind, %error, "object does not match its kind's schema; skipped");
        skipped.push(Skipped {
            object,
            reason: SkipReason::Unparsable,
            held_by: None,
        });
    }
}
