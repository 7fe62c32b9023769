//! The Corsair sidecar: a hyper gateway that enforces a `CorsPolicy` in front of one upstream.
//!
//! One port serves HTTP/1.1 and HTTP/2 (h2c prior knowledge); every request is classified by the
//! [`corsair_policy::Engine`] and then either answered here (preflights, rejections) or streamed
//! to the single upstream over keep-alive connections that each client connection keeps for itself. The policy file is hot-reloaded, and
//! a second port serves health, readiness, Prometheus metrics and the active policy.
//!
//! ```no_run
//! # async fn run() -> Result<(), corsair_proxy::ProxyError> {
//! let config = corsair_proxy::ProxyConfig::new(
//!     "/etc/corsair/policy.json".into(),
//!     "http://127.0.0.1:8080".parse().expect("static URI"),
//!     "[::]:15380".parse().expect("static address"),
//!     "[::]:15381".parse().expect("static address"),
//! );
//! let proxy = corsair_proxy::Proxy::start(config).await?;
//! // ... wait for SIGTERM ...
//! proxy.shutdown().await
//! # }
//! ```
#![forbid(unsafe_code)]

mod admin;
#[cfg(feature = "cli")]
pub mod cli;
mod handler;
mod head_timer;
mod headers;
mod metrics;
mod on_wake;
mod policy;
mod reload;
mod server;
mod stream_exec;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use policy::PolicyError;

/// Everything `corsair proxy` can be told. Build with [`ProxyConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The policy file (a `CorsPolicy` manifest in YAML, or the JSON the controller renders).
    pub policy_path: PathBuf,
    /// The one upstream, `http://host:port`. Requests never choose another destination.
    pub upstream: http::Uri,
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Where the admin endpoints (`/healthz`, `/readyz`, `/metrics`, `/policy`) listen.
    pub admin: SocketAddr,
    /// Start even when the policy file does not exist yet (the operator mounts an optional
    /// ConfigMap volume). No origin is allowed while it is missing, also when it is removed
    /// later (its ConfigMap deleted); without this, a removed file leaves the last good policy.
    pub allow_missing_policy: bool,
    /// Time a client has to send a request's headers, including the wait for the first bytes on
    /// a new connection and for the next request on an idle HTTP/1.1 keep-alive connection.
    pub header_read_timeout: Duration,
    /// Time to establish a TCP connection to the upstream (504 when exceeded).
    pub connect_timeout: Duration,
    /// Time the upstream has to start its response (504 when exceeded), that it may send nothing
    /// in the middle of a response body (the response is cut short), and that the rest of an
    /// upload the upstream answered early may make no progress before it is given up.
    pub upstream_timeout: Duration,
    /// A client connection that moves no bytes for this long is closed, even with a request in
    /// flight (HTTP/2: whose streams make no progress), and an HTTP/2 stream that makes no
    /// progress for this long is reset.
    pub idle_timeout: Duration,
    /// Limit on the total size of a request's headers (431 beyond it). At least 8 KiB.
    pub max_header_bytes: usize,
    /// On shutdown, how long the proxy keeps accepting (not ready) before it drains: the time
    /// Kubernetes takes to stop sending new connections to a terminating pod, for a sidecar
    /// stopped together with an application that keeps serving that long.
    pub shutdown_delay: Duration,
    /// On shutdown, how long in-flight requests may take before their connections are dropped.
    pub drain_timeout: Duration,
    /// Threads serving the proxy port, each a single-threaded runtime with its own listener.
    pub worker_threads: usize,
    /// How often the policy file is polled, in addition to filesystem notifications.
    pub reload_poll_interval: Duration,
}

impl ProxyConfig {
    /// A configuration with the defaults of `corsair proxy`.
    pub fn new(
        policy_path: PathBuf,
        upstream: http::Uri,
        listen: SocketAddr,
        admin: SocketAddr,
    ) -> Self {
        ProxyConfig {
            policy_path,
            upstream,
            listen,
            admin,
            allow_missing_policy: false,
            header_read_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            max_header_bytes: 64 * 1024,
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(25),
            worker_threads: 1,
            reload_poll_interval: Duration::from_secs(1),
        }
    }
}

