//! The proxy listener: accepting connections, serving HTTP/1.1 and h2c on each, idle and
//! shutdown handling.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ProxyConfig;
use crate::head_timer::{HeadDeadline, HeadTimer};
use crate::metrics::{Dropped, Metrics};
use crate::on_wake::OnWake;
use crate::policy::PolicyStore;
use crate::stream_exec::StreamExec;
use crate::upstream::{ClientFlush, Lane, Upstream};
use corsair_runtime::listen::Protocol;

/// What the requests of one client connection share.
pub struct Conn {
    /// The client's `X-Forwarded-For` entry, built once.
    pub forwarded_for: http::HeaderValue,
    pub activity: Activity,
    /// This connection's own connections to the upstream.
    pub lane: Lane,
    /// The client socket's flushes, which a failed HTTP/1 response body waits for.
    pub flush: Arc<ClientFlush>,
    pub requests: Requests,
}

/// The requests of a connection, and the HTTP/2 ones the client reset before their answer,
/// which hyper ends by dropping the handler. h2 bounds the streams reset before they are
/// accepted, and concurrent streams; a client that resets each stream once its request is
/// forwarded passes both, and has the upstream do work nobody waits for at the pace it likes
/// (CVE-2023-44487). Past [`Requests::MIN_RESETS`], a connection whose requests were mostly
/// reset is closed, as Envoy does.
#[derive(Default)]
pub struct Requests {
    started: AtomicU32,
    reset: AtomicU32,
    abusive: CancellationToken,
}

impl Requests {
    /// Resets a connection may have before their share counts (Envoy's default).
    const MIN_RESETS: u32 = 500;

    /// Counts a request; an HTTP/2 one is counted reset if its `InFlight` is dropped before
    /// [`InFlight::answered`].
    pub fn start(&self, h2: bool) -> InFlight<'_> {
        self.started.fetch_add(1, Ordering::Relaxed);
        InFlight {
            requests: self,
            armed: h2,
        }
    }

    fn any(&self) -> bool {
        self.started.load(Ordering::Relaxed) > 0
    }

    async fn abusive(&self) {
        self.abusive.cancelled().await;
    }
}

/// One request's handler in flight.
pub struct InFlight<'a> {
    requests: &'a Requests,
    armed: bool,
}

impl InFlight<'_> {
    pub fn answered(mut self) {
        self.armed = false;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            let requests = self.requests;
            let reset = requests.reset.fetch_add(1, Ordering::Relaxed) + 1;
            if reset >= Requests::MIN_RESETS && reset * 2 > requests.started.load(Ordering::Relaxed)
            {
                requests.abusive.cancel();
            }
        }
    }
}

/// What every connection and request shares.
pub struct State {
    pub config: ProxyConfig,
    pub store: Arc<PolicyStore>,
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    /// Fired when the drain deadline passes: upgraded tunnels stop too.
    pub abort: CancellationToken,
    /// Tracks connections and tunnels so shutdown can wait for them.
    pub tasks: TaskTracker,
    builder: auto::Builder<StreamExec>,
    listening: AtomicBool,
}

impl State {
    pub fn new(
        config: ProxyConfig,
        store: Arc<PolicyStore>,
        metrics: Arc<Metrics>,
        upstream: Upstream,
        abort: CancellationToken,
        tasks: TaskTracker,
    ) -> State {
        let builder = builder(
            &config,
            StreamExec {
                idle_timeout: config.idle_timeout,
                activity: None,
                stalled: metrics.stalled_streams(),
            },
        );
        State {
            config,
            store,
            metrics,
            upstream,
            abort,
            tasks,
            builder,
            listening: AtomicBool::new(false),
        }
    }

    /// Whether the proxy listener is accepting (false before start and while draining).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Release);
    }
}

