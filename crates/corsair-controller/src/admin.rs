//! What the controller's admin port reports: `/healthz` (the process runs), `/readyz` (it can
//! serve admission requests), `/metrics`. The server is `corsair_runtime::Admin`, shared with the
//! proxy and `corsair webhook`; this module holds only the controller's readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use corsair_runtime::Admin;
use prometheus_client::registry::Registry;

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

/// The controller's admin endpoints.
pub fn admin(registry: Arc<Registry>, health: Arc<Health>) -> Admin {
    Admin::new(move || health.readiness()).metrics(registry)
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::*;

    async fn body(response: http::Response<http_body_util::Full<bytes::Bytes>>) -> String {
        let bytes = response.into_body().collect().await.map(|b| b.to_bytes());
        String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned()
    }

    #[tokio::test]
    async fn readiness_follows_the_certificate_and_shutdown() {
        let health = Arc::new(Health::default());
        let admin = admin(Arc::new(Registry::default()), health.clone());
        let r = admin.respond(&Method::GET, "/readyz");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(r).await.contains("certificate"));
        health.set_cert_loaded();
        assert_eq!(
            admin.respond(&Method::GET, "/readyz").status(),
            StatusCode::OK
        );
        health.set_stopping();
        let r = admin.respond(&Method::GET, "/readyz");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(r).await.contains("shutting down"));
        assert_eq!(
            admin.respond(&Method::GET, "/healthz").status(),
            StatusCode::OK
        );
        assert_eq!(
            admin.respond(&Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            admin.respond(&Method::POST, "/healthz").status(),
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
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            admin(Arc::new(registry), Arc::new(Health::default())).serve(listener, stop.clone()),
        );
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
        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(2), server)
            .await
            .expect("admin server stops on shutdown")
            .expect("no panic");
    }
}
