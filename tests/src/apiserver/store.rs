//! The objects, the global resourceVersion counter and the bounded event
//! history that watches replay from.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
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
    /// When the change was made, on the machine's monotonic clock (see
    /// [`monotonic_ns`]), so another process can time what follows from it.
    pub committed_ns: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the
/// machine, whatever namespace it runs in.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One page of a list: the objects, the resourceVersion the list is at, and
/// where the next page starts when there is one.
pub struct Page {
    pub items: Vec<Arc<Value>>,
    /// The same objects as JSON, encoded when they were written.
    pub encoded: Vec<Bytes>,
    pub rv: u64,
    pub next: Option<Continue>,
}

/// Where a paged list goes on: after this key, at this resourceVersion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Continue {
    pub rv: u64,
    pub namespace: String,
    pub name: String,
}

impl Continue {
    /// The opaque `continue` token of the list's metadata.
    pub fn token(&self) -> String {
        format!("{}/{}/{}", self.rv, self.namespace, self.name)
    }

    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.splitn(3, '/');
        let rv = parts.next()?.parse().ok()?;
        Some(Continue { rv, namespace: parts.next()?.to_string(), name: parts.next()?.to_string() })
    }
}

/// The resourceVersion asked for is older than the history kept.
#[derive(Debug)]
pub struct Expired {
    pub requested: u64,
    pub oldest: u64,
}

type Key = (Resource, String, String);

/// An object and its JSON, encoded once when it is written rather than on
/// every list: a list of ten thousand EndpointSlices is 15 MB of JSON.
struct Stored {
    object: Arc<Value>,
    json: Bytes,
}

impl Stored {
    fn new(object: Arc<Value>) -> Self {
        let json = Bytes::from(serde_json::to_vec(&*object).expect("serializable"));
        Stored { object, json }
    }
}

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Stored>,
    history: VecDeque<Event>,
    /// resourceVersion of the newest event dropped from `history`.
    evicted: u64,
}