/// hyper's server for the proxy's connections. HTTP/2 streams run on `exec`, which resets
/// each stream's task once it stalls for the idle timeout.
fn builder(config: &ProxyConfig, exec: StreamExec) -> auto::Builder<StreamExec> {
    let mut builder = auto::Builder::new(exec);
    // The HTTP/1 timer is set per connection (`serve_connection`): a `HeadTimer`.
    builder
        .http1()
        .header_read_timeout(config.header_read_timeout)
        // hyper answers 431 when the request line and headers overflow this buffer.
        .max_buf_size(config.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Accepts connections until `shutdown`, then returns; connections finish on their own.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let peer = corsair_runtime::listen::canonical(peer);
                let _ = stream.set_nodelay(true);
                state.tasks.spawn(serve_connection(
                    stream,
                    peer,
                    state.clone(),
                    shutdown.clone(),
                    abort.clone(),
                ));
            }
            Err(err) => {
                // Typically EMFILE: back off instead of spinning; the listener stays open.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    // Until the first bytes tell HTTP/1.1 from HTTP/2, hyper runs no header timer, so a
    // connection that sends nothing, or only the start of the HTTP/2 preface, would hold its
    // file descriptor for the whole idle timeout: give it the header read timeout instead.
    let protocol = tokio::select! {
        known = corsair_runtime::listen::protocol_known(&stream, state.config.header_read_timeout) => {
            let Some(protocol) = known else {
                tracing::debug!(%peer, "closing a connection that sent too little to serve");
                return;
            };
            protocol
        }
        () = shutdown.cancelled() => return,
    };
    serve_known(stream, protocol, peer, state, shutdown, abort).await;
}

/// Serves a connection whose first bytes said its protocol, over any byte stream (a
/// `TcpStream` but in tests).
async fn serve_known<S>(
    stream: S,
    protocol: Protocol,
    peer: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
    abort: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let flush = Arc::new(ClientFlush::default());
    // An HTTP/2 connection's activity is its streams' (their tasks touch it): its bytes also
    // carry PINGs and SETTINGS, which would keep a connection that serves nothing open for good.
    let http2 = protocol == Protocol::Http2;
    let io = TokioIo::new(IdleIo {
        inner: stream,
        activity: (!http2).then(|| activity.clone()),
        flush: flush.clone(),
    });
    let service_state = state.clone();
    let conn_state = Arc::new(Conn {
        forwarded_for: crate::headers::forwarded_for(peer.ip()),
        activity: activity.clone(),
        lane: Lane::default(),
        flush,
        requests: Requests::default(),
    });
    let conn_events = conn_state.clone();
    let service = service_fn(move |req| {
        crate::handler::handle(service_state.clone(), conn_state.clone(), req)
    });
    let head_deadline = HeadDeadline::new();
    let mut builder = if http2 {
        builder(
            &state.config,
            StreamExec {
                idle_timeout: state.config.idle_timeout,
                activity: Some(activity.clone()),
                stalled: state.metrics.stalled_streams(),
            },
        )
    } else {
        state.builder.clone()
    };
    builder.http1().timer(HeadTimer(head_deadline.clone()));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let timeouts = (state.config.idle_timeout, state.config.header_read_timeout);
    let mut closing = false;
    // hyper's h2 server has no header timer: a connection that sent the preface and no whole
    // request head (or an HTTP/1 one, which hyper's timer closes too) gets the header read
    // timeout for its first request.
    let mut first_request = Some(Instant::now() + state.config.header_read_timeout);
    loop {
        // Polled only when one of them fired, not on every read and write of the connection.
        let events = OnWake::new(next_event(
            &shutdown,
            &abort,
            &conn_events,
            &head_deadline,
            first_request,
            timeouts,
            closing,
        ));
        tokio::select! {
            // The connection first: after the head deadline passed, hyper must poll its sleep.
            biased;
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            event = events => match event {
                // Polling the connection again (the loop) lets hyper find its head sleep expired.
                Event::HeadDeadline => {}
                Event::Shutdown => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                Event::Idle if !closing => {
                    tracing::debug!(%peer, "closing idle connection");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    // HTTP/2 gets a whole idle timeout more to close in: its streams' own
                    // deadlines reset the stalled ones, and its GOAWAY moves no activity.
                    if http2 {
                        conn_events.activity.touch();
                    }
                }
                // hyper closes an idle connection at once; one still open has a message in
                // flight that moved no byte either way for the idle timeout (a response the
                // client does not read, a request body it stopped sending): dropped.
                Event::Idle => {
                    tracing::debug!(%peer, "dropping a connection stalled while it closed");
                    state.metrics.connection_dropped(Dropped::Stalled);
                    return;
                }
                Event::Abort => return,
                Event::FirstRequest if conn_events.requests.any() => first_request = None,
                Event::FirstRequest => {
                    tracing::debug!(%peer, "closing a connection without a request within the header read timeout");
                    return;
                }
                Event::Resets => {
                    tracing::warn!(%peer, "closing an HTTP/2 connection whose client reset most of its streams before their answer (rapid reset)");
                    state.metrics.connection_dropped(Dropped::RapidReset);
                    return;
                }
            },
        }
    }
}

/// What a connection waits for besides its requests.
enum Event {
    HeadDeadline,
    Shutdown,
    Idle,
    Abort,
    Resets,
    FirstRequest,
}

/// Completes at `deadline`, never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The next [`Event`] of a connection; shutdown only until it is `closing`.
async fn next_event(
    shutdown: &CancellationToken,
    abort: &CancellationToken,
    conn: &Conn,
    head_deadline: &HeadDeadline,
    first_request: Option<Instant>,
    (idle_timeout, header_read_timeout): (Duration, Duration),
    closing: bool,
) -> Event {
    tokio::select! {
        () = head_deadline.passed(header_read_timeout) => Event::HeadDeadline,
        () = conn.requests.abusive() => Event::Resets,
        () = until(first_request) => Event::FirstRequest,
        () = shutdown.cancelled(), if !closing => Event::Shutdown,
        () = conn.activity.idle_for(idle_timeout) => Event::Idle,
        () = abort.cancelled() => Event::Abort,
    }
}

/// When a connection last moved a byte, in milliseconds since it was opened.
#[derive(Clone)]
pub struct Activity {
    opened: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn touch(&self) {
        self.touch_at(Instant::now());
    }

    pub(crate) fn touch_at(&self, now: Instant) {
        let since = now.saturating_duration_since(self.opened);
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A client's stream that records when it last read or wrote, for the idle timeout, and tells
/// a failed response body when hyper has flushed it.
struct IdleIo<S> {
    inner: S,
    /// `None` over HTTP/2, whose streams record activity instead.
    activity: Option<Activity>,
    flush: Arc<ClientFlush>,
}

impl<S> IdleIo<S> {
    /// A read or write completed: activity, unless the streams keep it (HTTP/2).
    fn moved(&self) {
        if let Some(activity) = &self.activity {
            activity.touch();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if poll.is_ready() {
            self.moved();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if poll.is_ready() {
            self.moved();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if poll.is_ready() {
            self.moved();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        if poll.is_ready() {
            // hyper's HTTP/1 server flushes the socket only once its own buffer is empty.
            self.flush.flushed(cx);
        }
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
