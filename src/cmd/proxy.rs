//! `corsair proxy`: the sidecar. Enforces a policy file in front of one upstream until
//! SIGTERM or SIGINT, then drains in-flight requests and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use corsair_proxy::{Proxy, ProxyConfig, ProxyError};
use tokio::signal::unix::{SignalKind, signal};

use crate::logging::{self, LogArgs};

/// `corsair proxy --policy FILE --upstream URL [--listen ADDR] [--admin ADDR]`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The policy file: a CorsPolicy manifest (YAML) or the JSON the controller renders.
    /// Reloaded when it changes.
    #[arg(long, env = "CORSAIR_POLICY", value_name = "FILE")]
    policy: PathBuf,
    /// The application, `http://host:port`. Every request goes there, whatever its Host says.
    #[arg(long, env = "CORSAIR_UPSTREAM", value_name = "URL")]
    upstream: http::Uri,
    /// Address of the proxy listener (HTTP/1.1 and h2c).
    #[arg(
        long,
        env = "CORSAIR_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:15380"
    )]
    listen: SocketAddr,
    /// Address of /healthz, /readyz, /metrics and /policy.
    #[arg(
        long,
        env = "CORSAIR_ADMIN",
        value_name = "ADDR",
        default_value = "0.0.0.0:15381"
    )]
    admin: SocketAddr,
    /// Start even if the policy file does not exist yet; until it appears no origin is allowed.
    #[arg(long, env = "CORSAIR_ALLOW_MISSING_POLICY")]
    allow_missing_policy: bool,
    /// Seconds a client has to send a request's headers (also the wait for a new connection's
    /// first bytes, and the keep-alive wait).
    #[arg(long, env = "CORSAIR_HEADER_READ_TIMEOUT", value_name = "SECONDS", default_value_t = 10.0, value_parser = seconds)]
    header_read_timeout: f64,
    /// Seconds to connect to the upstream before answering 504.
    #[arg(long, env = "CORSAIR_CONNECT_TIMEOUT", value_name = "SECONDS", default_value_t = 5.0, value_parser = seconds)]
    connect_timeout: f64,
    /// Seconds the upstream has to start its response before the client gets a 504.
    #[arg(long, env = "CORSAIR_UPSTREAM_TIMEOUT", value_name = "SECONDS", default_value_t = 60.0, value_parser = seconds)]
    upstream_timeout: f64,
    /// Seconds without a byte in either direction after which a client connection is closed.
    #[arg(long, env = "CORSAIR_IDLE_TIMEOUT", value_name = "SECONDS", default_value_t = 300.0, value_parser = seconds)]
    idle_timeout: f64,
    /// Limit on the total size of a request's headers, in bytes (431 beyond it; at least 8192).
    #[arg(
        long,
        env = "CORSAIR_MAX_HEADER_BYTES",
        value_name = "BYTES",
        default_value_t = 65536
    )]
    max_header_bytes: usize,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "CORSAIR_DRAIN_TIMEOUT", value_name = "SECONDS", default_value_t = 25.0, value_parser = seconds)]
    drain_timeout: f64,
    /// Threads serving requests. Default: 2, like other sidecars, to keep the footprint small
    /// next to the application, or fewer when the CPU affinity or quota allows fewer.
    #[arg(long, env = "CORSAIR_WORKER_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    #[command(flatten)]
    log: LogArgs,
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

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    logging::init(&args.log)?;
    let mut config = ProxyConfig::new(args.policy, args.upstream, args.listen, args.admin);
    config.allow_missing_policy = args.allow_missing_policy;
    config.header_read_timeout = Duration::from_secs_f64(args.header_read_timeout);
    config.connect_timeout = Duration::from_secs_f64(args.connect_timeout);
    config.upstream_timeout = Duration::from_secs_f64(args.upstream_timeout);
    config.idle_timeout = Duration::from_secs_f64(args.idle_timeout);
    config.max_header_bytes = args.max_header_bytes;
    config.drain_timeout = Duration::from_secs_f64(args.drain_timeout);

    let worker_threads = match args.worker_threads {
        Some(n) => usize::from(n),
        // Respects the CPU affinity and the cgroup CPU quota.
        None => std::thread::available_parallelism().map_or(1, |n| n.get().min(2)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .thread_name("corsair-proxy")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Installed before the proxy announces itself, so an early SIGTERM still drains.
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        let proxy = Proxy::start(config).await?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        match proxy.shutdown().await {
            Ok(()) => {}
            // Requested shutdown completed; the forced closes were logged.
            Err(ProxyError::DrainTimeout(_)) => {}
            Err(err) => return Err(err.into()),
        }
        Ok(ExitCode::SUCCESS)
    })
}
