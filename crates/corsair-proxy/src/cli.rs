//! The command line of the sidecar, defined once: `corsair proxy` flattens [`Args`] into its
//! subcommand and the slim `corsair-proxy` binary parses it alone, so both take exactly the same
//! flags and environment variables. Enforces a policy file in front of one upstream until
//! SIGTERM or SIGINT, then drains in-flight requests and returns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use corsair_runtime::logging::{self, LogArgs, LoggingError};
use corsair_runtime::{ShutdownSignals, SignalError};

use crate::{Proxy, ProxyConfig, ProxyError};

/// `--policy FILE --upstream URL [--listen ADDR] [--admin ADDR]`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The policy file: a CorsPolicy manifest (YAML) or the JSON the controller renders.
    /// Reloaded when it changes.
    #[arg(long, env = "CORSAIR_POLICY", value_name = "FILE")]
    policy: PathBuf,
    /// The application, `http://host:port`. Every request goes there, whatever its Host says.
    /// `localhost` is the loopback of either family, not looked up: IPv4, else IPv6, the one
    /// that answered last tried first.
    #[arg(long, env = "CORSAIR_UPSTREAM", value_name = "URL")]
    upstream: http::Uri,
    /// Address of the proxy listener (HTTP/1.1 and h2c). `[::]` takes IPv4 and IPv6 clients
    /// (`0.0.0.0` on a host without IPv6).
    #[arg(
        long,
        env = "CORSAIR_LISTEN",
        value_name = "ADDR",
        default_value = "[::]:15380"
    )]
    listen: SocketAddr,
    /// Address of /healthz, /readyz, /metrics and /policy.
    #[arg(
        long,
        env = "CORSAIR_ADMIN",
        value_name = "ADDR",
        default_value = "[::]:15381"
    )]
    admin: SocketAddr,
    /// Start even if the policy file does not exist yet, or cannot be read or loaded. No origin
    /// is allowed until one loads, also when it is removed later (without this flag, the last
    /// good policy stays).
    #[arg(long, env = "CORSAIR_ALLOW_MISSING_POLICY")]
    allow_missing_policy: bool,
    /// Seconds a client has to send a request's headers (also the wait for a new connection's
    /// first bytes, and the keep-alive wait).
    #[arg(long, env = "CORSAIR_HEADER_READ_TIMEOUT", value_name = "SECONDS", default_value_t = 10.0, value_parser = timeout)]
    header_read_timeout: f64,
    /// Seconds to connect to the upstream before answering 504.
    #[arg(long, env = "CORSAIR_CONNECT_TIMEOUT", value_name = "SECONDS", default_value_t = 5.0, value_parser = timeout)]
    connect_timeout: f64,
    /// Seconds the upstream has to start its response before the client gets a 504; also how
    /// long it may send nothing in the middle of a response body before the response is cut
    /// short (a server-sent event stream needs heartbeats more often), and how long the rest of
    /// an upload that the upstream answered early may stall before it is given up.
    #[arg(long, env = "CORSAIR_UPSTREAM_TIMEOUT", value_name = "SECONDS", default_value_t = 60.0, value_parser = timeout)]
    upstream_timeout: f64,
    /// Seconds without a byte in either direction after which a client connection is closed,
    /// even with a request in flight (a response the client does not read, an upload it stopped
    /// sending). An HTTP/2 connection counts its streams' progress, not its bytes (PINGs do not
    /// keep it open), and an HTTP/2 stream that makes no progress for as long is reset.
    #[arg(long, env = "CORSAIR_IDLE_TIMEOUT", value_name = "SECONDS", default_value_t = 300.0, value_parser = timeout)]
    idle_timeout: f64,
    /// Limit on the total size of a request's headers, in bytes (431 beyond it; at least 8192).
    #[arg(
        long,
        env = "CORSAIR_MAX_HEADER_BYTES",
        value_name = "BYTES",
        default_value_t = 65536
    )]
    max_header_bytes: usize,
    /// Seconds the proxy keeps accepting after SIGTERM, reporting not ready, before it drains:
    /// for a sidecar stopped together with an application that keeps serving while Kubernetes
    /// stops sending it traffic (a preStop sleep). Per pod: annotation corsair.dev/shutdown-delay.
    #[arg(long, env = "CORSAIR_SHUTDOWN_DELAY", value_name = "SECONDS", default_value_t = 0.0, value_parser = seconds)]
    shutdown_delay: f64,
    /// Seconds in-flight requests get to finish after SIGTERM (and the shutdown delay).
    #[arg(long, env = "CORSAIR_DRAIN_TIMEOUT", value_name = "SECONDS", default_value_t = 25.0, value_parser = seconds)]
    drain_timeout: f64,
    /// Threads serving requests, each a single-threaded runtime with its own listener on the
    /// proxy port (SO_REUSEPORT). Default: 2, like other sidecars, to keep the footprint small
    /// next to the application, or fewer when the CPU affinity or quota allows fewer.
    #[arg(long, env = "CORSAIR_WORKER_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    #[command(flatten)]
    log: LogArgs,
}

