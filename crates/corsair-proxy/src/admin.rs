//! The admin port: `/healthz`, `/readyz`, `/metrics` and `/policy`.
//!
//! It keeps serving while the proxy drains, so that `/readyz` can say 503 and Kubernetes takes
//! the pod out of its Service endpoints; it stops when the drain is over.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::server::State;

/// Serves until the task is aborted; aborting it also ends its connections.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| route(state.clone(), req));
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = result {
                tracing::debug!(error = %err, "admin connection ended with an error");
            }
        });
    }
}

async fn route(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n"));
    }
    let response = match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.is_listening() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n")
            }
        }
        "/metrics" => match state.metrics.encode() {
            Ok(body) => with_type(
                StatusCode::OK,
                Bytes::from(body),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
        },
        "/policy" => policy(&state),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics or /policy\n",
        ),
    };
    Ok(response)
}

/// The active policy document as JSON; 404 while no policy file has been loaded.
fn policy(state: &State) -> Response<Full<Bytes>> {
    let active = state.store.current();
    let Some(document) = &active.document else {
        return text(
            StatusCode::NOT_FOUND,
            "no policy file loaded yet: no origin is allowed\n",
        );
    };
    match serde_json::to_vec_pretty(document) {
        Ok(json) => with_type(StatusCode::OK, Bytes::from(json), "application/json"),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the policy\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(
        status,
        Bytes::from_static(body.as_bytes()),
        "text/plain; charset=utf-8",
    )
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
