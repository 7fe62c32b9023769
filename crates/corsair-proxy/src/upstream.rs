//! The one upstream: the connections to it, and what their failures mean for the client.
//!
//! The sidecar talks to exactly one application on loopback, so a general pool (keyed by host,
//! shared by every worker behind a lock) buys nothing. Each client connection keeps its own
//! upstream HTTP/1 connections in a [`Lane`]: an HTTP/1 client sends one request at a time, so
//! its lane holds one connection that is reused with no lock contention and no checkout; an h2c
//! client's concurrent streams take whichever of its connections is idle and open another when
//! none is. An upstream that waits for acknowledgements (Nagle's algorithm) gets them at once
//! (see [`QuickAck`]).

use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::{ProxyConfig, ProxyError};

/// Where requests go, and how to connect there.
#[derive(Debug)]
pub struct Upstream {
    /// `host:port`, the port defaulted to 80.
    address: String,
    connect_timeout: Duration,
    /// Learned: the upstream holds back part of a response until it is acknowledged.
    nagles: Arc<AtomicBool>,
}

/// The upstream connections of one client connection. Dropping it closes them.
#[derive(Debug, Default)]
pub struct Lane {
    idle: Mutex<Vec<SendRequest<Incoming>>>,
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
    /// Checks that `config.upstream` is `http://host[:port]` and nothing else.
    pub fn new(config: &ProxyConfig) -> Result<Upstream, ProxyError> {
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
        if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
            return Err(bad("it must not have a path or query"));
        }
        Ok(Upstream {
            address: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            connect_timeout: config.connect_timeout,
            nagles: Arc::default(),
        })
    }

    /// Sends `req` on an idle connection of `lane`, or a new one. `sequential` says the client
    /// sends one request at a time (HTTP/1), so the lane's one connection is awaited rather
    /// than a second one opened while the previous response finishes.
    ///
    /// A request the upstream never saw, because a kept-alive connection had just closed, is
    /// sent again once on a new connection.
    pub async fn send(
        &self,
        lane: &Lane,
        mut req: Request<Incoming>,
        sequential: bool,
    ) -> Result<Response<Incoming>, Failed> {
        let mut retried = false;
        loop {
            let mut sender = match self.checkout(lane, sequential).await {
                Some(sender) => sender,
                None => self.connect().await?,
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    // After a protocol switch the connection belongs to the tunnel.
                    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                        lane.give_back(sender);
                    }
                    return Ok(response);
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) if !retried => {
                        retried = true;
                        req = unsent;
                    }
                    _ => return Err(Failed::new(err.into_error())),
                },
            }
        }
    }

    /// An idle connection of the lane that is ready for a request, if any.
    async fn checkout(&self, lane: &Lane, sequential: bool) -> Option<SendRequest<Incoming>> {
        loop {
            let candidate = {
                let mut idle = lane.idle.lock().unwrap_or_else(PoisonError::into_inner);
                idle.retain(|sender| !sender.is_closed());
                if sequential {
                    idle.pop()
                } else {
                    let ready = idle.iter().position(SendRequest::is_ready)?;
                    Some(idle.swap_remove(ready))
                }
            };
            let mut sender = candidate?;
            // Waits for the end of the previous response's body on this connection.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, Failed> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
                .await
            {
                Ok(Ok(stream)) => stream,
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
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(QuickAck::new(stream, self.nagles.clone())))
            .await
            .map_err(Failed::new)?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(error = %err, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl Lane {
    fn give_back(&self, sender: SendRequest<Incoming>) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sender);
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
struct QuickAck {
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
}

impl Failure {
    pub fn status(self) -> StatusCode {
        match self {
            Failure::ConnectTimeout | Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Refused | Failure::Reset | Failure::Other => StatusCode::BAD_GATEWAY,
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
        }
    }

    /// The `cause` label of `corsair_proxy_upstream_errors_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Other => "other",
        }
    }

    /// Classifies an error by walking it and its causes for an I/O error kind or hyper's own.
    pub fn classify(err: &(dyn StdError + 'static)) -> Failure {
        let mut source: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<io::Error>() {
                use io::ErrorKind::*;
                match io.kind() {
                    ConnectionRefused => return Failure::Refused,
                    TimedOut => return Failure::ConnectTimeout,
                    ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                        return Failure::Reset;
                    }
                    _ => {}
                }
            }
            if let Some(hyper_err) = cause.downcast_ref::<hyper::Error>()
                && (hyper_err.is_incomplete_message()
                    || hyper_err.is_closed()
                    || hyper_err.is_canceled())
            {
                return Failure::Reset;
            }
            source = cause.source();
        }
        Failure::Other
    }
}

#[cfg(test)]
mod tests;
