//! The one upstream: the connections to it, and what their failures mean for the client.
//!
//! The sidecar talks to exactly one application on loopback, so a general pool (keyed by host,
//! shared by every worker behind a lock) buys nothing. Each client connection keeps its own
//! upstream HTTP/1.1 connections in a [`Lane`]: an HTTP/1 client sends one request at a time,
//! so its lane holds one connection, reused with no checkout beyond a look at its socket; an
//! h2c client's concurrent streams each take an idle connection or open one. The exchange
//! itself ([`http1`]) runs in the client connection's task. An upstream that waits for
//! acknowledgements (Nagle's algorithm) gets them at once (see [`QuickAck`]).

mod http1;

use std::error::Error as StdError;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::server::Activity;
use crate::{ProxyConfig, ProxyError};
pub(crate) use http1::Switched;
pub use http1::{ClientFlush, UpstreamBody};
use http1::{Connection, Outgoing, RequestFraming, Sent, Upload};

/// A response head from the upstream this large or larger is a 502: hyper's client limit
/// (8 KiB and 100 reads of 4 KiB), kept when the hop became our own.
const MAX_RESPONSE_HEAD: usize = 8192 + 4096 * 100;

/// Where requests go, and how to connect there.
#[derive(Debug)]
pub struct Upstream {
    address: Address,
    connect_timeout: Duration,
    /// The upstream timeout: how long a response body or the rest of an early-answered upload
    /// may make no progress (it bounds the whole of every other upload, and the response head).
    timeout: Duration,
    /// Learned: the upstream holds back part of a response until it is acknowledged.
    nagles: Arc<AtomicBool>,
    /// The rest of an early-answered upload is sent on a task of its own, tracked here so that
    /// a drain waits for it, and stopped at the drain deadline.
    tasks: TaskTracker,
    abort: CancellationToken,
}

/// The upstream's address.
#[derive(Debug)]
enum Address {
    /// `host:port` as given, the port defaulted to 80; a name is looked up at each connect.
    Given(String),
    /// `localhost`: the loopback of either family, with no name lookup (RFC 6761), because an
    /// application may listen on one only (nginx's `listen [::]:8080` alone takes no IPv4).
    /// The family that answered last is tried first.
    Loopback {
        v4: SocketAddr,
        v6: SocketAddr,
        v6_first: AtomicBool,
    },
}

impl Address {
    fn of(authority: &Authority) -> Address {
        let port = authority.port_u16().unwrap_or(80);
        if authority.host().eq_ignore_ascii_case("localhost") {
            return Address::Loopback {
                v4: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                v6: SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
                v6_first: AtomicBool::new(false),
            };
        }
        Address::Given(format!("{}:{port}", authority.host()))
    }

    async fn connect(&self) -> io::Result<TcpStream> {
        let (v4, v6, v6_first) = match self {
            Address::Given(address) => return TcpStream::connect(address.as_str()).await,
            Address::Loopback { v4, v6, v6_first } => (v4, v6, v6_first),
        };
        let was_v6 = v6_first.load(Ordering::Relaxed);
        let (first, second) = if was_v6 { (v6, v4) } else { (v4, v6) };
        match TcpStream::connect(first).await {
            Ok(stream) => Ok(stream),
            Err(first_error) => match TcpStream::connect(second).await {
                Ok(stream) => {
                    v6_first.store(!was_v6, Ordering::Relaxed);
                    Ok(stream)
                }
                // The usual family's error says more (the other may simply be absent).
                Err(_) => Err(first_error),
            },
        }
    }
}

/// Idle upstream connections a client connection keeps. An HTTP/1.1 client needs one; an h2c
/// client's burst of concurrent streams opens one each, and beyond this many they are closed
/// as they finish rather than held, idle, until the client leaves (h2c allows 200 streams).
const MAX_IDLE: usize = 16;

/// The idle upstream connections of one client connection. The last clone dropped closes them.
#[derive(Clone, Default)]
pub struct Lane {
    idle: Arc<Mutex<Vec<Connection>>>,
}

/// Why the upstream could not produce a response, with the error behind it for the log.
#[derive(Debug)]
pub struct Failed {
    pub failure: Failure,
    pub error: Option<Box<dyn StdError + Send + Sync>>,
}

impl Failed {
    fn new(error: impl StdError + Send + Sync + 'static) -> Failed {
        Failed {
            failure: Failure::classify(&error),
            error: Some(Box::new(error)),
        }
    }
}

