//! `corsair controller`: the in-cluster operator. This file only turns flags into a
//! [`corsair_controller::runtime::Config`]; the runtime lives in the crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use corsair_controller::runtime::Config;

use crate::cmd::sidecar::SidecarArgs;
use corsair_runtime::logging::LogArgs;

/// `corsair controller [--webhook-listen ADDR] [--admin-listen ADDR] [--tls-cert F --tls-key F]`
#[derive(clap::Args)]
pub struct Args {
    /// HTTPS address of the admission webhooks (`POST /inject`, `POST /validate`). `[::]` takes
    /// IPv4 and IPv6 clients (`0.0.0.0` on a host without IPv6).
    #[arg(long, default_value = "[::]:8443")]
    webhook_listen: SocketAddr,
    /// Plain-HTTP address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, default_value = "[::]:8080")]
    admin_listen: SocketAddr,
    /// Namespace the controller runs in: its Lease, certificate Secret and webhook Service.
    #[arg(long, env = "POD_NAMESPACE", default_value = "corsair-system")]
    namespace: String,
    /// This replica's identity in the leader election [default: the host name].
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "corsair-controller")]
    lease_name: String,
    /// Seconds the leader's Lease is valid without renewal: how long a crashed leader blocks.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Serve this certificate (PEM) instead of managing one, e.g. from cert-manager; reloaded
    /// when the file changes. Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Secret holding the self-managed webhook serving certificate (every replica reads it).
    #[arg(long, default_value = "corsair-webhook-tls")]
    cert_secret: String,
    /// Secret holding the self-managed webhook CA and its private key (only the leader reads it).
    #[arg(long, default_value = "corsair-webhook-ca")]
    ca_secret: String,
    /// Service in front of the webhooks; the managed certificate is issued for its DNS names.
    #[arg(long, default_value = "corsair-webhook")]
    webhook_service: String,
    /// MutatingWebhookConfiguration whose caBundle the leader keeps current.
    #[arg(long, default_value = "corsair-inject")]
    mutating_webhook: String,
    /// ValidatingWebhookConfiguration whose caBundle the leader keeps current.
    #[arg(long, default_value = "corsair-validate")]
    validating_webhook: String,
    /// Seconds to keep serving after SIGTERM while reporting not ready, so the Service stops
    /// sending admission requests before the server closes.
    #[arg(long, default_value_t = 5)]
    shutdown_delay: u64,
    #[command(flatten)]
    limits: crate::cmd::webhook::LimitArgs,
    #[command(flatten)]
    sidecar: SidecarArgs,
    #[command(flatten)]
    log: LogArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    corsair_runtime::logging::init(&args.log)?;
    // Checked before anything else, so a bad flag is reported without an API server.
    let inject = args.sidecar.inject_config(args.sidecar.sidecar_mode)?;
    let config = Config {
        webhook_listen: args.webhook_listen,
        admin_listen: args.admin_listen,
        namespace: args.namespace,
        pod_name: args.pod_name,
        lease_name: args.lease_name,
        lease_duration: args.lease_duration,
        tls_files: args.tls_cert.zip(args.tls_key),
        cert_secret: args.cert_secret,
        ca_secret: args.ca_secret,
        limits: args.limits.limits(),
        webhook_service: args.webhook_service,
        mutating_webhook: args.mutating_webhook,
        validating_webhook: args.validating_webhook,
        shutdown_delay: Duration::from_secs(args.shutdown_delay),
        inject,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(corsair_controller::runtime::run(config))?;
    Ok(ExitCode::SUCCESS)
}
