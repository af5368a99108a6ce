//! A small Kubernetes-compatible API server for the lab: plain HTTP, in
//! memory, for v1 Services, discovery.k8s.io/v1 EndpointSlices and v1 Nodes.
//!
//! Enough of the real server's behaviour for kube-rs watchers (list, then
//! watch from the list's resourceVersion, bookmarks, 410 Expired inside a
//! watch) and for `kubectl create/replace/delete/get --server=http://...`.
//!
//! - [`resource`]: the three resource types and their names.
//! - [`store`]: the objects, one global resourceVersion, the event history.
//! - [`meta`]: what the server fills in on writes (uid, timestamps...).
//! - [`persist`]: `--state FILE`, objects kept across restarts.
//! - [`selector`]: label and field selectors.
//! - [`http`]: routing, verbs, Status errors, request log.
//! - [`watch`]: the streaming watch responses.
//! - [`discovery`]: /version, /api, /apis, the APIResourceLists.
//! - [`table`]: `Accept: ...;as=Table` answers for `kubectl get`.

pub mod discovery;
pub mod http;
pub mod meta;
pub mod persist;
pub mod resource;
pub mod selector;
pub mod store;
pub mod table;
pub mod watch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub use resource::Resource;
pub use store::{monotonic_ns, Store};

/// Server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Interval between BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// How many events the store keeps for watches that resume from a
    /// resourceVersion; older ones get 410 Expired.
    pub history: usize,
    /// Watch duration when the request has no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
    /// Write one line per request to stderr.
    pub log_requests: bool,
    /// Save the objects here after every change and load them at start.
    pub state_file: Option<PathBuf>,
    /// Start from the objects saved here (the state file's format), and
    /// keep changes in memory only; ignored when `state_file` is set.
    pub initial_state: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bookmark_interval: Duration::from_secs(1),
            history: 10_000,
            default_watch_timeout: Duration::from_secs(1800),
            log_requests: true,
            state_file: None,
            initial_state: None,
        }
    }
}

/// The server's shared state.
pub struct ApiServer {
    pub config: Config,
    pub store: Store,
    watches: AtomicUsize,
}

impl ApiServer {
    /// Fails only if a state file exists and cannot be loaded.
    pub fn new(config: Config) -> std::io::Result<Arc<Self>> {
        let store = match (&config.state_file, &config.initial_state) {
            (Some(path), _) => Store::persistent(config.history, path.clone())?,
            (None, Some(path)) => Store::loaded(config.history, path)?,
            (None, None) => Store::new(config.history),
        };
        Ok(Arc::new(ApiServer { config, store, watches: AtomicUsize::new(0) }))
    }

    /// Watch streams currently open (their tasks still running).
    pub fn active_watches(&self) -> usize {
        self.watches.load(Ordering::SeqCst)
    }

    fn watch_guard(self: &Arc<Self>) -> WatchGuard {
        self.watches.fetch_add(1, Ordering::SeqCst);
        WatchGuard(self.clone())
    }
}

/// Counts a running watch task; decrements when the task ends.
pub(crate) struct WatchGuard(Arc<ApiServer>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts connections on `listener` forever, one task per connection.
pub async fn serve(listener: TcpListener, server: Arc<ApiServer>) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("lab-apiserver: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(http::handle(server, req).await) }
            });
            // Errors here are clients going away mid-request; nothing to do.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// Binds `addr` and serves in a background task; returns the bound address
/// (useful with port 0) and the shared state.
pub async fn spawn(addr: SocketAddr, config: Config) -> std::io::Result<(SocketAddr, Arc<ApiServer>)> {
    let server = ApiServer::new(config)?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, server.clone()));
    Ok((local, server))
}

/// An error answered as a Kubernetes Status object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn not_found(res: Resource, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", res.qualified()))
    }

    pub fn already_exists(res: Resource, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", res.qualified()))
    }

    pub fn conflict(res: Resource, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                res.qualified()
            ),
        )
    }

    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}