/// A timeout: a positive, finite number of seconds. Zero would fail every request or
/// connection while the proxy reports ready.
fn timeout(text: &str) -> Result<f64, String> {
    let value = seconds(text)?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err(format!("{text:?} must be more than 0 seconds"))
    }
}

/// A non-negative, finite number of seconds.
fn seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if (0.0..=31_536_000.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{text:?} must be between 0 and 31536000 seconds"))
    }
}

/// The whole command line of the slim `corsair-proxy` binary: [`Args`] and nothing else.
#[derive(clap::Parser, Debug)]
#[command(
    name = "corsair-proxy",
    version,
    about = "The Corsair sidecar: enforce a policy file in front of one upstream, reloading it on change.",
    long_about = None
)]
pub struct Cli {
    #[command(flatten)]
    pub args: Args,
}

/// Why the sidecar could not run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Logging(#[from] LoggingError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

impl Args {
    /// The proxy configuration these flags describe.
    pub fn config(&self) -> ProxyConfig {
        let mut config = ProxyConfig::new(
            self.policy.clone(),
            self.upstream.clone(),
            self.listen,
            self.admin,
        );
        config.allow_missing_policy = self.allow_missing_policy;
        config.header_read_timeout = Duration::from_secs_f64(self.header_read_timeout);
        config.connect_timeout = Duration::from_secs_f64(self.connect_timeout);
        config.upstream_timeout = Duration::from_secs_f64(self.upstream_timeout);
        config.idle_timeout = Duration::from_secs_f64(self.idle_timeout);
        config.max_header_bytes = self.max_header_bytes;
        config.shutdown_delay = Duration::from_secs_f64(self.shutdown_delay);
        config.drain_timeout = Duration::from_secs_f64(self.drain_timeout);
        config.worker_threads = match self.worker_threads {
            Some(n) => usize::from(n),
            // Respects the CPU affinity and the cgroup CPU quota.
            None => std::thread::available_parallelism().map_or(1, |n| n.get().min(2)),
        };
        config
    }
}

/// Sets up logging, runs the proxy until SIGTERM or SIGINT, then drains it. A drain that ran
/// out of time is not an error: the stop was asked for, and the forced closes were logged.
pub fn run(args: Args) -> Result<(), CliError> {
    logging::init(&args.log)?;
    let config = args.config();
    // Requests are served by the proxy's own worker threads; this runtime runs the admin port,
    // the policy reloader and the shutdown.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .thread_name("corsair-proxy")
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async move {
        // Installed before the proxy announces itself, so an early SIGTERM still drains.
        let mut signals = ShutdownSignals::install()?;
        let proxy = Proxy::start(config).await?;
        signals.recv().await;
        let second = async move {
            signals.recv().await;
        };
        match proxy.shutdown_unless(second).await {
            Ok(()) | Err(ProxyError::DrainTimeout(_)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    })
}
