//! Admission webhook load test: the release-built `corsair webhook` on a loopback port, and 64
//! keep-alive HTTPS connections (HTTP/1.1, TLS 1.3) posting a real Pod AdmissionReview.
//!
//! Two modes:
//! - closed loop (default): each connection posts its next review as soon as the previous answer
//!   is read, so 64 reviews are always outstanding. Prints reviews/s and p50/p99/p99.9.
//! - open loop (`WEBHOOK_BENCH_RATE=5000`): reviews are due at a fixed offered rate, as an API
//!   server calls a webhook, spread round-robin over the connections. A dispatcher thread releases
//!   each review at its due time; latency is measured from that intended send time, so a review
//!   that waits behind a slow one on its connection counts its wait (no coordinated omission).
//!   Prints the achieved rate, p50/p99/p99.9, errors and reviews left unanswered.
//!
//! `cargo bench --bench webhook` (env: `WEBHOOK_BENCH_CLIENTS` connections, `WEBHOOK_BENCH_RATE`
//! reviews/s for the open loop, `WEBHOOK_BENCH_SECONDS`, `WEBHOOK_BENCH_FIXTURE`). The load
//! generator shares the machine with the webhook, so the numbers are a lower bound of what the
//! webhook alone can do.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; other harness flags are ignored too.
    let clients: usize = env_or("WEBHOOK_BENCH_CLIENTS", 64);
    let seconds: u64 = env_or("WEBHOOK_BENCH_SECONDS", 10);
    let fixture: String = env_or("WEBHOOK_BENCH_FIXTURE", "pod-named-port".to_owned());
    let body = std::fs::read(format!(
        "{}/tests/fixtures/admission/{fixture}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture exists");

    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).expect("write key");

    let mut child = Command::new(env!("CARGO_BIN_EXE_corsair"))
        .args(["webhook", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("corsair starts");
    let line = BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .next()
        .expect("address line")
        .expect("utf-8");
    let addr: SocketAddr = line
        .strip_prefix("webhook listening on https://")
        .expect("address line")
        .parse()
        .expect("address");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = TlsConnector::from(Arc::new(config));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let run = Run {
        tls,
        addr,
        body: Bytes::from(body),
        connections: clients,
        seconds,
        pid: child.id(),
        fixture,
    };
    let rate: f64 = env_or("WEBHOOK_BENCH_RATE", 0.0);
    if rate > 0.0 {
        runtime.block_on(open_loop(&run, rate));
    } else {
        runtime.block_on(closed_loop(&run));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What both modes need: where the webhook is, how to reach it, what to post, for how long.
struct Run {
    tls: TlsConnector,
    addr: SocketAddr,
    body: Bytes,
    connections: usize,
    seconds: u64,
    pid: u32,
    fixture: String,
}

/// Warm-up before the measured window, in both modes.
const WARMUP: Duration = Duration::from_secs(2);

/// Closed loop: every connection posts its next review as soon as the previous answer is read.
async fn closed_loop(run: &Run) {
    let start = Instant::now() + WARMUP;
    let end = start + Duration::from_secs(run.seconds);
    let cpu = tokio::spawn(cpu_between(run.pid, start, end));
    let tasks: Vec<_> = (0..run.connections)
        .map(|_| {
            tokio::spawn(client(
                run.tls.clone(),
                run.addr,
                run.body.clone(),
                start,
                end,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let server_cpu = cpu.await.expect("cpu task");
    let count = latencies.len();
    let elapsed = Duration::from_secs(run.seconds);
    latencies.sort_unstable();
    let rate = count as f64 / elapsed.as_secs_f64();
    println!(
        "webhook /inject ({}): closed loop, {} clients, {} s, keep-alive HTTPS (HTTP/1.1, TLS 1.3)",
        run.fixture, run.connections, run.seconds
    );
    println!(
        "  {count} reviews, {rate:.0} reviews/s, {}",
        percentiles(&latencies)
    );
    print_cpu(server_cpu, count, elapsed);
}

/// One review sent in the open loop: when it was due, and how it ended.
struct Sent {
    due: Instant,
    outcome: Outcome,
}

enum Outcome {
    /// A 200 with a patch, read whole at `done`.
    Answered { done: Instant },
    /// A transport error, a non-200 answer or an answer without a patch.
    Failed(String),
    /// Still unanswered (or not yet sent) when the run's drain deadline passed.
    Unanswered,
}

/// How long the open loop waits after the measured window for answers still outstanding.
const DRAIN: Duration = Duration::from_secs(5);

/// Open loop at `rate` reviews/s over `run.connections` keep-alive connections.
async fn open_loop(run: &Run, rate: f64) {
    // Every connection is up before the schedule starts, so handshakes are not measured.
    let mut queues = Vec::with_capacity(run.connections);
    let mut connections = Vec::with_capacity(run.connections);
    for _ in 0..run.connections {
        let sender = match connect(&run.tls, run.addr).await {
            Ok(sender) => sender,
            Err(e) => panic!("cannot open a connection to the webhook: {e}"),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        queues.push(tx);
        connections.push((sender, rx));
    }
    let first = Instant::now();
    let start = first + WARMUP;
    let end = start + Duration::from_secs(run.seconds);
    let deadline = end + DRAIN;
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|(sender, rx)| {
            tokio::spawn(connection_task(
                run.tls.clone(),
                run.addr,
                run.body.clone(),
                sender,
                rx,
                deadline,
            ))
        })
        .collect();
    let cpu = tokio::spawn(cpu_between(run.pid, start, end));
    // A plain thread with `thread::sleep` keeps the schedule to tens of microseconds; tokio's
    // timer rounds every sleep up to the next millisecond, which would be counted as latency.
    let dispatcher = std::thread::spawn(move || dispatch(rate, first, start, end, queues));

    let mut sent = Vec::new();
    for task in tasks {
        sent.extend(task.await.expect("connection task"));
    }
    let mut lateness = dispatcher.join().expect("dispatcher thread");
    let server_cpu = cpu.await.expect("cpu task");

    let window = |t: Instant| t >= start && t < end;
    let achieved = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Answered { done } if window(done)))
        .count();
    let measured: Vec<&Sent> = sent.iter().filter(|s| window(s.due)).collect();
    let mut latencies: Vec<Duration> = measured
        .iter()
        .filter_map(|s| match s.outcome {
            Outcome::Answered { done } => Some(done - s.due),
            _ => None,
        })
        .collect();
    latencies.sort_unstable();
    let mut errors: Vec<&str> = measured
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Failed(e) => Some(e.as_str()),
            _ => None,
        })
        .collect();
    let unanswered = measured
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Unanswered))
        .count();
    lateness.sort_unstable();
    let p = |sorted: &[Duration], q: f64| ms(percentile(sorted, q));

    let elapsed = Duration::from_secs(run.seconds);
    println!(
        "webhook /inject ({}): open loop, {rate:.0} reviews/s offered over {} connections, {} s, keep-alive HTTPS (HTTP/1.1, TLS 1.3)",
        run.fixture, run.connections, run.seconds
    );
    println!(
        "  {} reviews due, {} answered; achieved {:.0} reviews/s; latency from the intended send time: {}",
        measured.len(),
        latencies.len(),
        achieved as f64 / elapsed.as_secs_f64(),
        percentiles(&latencies)
    );
    errors.sort_unstable();
    errors.dedup();
    println!(
        "  errors: {}, unanswered after {} s more: {unanswered}{}",
        measured.len() - latencies.len() - unanswered,
        DRAIN.as_secs(),
        if errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", errors.join("; "))
        }
    );
    println!(
        "  load generator kept its schedule: dispatch late by p99 {:.3} ms, max {:.3} ms",
        p(&lateness, 0.99),
        ms(lateness.last().copied().unwrap_or_default())
    );
    print_cpu(server_cpu, achieved, elapsed);
}