impl Upstream {
    /// Checks that `config.upstream` is `http://host[:port]` and nothing else. Uploads that go
    /// on after their response (see [`Upstream::send`]) are tracked by `tasks` and stopped by
    /// `abort`, as connections are.
    pub fn new(
        config: &ProxyConfig,
        tasks: &TaskTracker,
        abort: &CancellationToken,
    ) -> Result<Upstream, ProxyError> {
        let uri = &config.upstream;
        let bad = |reason| ProxyError::Upstream {
            uri: uri.to_string(),
            reason,
        };
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(bad(
                "the scheme must be http:// (the upstream is a local plain-HTTP port)",
            ));
        }
        let authority: &Authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("it must not contain userinfo"));
        }
        if authority.host().is_empty() {
            return Err(bad("it has no host"));
        }
        // `http` parses a port it cannot read as a number (`:80800`) and reports none, the same
        // as one left out, which alone means 80.
        let port = authority
            .as_str()
            .get(authority.host().len()..)
            .unwrap_or_default();
        if !port.is_empty()
            && !matches!(
                port.strip_prefix(':').map(str::parse),
                Some(Ok(1..=u16::MAX))
            )
        {
            return Err(bad("its port must be 1-65535"));
        }
        if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
            return Err(bad("it must not have a path or query"));
        }
        Ok(Upstream {
            address: Address::of(authority),
            connect_timeout: config.connect_timeout,
            timeout: config.upstream_timeout,
            nagles: Arc::default(),
            tasks: tasks.clone(),
            abort: abort.clone(),
        })
    }

    /// Sends `req` on an idle connection of `lane`, or a new one, and returns the response
    /// once its head has arrived; its body is read as the client takes it, and then the
    /// connection goes back to `lane`.
    ///
    /// An idempotent request without a body (RFC 9110 §9.2.2: a GET, not a POST) that a
    /// kept-alive connection lost before any response came (the upstream closed it just as it
    /// was sent) is sent again once on a new connection.
    pub async fn send<B>(
        &self,
        lane: &Lane,
        activity: &Activity,
        req: Request<B>,
    ) -> Result<Response<UpstreamBody>, Failed>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let (mut parts, mut body) = req.into_parts();
        let framing = RequestFraming::of(&parts, &body);
        let resendable = !framing.has_body() && parts.method.is_idempotent();
        let (mut connection, mut reused) = match lane.checkout(!resendable) {
            Some(connection) => (connection, true),
            None => (self.connect().await?, false),
        };
        connection.encode_head(&parts, framing);
        // The request's header map, no longer needed once encoded, takes the response's.
        let mut headers = std::mem::take(&mut parts.headers);
        let mut out = Outgoing::new(framing);
        loop {
            match connection
                .exchange(&mut body, &mut out, &mut headers, MAX_RESPONSE_HEAD)
                .await
            {
                Ok(head) => {
                    let upload = match head.sent {
                        Sent::Partly => Some(Box::new(Upload::new(
                            body,
                            out,
                            self.timeout,
                            &self.tasks,
                            &self.abort,
                            activity,
                        ))),
                        Sent::Whole | Sent::Broken => None,
                    };
                    let body = UpstreamBody::new(
                        &head,
                        &parts.method,
                        &mut headers,
                        connection,
                        lane,
                        upload,
                    )
                    .map_err(Failed::new)?;
                    return Ok(http1::response(&head, headers, body));
                }
                Err(failed) if reused && failed.before_response && resendable => {
                    let mut fresh = self.connect().await?;
                    fresh.take_head(&mut connection);
                    connection = fresh;
                    reused = false;
                }
                Err(failed) if failed.client_body => {
                    return Err(Failed {
                        failure: Failure::ClientBody,
                        error: Some(Box::new(failed.error)),
                    });
                }
                Err(failed) => return Err(Failed::new(failed.error)),
            }
        }
    }

    async fn connect(&self) -> Result<Connection, Failed> {
        let stream = match tokio::time::timeout(self.connect_timeout, self.address.connect()).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) if err.kind() == io::ErrorKind::TimedOut => {
                return Err(Failed {
                    failure: Failure::ConnectTimeout,
                    error: Some(Box::new(err)),
                });
            }
            Ok(Err(err)) => return Err(Failed::new(err)),
            Err(_) => {
                return Err(Failed {
                    failure: Failure::ConnectTimeout,
                    error: None,
                });
            }
        };
        // Requests are written whole; no reason to wait for more.
        let _ = stream.set_nodelay(true);
        Ok(Connection::new(
            QuickAck::new(stream, self.nagles.clone()),
            self.timeout,
        ))
    }
}

impl Lane {
    /// The most recently used idle connection that is still open (`certain`: checked on the
    /// socket itself, for a request that could not be sent again). Connections seen closed
    /// are dropped on the way.
    fn checkout(&self, certain: bool) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|connection| connection.is_reusable(false));
        while let Some(connection) = idle.pop() {
            if !certain || connection.is_reusable(true) {
                return Some(connection);
            }
        }
        None
    }

    fn give_back(&self, connection: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
    }
}

