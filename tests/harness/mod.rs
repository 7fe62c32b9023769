//! Shared by the hostile-traffic, fault and soak tests of `corsair proxy` (their upstream is
//! `corsair_runtime::testing::upstream`, which can die, come back and stall): the proxy binary as a child process (optionally with a lowered
//! file-descriptor limit); a prober that measures well-formed requests while something else is
//! going on; and a well-formed h2c client.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod load;

pub const ALLOWED: &str = "https://app.example.com";

// ---------------------------------------------------------------------------------------------
// The proxy binary

/// A running `corsair proxy`, killed when dropped.
pub struct ProxyProcess {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Every stderr line after the start-up line.
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ProxyProcess {
    /// Starts the binary on ports of the OS's choice; `nofile` lowers its file-descriptor
    /// limit (soft and hard) with `prlimit` before it runs.
    ///
    /// The binary is `corsair proxy`, or the `corsair-proxy` binary at `CORSAIR_PROXY_BIN` when
    /// that is set: `make pgo-test` runs these suites against the profile-guided build that the
    /// sidecar image ships.
    pub fn start(
        policy: &Path,
        upstream: &str,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> ProxyProcess {
        let sidecar = std::env::var_os("CORSAIR_PROXY_BIN");
        let bin = sidecar
            .clone()
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_corsair").into());
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        if sidecar.is_none() {
            command.arg("proxy");
        }
        command
            .arg("--policy")
            .arg(policy)
            .args(["--upstream", upstream])
            .args(extra)
            .env("CORSAIR_LOG", "info");
        ProxyProcess::spawn(&mut command)
    }

    /// Starts `command`, a `corsair proxy` invocation without listen, admin and log-format
    /// flags, on ports of the OS's choice, and reads them from its JSON start-up log line. Every
    /// line before that one must be JSON too.
    pub fn spawn(command: &mut Command) -> ProxyProcess {
        let child = command
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corsair proxy (and prlimit from util-linux)");
        // Owned by the guard at once, so that a failed assertion below still reaps the child.
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut running = ProxyProcess {
            child,
            listen: unknown,
            admin: unknown,
            logs: Arc::default(),
        };
        let stderr = running.child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("a start-up log line within 30 s");
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                panic!("log line is not JSON: {line}");
            };
            if json["message"] == "proxy started" {
                let addr = |field: &str| -> SocketAddr {
                    json[field]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(|| panic!("{field} in {line}"))
                };
                running.listen = addr("listen");
                running.admin = addr("admin");
                // Keep draining stderr so the child never blocks on a full pipe.
                let logs = running.logs.clone();
                std::thread::spawn(move || {
                    while let Ok(line) = rx.recv() {
                        if let Ok(mut logs) = logs.lock() {
                            logs.push(line);
                        }
                    }
                });
                return running;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {status}"))
    }

    /// Open file descriptors (entries of /proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(Iterator::count)
            .expect("/proc/PID/fd")
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("the `kill` command (procps)");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit; `None` if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_count(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// A policy manifest with `allowOrigins: [origin]`, `exposeHeaders: [tag]` and the given extra
/// spec lines (indented as top-level spec keys).
pub fn policy(origin: &str, tag: &str, extra: &str) -> String {
    let mut out = format!(
        "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nmetadata:\n  name: hostile\n  generation: 1\nspec:\n  allowOrigins: [\"{origin}\"]\n  exposeHeaders: [\"{tag}\"]\n"
    );
    for line in extra.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Well-formed clients

pub type ReqBody = BoxBody<Bytes, Infallible>;

pub fn empty() -> ReqBody {
    Empty::new().boxed()
}

/// A keep-alive HTTP/1.1 client connection.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<ReqBody>,
}

impl H1 {
    pub async fn open(addr: SocketAddr) -> std::io::Result<H1> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn.with_upgrades());
        Ok(H1 { sender })
    }

    /// Sends and reads the whole response.
    pub async fn send(&mut self, req: Request<ReqBody>) -> Result<Response<Bytes>, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Response::from_parts(parts, body))
    }

