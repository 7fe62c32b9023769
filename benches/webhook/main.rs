//! Admission webhook load test: the release-built `corsair webhook` on a loopback port, and 64
//! clients, each on its own keep-alive HTTPS connection (HTTP/1.1, TLS 1.3), posting a real
//! Pod AdmissionReview as fast as the webhook answers. Prints reviews/s and p50/p99/p99.9.
//!
//! `cargo bench --bench webhook` (env: `WEBHOOK_BENCH_CLIENTS`, `WEBHOOK_BENCH_SECONDS`,
//! `WEBHOOK_BENCH_FIXTURE`). The load generator shares the machine with the webhook, so the
//! numbers are a lower bound of what the webhook alone can do.

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
    let body = Bytes::from(body);
    let (count, mut latencies, server_cpu) = runtime.block_on(async {
        let warmup = Duration::from_secs(2);
        let start = Instant::now() + warmup;
        let end = start + Duration::from_secs(seconds);
        let pid = child.id();
        let cpu = tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let before = cpu_seconds(pid);
            tokio::time::sleep_until(end.into()).await;
            cpu_seconds(pid) - before
        });
        let tasks: Vec<_> = (0..clients)
            .map(|_| tokio::spawn(client(tls.clone(), addr, body.clone(), start, end)))
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("client task"));
        }
        let cpu = cpu.await.expect("cpu task");
        (all.len(), all, cpu)
    });
    let elapsed = Duration::from_secs(seconds);
    let _ = child.kill();
    let _ = child.wait();

    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies.get(i).copied().unwrap_or_default()
    };
    let rate = count as f64 / elapsed.as_secs_f64();
    println!(
        "webhook /inject ({fixture}): {clients} clients, {seconds} s, keep-alive HTTPS (HTTP/1.1, TLS 1.3)"
    );
    println!(
        "  {count} reviews, {rate:.0} reviews/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(pct(0.999)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    let per_review = server_cpu / count.max(1) as f64;
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
