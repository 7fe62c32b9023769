//! The admin server: `/healthz`, `/readyz`, `/metrics` and the caller's extra routes, over plain
//! HTTP (HTTP/1.1, or h2c with prior knowledge), `GET` and `HEAD` only.
//!
//! - `/healthz`: 200 while the process serves at all (the liveness probe).
//! - `/readyz`: 200 when the [`Readiness`] says so, else 503 with the reason (the readiness probe;
//!   a process says "not ready" while it drains, so Kubernetes takes it out of its Service first).
//! - `/metrics`: the [`MetricsSource`] in the OpenMetrics text format; 404 when there is none.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use corsair_runtime::{Admin, ReadyFlag};
//! let ready = ReadyFlag::new("starting");
//! let registry = std::sync::Arc::new(prometheus_client::registry::Registry::default());
//! let admin = Admin::new(ready.clone()).metrics(registry);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let stop = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(admin.serve(listener, stop.clone()));
//! ready.set_ready();
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::response::{response, text};

/// The `Content-Type` of `/metrics`.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Time a client has to send a request's headers (also the keep-alive wait).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/readyz` answers: `Ok` when ready, else why not (a short phrase such as `draining`).
pub trait Readiness: Send + Sync + 'static {
    fn readiness(&self) -> Result<(), &'static str>;
}

impl<F> Readiness for F
where
    F: Fn() -> Result<(), &'static str> + Send + Sync + 'static,
{
    fn readiness(&self) -> Result<(), &'static str> {
        self()
    }
}

/// A readiness flag the process sets as it starts and stops. Clones share the flag.
#[derive(Clone, Debug)]
pub struct ReadyFlag(Arc<RwLock<Result<(), &'static str>>>);

impl ReadyFlag {
    /// A flag that starts "not ready" for `reason`.
    pub fn new(reason: &'static str) -> ReadyFlag {
        ReadyFlag(Arc::new(RwLock::new(Err(reason))))
    }

    pub fn set_ready(&self) {
        self.set(Ok(()));
    }

    pub fn set_not_ready(&self, reason: &'static str) {
        self.set(Err(reason));
    }

    fn set(&self, state: Result<(), &'static str>) {
        // The lock only guards a copy; a panic elsewhere cannot leave it half-written.
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

impl Readiness for ReadyFlag {
    fn readiness(&self) -> Result<(), &'static str> {
        *self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What `/metrics` serves. A prometheus-client [`Registry`] is one; a type that owns its
/// registry can implement it by encoding that.
pub trait MetricsSource: Send + Sync + 'static {
    /// Appends the metrics in the OpenMetrics text format.
    fn encode(&self, out: &mut String) -> fmt::Result;
}

impl MetricsSource for Registry {
    fn encode(&self, out: &mut String) -> fmt::Result {
        prometheus_client::encoding::text::encode(out, self)
    }
}

/// An extra route: answers `GET` and `HEAD` on its path.
type Route = Box<dyn Fn() -> Response<Full<Bytes>> + Send + Sync>;

/// The admin endpoints of one process. Build it, then [`Admin::serve`] it.
pub struct Admin {
    readiness: Box<dyn Readiness>,
    metrics: Option<Arc<dyn MetricsSource>>,
    routes: Vec<(&'static str, Route)>,
}

impl Admin {
    /// `/healthz` and `/readyz` (answered from `readiness`); add the rest with the builders.
    pub fn new(readiness: impl Readiness) -> Admin {
        Admin {
            readiness: Box::new(readiness),
            metrics: None,
            routes: Vec::new(),
        }
    }

    /// Serves `/metrics` from `source`.
    pub fn metrics<M: MetricsSource>(mut self, source: Arc<M>) -> Admin {
        self.metrics = Some(source);
        self
    }

    /// Serves `path` with `handler`. The built-in paths come first: a route on one of them is
    /// never reached.
    pub fn route(
        mut self,
        path: &'static str,
        handler: impl Fn() -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Admin {
        self.routes.push((path, Box::new(handler)));
        self
    }

    /// The answer to one request.
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut refused = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            // RFC 9110 §15.5.6: a 405 lists the methods the resource supports.
            refused.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return refused;
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match self.readiness.readiness() {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(reason) => response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("not ready: {reason}\n"),
                ),
            },
            "/metrics" if self.metrics.is_some() => self.encode_metrics(),
            _ => match self.routes.iter().find(|(route, _)| *route == path) {
                Some((_, handler)) => handler(),
                None => response(
                    StatusCode::NOT_FOUND,
                    "text/plain; charset=utf-8",
                    format!("not found: try {}\n", self.paths().join(", ")),
                ),
            },
        }
    }

    fn encode_metrics(&self) -> Response<Full<Bytes>> {
        let mut body = String::new();
        match self.metrics.as_ref().map(|source| source.encode(&mut body)) {
            Some(Ok(())) => response(StatusCode::OK, OPENMETRICS, body),
            _ => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
        }
    }

    /// Every path served, for the 404 answer.
    fn paths(&self) -> Vec<&'static str> {
        let mut paths = vec!["/healthz", "/readyz"];
        if self.metrics.is_some() {
            paths.push("/metrics");
        }
        for (path, _) in &self.routes {
            if !paths.contains(path) {
                paths.push(path);
            }
        }
        paths
    }

    /// Serves on `listener` until `stop` is cancelled, then closes every admin connection.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        let admin = Arc::new(self);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accepting an admin connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = admin.clone();
            let builder = builder.clone();
            connections.spawn(async move {
                if crate::listen::protocol_known(&stream, HEADER_READ_TIMEOUT)
                    .await
                    .is_none()
                {
                    return;
                }
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let response = admin.respond(req.method(), req.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(err) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %err, "admin connection ended with an error");
                }
            });
        }
        // Dropping the set aborts the connections still open.
        drop(connections);
    }
}

#[cfg(test)]
mod tests;
