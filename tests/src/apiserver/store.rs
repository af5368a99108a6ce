//! The objects, the global resourceVersion counter and the bounded event
//! history that watches replay from.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde_json::Value;
use tokio::sync::watch;

use super::meta::{merge_patch, metadata, prepare, timestamp, uid};
use super::persist;
use super::{ApiError, Resource};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change. `object` is the object after the change (for DELETED: its
/// last state, with the deletion's resourceVersion); `prev` the object
/// before a MODIFIED, so that selector watches can tell when an object
/// starts or stops matching.
#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub resource: Resource,
    pub kind: EventType,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

/// The resourceVersion asked for is older than the history kept.
#[derive(Debug)]
pub struct Expired {
    pub requested: u64,
    pub oldest: u64,
}

type Key = (Resource, String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Event>,
    /// resourceVersion of the newest event dropped from `history`.
    evicted: u64,
}

pub struct Store {
    inner: Mutex<Inner>,
    rv_tx: watch::Sender<u64>,
    history_limit: usize,
    state_file: Option<PathBuf>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let inner = Inner { rv: 1, objects: BTreeMap::new(), history: VecDeque::new(), evicted: 0 };
        Store {
            inner: Mutex::new(inner),
            rv_tx: watch::channel(1).0,
            history_limit: history_limit.max(1),
            state_file: None,
        }
    }

    /// A store saved to `path` after every change, starting from what it
    /// holds if it exists.
    pub fn persistent(history_limit: usize, path: PathBuf) -> std::io::Result<Self> {
        let mut store = Store::new(history_limit);
        if let Some((rv, objects)) = persist::load(&path)? {
            let inner = store.inner.get_mut().unwrap_or_else(|e| e.into_inner());
            for o in objects {
                inner.objects.insert((o.resource, o.namespace, o.name), Arc::new(o.object));
            }
            // Nothing before the restart can be replayed.
            (inner.rv, inner.evicted) = (rv, rv);
            store.rv_tx.send_replace(rv);
        }
        store.state_file = Some(path);
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Notified with the new resourceVersion after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    pub fn get(&self, res: Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        let inner = self.lock();
        let key = (res, ns.to_string(), name.to_string());
        inner.objects.get(&key).map(|o| (**o).clone()).ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Objects of `res` (in `ns` if given) that `keep` accepts, and the
    /// resourceVersion they are current at.
    pub fn list(&self, res: Resource, ns: Option<&str>, keep: impl Fn(&Value) -> bool) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|((r, n, _), _)| *r == res && ns.is_none_or(|ns| ns == n))
            .map(|(_, o)| o.clone())
            .filter(|o| keep(o))
            .collect();
        (items, inner.rv)
    }

    /// The events after `rv` up to now, and the resourceVersion reached.
    pub fn events_since(&self, rv: u64) -> Result<(Vec<Event>, u64), Expired> {
        let inner = self.lock();
        if rv < inner.evicted {
            let oldest = inner.history.front().map_or(inner.rv, |e| e.rv);
            return Err(Expired { requested: rv, oldest });
        }
        let start = inner.history.partition_point(|e| e.rv <= rv);
        Ok((inner.history.range(start..).cloned().collect(), inner.rv.max(rv)))
    }

    pub fn create(&self, res: Resource, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        let name = prepare(res, ns, &mut obj)?;
        let mut inner = self.lock();
        let key = (res, ns.to_string(), name.clone());
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(res, &name));
        }
        let rv = inner.rv + 1;
        let meta = metadata(&mut obj);
        meta.insert("uid".into(), Value::String(uid(rv)));
        meta.insert("creationTimestamp".into(), Value::String(timestamp(SystemTime::now())));
        meta.insert("generation".into(), Value::from(1));
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.commit(&mut inner, key, EventType::Added, Some(obj.clone()), None);
        Ok(obj)
    }

    /// Replaces an object. A resourceVersion in `obj` must match the stored one.
    pub fn update(&self, res: Resource, ns: &str, name: &str, mut obj: Value) -> Result<Value, ApiError> {
        let body_name = prepare(res, ns, &mut obj)?;
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let mut inner = self.lock();
        let key = (res, ns.to_string(), name.to_string());
        let old = inner.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(res, name))?;
        let old_meta = old["metadata"].as_object().cloned().unwrap_or_default();
        let rv = inner.rv + 1;
        let meta = metadata(&mut obj);
        match meta.get("resourceVersion") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(given) if Some(given) == old_meta.get("resourceVersion") => {}
            Some(_) => return Err(ApiError::conflict(res, name)),
        }
        for k in ["uid", "creationTimestamp"] {
            if let Some(v) = old_meta.get(k) {
                meta.insert(k.into(), v.clone());
            }
        }
        let generation = old_meta.get("generation").and_then(Value::as_i64).unwrap_or(1);
        let spec_changed = obj.get("spec") != old.get("spec");
        let meta = metadata(&mut obj);
        meta.insert("generation".into(), Value::from(generation + i64::from(spec_changed)));
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.commit(&mut inner, key, EventType::Modified, Some(obj.clone()), Some(old));
        Ok(obj)
    }

    /// JSON merge patch (RFC 7386) of a stored object.
    pub fn patch(&self, res: Resource, ns: &str, name: &str, patch: &Value) -> Result<Value, ApiError> {
        if !patch.is_object() {
            return Err(ApiError::bad_request("a merge patch must be a JSON object"));
        }
        let mut obj = self.get(res, ns, name)?;
        merge_patch(&mut obj, patch);
        // A resourceVersion in the patch is a precondition; without one the
        // patch applies to whatever is stored when update runs.
        if patch.pointer("/metadata/resourceVersion").is_none() {
            metadata(&mut obj).remove("resourceVersion");
        }
        self.update(res, ns, name, obj)
    }

    pub fn delete(&self, res: Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (res, ns.to_string(), name.to_string());
        let old = inner.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(res, name))?;
        let mut obj = (*old).clone();
        let rv = inner.rv + 1;
        metadata(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.commit(&mut inner, key, EventType::Deleted, None, Some(Arc::new(obj.clone())));
        Ok(obj)
    }

    /// Applies one change at resourceVersion `inner.rv + 1`. For DELETED,
    /// `prev` is the object as the event reports it.
    fn commit(&self, inner: &mut Inner, key: Key, kind: EventType, new: Option<Value>, prev: Option<Arc<Value>>) {
        inner.rv += 1;
        let res = key.0;
        let (object, prev) = match new {
            Some(obj) => {
                let obj = Arc::new(obj);
                inner.objects.insert(key, obj.clone());
                (obj, prev)
            }
            None => {
                inner.objects.remove(&key);
                (prev.expect("deleted object"), None)
            }
        };
        inner.history.push_back(Event { rv: inner.rv, resource: res, kind, object, prev });
        while inner.history.len() > self.history_limit {
            let e = inner.history.pop_front().expect("non-empty");
            inner.evicted = e.rv;
        }
        if let Some(path) = &self.state_file {
            if let Err(e) = persist::save(path, inner.rv, inner.objects.values().map(|o| &**o)) {
                eprintln!("lab-apiserver: saving {}: {e}", path.display());
            }
        }
        self.rv_tx.send_replace(inner.rv);
    }
}
