//! The admin port: `/healthz` (the process runs), `/readyz` (it can serve admission requests),
//! `/metrics` (Prometheus text format). Plain HTTP/1.1, cluster-internal.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What `/readyz` reports. Shared between the parts that make the replica ready.
#[derive(Debug, Default)]
pub struct Health {
    /// The webhook serves a certificate the API server trusts.
    cert_loaded: AtomicBool,
    /// Shutdown began: take the replica out of the Service before it stops.
    stopping: AtomicBool,
}

impl Health {
    pub fn set_cert_loaded(&self) {
        self.cert_loaded.store(true, Ordering::Release);
    }
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }
    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Acquire) {
            Err("shutting down")
        } else if !self.cert_loaded.load(Ordering::Acquire) {
            Err("webhook certificate not loaded yet")
        } else {
            Ok(())
        }
    }
}

/// Answers one admin request.
pub fn respond(
    method: &Method,
    path: &str,
    registry: &Registry,
    health: &Health,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match health.readiness() {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => {
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    response
                }
                Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accepting an admin connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(req.method(), req.uri().path(), &registry, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%err, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.map(|b| b.to_bytes());
        String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned()
    }

    #[tokio::test]
    async fn readiness_follows_the_certificate_and_shutdown() {
        let registry = Registry::default();
        let health = Health::default();
        let r = respond(&Method::GET, "/readyz", &registry, &health);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(r).await.contains("certificate"));
        health.set_cert_loaded();
        assert_eq!(
            respond(&Method::GET, "/readyz", &registry, &health).status(),
            StatusCode::OK
        );
        health.set_stopping();
        assert_eq!(
            respond(&Method::GET, "/readyz", &registry, &health).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond(&Method::GET, "/healthz", &registry, &health).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&Method::GET, "/nope", &registry, &health).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::POST, "/healthz", &registry, &health).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn metrics_over_a_real_socket() {
        let mut registry = Registry::default();
        let metrics = crate::metrics::Metrics::new(&mut registry);
        drop(metrics.reconcile_started("corspolicy"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(registry),
            Arc::new(Health::default()),
            async move {
                let _ = stopped.await;
            },
        ));
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.contains("corsair_controller_reconciles_total{controller=\"corspolicy\"} 1"),
            "{text}"
        );
        let _ = stop.send(());
        tokio::time::timeout(std::time::Duration::from_secs(2), server)
            .await
            .expect("admin server stops on shutdown")
            .expect("no panic");
    }
}
