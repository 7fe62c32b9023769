//! A real HTTP/1.1 and h2c upstream on 127.0.0.1 that records what reached it, for the tests of
//! the proxy in-process and of the proxy binary: it can die, come back on its address and stall.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};

/// Chunk size of `/download`.
pub const CHUNK: usize = 1024 * 1024;

/// What the upstream saw of one request: its head, once the head arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target as received (origin form: path and query).
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Shared between a test and the upstream it runs, across restarts.
pub struct UpstreamState {
    seen: Mutex<Vec<Seen>>,
    requests: AtomicU64,
    /// While `true`, every request waits until it turns `false`.
    stalled: watch::Sender<bool>,
    /// Fired when `/upload` received its first body bytes.
    pub upload_started: Notify,
    /// Fired by the test when it received the first chunk of `/download`.
    pub download_acked: Notify,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    /// `true` stops the listener and drops every connection at once (the upstream "dies").
    stop: watch::Sender<bool>,
}

type UpBody = BoxBody<Bytes, Infallible>;

impl Upstream {
    /// Starts on a port of the OS's choice. Paths:
    /// - `/cors-star`: answers with its own permissive `Access-Control-*` headers and `Vary`;
    /// - `/slow?ms=N`: waits N ms before answering;
    /// - `/upload`: the body's length as the answer (400 when the body broke off), firing
    ///   `upload_started` at the first bytes;
    /// - `/download?chunks=N`: N chunks of [`CHUNK`] bytes, waiting for `download_acked` after
    ///   the first;
    /// - `/stream?chunks=N`: N chunks of 4 KiB, 2 ms apart;
    /// - `/ws…`: switches protocols and echoes bytes;
    /// - anything else: 200 `hello` with `Vary: Accept-Encoding` and `X-Upstream: yes`.
    ///
    /// # Panics
    ///
    /// When no port on 127.0.0.1 can be bound.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let state = Arc::new(UpstreamState {
            seen: Mutex::default(),
            requests: AtomicU64::new(0),
            stalled: watch::Sender::new(false),
            upload_started: Notify::new(),
            download_acked: Notify::new(),
        });
        Self::serve(listener, state)
    }

    /// Starts again on the address of a stopped upstream, keeping its state.
    ///
    /// # Panics
    ///
    /// When the address cannot be bound again within 5 s.
    pub async fn restart(&self) -> Upstream {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!("rebind upstream on {}: {err}", self.addr),
            }
        };
        Self::serve(listener, self.state.clone())
    }

    fn serve(listener: TcpListener, state: Arc<UpstreamState>) -> Upstream {
        let addr = listener.local_addr().expect("upstream address");
        let (stop, stopped) = watch::channel(false);
        let shared = state.clone();
        tokio::spawn(async move {
            let mut stop_accept = stopped.clone();
            loop {
                let accepted = tokio::select! {
                    _ = stop_accept.wait_for(|s| *s) => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let state = shared.clone();
                let mut stop_conn = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| route(state.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Upstream { addr, state, stop }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the listener and every connection, mid-request or not.
    pub fn kill(&self) {
        let _ = self.stop.send(true);
    }

    pub fn stall(&self, stalled: bool) {
        self.state.stalled.send_replace(stalled);
    }

    /// Every request whose head arrived, in order.
    ///
    /// # Panics
    ///
    /// When a route panicked while holding the record.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen").clone()
    }

    /// The last request whose head arrived.
    ///
    /// # Panics
    ///
    /// When none did.
    pub fn last(&self) -> Seen {
        let seen = self.state.seen.lock().expect("seen");
        seen.last()
            .cloned()
            .expect("the upstream received a request")
    }

    /// The target of every request whose head arrived, in order.
    pub fn paths(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .map(|seen| match seen.uri.parse::<http::Uri>() {
                Ok(uri) => uri
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), ToString::to_string),
                Err(_) => seen.uri,
            })
            .collect()
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }
}

fn full(body: impl Into<Bytes>) -> UpBody {
    Full::new(body.into()).boxed()
}

/// Chunks sent by a task, as a body.
struct Chunks(mpsc::Receiver<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

async fn route(
    state: Arc<UpstreamState>,
    mut req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    state.seen.lock().expect("seen").push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    state.requests.fetch_add(1, Ordering::Relaxed);
    let mut stalled = state.stalled.subscribe();
    let _ = stalled.wait_for(|s| !*s).await;
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
            let mut broken = false;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    broken = true;
                    break;
                };
                if let Some(data) = frame.data_ref() {
                    if total == 0 && !data.is_empty() {
                        state.upload_started.notify_one();
                    }
                    total += data.len();
                }
            }
            if broken {
                Response::builder().status(400).body(full("broken body"))
            } else {
                Response::builder().body(full(total.to_string()))
            }
        }
        "/download" => {
            let chunks = number("chunks");
            let (tx, rx) = mpsc::channel(2);
            let state = state.clone();
            tokio::spawn(async move {
                for i in 0..chunks {
                    if tx.send(Bytes::from(vec![b'x'; CHUNK])).await.is_err() {
                        return;
                    }
                    if i == 0 {
                        state.download_acked.notified().await;
                    }
                }
            });
            Response::builder().body(Chunks(rx).boxed())
        }
        "/stream" => {
            let chunks = number("chunks");
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for _ in 0..chunks {
                    if tx.send(Bytes::from(vec![b's'; 4096])).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
            Response::builder().body(Chunks(rx).boxed())
        }
        p if p.starts_with("/ws") => {
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

/// A raw upstream, for answers no HTTP server library would send (a body cut short, a reset):
/// on each connection it reads one request head, writes `answer` as it is, holds the
/// connection for `hold` without reading more, then closes it.
///
/// # Panics
///
/// When it cannot listen on 127.0.0.1.
pub async fn answers_each_connection(answer: impl AsRef<[u8]>, hold: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = Bytes::copy_from_slice(answer.as_ref());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                // Byte by byte, so that nothing after the head is read with it.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = stream.write_all(&answer).await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    addr
}
