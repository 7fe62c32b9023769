//! A real upstream on 127.0.0.1:0 that records what it received, a proxy started in-process
//! in front of it, and small HTTP clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corsair_proxy::{Proxy, ProxyConfig};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify, mpsc};

/// Chunk size of the streaming tests.
pub const CHUNK: usize = 1024 * 1024;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Shared between the test and the upstream it runs.
#[derive(Default)]
pub struct UpstreamState {
    pub seen: Mutex<Vec<Seen>>,
    /// Fired when `/upload` received its first body bytes.
    pub upload_started: Notify,
    /// Fired by the test when it received the first chunk of `/download`.
    pub download_acked: Notify,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
}

impl Upstream {
    pub fn uri(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().expect("valid URI")
    }

    pub async fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().await.clone()
    }

    pub async fn last(&self) -> Seen {
        self.state
            .seen
            .lock()
            .await
            .last()
            .cloned()
            .expect("the upstream received a request")
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> UpBody {
    Full::new(body.into()).boxed()
}

/// Starts the recording upstream. Paths:
/// - `/cors-star`: answers with its own permissive `Access-Control-*` headers and `Vary`;
/// - `/slow?ms=N`: waits N ms before answering;
/// - `/upload`: counts the body, firing `upload_started` at the first bytes;
/// - `/download?chunks=N`: streams N chunks of [`CHUNK`] bytes, waiting for `download_acked`
///   after the first;
/// - `/ws`: switches protocols and echoes bytes;
/// - anything else: 200 `hello` with `Vary: Accept-Encoding`.
pub async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    let state = Arc::new(UpstreamState::default());
    let shared = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| upstream_route(state.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream { addr, state }
}

async fn upstream_route(
    state: Arc<UpstreamState>,
    mut req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    state.seen.lock().await.push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let query = req.uri().query().unwrap_or("").to_owned();
    let number = |key: &str| -> u64 {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let response = match req.uri().path() {
        "/cors-star" => Response::builder()
            .header("access-control-allow-origin", "*")
            .header("access-control-allow-credentials", "true")
            .header("access-control-expose-headers", "x-secret")
            .header("vary", "Accept-Encoding")
            .body(full("star")),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(number("ms"))).await;
            Response::builder().body(full("slow"))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    if total == 0 && !data.is_empty() {
                        state.upload_started.notify_one();
                    }
                    total += data.len();
                }
            }
            Response::builder().body(full(total.to_string()))
        }
        "/download" => {
            let chunks = number("chunks");
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            let state = state.clone();
            tokio::spawn(async move {
                for i in 0..chunks {
                    if tx
                        .send(Ok(Frame::data(Bytes::from(vec![b'x'; CHUNK]))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if i == 0 {
                        state.download_acked.notified().await;
                    }
                }
            });
            let stream = tokio_stream(rx);
            Response::builder().body(StreamBody::new(stream).boxed())
        }
        "/ws" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(full(Bytes::new()))
        }
        _ => Response::builder()
            .header("vary", "Accept-Encoding")
            .header("x-upstream", "yes")
            .body(full("hello")),
    };
    Ok(response.expect("valid response"))
}

/// An mpsc receiver as a `Stream` without pulling in tokio-stream.
fn tokio_stream<T>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

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
    let upstream = upstream().await;
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
