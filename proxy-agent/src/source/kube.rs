//! The Kubernetes API as a source: kube-rs watchers feeding reflector stores
//! for Services, EndpointSlices and this node's Node, with kube-proxy's label
//! selectors. Every change wakes the sync loop through one `Notify`, whose
//! single stored permit coalesces a burst of events into one more sync, and
//! names the Services it concerns, so the sync recomputes only those.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::watch_health::{QuickBackoff, WatchHealth};
use super::Changes;
use crate::model::{
    object_name, slice_owner, ServiceName, ServiceObjects, Slice, LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME,
};

pub struct KubeSource {
    services: Store<Service>,
    slices: Store<Slice>,
    node: Store<Node>,
    pending: Arc<Mutex<Pending>>,
    pub changed: Arc<Notify>,
    /// Woken when a watch has first listed everything.
    listed: Arc<Notify>,
    pub health: Arc<WatchHealth>,
}

/// What the watches saw change since the sync loop last looked. The stores
/// are written before a change is noted here, so whatever the loop reads
/// after taking the notes is at least as new as the notes.
#[derive(Debug)]
struct Pending {
    /// Everything, at start and after a watch had to list again.
    all: bool,
    /// Which of the Service, EndpointSlice and Node watches have listed once.
    listed: [bool; 3],
    services: HashSet<ServiceName>,
    slices: SliceIndex,
}

/// Which EndpointSlices belong to which Service, by their
/// `kubernetes.io/service-name` label. A slice whose label changes counts
/// as a change of both Services.
#[derive(Debug, Default)]
struct SliceIndex {
    /// Slice names; a vector, as a Service nearly always has one or two.
    by_service: HashMap<ServiceName, Vec<String>>,
    owner: HashMap<(String, String), ServiceName>,
}

impl SliceIndex {
    fn from_store(store: &Store<Slice>) -> Self {
        let mut index = SliceIndex::default();
        for slice in store.state() {
            index.apply(&slice);
        }
        index
    }

    /// Returns the Services whose slices changed.
    fn apply(&mut self, slice: &Slice) -> [Option<ServiceName>; 2] {
        let key = slice_key(slice);
        let owner = slice_owner(slice).map(|(ns, name)| ServiceName::new(ns, name));
        let old = self.remove(&key);
        if let Some(owner) = &owner {
            self.by_service.entry(owner.clone()).or_default().push(key.1.clone());
            self.owner.insert(key, owner.clone());
        }
        [old, owner]
    }

    fn remove(&mut self, key: &(String, String)) -> Option<ServiceName> {
        let old = self.owner.remove(key)?;
        if let Some(names) = self.by_service.get_mut(&old) {
            names.retain(|name| *name != key.1);
            if names.is_empty() {
                self.by_service.remove(&old);
            }
        }
        Some(old)
    }
}

fn slice_key(slice: &Slice) -> (String, String) {
    object_name(&slice.metadata)
}

/// A client from `--kubeconfig`, else the usual inference (KUBECONFIG,
/// ~/.kube/config, then the in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer().await.context("no kubeconfig and not in a cluster")?,
    };
    tracing::info!(server = %config.cluster_url, "using the Kubernetes API");
    Ok(Client::try_from(config)?)
}

/// kube-proxy's selectors: no headless Services, and none that another proxy
/// owns. With a proxy name of our own the label is filtered in the model
/// instead, as "absent or ours" is not a label selector.
fn service_selector(proxy_name: Option<&str>) -> String {
    match proxy_name {
        None => format!("!{LABEL_HEADLESS},!{LABEL_SERVICE_PROXY_NAME}"),
        Some(_) => format!("!{LABEL_HEADLESS}"),
    }
}

