//! `corsair controller`: the in-cluster operator.
//!
//! Every replica serves the admission webhooks and the admin port. The replica holding the
//! leader Lease also runs the reconcilers and maintains the webhook certificate; when it loses
//! the Lease it stops them, and another replica starts them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use corsair_controller::admin::{self, Health};
use corsair_controller::certs::{self, Bundle, CertConfig};
use corsair_controller::crd::{CONDITION_READY, CorsPolicy};
use corsair_controller::lease::{Leadership, LeaseConfig};
use corsair_controller::metrics::Metrics;
use corsair_controller::reconcile;
use corsair_controller::webhook::{self, CertStore, PolicyPresence, SidecarMode, WebhookState};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cmd::sidecar::SidecarArgs;
use crate::logging::LogArgs;

/// `corsair controller [--webhook-listen ADDR] [--admin-listen ADDR] [--tls-cert F --tls-key F]`
#[derive(clap::Args)]
pub struct Args {
    /// HTTPS address of the admission webhooks (`POST /inject`, `POST /validate`).
    #[arg(long, default_value = "0.0.0.0:8443")]
    webhook_listen: SocketAddr,
    /// Plain-HTTP address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, default_value = "0.0.0.0:8080")]
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

/// How often a replica re-reads the certificate Secret, and the leader checks for renewal.
const SECRET_POLL: Duration = Duration::from_secs(30);
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init(&args.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(controller(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn controller(args: Args) -> anyhow::Result<()> {
    // Checked before anything else, so a bad flag is reported without an API server.
    let mut inject = args.sidecar.inject_config(args.sidecar.sidecar_mode)?;
    let client = Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (in-cluster or KUBECONFIG)")?;
    let sidecar_mode = resolve_sidecar_mode(&client, args.sidecar.sidecar_mode).await;
    inject.sidecar_mode = sidecar_mode;
    let identity = match args.pod_name.clone() {
        Some(name) => name,
        None => hostname(),
    };

    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let webhook_metrics = webhook::Metrics::new(&mut registry);
    let registry = Arc::new(registry);
    let health = Arc::new(Health::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    // Admin first, so that probes answer while the rest starts.
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on --admin-listen {}", args.admin_listen))?;
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        registry.clone(),
        health.clone(),
        stopped(),
    ));

    // The webhook certificate: mounted files, or the Secret the leader maintains.
    let cert_config = CertConfig {
        namespace: args.namespace.clone(),
        secret_name: args.cert_secret.clone(),
        ca_secret_name: args.ca_secret.clone(),
        service_name: args.webhook_service.clone(),
        mutating_webhook: args.mutating_webhook.clone(),
        validating_webhook: args.validating_webhook.clone(),
    };
    let (cert_store, cert_task) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let store = Arc::new(CertStore::from_pem_files(cert, key).with_context(|| {
                format!(
                    "cannot load --tls-cert {} / --tls-key {}",
                    cert.display(),
                    key.display()
                )
            })?);
            health.set_cert_loaded();
            let task = tokio::spawn(store.clone().watch_files(
                cert.clone(),
                key.clone(),
                Duration::from_secs(10),
            ));
            (store, task)
        }
        _ => {
            // Until the Secret is read, serve a throwaway certificate; /readyz stays false.
            let dns = certs::service_dns_names(&cert_config.service_name, &cert_config.namespace);
            let temporary = certs::placeholder(dns, Timestamp::now())
                .context("cannot generate a temporary webhook certificate")?;
            let store = Arc::new(
                CertStore::from_pem(temporary.cert_pem.as_bytes(), temporary.key_pem.as_bytes())
                    .context("cannot load the temporary webhook certificate")?,
            );
            let manager = certs::Manager::new(client.clone(), cert_config.clone());
            let task = tokio::spawn(follow_secret(manager, store.clone(), health.clone()));
            (store, task)
        }
    };
    let managed_certs = args.tls_cert.is_none();

    // Every replica answers admission reviews, with a view of the CorsPolicies for warnings.
    let (policies, policy_writer) = reflector::store::<CorsPolicy>();
    let policy_watch = tokio::spawn(
        reflector::reflector(
            policy_writer,
            watcher(
                kube::Api::<CorsPolicy>::all(client.clone()),
                watcher::Config::default().any_semantic(),
            ),
        )
        .default_backoff()
        .for_each(|event| async move {
            if let Err(err) = event {
                tracing::warn!(%err, "CorsPolicy watch (webhook view) failed; retrying");
            }
        }),
    );
    let lookup_store = policies.clone();
    let lookup = move |namespace: &str, name: &str| policy_presence(&lookup_store, namespace, name);
    let state = WebhookState::new(inject, webhook_metrics)
        .with_policy_lookup(Arc::new(lookup))
        .with_limits(args.limits.limits());
    let webhook_listener = TcpListener::bind(args.webhook_listen)
        .await
        .with_context(|| format!("cannot listen on --webhook-listen {}", args.webhook_listen))?;
    let webhook = tokio::spawn(webhook::serve(
        webhook_listener,
        cert_store,
        state,
        stopped(),
    ));
    tracing::info!(
        webhook = %args.webhook_listen,
        admin = %args.admin_listen,
        %sidecar_mode,
        identity,
        "corsair controller serving; joining the leader election"
    );

    // The reconcilers (and certificate upkeep) run only on the leader.
    let lease = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.namespace.clone(),
        identity: identity.clone(),
        duration_seconds: args.lease_duration.max(2),
        grace_seconds: (args.lease_duration / 3).max(1),
    };
    let reporter = Reporter {
        controller: reconcile::REPORTER.into(),
        instance: Some(identity),
    };
    let leader = tokio::spawn(lead(
        client.clone(),
        lease,
        reporter,
        metrics,
        managed_certs.then(|| certs::Manager::new(client.clone(), cert_config)),
        stopped(),
    ));

