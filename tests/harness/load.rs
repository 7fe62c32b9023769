//! A load generator that counts every request it sends and every answer it gets, by phase,
//! kind and outcome, and checks which policy answered (each policy exposes its own
//! `x-policy-N` header, so `Access-Control-Expose-Headers` names the policy in force).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ALLOWED, H1, ReqBody, empty};

/// The outcome of a request not sent because the proxy was closing its connection.
pub const NOT_SENT: &str = "not sent: connection closing";

/// What one worker sends, over and over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `GET /load` from the allowed origin over HTTP/1.1 keep-alive.
    Simple,
    /// The same over one h2c connection.
    H2,
    /// A preflight from the allowed origin (answered by the proxy).
    Preflight,
    /// `GET /load` from an origin the policy does not allow (forwarded without CORS headers).
    Denied,
    /// `GET /stream?chunks=16`: 64 KiB streamed by the upstream in 16 chunks.
    Stream,
    /// A WebSocket upgrade, 16 echoed messages, then a close.
    WebSocket,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Simple => "simple",
            Kind::H2 => "h2c",
            Kind::Preflight => "preflight",
            Kind::Denied => "denied",
            Kind::Stream => "stream",
            Kind::WebSocket => "websocket",
        }
    }
}

/// `(phase, kind, outcome) -> count`, counted in the phase in which the answer arrived. An outcome is `200 x-policy-1`, `502 x-policy-1`,
/// `no connection` (connect refused), `no answer: …` (a request written, then no response),
/// or `timeout` (no answer within 10 s).
pub type Counts = BTreeMap<(usize, &'static str, String), u64>;

struct Shared {
    addr: SocketAddr,
    phase: AtomicUsize,
    stop: AtomicBool,
    counts: Mutex<Counts>,
    /// Tags in the order the policies are applied; a worker that sees an earlier tag after a
    /// later one has been answered with a policy other than the last good one.
    order: Vec<String>,
    regressions: Mutex<Vec<String>>,
    sent: AtomicUsize,
    /// Each worker waits this long between two requests.
    pause: Duration,
}

pub struct Load {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// One task per entry of `workers`, each sending its kind of request in a loop, 5 ms apart.
    pub fn start(addr: SocketAddr, workers: &[Kind], order: &[&str]) -> Load {
        Self::start_with_pause(addr, workers, order, Duration::from_millis(5))
    }

    pub fn start_with_pause(
        addr: SocketAddr,
        workers: &[Kind],
        order: &[&str],
        pause: Duration,
    ) -> Load {
        let shared = Arc::new(Shared {
            addr,
            phase: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            counts: Mutex::default(),
            order: order.iter().map(|s| (*s).to_owned()).collect(),
            regressions: Mutex::default(),
            sent: AtomicUsize::new(0),
            pause,
        });
        let tasks = workers
            .iter()
            .enumerate()
            .map(|(id, kind)| tokio::spawn(worker(shared.clone(), id, *kind)))
            .collect();
        Load { shared, tasks }
    }

    /// Answers from now on are counted under `phase`.
    pub fn phase(&self, phase: usize) {
        self.shared.phase.store(phase, Ordering::Relaxed);
    }

    pub fn sent(&self) -> usize {
        self.shared.sent.load(Ordering::Relaxed)
    }

    pub fn counts(&self) -> Counts {
        self.shared.counts.lock().expect("counts").clone()
    }

    /// Stops the workers after their current request and returns the counts.
    pub async fn finish(self) -> (Counts, Vec<String>) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load worker");
        }
        let counts = self.shared.counts.lock().expect("counts").clone();
        let regressions = self.shared.regressions.lock().expect("regressions").clone();
        (counts, regressions)
    }
}

impl Shared {
    fn record(&self, phase: usize, kind: Kind, outcome: String) {
        *self
            .counts
            .lock()
            .expect("counts")
            .entry((phase, kind.name(), outcome))
            .or_default() += 1;
    }
}

/// A connection of the kind a worker uses.
enum Conn {
    H1(H1),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

async fn connect(addr: SocketAddr, kind: Kind) -> std::io::Result<Conn> {
    if kind == Kind::H2 {
        let stream = TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Conn::H2(sender))
    } else {
        Ok(Conn::H1(H1::open(addr).await?))
    }
}

fn request(kind: Kind) -> Request<ReqBody> {
    let builder = Request::builder().header("host", "api.test");
    let builder = match kind {
        Kind::Simple => builder.uri("/load").header("origin", ALLOWED),
        Kind::H2 => builder
            .uri("http://api.test/load")
            .header("origin", ALLOWED),
        Kind::Preflight => builder
            .method("OPTIONS")
            .uri("/load")
            .header("origin", ALLOWED)
            .header("access-control-request-method", "GET"),
        Kind::Denied => builder
            .uri("/load")
            .header("origin", "https://evil.example.net"),
        Kind::Stream => builder.uri("/stream?chunks=16").header("origin", ALLOWED),
        Kind::WebSocket => unreachable!("WebSocket requests are written by hand"),
    };
    builder.body(empty()).expect("valid request")
}

