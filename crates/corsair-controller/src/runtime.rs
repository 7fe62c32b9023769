//! The controller's runtime: what `corsair controller` runs, behind one entry point, [`run`].
//!
//! Every replica serves the admission webhooks and the admin port. The replica holding the
//! leader Lease also runs the reconcilers and maintains the webhook certificate; when it loses
//! the Lease it stops them, and another replica starts them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::admin::{self, Health};
use crate::certs::{self, Bundle, CertConfig};
use crate::crd::{CONDITION_READY, CorsPolicy};
use crate::lease::{Leadership, LeaseConfig};
use crate::metrics::Metrics;
use crate::reconcile;
use crate::webhook::{
    self, CertError, CertStore, InjectConfig, PolicyPresence, SidecarMode, WebhookState,
};

/// Everything `corsair controller` is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTPS address of the admission webhooks.
    pub webhook_listen: SocketAddr,
    /// Plain-HTTP address of `/healthz`, `/readyz` and `/metrics`.
    pub admin_listen: SocketAddr,
    /// Namespace the controller runs in: its Lease, certificate Secret and webhook Service.
    pub namespace: String,
    /// This replica's identity in the leader election; `None`: the host name.
    pub pod_name: Option<String>,
    /// Name of the leader-election Lease.
    pub lease_name: String,
    /// Seconds the leader's Lease is valid without renewal.
    pub lease_duration: u64,
    /// Certificate and key files to serve instead of managing a certificate.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Secret holding the self-managed webhook serving certificate (every replica reads it).
    pub cert_secret: String,
    /// Secret holding the self-managed webhook CA and its private key (only the leader reads it).
    pub ca_secret: String,
    /// Bounds of the webhook server.
    pub limits: crate::webhook::Limits,
    /// Service in front of the webhooks.
    pub webhook_service: String,
    /// MutatingWebhookConfiguration whose caBundle the leader keeps current.
    pub mutating_webhook: String,
    /// ValidatingWebhookConfiguration whose caBundle the leader keeps current.
    pub validating_webhook: String,
    /// How long to keep serving after SIGTERM while reporting not ready.
    pub shutdown_delay: Duration,
    /// What the mutating webhook injects; `sidecar_mode` may still be `auto`.
    pub inject: InjectConfig,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot configure the Kubernetes client (in-cluster or KUBECONFIG)")]
    Client(#[source] kube::Error),
    #[error("cannot listen on {flag} {addr}")]
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load --tls-cert {} / --tls-key {}", .cert.display(), .key.display())]
    TlsFiles {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: CertError,
    },
    #[error("cannot listen for SIGTERM")]
    Signals(#[source] corsair_runtime::shutdown::SignalError),
    #[error("cannot generate a temporary webhook certificate")]
    TemporaryCert(#[source] crate::Error),
    #[error("cannot load the temporary webhook certificate")]
    TemporaryCertLoad(#[source] CertError),
}

/// How often a replica re-reads the certificate Secret.
const SECRET_POLL: Duration = Duration::from_secs(30);
/// How often the leader checks the certificates and the webhook configurations' `caBundle`:
/// a configuration replaced without it (`kubectl replace`, a GitOps sync, a Helm upgrade with
/// `--force`, or installed after the controller started) fails every admission call until then.
/// Two Secret and two configuration reads a minute.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Runs the controller until SIGTERM (or Ctrl-C), then shuts down gracefully.
pub async fn run(config: Config) -> Result<(), RuntimeError> {
    // Installed first, so that a SIGTERM during start still shuts down gracefully.
    let mut signals = corsair_runtime::ShutdownSignals::install().map_err(RuntimeError::Signals)?;
    let mut inject = config.inject.clone();
    let client = Client::try_default().await.map_err(RuntimeError::Client)?;
    let identity = match config.pod_name.clone() {
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
    let admin_listener = listen(config.admin_listen, "--admin-listen")?;
    let admin_stop = tokio_util::sync::CancellationToken::new();
    let admin = tokio::spawn(
        admin::admin(registry.clone(), health.clone()).serve(admin_listener, admin_stop.clone()),
    );
    // After the admin port: its reads may take a while, and the liveness probe must not
    // restart the pod meanwhile.
    let sidecar_mode = resolve_sidecar_mode(&client, inject.sidecar_mode).await;
    inject.sidecar_mode = sidecar_mode;

    // The webhook certificate: mounted files, or the Secret the leader maintains.
    let cert_config = CertConfig {
        namespace: config.namespace.clone(),
        secret_name: config.cert_secret.clone(),
        ca_secret_name: config.ca_secret.clone(),
        service_name: config.webhook_service.clone(),
        mutating_webhook: config.mutating_webhook.clone(),
        validating_webhook: config.validating_webhook.clone(),
    };
    let (cert_store, cert_task) = match &config.tls_files {
        Some((cert, key)) => {
            let store = Arc::new(CertStore::from_pem_files(cert, key).map_err(|source| {
                RuntimeError::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                }
            })?);
            health.set_cert_loaded();
            let task = tokio::spawn(store.clone().watch_files(
                cert.clone(),
                key.clone(),
                Duration::from_secs(10),
            ));
            (store, task)
        }
        None => {
            // Until the Secret is read, serve a throwaway certificate; /readyz stays false.
            let dns = certs::service_dns_names(&cert_config.service_name, &cert_config.namespace);
            let temporary =
                certs::placeholder(dns, Timestamp::now()).map_err(RuntimeError::TemporaryCert)?;
            let store = Arc::new(
                CertStore::from_pem(temporary.cert_pem.as_bytes(), temporary.key_pem.as_bytes())
                    .map_err(RuntimeError::TemporaryCertLoad)?,
            );
            let manager = certs::Manager::new(client.clone(), cert_config.clone());
            let task = tokio::spawn(follow_secret(manager, store.clone(), health.clone()));
            (store, task)
        }
    };
    let managed_certs = config.tls_files.is_none();

    // One watch per kind for the whole process: the webhooks' view of the CorsPolicies (every
    // replica answers admission reviews, with warnings) and the reconcilers' caches.
    let (caches, watches) = reconcile::Caches::start(&client);
    let lookup_store = caches.policies.store();
    let lookup = move |namespace: &str, name: &str| policy_presence(&lookup_store, namespace, name);
    let state = WebhookState::new(inject.clone(), webhook_metrics)
        .with_policy_lookup(Arc::new(lookup))
        .with_limits(config.limits);
    let webhook_listener = listen(config.webhook_listen, "--webhook-listen")?;
    let webhook = tokio::spawn(webhook::serve(
        webhook_listener,
        cert_store,
        state,
        stopped(),
    ));
    tracing::info!(
        webhook = %config.webhook_listen,
        admin = %config.admin_listen,
        %sidecar_mode,
        identity,
        "corsair controller serving; joining the leader election"
    );

    // The reconcilers (and certificate upkeep) run only on the leader.
    let lease = LeaseConfig {
        name: config.lease_name.clone(),
        namespace: config.namespace.clone(),
        identity: identity.clone(),
        duration_seconds: config.lease_duration.max(2),
        grace_seconds: (config.lease_duration / 3).max(1),
    };
    let reporter = Reporter {
        controller: reconcile::REPORTER.into(),
        instance: Some(identity),
    };
    let leader = Leader {
        caches,
        client: client.clone(),
        reporter,
        metrics,
        inject,
        webhook_check: Some(config.namespace.clone()),
        certs: managed_certs.then_some(cert_config),
    };
    let leader = tokio::spawn(lead(leader, lease, stopped()));

    let signal = signals.recv().await;
    tracing::info!(?signal, "shutdown requested");
    tracing::info!("SIGTERM: reporting not ready, then finishing requests in flight");
    health.set_stopping();
    tokio::time::sleep(config.shutdown_delay).await;
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
    drop(watches);
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("corsair controller stopped");
    Ok(())
}

/// Joins the election; runs the reconcilers (and certificate upkeep) while leading.
async fn lead(
    leader: Leader,
    lease: LeaseConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::Result<()> {
    tokio::pin!(shutdown);
    // A stop must not wait for an API server that does not answer the Lease.
    let leadership = loop {
        let attempt = tokio::select! {
            () = &mut shutdown => return Ok(()),
            attempt = Leadership::start(leader.client.clone(), &lease) => attempt,
        };
        match attempt {
            Ok(leadership) => break leadership,
            Err(err) => {
                tracing::warn!(%err, "cannot join the leader election; retrying in 5 s");
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    leader.follow(leadership.is_leader.clone(), shutdown).await;
    // Hand the Lease over at once instead of letting it expire.
    leadership.release().await?;
    Ok(())
}

/// What the leader runs, and with what.
pub(crate) struct Leader {
    pub caches: Arc<reconcile::Caches>,
    pub client: Client,
    pub reporter: Reporter,
    pub metrics: Metrics,
    /// What the webhook injects: the workload reconciler checks pod templates against it.
    pub inject: InjectConfig,
    /// The controller's namespace, where a dry run checks that the API server reaches the
    /// webhooks before a workload is rolled; `None`: no check.
    pub webhook_check: Option<String>,
    /// Where the self-managed webhook certificate lives; `None` with mounted files.
    pub certs: Option<CertConfig>,
}

impl Leader {
    /// Runs the reconcilers and the certificate upkeep whenever `is_leader` says so, until
    /// `shutdown` or the end of the election. Everything they write goes through a client
    /// [`fenced`](crate::lease::fenced) by `is_leader`: a reconcile in flight when the Lease
    /// is lost cannot write anything after that moment.
    pub(crate) async fn follow(
        &self,
        mut is_leader: watch::Receiver<bool>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let client = crate::lease::fenced(self.client.clone(), is_leader.clone());
        tokio::pin!(shutdown);
        loop {
            // Wait to become the leader, or for shutdown.
            tokio::select! {
                () = &mut shutdown => return,
                changed = is_leader.wait_for(|l| *l) => {
                    if changed.is_err() {
                        tracing::warn!("the leader election stopped");
                        return;
                    }
                }
            }
            tracing::info!("became the leader: starting the reconcilers");
            self.metrics.leader.set(1);
            let (stop_tx, stop_rx) = watch::channel(false);
            let reconcilers = tokio::spawn(reconcile::run(
                self.caches.clone(),
                client.clone(),
                self.reporter.clone(),
                self.metrics.clone(),
                self.inject.clone(),
                self.webhook_check.clone(),
                stop_rx.clone(),
            ));
            let upkeep = self.certs.clone().map(|config| {
                let manager = certs::Manager::new(client.clone(), config);
                tokio::spawn(keep_certificate(manager, stop_rx))
            });
            let shutting_down = tokio::select! {
                () = &mut shutdown => true,
                lost = is_leader.wait_for(|l| !*l) => {
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
            self.metrics.leader.set(0);
            if shutting_down {
                return;
            }
        }
    }
}

/// Leader: create, renew and publish the webhook certificate, every minute and at once on start.
async fn keep_certificate(manager: certs::Manager, mut stop: watch::Receiver<bool>) {
    loop {
        let delay = match manager.reconcile(Timestamp::now()).await {
            Ok(_) => UPKEEP_INTERVAL,
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

/// Waits before the second and third read of the API server version.
const VERSION_RETRIES: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(1)];

/// Resolves `auto` from the API server version; a failure falls back to a regular container,
/// which works on every version. An explicit `native` on an older cluster is kept, and said.
/// The version is read up to three times: each replica resolves the mode once for its life, and
/// one that fell back on a passing error would inject other pods than its peers.
async fn resolve_sidecar_mode(client: &Client, mode: SidecarMode) -> SidecarMode {
    if mode == SidecarMode::Container {
        return mode;
    }
    let mut version = client.apiserver_version().await;
    for wait in VERSION_RETRIES {
        match &version {
            Err(err) => {
                tracing::info!(%err, "cannot read the API server version; again in {wait:?}");
                tokio::time::sleep(wait).await;
                version = client.apiserver_version().await;
            }
            Ok(_) => break,
        }
    }
    match version {
        Ok(info) => {
            let native = webhook::native_sidecars_supported(&info.major, &info.minor);
            if mode == SidecarMode::Native && !native {
                tracing::warn!(
                    version = %info.git_version,
                    "--sidecar-mode native before Kubernetes 1.33: a Service's named targetPort \
                     does not resolve to a native sidecar there, so opted-in workloads lose \
                     their endpoints; use auto or container"
                );
            }
            let resolved = mode.resolve(native);
            tracing::info!(
                version = %info.git_version,
                mode = resolved.as_str(),
                "sidecar mode resolved from the API server version"
            );
            resolved
        }
        Err(err) if mode == SidecarMode::Auto => {
            tracing::warn!(%err, "cannot read the API server version; injecting plain containers");
            SidecarMode::Container
        }
        Err(_) => mode,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("corsair-{}", std::process::id()))
}

/// A listener on `addr`, given by `flag`, whose error names both.
fn listen(addr: SocketAddr, flag: &'static str) -> Result<tokio::net::TcpListener, RuntimeError> {
    corsair_runtime::listen::tokio_listener(addr).map_err(|source| RuntimeError::Listen {
        flag,
        addr,
        source,
    })
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use serde_json::json;

    use super::resolve_sidecar_mode;
    use crate::fixtures::{failure, mock_client};
    use crate::webhook::SidecarMode;

    /// SIGTERM while the replica cannot join the leader election (the API server unreachable
    /// or refusing the Lease): the leader task must end with the shutdown, as every other
    /// task does, instead of retrying the election every 5 s until the kubelet's SIGKILL.
    #[tokio::test]
    async fn shutdown_is_not_held_by_an_election_that_cannot_be_joined() {
        use std::time::Duration;

        use crate::fixtures::{FakeApi, Reply};
        use crate::lease::LeaseConfig;
        use crate::reconcile;

        let api = FakeApi::new(|call| {
            if call.is_watch() {
                return Reply::quiet_watch();
            }
            if call.path.contains("/leases") {
                return Reply::status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    failure(503, "ServiceUnavailable", None),
                );
            }
            Reply::steady(call, &[]).unwrap_or_else(|| Reply::echo(call))
        });
        let client = api.client();
        let (caches, watches) = reconcile::Caches::start(&client);
        let leader = super::Leader {
            caches,
            client,
            reporter: kube::runtime::events::Reporter {
                controller: reconcile::REPORTER.into(),
                instance: Some("a".into()),
            },
            metrics: crate::metrics::Metrics::default(),
            inject: crate::webhook::InjectConfig::default(),
            webhook_check: None,
            certs: None,
        };
        let lease = LeaseConfig {
            name: "corsair-leader".into(),
            namespace: "corsair-system".into(),
            identity: "a".into(),
            duration_seconds: 15,
            grace_seconds: 5,
        };
        // The shutdown was asked for already.
        let ended = tokio::time::timeout(
            Duration::from_secs(3),
            super::lead(leader, lease, std::future::ready(())),
        )
        .await;
        let lease_calls = api
            .calls()
            .iter()
            .filter(|c| c.path.contains("/leases"))
            .count();
        drop(watches);
        assert!(
            ended.is_ok(),
            "the leader task still runs 3 s after the shutdown, trying to join the election \
             ({lease_calls} Lease calls so far)"
        );
    }

    /// A passing error at start does not leave a replica injecting plain containers for its
    /// life while its peers inject native sidecars; a lasting one does, which works everywhere.
    #[tokio::test(start_paused = true)]
    async fn the_sidecar_mode_survives_a_passing_error_reading_the_version() {
        let version = json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "", "gitTreeState": "",
            "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64",
        });
        for (failures, resolved) in [(2, SidecarMode::Native), (3, SidecarMode::Container)] {
            let (client, mut verifier) = mock_client();
            let answers = version.clone();
            let server = tokio::spawn(async move {
                for _ in 0..failures {
                    let call = verifier.next_call().await;
                    call.expect(Method::GET, "/version");
                    call.respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &failure(503, "ServiceUnavailable", None),
                    );
                }
                if failures < 3 {
                    let call = verifier.next_call().await;
                    call.expect(Method::GET, "/version");
                    call.respond(StatusCode::OK, &answers);
                }
                verifier.expect_no_more_calls().await;
            });
            let mode = resolve_sidecar_mode(&client, SidecarMode::Auto).await;
            assert_eq!(mode, resolved, "after {failures} failed reads");
            if let Err(err) = server.await {
                std::panic::resume_unwind(err.into_panic());
            }
        }
    }
}