/// Releases review `i` at `first + i / rate` to connection `i % connections`, until `end`;
/// returns how late each release from `start` on was.
fn dispatch(
    rate: f64,
    first: Instant,
    start: Instant,
    end: Instant,
    queues: Vec<mpsc::UnboundedSender<Instant>>,
) -> Vec<Duration> {
    let mut lateness = Vec::new();
    for i in 0u64.. {
        let due = first + Duration::from_secs_f64(i as f64 / rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if due >= start {
            lateness.push(Instant::now().saturating_duration_since(due));
        }
        // A closed queue means its connection task ended; that review is simply not sent.
        let _ = queues[(i % queues.len() as u64) as usize].send(due);
    }
    lateness
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A connection task of the open loop: posts each due review in order on its keep-alive
/// connection (reconnecting after a transport error) until its queue closes; what is still
/// unanswered at `deadline` is given up.
async fn connection_task(
    tls: TlsConnector,
    addr: SocketAddr,
    body: Bytes,
    sender: Sender,
    mut due: mpsc::UnboundedReceiver<Instant>,
    deadline: Instant,
) -> Vec<Sent> {
    let mut sender = Some(sender);
    let mut sent = Vec::new();
    while let Some(at) = due.recv().await {
        let outcome = if Instant::now() >= deadline {
            Outcome::Unanswered
        } else {
            match tokio::time::timeout_at(deadline.into(), post(&tls, addr, &body, &mut sender))
                .await
            {
                Ok(Ok(())) => Outcome::Answered {
                    done: Instant::now(),
                },
                Ok(Err(e)) => Outcome::Failed(e),
                Err(_) => Outcome::Unanswered,
            }
        };
        sent.push(Sent { due: at, outcome });
    }
    sent
}

/// Posts one review on `sender`, opening a new connection first if there is none.
async fn post(
    tls: &TlsConnector,
    addr: SocketAddr,
    body: &Bytes,
    sender: &mut Option<Sender>,
) -> Result<(), String> {
    let conn = match sender {
        Some(conn) => conn,
        None => sender.insert(connect(tls, addr).await?),
    };
    let req = Request::post("/inject")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .map_err(|e| format!("request: {e}"))?;
    let answer = async {
        let resp = conn.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    }
    .await;
    let (status, answer) = match answer {
        Ok(answer) => answer,
        Err(e) => {
            *sender = None;
            return Err(format!("transport: {e}"));
        }
    };
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    if !answer.windows(7).any(|w| w == b"\"patch\"") {
        return Err("answer without a patch".to_owned());
    }
    Ok(())
}

/// Opens one keep-alive HTTPS connection (TLS 1.3, HTTP/1.1) to the webhook.
async fn connect(tls: &TlsConnector, addr: SocketAddr) -> Result<Sender, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let name = ServerName::try_from("localhost").map_err(|e| format!("name: {e}"))?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The `q` quantile of sorted latencies (nearest rank).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted.get(i).copied().unwrap_or_default()
}

fn percentiles(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.99)),
        ms(percentile(sorted, 0.999)),
        ms(sorted.last().copied().unwrap_or_default())
    )
}