pub struct Store {
    inner: Mutex<Inner>,
    rv_tx: watch::Sender<u64>,
    history_limit: usize,
    state_file: Option<PathBuf>,
    /// Held while the state file is written; the resourceVersion written.
    saved: Mutex<u64>,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let inner = Inner { rv: 1, objects: BTreeMap::new(), history: VecDeque::new(), evicted: 0 };
        Store {
            inner: Mutex::new(inner),
            rv_tx: watch::channel(1).0,
            history_limit: history_limit.max(1),
            state_file: None,
            saved: Mutex::new(0),
        }
    }

    /// A store saved to `path` after every change, starting from what it
    /// holds if it exists.
    pub fn persistent(history_limit: usize, path: PathBuf) -> std::io::Result<Self> {
        let mut store = Store::loaded(history_limit, &path)?;
        store.state_file = Some(path);
        Ok(store)
    }

    /// A store that starts from the objects saved in `path` (if it exists)
    /// and keeps changes in memory only.
    pub fn loaded(history_limit: usize, path: &std::path::Path) -> std::io::Result<Self> {
        let mut store = Store::new(history_limit);
        if let Some((rv, objects)) = persist::load(path)? {
            let inner = store.inner.get_mut().unwrap_or_else(|e| e.into_inner());
            for o in objects {
                inner.objects.insert((o.resource, o.namespace, o.name), Stored::new(Arc::new(o.object)));
            }
            // Nothing before the restart can be replayed.
            (inner.rv, inner.evicted) = (rv, rv);
            store.rv_tx.send_replace(rv);
        }
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
        inner.objects.get(&key).map(|o| (*o.object).clone()).ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Objects of `res` (in `ns` if given) that `keep` accepts, and the
    /// resourceVersion they are current at.
    pub fn list(&self, res: Resource, ns: Option<&str>, keep: impl Fn(&Value) -> bool) -> (Vec<Arc<Value>>, u64) {
        let page = self.list_page(res, ns, keep, None, None);
        (page.items, page.rv)
    }

    /// Up to `limit` objects after `from`, in namespace and name order. A
    /// later page shows objects as they are now, not as they were at the
    /// first page's resourceVersion (which it reports): a watch from that
    /// version replays the changes in between, so a client ends up right.
    pub fn list_page(
        &self,
        res: Resource,
        ns: Option<&str>,
        keep: impl Fn(&Value) -> bool,
        limit: Option<usize>,
        from: Option<&Continue>,
    ) -> Page {
        let inner = self.lock();
        let start = match from {
            Some(c) => Bound::Excluded((res, c.namespace.clone(), c.name.clone())),
            None => Bound::Included((res, ns.unwrap_or("").to_string(), String::new())),
        };
        let rv = from.map_or(inner.rv, |c| c.rv);
        let mut matching = inner
            .objects
            .range((start, Bound::Unbounded))
            .take_while(|((r, n, _), _)| *r == res && ns.is_none_or(|ns| ns == n))
            .filter(|(_, o)| keep(&o.object));
        let (mut items, mut encoded) = (Vec::new(), Vec::new());
        let mut last = None;
        for (key, stored) in matching.by_ref().take(limit.unwrap_or(usize::MAX)) {
            items.push(stored.object.clone());
            encoded.push(stored.json.clone());
            last = Some(key);
        }
        let next = match (matching.next(), last) {
            (Some(_), Some((_, namespace, name))) => {
                Some(Continue { rv, namespace: namespace.clone(), name: name.clone() })
            }
            _ => None,
        };
        Page { items, encoded, rv, next }
    }

    /// When the change that made resourceVersion `rv` was committed, while
    /// the history still holds it.
    pub fn committed_ns(&self, rv: u64) -> Option<u64> {
        let inner = self.lock();
        let at = inner.history.partition_point(|e| e.rv < rv);
        inner.history.get(at).filter(|e| e.rv == rv).map(|e| e.committed_ns)
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
        let inner = self.lock();
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
        self.commit(inner, key, EventType::Added, Some(obj.clone()), None);
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
        let inner = self.lock();
        let key = (res, ns.to_string(), name.to_string());
        let old = inner.objects.get(&key).map(|o| o.object.clone()).ok_or_else(|| ApiError::not_found(res, name))?;
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
        self.commit(inner, key, EventType::Modified, Some(obj.clone()), Some(old));
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
        let inner = self.lock();
        let key = (res, ns.to_string(), name.to_string());
        let old = inner.objects.get(&key).map(|o| o.object.clone()).ok_or_else(|| ApiError::not_found(res, name))?;
        let mut obj = (*old).clone();
        let rv = inner.rv + 1;
        metadata(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.commit(inner, key, EventType::Deleted, None, Some(Arc::new(obj.clone())));
        Ok(obj)
    }

    /// Applies one change at resourceVersion `inner.rv + 1`, wakes the
    /// watches, then saves the state file (outside the lock, so watches are
    /// not held up by it). For DELETED, `prev` is the object as the event
    /// reports it.
    fn commit(&self, mut inner: MutexGuard<'_, Inner>, key: Key, kind: EventType, new: Option<Value>, prev: Option<Arc<Value>>) {
        let committed_ns = monotonic_ns();
        inner.rv += 1;
        let res = key.0;
        let (object, prev) = match new {
            Some(obj) => {
                let obj = Arc::new(obj);
                inner.objects.insert(key, Stored::new(obj.clone()));
                (obj, prev)
            }
            None => {
                inner.objects.remove(&key);
                (prev.expect("deleted object"), None)
            }
        };
        let rv = inner.rv;
        inner.history.push_back(Event { rv, resource: res, kind, object, prev, committed_ns });
        while inner.history.len() > self.history_limit {
            let e = inner.history.pop_front().expect("non-empty");
            inner.evicted = e.rv;
        }
        self.rv_tx.send_replace(rv);
        drop(inner);
        self.save();
    }

    /// Writes the newest state to the state file unless a save that
    /// already held it got there first; returns once it is on disk, so an
    /// answered write survives a kill.
    fn save(&self) {
        let Some(path) = &self.state_file else { return };
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let (rv, objects): (u64, Vec<Arc<Value>>) = {
            let inner = self.lock();
            if inner.rv <= *saved {
                return;
            }
            (inner.rv, inner.objects.values().map(|o| o.object.clone()).collect())
        };
        match persist::save(path, rv, objects.iter().map(|o| &**o)) {
            Ok(()) => *saved = rv,
            Err(e) => eprintln!("lab-apiserver: saving {}: {e}", path.display()),
        }
    }
}
