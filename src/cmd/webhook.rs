//! `corsair webhook`: the admission webhooks alone, stateless, with no API server.
//!
//! What tests and debugging use; in a cluster `corsair controller` serves the same webhooks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use corsair_controller::webhook::{self, CertStore, Limits, Metrics, WebhookState};
use corsair_runtime::{Admin, ReadyFlag, ShutdownSignals};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::cmd::sidecar::SidecarArgs;
use corsair_runtime::logging::LogArgs;

/// `corsair webhook --listen ADDR --tls-cert F --tls-key F`
#[derive(clap::Args)]
pub struct Args {
    /// Address of the HTTPS server (`POST /inject` for Pods, `POST /validate` for CorsPolicies);
    /// port 0 picks a free port, printed on stdout. `[::]` takes IPv4 and IPv6 clients
    /// (`0.0.0.0` on a host without IPv6).
    #[arg(long, default_value = "[::]:8443")]
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
    /// Plain-HTTP address for `/healthz`, `/readyz` (200 once the listener is bound and a
    /// certificate is loaded, 503 while draining) and `/metrics`; none when left out.
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
    /// Seconds an HTTP/2 webhook connection may stay open without a request in flight before it
    /// is closed with a GOAWAY, so that idle clients cannot hold every connection slot (an
    /// HTTP/1.1 one is closed after 10 s idle).
    #[arg(long, default_value_t = Limits::DEFAULT_IDLE_TIMEOUT.as_secs())]
    idle_timeout: u64,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.max(1),
            max_body_bytes: self.max_request_bytes,
            body_timeout: Duration::from_secs(self.request_timeout.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout.max(1)),
            ..Limits::default()
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    corsair_runtime::logging::init(&args.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    // Installed first, so a SIGTERM during start-up still stops cleanly.
    let mut signals = ShutdownSignals::install()?;
    // No API server to ask: `auto` means native sidecars.
    let config = args
        .sidecar
        .inject_config(args.sidecar.sidecar_mode.resolve(true))?;
    let mut registry = Registry::default();
    let state =
        WebhookState::new(config, Metrics::new(&mut registry)).with_limits(args.limits.limits());

    // Ready once the listener is bound and a certificate is loaded; not ready while draining.
    let ready = ReadyFlag::new("starting");
    let admin_stop = CancellationToken::new();
    let mut admin_task = None;
    if let Some(addr) = args.admin {
        let admin = corsair_runtime::listen::tokio_listener(addr)
            .with_context(|| format!("cannot listen on --admin {addr}"))?;
        let admin_addr = admin
            .local_addr()
            .context("cannot read the admin address")?;
        println!("admin listening on http://{admin_addr}");
        let server = Admin::new(ready.clone()).metrics(Arc::new(registry));
        admin_task = Some(tokio::spawn(server.serve(admin, admin_stop.clone())));
    }

    let certs = Arc::new(
        CertStore::from_pem_files(&args.tls_cert, &args.tls_key).with_context(|| {
            format!(
                "cannot load --tls-cert {} / --tls-key {}",
                args.tls_cert.display(),
                args.tls_key.display()
            )
        })?,
    );
    let listener = corsair_runtime::listen::tokio_listener(args.listen)
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let reload = tokio::spawn(certs.clone().watch_files(
        args.tls_cert,
        args.tls_key,
        Duration::from_secs(args.tls_reload_interval.max(1)),
    ));
    // Bound and holding a certificate: connections queue until the accept loop takes them.
    ready.set_ready();
    println!("webhook listening on https://{local}");
    tracing::info!(%local, mode = %state.config().sidecar_mode, "corsair webhook serving /inject and /validate");

    let shutdown = {
        let ready = ready.clone();
        async move {
            signals.recv().await;
            ready.set_not_ready("shutting down");
            tracing::info!("shutting down: finishing requests in flight");
        }
    };
    let served = webhook::serve(listener, certs, state, shutdown).await;
    reload.abort();
    admin_stop.cancel();
    if let Some(task) = admin_task {
        // It returns at once; a panic in it changes nothing now.
        let _ = task.await;
    }
    Ok(served?)
}
