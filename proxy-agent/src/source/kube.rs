//! The Kubernetes API as a source: kube-rs watchers feeding reflector stores
//! for Services, EndpointSlices and this node's Node, with kube-proxy's label
//! selectors. Every change wakes the sync loop through one `Notify`, whose
//! single stored permit coalesces a burst of events into one more sync.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::Snapshot;
use crate::model::{LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME};

pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    node: Store<Node>,
    pub changed: Arc<Notify>,
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
        let services = spawn_reflector(
            Api::all(client.clone()),
            watcher::Config::default().labels(&service_selector(proxy_name)),
            changed.clone(),
            "services",
        );
        let slices = spawn_reflector(
            Api::all(client.clone()),
            watcher::Config::default().labels(&format!("{LABEL_SERVICE_NAME},!{LABEL_HEADLESS}")),
            changed.clone(),
            "endpointslices",
        );
        let node = spawn_reflector(
            Api::all(client),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            changed.clone(),
            "node",
        );
        KubeSource {
            services,
            slices,
            node,
            changed,
        }
    }

    /// Waits for the first complete list of Services and EndpointSlices: a
    /// sync before that would withdraw every Service not yet listed.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        Ok(())
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.state(),
            slices: self.slices.state(),
        }
    }

    /// This node's Node object, once listed.
    pub fn node(&self) -> Option<Arc<Node>> {
        self.node.state().into_iter().next()
    }
}

fn spawn_reflector<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>, what: &'static str) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                    changed.notify_one();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(error) => {
                    // The store keeps its last state, and the maps keep what
                    // was programmed from it, until the watch is back.
                    tracing::warn!(resource = what, %error, "watch failed; retrying with backoff");
                }
            }
        }
    });
    reader
}