async fn worker(shared: Arc<Shared>, id: usize, kind: Kind) {
    let mut conn: Option<Conn> = None;
    let mut last_rank: Option<usize> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let phase = shared.phase.load(Ordering::Relaxed);
        if kind == Kind::WebSocket {
            let outcome = websocket(shared.addr).await;
            let phase = shared.phase.load(Ordering::Relaxed);
            if outcome != "no connection" {
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
            shared.record(phase, kind, outcome);
            tokio::time::sleep(shared.pause.max(Duration::from_millis(20))).await;
            continue;
        }
        let closed = match &conn {
            None => true,
            Some(Conn::H1(c)) => c.is_closed(),
            Some(Conn::H2(c)) => c.is_closed(),
        };
        if closed {
            match connect(shared.addr, kind).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    shared.record(phase, kind, "no connection".to_owned());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let sent = &shared.sent;
        let exchange = async {
            // A connection the proxy is closing is not used: nothing is sent on it.
            let response = match c {
                Conn::H1(h1) => {
                    h1.sender.ready().await.map_err(|_| NOT_SENT.to_owned())?;
                    sent.fetch_add(1, Ordering::Relaxed);
                    h1.sender
                        .send_request(request(kind))
                        .await
                        .map_err(|e| e.to_string())?
                }
                Conn::H2(h2) => {
                    h2.ready().await.map_err(|_| NOT_SENT.to_owned())?;
                    sent.fetch_add(1, Ordering::Relaxed);
                    h2.send_request(request(kind))
                        .await
                        .map_err(|e| e.to_string())?
                }
            };
            let status = response.status().as_u16();
            let tag = response
                .headers()
                .get("access-control-expose-headers")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let acao = response
                .headers()
                .get("access-control-allow-origin")
                .is_some();
            // A body cut off after the head was sent is reported as such (the client sees the
            // error: a chunked body without its last chunk, or a reset stream).
            let len = match response.into_body().collect().await {
                Ok(body) => Some(body.to_bytes().len()),
                Err(_) => None,
            };
            Ok::<_, String>((status, tag, acao, len))
        };
        let outcome = match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Ok(Ok((status, tag, acao, len))) => {
                if let Some(rank) = shared.order.iter().position(|t| *t == tag) {
                    if last_rank.is_some_and(|last| rank < last) {
                        shared
                            .regressions
                            .lock()
                            .expect("regressions")
                            .push(format!(
                                "worker {id} ({}) got {tag} after {} in phase {phase}",
                                kind.name(),
                                shared.order[last_rank.unwrap_or(0)]
                            ));
                    }
                    last_rank = Some(rank);
                }
                let mut outcome = format!("{status} {tag}");
                if kind == Kind::Denied && acao {
                    outcome.push_str(" WITH CORS HEADERS");
                }
                match len {
                    None => outcome.push_str(" body cut off"),
                    Some(len) if kind == Kind::Stream && status == 200 && len != 16 * 4096 => {
                        outcome.push_str(&format!(" SHORT BODY {len}"));
                    }
                    Some(_) => {}
                }
                outcome
            }
            Ok(Err(err)) if err == NOT_SENT => {
                conn = None;
                err
            }
            Ok(Err(err)) => {
                conn = None;
                format!("no answer: {}", short(&err))
            }
            Err(_) => {
                conn = None;
                "timeout".to_owned()
            }
        };
        // Counted under the phase in which the answer arrived.
        let phase = shared.phase.load(Ordering::Relaxed);
        shared.record(phase, kind, outcome);
        tokio::time::sleep(shared.pause).await;
    }
}

/// The part of a hyper error message that names the cause.
fn short(err: &str) -> String {
    let err = err.to_ascii_lowercase();
    if err.contains("incomplete") || err.contains("closed before") {
        "connection closed before the answer".to_owned()
    } else if err.contains("reset") {
        "connection reset".to_owned()
    } else {
        err.chars().take(60).collect()
    }
}

/// One WebSocket session: upgrade, 16 messages echoed, close. The outcome is `101 tag`
/// (everything echoed), the status of a refusal, or what broke.
async fn websocket(addr: SocketAddr) -> String {
    let session = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|_| "no connection".to_owned())?;
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {ALLOWED}\r\n\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("no answer: {e}"))?;
            if n == 0 {
                return Err("no answer: closed".to_owned());
            }
            response.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
        let status = text.get(9..12).unwrap_or("???").to_owned();
        let tag = text
            .lines()
            .find_map(|l| l.strip_prefix("access-control-expose-headers: "))
            .unwrap_or("-")
            .trim()
            .to_owned();
        if status != "101" {
            return Ok(format!("{status} {tag}"));
        }
        for i in 0..16u8 {
            let message = [b'm', i];
            stream
                .write_all(&message)
                .await
                .map_err(|e| format!("tunnel broke: {e}"))?;
            let mut echo = [0u8; 2];
            stream
                .read_exact(&mut echo)
                .await
                .map_err(|e| format!("tunnel broke: {e}"))?;
            if echo != message {
                return Err("tunnel garbled".to_owned());
            }
        }
        Ok(format!("101 {tag}"))
    };
    match tokio::time::timeout(Duration::from_secs(10), session).await {
        Ok(Ok(outcome)) | Ok(Err(outcome)) => outcome,
        Err(_) => "timeout".to_owned(),
    }
}

/// The counts as a table, one row per phase, kind and outcome.
pub fn table(counts: &Counts, phases: &[&str]) -> String {
    let mut out = String::from("| phase | kind | outcome | count |\n|---|---|---|---:|\n");
    for ((phase, kind, outcome), n) in counts {
        let name = phases.get(*phase).copied().unwrap_or("?");
        out.push_str(&format!("| {name} | {kind} | {outcome} | {n} |\n"));
    }
    out
}
