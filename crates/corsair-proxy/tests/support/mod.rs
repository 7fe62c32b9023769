//! The recording upstream (`corsair_runtime::testing::upstream`), a proxy started in-process
//! in front of it, and small HTTP clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use corsair_proxy::{Proxy, ProxyConfig};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub use corsair_runtime::testing::upstream::Upstream;

/// A policy file in its own temporary directory.
pub struct PolicyFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// Wraps a spec (YAML, indented as top-level keys) into a whole manifest.
pub fn manifest(spec: &str, generation: i64) -> String {
    let mut out = format!(
        "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nmetadata:\n  name: test\n  generation: {generation}\nspec:\n"
    );
    for line in spec.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub fn policy_file(spec: &str) -> PolicyFile {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, manifest(spec, 1)).expect("write policy");
    PolicyFile { dir, path }
}

/// A proxy's defaults for `policy`, in front of whatever listens at `upstream`, on free ports.
pub fn config_at(policy: &Path, upstream: SocketAddr) -> ProxyConfig {
    ProxyConfig::new(
        policy.to_owned(),
        format!("http://{upstream}").parse().expect("valid URI"),
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
}

pub fn config(policy: &Path, upstream: &Upstream) -> ProxyConfig {
    let mut config = config_at(policy, upstream.addr);
    config.reload_poll_interval = Duration::from_millis(200);
    config.drain_timeout = Duration::from_secs(5);
    config
}

/// The upstream, a policy and a proxy in front of the upstream.
pub struct Harness {
    pub upstream: Upstream,
    pub policy: PolicyFile,
    pub proxy: Proxy,
}

pub async fn harness(spec: &str) -> Harness {
    harness_with(spec, |_| {}).await
}

pub async fn harness_with(spec: &str, adjust: impl FnOnce(&mut ProxyConfig)) -> Harness {
    let upstream = Upstream::start().await;
    let policy = policy_file(spec);
    let mut config = config(&policy.path, &upstream);
    adjust(&mut config);
    let proxy = Proxy::start(config).await.expect("proxy starts");
    Harness {
        upstream,
        policy,
        proxy,
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<BoxBody<Bytes, Infallible>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect to proxy");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http1 handshake");
        tokio::spawn(conn);
        Conn { sender }
    }

    pub async fn send(&mut self, req: Request<BoxBody<Bytes, Infallible>>) -> Response<Bytes> {
        self.sender.ready().await.expect("connection ready");
        let response = self.sender.send_request(req).await.expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Response::from_parts(parts, body)
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// A request builder with `Host: api.test` and an empty body.
pub fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.test")
}

pub fn empty() -> BoxBody<Bytes, Infallible> {
    Empty::new().boxed()
}

/// Sends one request on a fresh connection.
/// Reads whatever the proxy sends until it closes the connection (or 5 s pass).
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the proxy did not close the connection: {out:?}"
    );
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn send(addr: SocketAddr, req: http::request::Builder) -> Response<Bytes> {
    let mut conn = Conn::open(addr).await;
    conn.send(req.body(empty()).expect("valid request")).await
}

/// All values of a response header, as strings.
pub fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// The names of the `access-control-*` headers of a response, sorted.
pub fn cors_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers
        .keys()
        .map(|n| n.as_str().to_owned())
        .filter(|n| n.starts_with("access-control-"))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A GET to the admin port; returns status and body.
pub async fn admin(proxy: &Proxy, path: &str) -> (StatusCode, String) {
    let response = send(proxy.admin_addr(), request("GET", path)).await;
    (
        response.status(),
        String::from_utf8_lossy(response.body()).into_owned(),
    )
}

/// Why `/policy` says the policy file on disk was refused, if it does.
pub async fn policy_refused(proxy: &Proxy) -> Option<String> {
    let response = send(proxy.admin_addr(), request("GET", "/policy")).await;
    response
        .headers()
        .get("corsair-policy-file-refused")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The value of a metric line (`name{labels} value`) from `/metrics`, 0 when absent.
pub async fn metric(proxy: &Proxy, series: &str) -> f64 {
    let (_, body) = admin(proxy, "/metrics").await;
    body.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