    pub async fn send_raw(&mut self, req: Request<ReqBody>) -> Result<Response<Incoming>, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        self.sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// A GET with `Host: api.test` and the allowed origin.
pub fn get(path: &str) -> Request<ReqBody> {
    Request::builder()
        .uri(path)
        .header("host", "api.test")
        .header("origin", ALLOWED)
        .body(empty())
        .expect("valid request")
}

pub fn header<'a>(response: &'a Response<Bytes>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Latencies of the well-formed requests a [`Probe`] sent, and what went wrong.
#[derive(Debug, Default, Clone)]
pub struct ProbeStats {
    pub latencies: Vec<Duration>,
    /// One line per request that did not get a 200 with the allowed origin echoed.
    pub failures: Vec<String>,
}

impl ProbeStats {
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[index.min(sorted.len() - 1)]
    }

    pub fn summary(&self) -> String {
        format!(
            "{} ok, {} failed, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latencies.len(),
            self.failures.len(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0)),
        )
    }

    /// Every probe succeeded, there were some, and none took longer than `max`.
    pub fn assert_healthy(&self, case: &str, max: Duration) {
        assert!(
            self.failures.is_empty(),
            "{case}: well-formed requests failed during the attack: {:?}",
            self.failures
        );
        assert!(
            self.latencies.len() >= 3,
            "{case}: too few probes ({})",
            self.latencies.len()
        );
        assert!(
            self.quantile(1.0) < max,
            "{case}: a well-formed request took {:?} (limit {max:?}): {}",
            self.quantile(1.0),
            self.summary()
        );
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Well-formed requests, one every 20 ms, on a keep-alive connection opened before the attack
/// (reopened after a failure), each with a 5 s limit.
pub struct Probe {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<ProbeStats>,
}

impl Probe {
    pub async fn start(addr: SocketAddr) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let mut conn = H1::open(addr).await.expect("probe connects");
        // Warm the connection (and the proxy's upstream pool) before measuring.
        conn.send(get("/probe")).await.expect("first probe");
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut stats = ProbeStats::default();
            let mut conn = Some(conn);
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let outcome = async {
                    if conn.as_ref().is_none_or(H1::is_closed) {
                        conn = Some(H1::open(addr).await.map_err(|e| e.to_string())?);
                    }
                    let c = conn.as_mut().ok_or("no connection")?;
                    c.send(get("/probe")).await
                };
                match tokio::time::timeout(Duration::from_secs(5), outcome).await {
                    Ok(Ok(response))
                        if response.status() == 200
                            && header(&response, "access-control-allow-origin")
                                == Some(ALLOWED) =>
                    {
                        stats.latencies.push(started.elapsed());
                    }
                    Ok(Ok(response)) => {
                        stats.failures.push(format!("status {}", response.status()));
                    }
                    Ok(Err(err)) => {
                        stats.failures.push(err);
                        conn = None;
                    }
                    Err(_) => {
                        stats.failures.push("no answer within 5 s".to_owned());
                        conn = None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stats
        });
        Probe { stop, task }
    }

    pub async fn finish(self) -> ProbeStats {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("probe task")
    }
}

// ---------------------------------------------------------------------------------------------
// Raw bytes

/// What came back on a raw connection.
#[derive(Debug)]
pub struct Exchange {
    pub answer: Vec<u8>,
    /// From the end of the write to the first byte of the answer (or the close).
    pub first_byte: Duration,
    /// The proxy closed the connection within the wait.
    pub closed: bool,
}

impl Exchange {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.answer).into_owned()
    }

    /// Status codes of every HTTP/1.1 response in the answer.
    pub fn statuses(&self) -> Vec<u16> {
        self.text()
            .match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| self.text().get(i + 9..i + 12)?.parse().ok())
            .collect()
    }
}

/// Writes `bytes` (a write error is fine: the proxy may stop reading), then reads until the
/// proxy closes or `wait` passes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(bytes).await;
    read_answer(&mut stream, wait).await
}

pub async fn read_answer(stream: &mut TcpStream, wait: Duration) -> Exchange {
    let written = Instant::now();
    let deadline = written + wait;
    let mut answer = Vec::new();
    let mut first_byte = None;
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                first_byte.get_or_insert_with(|| written.elapsed());
                answer.extend_from_slice(&buf[..n]);
            }
        }
    };
    Exchange {
        answer,
        first_byte: first_byte.unwrap_or_else(|| written.elapsed()),
        closed,
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 (frames by hand: `corsair_runtime::testing::h2`, shared with the proxy crate's tests)

/// A well-formed h2c (prior knowledge) client connection.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<ReqBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}
