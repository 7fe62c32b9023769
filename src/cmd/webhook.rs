//! `corsair webhook`: the admission webhooks alone, stateless, with no API server.
//!
//! What tests and debugging use; in a cluster `corsair controller` serves the same webhooks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use corsair_controller::webhook::{self, CertStore, Limits, Metrics, WebhookState};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cmd::sidecar::SidecarArgs;
use crate::logging::LogArgs;

/// `corsair webhook --listen ADDR --tls-cert F --tls-key F`
#[derive(clap::Args)]
pub struct Args {
    /// Address of the HTTPS server (`POST /inject` for Pods, `POST /validate` for CorsPolicies);
    /// port 0 picks a free port, printed on stdout.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain served to the API server; reloaded when the file changes.
    #[arg(long)]
    tls_cert: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long)]
    tls_key: PathBuf,
    /// How often the certificate files are checked for changes, in seconds.
    #[arg(long, default_value_t = 10)]
    tls_reload_interval: u64,
    /// Plain-HTTP address for `/healthz`, `/readyz` and `/metrics`; none when left out.
    #[arg(long)]
    admin: Option<SocketAddr>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    sidecar: SidecarArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// Bounds of the webhook server; `corsair webhook` and `corsair controller` share them.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Connections the webhook server serves at once; more wait in the listen backlog.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Largest AdmissionReview body accepted, in bytes; a larger one gets 413. The API server
    /// itself refuses request bodies over 3 MiB.
    #[arg(long, default_value_t = Limits::DEFAULT_MAX_BODY_BYTES)]
    max_request_bytes: usize,
    /// Seconds a request body may take to arrive after its head; a slower one gets 408.
    #[arg(long, default_value_t = Limits::DEFAULT_BODY_TIMEOUT.as_secs())]
    request_timeout: u64,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.max(1),
            max_body_bytes: self.max_request_bytes,
            body_timeout: Duration::from_secs(self.request_timeout.max(1)),
            ..Limits::default()
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init(&args.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    // No API server to ask: `auto` means native sidecars.
    let config = args
        .sidecar
        .inject_config(args.sidecar.sidecar_mode.resolve(true))?;
    let certs = Arc::new(
        CertStore::from_pem_files(&args.tls_cert, &args.tls_key).with_context(|| {
            format!(
                "cannot load --tls-cert {} / --tls-key {}",
                args.tls_cert.display(),
                args.tls_key.display()
            )
        })?,
    );
    let mut registry = Registry::default();
    let state =
        WebhookState::new(config, Metrics::new(&mut registry)).with_limits(args.limits.limits());
    let registry = Arc::new(registry);

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(addr) = args.admin {
        let admin = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --admin {addr}"))?;
        let admin_addr = admin
            .local_addr()
            .context("cannot read the admin address")?;
        println!("admin listening on http://{admin_addr}");
        tokio::spawn(serve_admin(admin, registry.clone(), stop_rx.clone()));
    }
    let reload = tokio::spawn(certs.clone().watch_files(
        args.tls_cert,
        args.tls_key,
        Duration::from_secs(args.tls_reload_interval.max(1)),
    ));
    println!("webhook listening on https://{local}");
    tracing::info!(%local, mode = %state.config().sidecar_mode, "corsair webhook serving /inject and /validate");

    let mut shutdown_rx = stop_rx;
    let shutdown = async move {
        let _ = shutdown_rx.wait_for(|stop| *stop).await;
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = stop_tx.send(true);
    });
    webhook::serve(listener, certs, state, shutdown).await?;
    reload.abort();
    Ok(())
}

/// SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch SIGTERM; only Ctrl-C stops the webhook");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `/healthz`, `/readyz` (ready while serving) and `/metrics`, plain HTTP/1.1.
async fn serve_admin(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting an admin connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let registry = registry.clone();
        let stopping = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = admin_response(&req, &registry, *stopping.borrow());
                async move { Ok::<_, Infallible>(response) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %err, "admin connection ended with an error");
            }
        });
    }
}

fn admin_response(
    req: &Request<Incoming>,
    registry: &Registry,
    stopping: bool,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if stopping => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "shutting down\n".to_owned(),
        ),
        "/readyz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(err) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{err}\n"),
                ),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
