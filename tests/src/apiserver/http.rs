//! Routing, verbs and the request log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::resource::Resource;
use super::selector::Filter;
use super::store::Continue;
use super::watch::{self, WatchRequest};
use super::{discovery, table, ApiError, ApiServer};

pub type Body = UnsyncBoxBody<Bytes, std::convert::Infallible>;

const MAX_BODY: usize = 8 << 20;

/// Answers one request and logs it.
pub async fn handle(server: Arc<ApiServer>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let resp = match route(&server, req).await {
        Ok(r) => r,
        Err(e) => json_response(e.code, &e.status()),
    };
    if server.config.log_requests {
        eprintln!("lab-apiserver: {method} {uri} {}", resp.status().as_u16());
    }
    resp
}

pub fn json_response(code: u16, v: &Value) -> Response<Body> {
    bytes_response(code, serde_json::to_vec(v).expect("serializable"))
}

fn bytes_response(code: u16, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Decodes `application/x-www-form-urlencoded` text.
pub fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Where a request for one of the served resources points.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_target(segs: &[&str]) -> Option<Target> {
    // Strip the group/version prefix.
    let (group, rest) = match segs {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => ("discovery.k8s.io", rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(percent_decode(ns)), rest),
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some(percent_decode(name))),
        _ => return None,
    };
    let resource = Resource::find(group, plural)?;
    if resource.namespaced() != namespace.is_some() && !(resource.namespaced() && name.is_none()) {
        return None;
    }
    Some(Target { resource, namespace, name })
}

async fn route(server: &Arc<ApiServer>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if req.method() == Method::GET {
        if let Some(v) = discovery::document(&segs) {
            return Ok(json_response(200, &v));
        }
    }
    let Some(target) = parse_target(&segs) else {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    };
    let query = parse_query(req.uri().query());
    let res = target.resource;
    let ns = target.namespace.clone().unwrap_or_default();
    let wants_table = req
        .headers()
        .get(ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.split(',').next().is_some_and(|first| first.contains("as=Table")));
    let method = req.method().clone();
    match (method, target.name.as_deref()) {
        (Method::GET, None) => {
            let filter = Filter::parse(
                query.get("labelSelector").map(String::as_str),
                query.get("fieldSelector").map(String::as_str),
            )?;
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                return Ok(start_watch(server, &target, &query, filter, wants_table));
            }
            if wants_table {
                let (items, rv) = server.store.list(res, target.namespace.as_deref(), |o| filter.matches(o));
                let items: Vec<Value> = items.iter().map(|o| (**o).clone()).collect();
                return Ok(json_response(200, &table::table(res, &items, rv)));
            }
            list(server, &target, &query, &filter)
        }
        (Method::GET, Some(name)) => {
            let obj = server.store.get(res, &ns, name)?;
            if wants_table {
                let rv = server.store.current_rv();
                return Ok(json_response(200, &table::table(res, &[obj], rv)));
            }
            Ok(json_response(200, &obj))
        }
        (Method::POST, None) if res.namespaced() == target.namespace.is_some() => {
            let body = read_json(req).await?;
            Ok(written(server, 201, server.store.create(res, &ns, body)?))
        }
        (Method::PUT, Some(name)) => {
            let name = name.to_string();
            let body = read_json(req).await?;
            Ok(written(server, 200, server.store.update(res, &ns, &name, body)?))
        }
        (Method::PATCH, Some(name)) => {
            let name = name.to_string();
            let ct = req.headers().get(CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("").to_string();
            let strategic = ct.starts_with("application/strategic-merge-patch+json");
            if !ct.starts_with("application/merge-patch+json") && !strategic {
                return Err(ApiError::new(415, "UnsupportedMediaType", format!("unsupported patch type {ct:?}")));
            }
            let body = read_json(req).await?;
            // A strategic merge patch without lists or directives is a JSON
            // merge patch; one with them would need the schema's merge keys.
            if strategic && !maps_only(&body) {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patches of lists are not supported here; use replace or a merge patch",
                ));
            }
            Ok(written(server, 200, server.store.patch(res, &ns, &name, &body)?))
        }
        (Method::DELETE, Some(name)) => Ok(written(server, 200, server.store.delete(res, &ns, name)?)),
        (m, _) => Err(ApiError::new(405, "MethodNotAllowed", format!("{m} is not supported on {path}"))),
    }
}

/// A list, in pages when the client asks for a `limit` (kube-rs watchers
/// ask for 500), written straight from the stored objects.
fn list(
    server: &ApiServer,
    target: &Target,
    query: &HashMap<String, String>,
    filter: &Filter,
) -> Result<Response<Body>, ApiError> {
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let from = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => Some(Continue::parse(token).ok_or_else(|| ApiError::bad_request("invalid continue token"))?),
        None => None,
    };
    let res = target.resource;
    let page = server.store.list_page(res, target.namespace.as_deref(), |o| filter.matches(o), limit, from.as_ref());
    let mut metadata = json!({"resourceVersion": page.rv.to_string()});
    if let Some(next) = &page.next {
        metadata["continue"] = Value::String(next.token());
    }
    // The envelope, then the items as they were encoded when written.
    let envelope = json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": metadata});
    let mut body = serde_json::to_vec(&envelope).expect("serializable");
    body.pop(); // the closing brace
    body.reserve(page.encoded.iter().map(|j| j.len() + 1).sum::<usize>() + 12);
    body.extend_from_slice(b",\"items\":[");
    for (i, json) in page.encoded.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(json);
    }
    body.extend_from_slice(b"]}");
    Ok(bytes_response(200, body))
}

/// The answer to a write, with the time it was committed (the header
/// `Lab-Committed-Monotonic-Ns`, CLOCK_MONOTONIC) so a benchmark can time
/// what follows from the commit itself.
fn written(server: &ApiServer, code: u16, object: Value) -> Response<Body> {
    let rv = object.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|rv| rv.parse().ok());
    let mut r = json_response(code, &object);
    if let Some(ns) = rv.and_then(|rv| server.store.committed_ns(rv)) {
        r.headers_mut().insert(COMMITTED_HEADER, HeaderValue::from(ns));
    }
    r
}

pub const COMMITTED_HEADER: &str = "lab-committed-monotonic-ns";

fn start_watch(
    server: &Arc<ApiServer>,
    target: &Target,
    query: &HashMap<String, String>,
    filter: Filter,
    table: bool,
) -> Response<Body> {
    let resource_version = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                let e = ApiError::bad_request(format!("invalid resource version {rv:?}"));
                return json_response(400, &e.status());
            }
        },
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map_or(server.config.default_watch_timeout, Duration::from_secs);
    let req = WatchRequest {
        resource: target.resource,
        namespace: target.namespace.clone(),
        filter,
        resource_version,
        bookmarks: matches!(query.get("allowWatchBookmarks").map(String::as_str), Some("true" | "1")),
        timeout,
        table,
    };
    let body = watch::start(server.clone(), req);
    let mut r = Response::new(body.boxed_unsync());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache, private"));
    r
}

/// True if `v` has no arrays and no `$` directive keys.
fn maps_only(v: &Value) -> bool {
    match v {
        Value::Array(_) => false,
        Value::Object(m) => m.iter().all(|(k, v)| !k.starts_with('$') && maps_only(v)),
        _ => true,
    }
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}