/// CPU seconds the webhook process used between `start` and `end`.
async fn cpu_between(pid: u32, start: Instant, end: Instant) -> f64 {
    tokio::time::sleep_until(start.into()).await;
    let before = cpu_seconds(pid);
    tokio::time::sleep_until(end.into()).await;
    cpu_seconds(pid) - before
}

fn print_cpu(server_cpu: f64, answered: usize, elapsed: Duration) {
    let per_review = server_cpu / answered.max(1) as f64;
    println!(
        "  webhook CPU: {:.1} µs per review ({:.2} cores busy); at that cost 2 idle cores would serve {:.0} reviews/s",
        per_review * 1e6,
        server_cpu / elapsed.as_secs_f64(),
        2.0 / per_review
    );
}

/// User + system CPU seconds used so far by process `pid` (Linux `/proc`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    ticks as f64 / hz
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One keep-alive connection posting reviews back to back; latencies of those sent in [start, end).
async fn client(
    tls: TlsConnector,
    addr: SocketAddr,
    body: Bytes,
    start: Instant,
    end: Instant,
) -> Vec<Duration> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let stream = tls
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut latencies = Vec::new();
    loop {
        let sent = Instant::now();
        if sent >= end {
            return latencies;
        }
        let req = Request::post("/inject")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        let answer = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(
            answer.windows(7).any(|w| w == b"\"patch\""),
            "the pod was patched"
        );
        if sent >= start {
            latencies.push(sent.elapsed());
        }
    }
}