/// A wait this long between a read that left an acknowledgement owed and the next data, with no
/// write of ours in between, is taken for an upstream waiting for that acknowledgement: Linux
/// delays one by at least 40 ms.
const ACK_WAIT: Duration = Duration::from_millis(30);

/// An upstream socket that acknowledges at once when the upstream waits for it.
///
/// An application that writes a response's head and body in two sends without `TCP_NODELAY`
/// has its second send held by Nagle's algorithm until the first is acknowledged, and Linux
/// delays that acknowledgement (40 ms) on a connection it considers interactive, which a
/// kept-alive connection becomes. Setting `TCP_QUICKACK` after each read sends it at once.
///
/// That costs every request a system call and an extra packet (measured in
/// `docs/benchmarks.md`), though most upstreams send a response whole and the next request
/// carries the acknowledgement for free. So it is done only once the upstream has been seen
/// waiting: data that arrives [`ACK_WAIT`] or more after a read left an acknowledgement owed,
/// with no write of ours in between. From then on ([`Upstream::nagles`], every connection) each
/// read is acknowledged at once; the response that taught it waited one delayed ACK.
pub(crate) struct QuickAck {
    stream: TcpStream,
    /// Data came since our last write: the kernel owes the upstream an acknowledgement.
    owed: bool,
    /// When a read first found nothing while an acknowledgement was owed.
    idle_since: Option<std::time::Instant>,
    nagles: Arc<AtomicBool>,
}

impl QuickAck {
    fn new(stream: TcpStream, nagles: Arc<AtomicBool>) -> QuickAck {
        QuickAck {
            stream,
            owed: false,
            idle_since: None,
            nagles,
        }
    }

    fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends the owed acknowledgement now. Best effort: a socket that refuses it still works,
    /// only slower behind Nagle.
    fn acknowledge(&self) {
        if cfg!(not(corsair_no_quickack)) {
            let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(true);
        }
    }

    /// Our write carries any owed acknowledgement.
    fn wrote(&mut self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.owed = false;
            self.idle_since = None;
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let waited = this
                    .idle_since
                    .take()
                    .is_some_and(|t| t.elapsed() >= ACK_WAIT);
                if waited && this.owed && !this.nagles.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "the upstream holds part of its responses until acknowledged \
                         (Nagle's algorithm): acknowledging every read at once from now on"
                    );
                }
                if this.nagles.load(Ordering::Relaxed) {
                    this.acknowledge();
                }
                this.owed = true;
            }
            Poll::Pending if this.owed && this.idle_since.is_none() => {
                this.idle_since = Some(std::time::Instant::now());
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Why the upstream could not produce a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection was refused (nothing listens on the upstream port).
    Refused,
    /// The TCP connect did not complete within the connect timeout.
    ConnectTimeout,
    /// The upstream did not start its response within the upstream timeout.
    Timeout,
    /// The connection was reset or closed before a complete response head arrived.
    Reset,
    /// Anything else (a malformed response, a failed connect for another reason).
    Other,
    /// Not the upstream's doing: the client's request body broke off or was malformed while it
    /// was sent on.
    ClientBody,
}

impl Failure {
    /// Every failure, for the metric's series created at start.
    pub const ALL: [Failure; 6] = [
        Failure::Refused,
        Failure::ConnectTimeout,
        Failure::Timeout,
        Failure::Reset,
        Failure::Other,
        Failure::ClientBody,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            Failure::ConnectTimeout | Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Refused | Failure::Reset | Failure::Other => StatusCode::BAD_GATEWAY,
            Failure::ClientBody => StatusCode::BAD_REQUEST,
        }
    }

    /// The plain-text body sent to the client.
    pub fn message(self) -> &'static str {
        match self {
            Failure::Refused => "upstream refused the connection\n",
            Failure::ConnectTimeout => "upstream connect timed out\n",
            Failure::Timeout => "upstream did not respond in time\n",
            Failure::Reset => "upstream reset the connection\n",
            Failure::Other => "upstream request failed\n",
            Failure::ClientBody => "the request body could not be read\n",
        }
    }

    /// The `cause` label of `corsair_proxy_upstream_errors_total`; none for the client's own
    /// failure, which any client could raise at will.
    pub fn metric_label(self) -> Option<&'static str> {
        Some(match self {
            Failure::Refused => "refused",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Other => "other",
            Failure::ClientBody => return None,
        })
    }

    /// Classifies an error by walking it and its causes for an I/O error kind.
    pub fn classify(err: &(dyn StdError + 'static)) -> Failure {
        let mut source: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<io::Error>() {
                use io::ErrorKind::*;
                match io.kind() {
                    ConnectionRefused => return Failure::Refused,
                    // Connects that time out are told apart where they happen.
                    TimedOut => return Failure::Timeout,
                    ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                        return Failure::Reset;
                    }
                    _ => {}
                }
            }
            source = cause.source();
        }
        Failure::Other
    }
}

#[cfg(test)]
mod tests;
