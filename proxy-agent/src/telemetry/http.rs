//! A minimal HTTP/1 server on hyper for the agent's probes, metrics and
//! health check node ports: every request is answered from the method and
//! path alone, bodies are ignored.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long to wait before binding again when the address is taken, as
/// kube-proxy does for its servers instead of exiting.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// kube-proxy's `/healthz` port, which this agent takes over: found taken,
/// kube-proxy itself is the likely holder.
const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;

pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    pub fn new(status: StatusCode, content_type: &'static str, body: String) -> Self {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    pub fn json(healthy: bool, body: String) -> Self {
        let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        let mut reply = Reply::new(status, "application/json", body);
        reply.headers.push(("x-content-type-options", "nosniff".into()));
        reply
    }

    pub fn not_found() -> Self {
        Reply::new(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "404 page not found\n".into())
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        response
    }
}

pub type Handler = Arc<dyn Fn(&Method, &str) -> BoxFuture<'static, Reply> + Send + Sync>;

/// Serves `handler` on `addr` until the task is aborted. Binding is retried
/// every few seconds while the address is taken (an old agent still exiting,
/// another program on a health check port), logged each time.
pub fn serve(what: &'static str, addr: SocketAddr, handler: Handler) -> JoinHandle<()> {
    tokio::spawn(async move {
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && addr.port() == KUBE_PROXY_HEALTHZ_PORT => {
                    tracing::error!(
                        server = what,
                        %addr,
                        %error,
                        "cannot listen: kube-proxy's port is taken; is kube-proxy (or another service proxy) running on this node? Both would translate Services. Retrying"
                    );
                    tokio::time::sleep(BIND_RETRY).await;
                }
                Err(error) => {
                    tracing::error!(server = what, %addr, %error, "cannot listen; retrying");
                    tokio::time::sleep(BIND_RETRY).await;
                }
            }
        };
        tracing::info!(server = what, %addr, "listening");
        accept_loop(listener, handler).await
    })
}

async fn accept_loop(listener: TcpListener, handler: Handler) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let reply = handler(request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(reply.await.into_response()) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                tracing::debug!(%error, "http connection ended");
            }
        });
    }
}