    shutdown_signal().await;
    tracing::info!("SIGTERM: reporting not ready, then finishing requests in flight");
    health.set_stopping();
    tokio::time::sleep(Duration::from_secs(args.shutdown_delay)).await;
    let _ = stop_tx.send(true);

    match leader.await {
        Ok(Err(err)) => tracing::warn!(%err, "leader election ended with an error"),
        Err(err) => tracing::warn!(%err, "leader task failed"),
        Ok(Ok(())) => {}
    }
    match webhook.await {
        Ok(Err(err)) => tracing::warn!(%err, "webhook server ended with an error"),
        Err(err) => tracing::warn!(%err, "webhook task failed"),
        Ok(Ok(())) => {}
    }
    cert_task.abort();
    policy_watch.abort();
    let _ = admin.await;
    tracing::info!("corsair controller stopped");
    Ok(())
}

/// Joins the election; runs the reconcilers (and certificate upkeep) while leading.
async fn lead(
    client: Client,
    lease: LeaseConfig,
    reporter: Reporter,
    metrics: Metrics,
    certs: Option<certs::Manager>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut leadership = loop {
        match Leadership::start(client.clone(), &lease).await {
            Ok(leadership) => break leadership,
            Err(err) => {
                tracing::warn!(%err, "cannot join the leader election; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    tokio::pin!(shutdown);
    loop {
        // Wait to become the leader, or for shutdown.
        tokio::select! {
            () = &mut shutdown => break,
            changed = leadership.is_leader.wait_for(|l| *l) => {
                if changed.is_err() {
                    anyhow::bail!("the leader election stopped");
                }
            }
        }
        tracing::info!(
            identity = lease.identity,
            "became the leader: starting the reconcilers"
        );
        metrics.leader.set(1);
        let (stop_tx, stop_rx) = watch::channel(false);
        let reconcilers = tokio::spawn(reconcile::run(
            client.clone(),
            reporter.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ));
        let upkeep = certs
            .clone()
            .map(|manager| tokio::spawn(keep_certificate(manager, stop_rx)));
        let shutting_down = tokio::select! {
            () = &mut shutdown => true,
            lost = leadership.is_leader.wait_for(|l| !*l) => {
                if lost.is_ok() {
                    tracing::warn!("lost the leader Lease: stopping the reconcilers");
                }
                lost.is_err()
            }
        };
        let _ = stop_tx.send(true);
        if let Err(err) = reconcilers.await {
            tracing::warn!(%err, "reconciler task failed");
        }
        if let Some(upkeep) = upkeep {
            let _ = upkeep.await;
        }
        metrics.leader.set(0);
        if shutting_down {
            break;
        }
    }
    // Hand the Lease over at once instead of letting it expire.
    leadership.release().await?;
    Ok(())
}

/// Leader: create, renew and publish the webhook certificate, hourly and at once on start.
async fn keep_certificate(manager: certs::Manager, mut stop: watch::Receiver<bool>) {
    loop {
        let delay = match manager.reconcile(Timestamp::now()).await {
            Ok(_) => RENEWAL_CHECK,
            Err(err) => {
                tracing::warn!(%err, "webhook certificate upkeep failed; retrying in 10 s");
                Duration::from_secs(10)
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Every replica: load the certificate from the Secret whenever it changes.
async fn follow_secret(manager: certs::Manager, store: Arc<CertStore>, health: Arc<Health>) {
    let mut current: Option<Bundle> = None;
    loop {
        match manager.load().await {
            Ok(Some(bundle)) if current.as_ref() != Some(&bundle) => {
                match store.set_pem(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes()) {
                    Ok(()) => {
                        tracing::info!("webhook certificate loaded from the Secret");
                        health.set_cert_loaded();
                        current = Some(bundle);
                    }
                    Err(err) => tracing::warn!(%err, "certificate in the Secret does not load"),
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => tracing::info!("waiting for the leader to create the certificate Secret"),
            Err(err) => tracing::warn!(%err, "cannot read the certificate Secret"),
        }
        let delay = if current.is_some() {
            SECRET_POLL
        } else {
            Duration::from_secs(3)
        };
        tokio::time::sleep(delay).await;
    }
}

/// What the webhook tells a user about the policy a pod names.
fn policy_presence(store: &Store<CorsPolicy>, namespace: &str, name: &str) -> PolicyPresence {
    if futures::FutureExt::now_or_never(store.wait_until_ready()).is_some() {
        match store.get(&ObjectRef::new(name).within(namespace)) {
            None => PolicyPresence::Missing,
            Some(policy) => {
                let ready = policy
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_READY));
                match ready {
                    Some(c) if c.status == "False" => PolicyPresence::Invalid(c.message.clone()),
                    _ => PolicyPresence::Ready,
                }
            }
        }
    } else {
        // Not listed yet: no warning rather than a false one.
        PolicyPresence::Ready
    }
}

/// Resolves `auto` from the API server version; a failure falls back to a regular container,
/// which works on every version.
async fn resolve_sidecar_mode(client: &Client, mode: SidecarMode) -> SidecarMode {
    if mode != SidecarMode::Auto {
        return mode;
    }
    match client.apiserver_version().await {
        Ok(info) => {
            let native = webhook::native_sidecars_supported(&info.major, &info.minor);
            tracing::info!(
                version = %info.git_version,
                native,
                "sidecar mode auto resolved from the API server version"
            );
            mode.resolve(native)
        }
        Err(err) => {
            tracing::warn!(%err, "cannot read the API server version; injecting plain containers");
            SidecarMode::Container
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("corsair-{}", std::process::id()))
}

/// SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!(%err, "cannot watch SIGTERM; only Ctrl-C stops the controller");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