/// Why the proxy could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The policy file is missing (without `allow_missing_policy`), unreadable or invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The upstream URL is not `http://host[:port]` with nothing else.
    #[error("upstream {uri:?}: {reason}")]
    Upstream { uri: String, reason: &'static str },
    /// `max_header_bytes` is below what hyper can enforce.
    #[error("max header bytes {0} is too small: it must be at least 8192")]
    HeaderLimit(usize),
    /// A listener could not be bound.
    /// The cause is in the message, not a `source()`, which a chain walk would print again.
    #[error("cannot listen on {addr} ({role}): {cause}")]
    Bind {
        role: &'static str,
        addr: SocketAddr,
        cause: std::io::Error,
    },
    /// Connections were still open when the drain timeout expired; they were dropped.
    #[error("{0} connection(s) still open after the drain timeout were closed")]
    DrainTimeout(usize),
}

/// A running proxy. Dropping it without [`Proxy::shutdown`] leaves its tasks running until the
/// runtime stops.
pub struct Proxy {
    listen_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown_delay: Duration,
    drain_timeout: Duration,
    /// Stops accepting and asks connections to finish their current request.
    shutdown: CancellationToken,
    /// Fired when the drain timeout expires: connections and tunnels stop at once.
    abort: CancellationToken,
    tasks: TaskTracker,
    state: Arc<server::State>,
    /// Serves during the drain (so `/readyz` reports it) and is stopped after it.
    admin_task: tokio::task::JoinHandle<()>,
    /// Stops the admin server.
    admin_stop: CancellationToken,
}