impl KubeSource {
    pub fn start(client: Client, node_name: &str, proxy_name: Option<&str>) -> Self {
        let changed = Arc::new(Notify::new());
        let listed = Arc::new(Notify::new());
        let pending = Arc::new(Mutex::new(Pending {
            all: true,
            listed: [false; 3],
            services: HashSet::new(),
            slices: SliceIndex::default(),
        }));
        let health = Arc::new(WatchHealth::default());
        let (noted, first_list) = (pending.clone(), listed.clone());
        let services = spawn_reflector(
            Api::all(client.clone()),
            watcher::Config::default().labels(&service_selector(proxy_name)),
            (changed.clone(), health.clone()),
            "services",
            move |event, _| {
                let mut pending = lock(&noted);
                match event {
                    watcher::Event::Apply(svc) | watcher::Event::Delete(svc) => {
                        pending.services.insert(ServiceName::of(svc));
                    }
                    watcher::Event::InitDone => pending.list_done(0, &first_list),
                    watcher::Event::Init | watcher::Event::InitApply(_) => {}
                }
            },
        );
        let (noted, first_list) = (pending.clone(), listed.clone());
        let slices = spawn_reflector(
            Api::all(client.clone()),
            watcher::Config::default().labels(&format!("{LABEL_SERVICE_NAME},!{LABEL_HEADLESS}")),
            (changed.clone(), health.clone()),
            "endpointslices",
            move |event, store| {
                let mut pending = lock(&noted);
                let pending = &mut *pending;
                let owners = match event {
                    watcher::Event::Apply(slice) => pending.slices.apply(slice),
                    watcher::Event::Delete(slice) => [pending.slices.remove(&slice_key(slice)), None],
                    watcher::Event::InitDone => {
                        pending.slices = SliceIndex::from_store(store);
                        pending.list_done(1, &first_list);
                        return;
                    }
                    watcher::Event::Init | watcher::Event::InitApply(_) => return,
                };
                pending.services.extend(owners.into_iter().flatten());
            },
        );
        // While a watch fails, whether the API server answers at all: a
        // resumed watch shows nothing until an object changes.
        let (probe, watches) = (client.clone(), health.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                if watches.any_failing() && probe.apiserver_version().await.is_ok() {
                    watches.api_answered(std::time::Instant::now());
                }
            }
        });
        let (noted, first_list) = (pending.clone(), listed.clone());
        let node = spawn_reflector(
            Api::all(client),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            (changed.clone(), health.clone()),
            "node",
            move |event, _| {
                if let watcher::Event::InitDone = event {
                    lock(&noted).list_done(2, &first_list);
                }
            },
        );
        KubeSource {
            services,
            slices,
            node,
            pending,
            changed,
            listed,
            health,
        }
    }

    /// Waits for the first complete list of Services, EndpointSlices and
    /// this Node: a sync before that would withdraw every Service not yet
    /// listed, or lay everything out twice, once without the node's
    /// addresses and zone.
    pub async fn wait_ready(&self) {
        while lock(&self.pending).listed != [true; 3] {
            self.listed.notified().await;
        }
    }

    /// What changed since the last call: everything the first time, after a
    /// watch listed again, or when `all` asks for it (the node changed).
    pub fn take_changes(&self, all: bool) -> Changes {
        let mut pending = lock(&self.pending);
        let names = std::mem::take(&mut pending.services);
        let relisted = std::mem::take(&mut pending.all);
        if all || relisted {
            return self.snapshot();
        }
        let changed = names
            .into_iter()
            .map(|name| {
                let service = self.services.get(&ObjectRef::new(&name.name).within(&name.namespace));
                let slices = pending
                    .slices
                    .by_service
                    .get(&name)
                    .into_iter()
                    .flatten()
                    .filter_map(|slice| self.slices.get(&ObjectRef::new(slice).within(&name.namespace)))
                    .collect();
                ServiceObjects { name, service, slices }
            })
            .collect();
        Changes::Services(changed)
    }

    fn snapshot(&self) -> Changes {
        Changes::All {
            services: self.services.state(),
            slices: self.slices.state(),
        }
    }

    /// This node's Node object, once listed.
    pub fn node(&self) -> Option<Arc<Node>> {
        self.node.state().into_iter().next()
    }
}

impl Pending {
    /// A watch has listed everything: the first time, the first sync
    /// (which takes everything anyway) may go; later, after a relist, the
    /// next sync must look at everything again.
    fn list_done(&mut self, watch: usize, first_list: &Notify) {
        if std::mem::replace(&mut self.listed[watch], true) {
            tracing::info!(watch = ["services", "endpointslices", "node"][watch], "listed again; the next sync looks at everything");
            self.all = true;
        } else {
            first_list.notify_one();
        }
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops what the model never reads from an object's metadata: managed
/// fields and annotations are often most of an object.
fn trim(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.generate_name = None;
    meta.generation = None;
}

/// The watch asks for EndpointSlices and keeps only what the model reads.
impl Resource for Slice {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        <EndpointSlice as k8s_openapi::Resource>::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        <EndpointSlice as k8s_openapi::Resource>::GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        <EndpointSlice as k8s_openapi::Resource>::VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        <EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Runs a watch into a store. `note` sees each event after the store has
/// taken it; then the sync loop is woken. Managed fields are trimmed on
/// arrival (see [`trim`]).
fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    (changed, health): (Arc<Notify>, Arc<WatchHealth>),
    what: &'static str,
    mut note: impl FnMut(&watcher::Event<K>, &Store<K>) + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let store = reader.clone();
    tokio::spawn(async move {
        let events = watcher(api, config).backoff(QuickBackoff::default()).modify(|object| trim(object.meta_mut()));
        let stream = reflector::reflector(writer, events);
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    health.succeeded(what);
                    note(&event, &store);
                    if matches!(event, watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) {
                        changed.notify_one();
                    }
                }
                Err(error) => {
                    // The store keeps its last state, and the maps keep what
                    // was programmed from it, until the watch is back.
                    tracing::warn!(resource = what, %error, "watch failed; retrying within a second");
                    health.failed(what, std::time::Instant::now(), error.to_string());
                }
            }
        }
    });
    reader
}
