//! Watch responses: one JSON event per line in a chunked body, fed by a
//! task that follows the store's event history.
//!
//! - Start: no resourceVersion (or "0"): ADDED for every current object,
//!   then changes after that snapshot. resourceVersion=RV: every change
//!   after RV from the history, then live ones; RV older than the history
//!   kept: one ERROR event with a 410 Expired Status, end of stream.
//! - Selectors: an object that starts matching arrives as ADDED, one that
//!   stops matching as DELETED, like the real server's watch cache.
//! - BOOKMARK every `bookmark_interval` if asked for, carrying the
//!   resourceVersion up to which this watch has processed every event.
//! - The stream ends after `timeoutSeconds`, or as soon as the client goes
//!   (the body is dropped, which closes the channel the task writes to).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::resource::Resource;
use super::selector::Filter;
use super::store::{Event, EventType};
use super::{table, ApiServer};

/// A response body fed through a channel.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// What one watch request asked for.
pub struct WatchRequest {
    pub resource: Resource,
    pub namespace: Option<String>,
    pub filter: Filter,
    /// None for "no resourceVersion" or "0".
    pub resource_version: Option<u64>,
    pub bookmarks: bool,
    pub timeout: Duration,
    /// Send objects as meta.k8s.io/v1 Tables (`kubectl get -w`); only the
    /// first carries the column definitions.
    pub table: bool,
}

/// Starts the task serving `req`; returns the body to answer with.
pub fn start(server: Arc<ApiServer>, req: WatchRequest) -> ChannelBody {
    let (tx, rx) = mpsc::channel(64);
    let guard = server.watch_guard();
    tokio::spawn(async move {
        let _guard = guard;
        run(&server, req, tx).await;
    });
    ChannelBody(rx)
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("serializable");
    v.push(b'\n');
    Bytes::from(v)
}

/// The event line for `object`, as a Table row when the watch asks for it.
fn object_line(req: &WatchRequest, headers: &mut bool, kind: &str, object: &Value) -> Bytes {
    if !req.table {
        return line(kind, object);
    }
    let rv = object.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("0");
    let mut t = table::table(req.resource, std::slice::from_ref(object), rv.parse().unwrap_or(0));
    if !std::mem::replace(headers, false) {
        t["columnDefinitions"] = json!([]);
    }
    line(kind, &t)
}

/// Ends the watch (returns `Err`) when the client has gone.
async fn send(tx: &mpsc::Sender<Bytes>, chunk: Bytes) -> Result<(), ()> {
    tx.send(chunk).await.map_err(|_| ())
}

/// The event this watch reports for `e`, if any.
fn translate<'a>(req: &WatchRequest, e: &'a Event) -> Option<(&'static str, &'a Value)> {
    if e.resource != req.resource {
        return None;
    }
    let ns = e.object.pointer("/metadata/namespace").and_then(Value::as_str);
    if req.namespace.as_deref().is_some_and(|want| Some(want) != ns) {
        return None;
    }
    let now = req.filter.matches(&e.object);
    match e.kind {
        EventType::Added => now.then_some("ADDED"),
        EventType::Deleted => now.then_some("DELETED"),
        EventType::Modified => {
            let before = e.prev.as_deref().is_some_and(|p| req.filter.matches(p));
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }
    .map(|t| (t, &*e.object))
}

async fn run(server: &ApiServer, req: WatchRequest, tx: mpsc::Sender<Bytes>) {
    let _ = run_inner(server, &req, &tx).await;
}

async fn run_inner(server: &ApiServer, req: &WatchRequest, tx: &mpsc::Sender<Bytes>) -> Result<(), ()> {
    let store = &server.store;
    let deadline = Instant::now() + req.timeout;
    let mut headers = true;
    let mut changed = store.subscribe();
    changed.borrow_and_update();

    let mut pos = match req.resource_version {
        Some(rv) => rv,
        None => {
            let (items, rv) = store.list(req.resource, req.namespace.as_deref(), |o| req.filter.matches(o));
            for obj in items {
                send(tx, object_line(req, &mut headers, "ADDED", &obj)).await?;
            }
            rv
        }
    };

    let mut ticker = tokio::time::interval_at(
        Instant::now() + server.config.bookmark_interval,
        server.config.bookmark_interval.max(Duration::from_millis(10)),
    );
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        changed.borrow_and_update();
        match store.events_since(pos) {
            Ok((events, reached)) => {
                for e in &events {
                    if let Some((kind, obj)) = translate(req, e) {
                        send(tx, object_line(req, &mut headers, kind, obj)).await?;
                    }
                }
                pos = reached;
            }
            Err(expired) => {
                let status = json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("too old resource version: {} ({})", expired.requested, expired.oldest),
                    "reason": "Expired",
                    "code": 410,
                });
                return send(tx, line("ERROR", &status)).await;
            }
        }
        tokio::select! {
            r = changed.changed() => {
                if r.is_err() {
                    return Ok(());
                }
            }
            _ = ticker.tick(), if req.bookmarks => {
                let bookmark = json!({
                    "kind": req.resource.kind(),
                    "apiVersion": req.resource.api_version(),
                    "metadata": {"resourceVersion": pos.to_string()},
                });
                send(tx, line("BOOKMARK", &bookmark)).await?;
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(()),
            _ = tx.closed() => return Err(()),
        }
    }
}