impl Proxy {
    /// Binds both listeners, loads the policy (error if invalid, or missing unless allowed),
    /// starts the hot reload and starts serving.
    pub async fn start(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        let shutdown = CancellationToken::new();
        let abort = CancellationToken::new();
        let tasks = TaskTracker::new();
        let upstream = upstream::Upstream::new(&config, &tasks, &abort)?;
        if config.max_header_bytes < 8192 {
            return Err(ProxyError::HeaderLimit(config.max_header_bytes));
        }
        let metrics = Arc::new(metrics::Metrics::new());
        let store = Arc::new(policy::PolicyStore::load(
            &config.policy_path,
            config.allow_missing_policy,
        )?);
        metrics.set_generation(store.current().generation());
        metrics.set_file_refused(store.refused().is_some());

        // Thread per core: each worker thread runs a single-threaded runtime that accepts on its
        // own SO_REUSEPORT listener and serves its connections to the end, with no work
        // stealing or cross-thread wake-ups (measured in docs/benchmarks.md).
        if config.listen.port() != 0 {
            corsair_runtime::listen::check_free(config.listen).map_err(|cause| {
                ProxyError::Bind {
                    role: "proxy",
                    addr: config.listen,
                    cause,
                }
            })?;
        }
        let first = bind_reuseport(config.listen)?;
        let listen_addr = first.local_addr().map_err(|cause| ProxyError::Bind {
            role: "proxy",
            addr: config.listen,
            cause,
        })?;
        let mut core_listeners = vec![first];
        for _ in 1..config.worker_threads.max(1) {
            core_listeners.push(bind_reuseport(listen_addr)?);
        }
        let admin_listener = bind(config.admin, "admin")?;
        let admin_addr = local_addr(&admin_listener, config.admin, "admin")?;

        let state = Arc::new(server::State::new(
            config.clone(),
            store.clone(),
            metrics.clone(),
            upstream,
            abort.clone(),
            tasks.clone(),
        ));

        let interval = config.reload_poll_interval;
        let (reload_shutdown, failed) = (shutdown.clone(), metrics.clone());
        tokio::spawn(reload::supervised(
            "policy reloader",
            move || {
                reload::Reloader::start(
                    store.clone(),
                    metrics.clone(),
                    interval,
                    reload_shutdown.clone(),
                )
            },
            move || failed.reload_failed(),
        ));
        for (i, std_listener) in core_listeners.into_iter().enumerate() {
            let (state, stop, cut) = (state.clone(), shutdown.clone(), abort.clone());
            let worker = move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        tracing::error!(error = %err, "cannot start a worker runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(std_listener) {
                        Ok(listener) => {
                            server::accept_loop(listener, state.clone(), stop, cut).await;
                        }
                        Err(err) => tracing::error!(error = %err, "cannot serve a worker listener"),
                    }
                    // Serve this thread's connections until they are drained.
                    state.tasks.wait().await;
                });
            };
            let spawned = std::thread::Builder::new()
                .name(format!("corsair-proxy-{i}"))
                .spawn(worker);
            if let Err(cause) = spawned {
                // The workers and the reloader already started stop with the start that failed,
                // and so do connections their listeners took meanwhile.
                shutdown.cancel();
                abort.cancel();
                tasks.close();
                return Err(ProxyError::Bind {
                    role: "proxy worker",
                    addr: listen_addr,
                    cause,
                });
            }
        }
        let admin_stop = CancellationToken::new();
        let admin_task =
            tokio::spawn(admin::admin(state.clone()).serve(admin_listener, admin_stop.clone()));
        state.set_listening(true);
        tracing::info!(
            listen = %listen_addr,
            admin = %admin_addr,
            upstream = %config.upstream,
            policy = %config.policy_path.display(),
            "proxy started"
        );
        Ok(Proxy {
            listen_addr,
            admin_addr,
            shutdown_delay: config.shutdown_delay,
            drain_timeout: config.drain_timeout,
            shutdown,
            abort,
            tasks,
            state,
            admin_task,
            admin_stop,
        })
    }

    /// The address the proxy listener is bound to (the real port when asked for port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The address the admin listener is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Reports not ready, keeps serving for the shutdown delay, then stops accepting, lets
    /// in-flight requests finish within the drain timeout, and returns. Connections still open
    /// at the deadline are closed and reported as an error.
    pub async fn shutdown(self) -> Result<(), ProxyError> {
        self.shutdown_unless(std::future::pending()).await
    }

    /// [`Proxy::shutdown`], with the shutdown delay cut short when `hurry` completes (a second
    /// signal).
    pub async fn shutdown_unless(
        self,
        hurry: impl std::future::Future<Output = ()>,
    ) -> Result<(), ProxyError> {
        self.state.set_listening(false);
        if !self.shutdown_delay.is_zero() {
            tracing::info!(shutdown_delay = ?self.shutdown_delay, "still serving before the drain");
            tokio::select! {
                () = tokio::time::sleep(self.shutdown_delay) => {}
                () = hurry => tracing::info!("shutdown delay cut short"),
            }
        }
        tracing::info!(drain_timeout = ?self.drain_timeout, "draining connections");
        self.shutdown.cancel();
        self.tasks.close();
        let drained = tokio::time::timeout(self.drain_timeout, self.tasks.wait())
            .await
            .is_ok();
        let result = if drained {
            tracing::info!("drained; proxy stopped");
            Ok(())
        } else {
            let open = self.tasks.len();
            self.abort.cancel();
            // Connection tasks end promptly once aborted; give them a moment to close sockets.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
            tracing::warn!(open, "drain timeout expired; closed remaining connections");
            Err(ProxyError::DrainTimeout(open))
        };
        self.admin_stop.cancel();
        // It returns at once, closing its connections; a panic in it changes nothing here.
        let _ = self.admin_task.await;
        result
    }
}

fn bind_reuseport(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    corsair_runtime::listen::std_listener(addr, true).map_err(|cause| ProxyError::Bind {
        role: "proxy",
        addr,
        cause,
    })
}

fn bind(addr: SocketAddr, role: &'static str) -> Result<TcpListener, ProxyError> {
    corsair_runtime::listen::tokio_listener(addr).map_err(|cause| ProxyError::Bind {
        role,
        addr,
        cause,
    })
}

fn local_addr(
    listener: &TcpListener,
    addr: SocketAddr,
    role: &'static str,
) -> Result<SocketAddr, ProxyError> {
    listener
        .local_addr()
        .map_err(|cause| ProxyError::Bind { role, addr, cause })
}
