//! The upstream hop's HTTP/1.1: a request head written in one piece, the response head parsed
//! with `httparse` into the request's own header map, and the response body read in the client
//! connection's own task.
//!
//! hyper's client runs each connection in a task of its own behind a request channel: per
//! request a message through the channel, a task switch each way and a oneshot back, and per
//! connection the channel's blocks, a write buffer and the task (about 30 KiB at 256
//! connections, `docs/benchmarks.md`). The sidecar's upstream is one application on loopback
//! that answers one request at a time per connection, which needs none of that.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Lane, QuickAck};
use crate::server::Activity;

/// Response header lines parsed at most, as hyper's client.
const MAX_HEADERS: usize = 100;
/// The read buffer a connection starts with: a response head and a small body fit.
const INITIAL_READ: usize = 4096;
/// What a read of a body reserves when the buffer is full: fewer, larger reads for big bodies.
const BODY_READ: usize = 16 * 1024;
/// A chunk-size line (with extensions) or a trailer section longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// One kept-alive HTTP/1.1 connection to the upstream.
pub(crate) struct Connection {
    io: QuickAck,
    /// How long a response body may wait for the upstream's next bytes: the upstream timeout.
    stall: std::time::Duration,
    /// Bytes read and not yet consumed. Empty whenever the connection is idle.
    read: BytesMut,
    /// The request head being sent, reused from one request to the next.
    head: Vec<u8>,
    /// The response head's lines while it is turned into a header map, reused likewise.
    lines: Vec<(HeaderName, std::ops::Range<usize>)>,
}

/// How the request body is framed towards the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body and no `Content-Length` (a GET).
    None,
    /// `Content-Length: n` (0 for an empty POST, or when the client sent `Content-Length: 0`).
    Length(u64),
    /// A body of unknown length (an h2 stream without `content-length`).
    Chunked,
}

impl RequestFraming {
    pub(crate) fn of<B: Body>(parts: &Parts, body: &B) -> RequestFraming {
        if body.is_end_stream() {
            let declares = parts.headers.contains_key(header::CONTENT_LENGTH)
                || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
            if declares {
                RequestFraming::Length(0)
            } else {
                RequestFraming::None
            }
        } else {
            match body.size_hint().exact() {
                Some(n) => RequestFraming::Length(n),
                None => RequestFraming::Chunked,
            }
        }
    }

    pub(crate) fn has_body(self) -> bool {
        !matches!(self, RequestFraming::None | RequestFraming::Length(0))
    }
}

/// A response head read from the upstream, its header values slices of the read buffer.
pub(crate) struct Head {
    pub status: StatusCode,
    /// A reason phrase other than the standard one, passed on as hyper's extension.
    reason: Option<hyper::ext::ReasonPhrase>,
    version: Version,
    /// How much of the request had gone out when the head came.
    pub(crate) sent: Sent,
}

/// How much of the request had gone out when the response head came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// All of it.
    Whole,
    /// The head and part of the body: the upstream answered early (a 413, a 401). The rest is
    /// sent while the response is read, and after it, as hyper's client did: an upstream may
    /// answer first and still read the whole body. Unlike hyper's client (and as nginx does),
    /// the connection is then not used again: an upstream that answered without draining the
    /// body would read the rest as requests of their own, which a client can write, and their
    /// answers would go to the next request on the connection.
    Partly,
    /// The upstream stopped taking the body: the connection carries nothing more.
    Broken,
}

/// What went wrong on the upstream connection. `before_response`: not one byte of a response
/// had arrived, so a request without a body may be sent again on a new connection.
/// `client_body`: the client's request body failed (it broke off, or was malformed), not the
/// upstream.
#[derive(Debug)]
pub(crate) struct HopError {
    pub error: io::Error,
    pub before_response: bool,
    pub client_body: bool,
}

impl HopError {
    fn before(error: io::Error) -> HopError {
        HopError {
            error,
            before_response: true,
            client_body: false,
        }
    }

    fn after(error: io::Error) -> HopError {
        HopError {
            error,
            before_response: false,
            client_body: false,
        }
    }

    fn client_body(error: io::Error) -> HopError {
        HopError {
            error,
            before_response: false,
            client_body: true,
        }
    }
}

/// Why sending the request body stopped.
enum Stop {
    /// The client's body failed, or did not match its length.
    Body(io::Error),
    /// The upstream connection would take no more.
    Write(io::Error),
}

fn invalid(message: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn closed_early(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the upstream closed the connection before {what}"),
    )
}

impl Connection {
    pub(crate) fn new(io: QuickAck, stall: std::time::Duration) -> Connection {
        Connection {
            io,
            stall,
            read: BytesMut::new(),
            head: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Whether an idle connection can take a request: the upstream has not closed it and sent
    /// nothing unasked. Without `certain`, a look at the socket's readiness as the runtime last
    /// saw it, no system call while it has had nothing to read (a close that the runtime has not
    /// seen yet passes: only a request that may be sent again is sent that way); with it, a
    /// peek at the socket itself.
    pub(crate) fn is_reusable(&self, certain: bool) -> bool {
        let stream = self.io.stream();
        if !certain {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if stream.poll_read_ready(&mut cx).is_pending() {
                return true;
            }
        }
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        // The socket is non-blocking: nothing to read is `WouldBlock`, a close is `Ok(0)`.
        matches!(
            socket2::SockRef::from(stream).peek(&mut probe),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }

    /// Writes the request head for `parts` into the connection's head buffer.
    pub(crate) fn encode_head(&mut self, parts: &Parts, framing: RequestFraming) {
        encode_head(&mut self.head, parts, framing);
    }

    /// Takes over the head encoded on another connection (a request sent again).
    pub(crate) fn take_head(&mut self, from: &mut Connection) {
        std::mem::swap(&mut self.head, &mut from.head);
    }

    /// Sends the encoded head and the body, and reads the response head, skipping interim
    /// (1xx) responses other than 101. The body is sent while the connection is read, as
    /// hyper's client did: an upstream that answers before the whole body is sent (a 413, a
    /// 401) gets the head back at once, even if it reads no more, with [`Sent::Partly`] and the
    /// rest to send in `out`, which the caller hands to an [`Upload`]. If the upstream stopped
    /// taking the body, what it answered is still read.
    pub(crate) async fn exchange<B>(
        &mut self,
        body: &mut B,
        out: &mut Outgoing,
        headers: &mut HeaderMap,
        max_head: usize,
    ) -> Result<Head, HopError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use tokio::io::AsyncWriteExt;

        self.io
            .write_all(&self.head)
            .await
            .map_err(HopError::before)?;
        // Why the body could not be sent whole: reported only if no answer comes.
        let mut broken: Option<io::Error> = None;
        // Any byte of a response (an interim one included) came.
        let mut received = false;
        std::future::poll_fn(|cx| {
            loop {
                let progress = match &broken {
                    Some(_) => Sent::Broken,
                    None if out.ended() => Sent::Whole,
                    None => Sent::Partly,
                };
                if let Some(head) = self.parse_head(headers, max_head, progress)? {
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS
                    {
                        continue;
                    }
                    return Poll::Ready(Ok(head));
                }
                let grow = INITIAL_READ.max(self.read.len());
                make_room(&mut self.read, grow);
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(HopError {
                            error: broken
                                .take()
                                .unwrap_or_else(|| closed_early("a complete response head")),
                            before_response: !received,
                            client_body: false,
                        }));
                    }
                    Poll::Ready(Ok(_)) => {
                        received = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(HopError {
                            error: broken.take().unwrap_or(e),
                            before_response: !received,
                            client_body: false,
                        }));
                    }
                    Poll::Pending => {}
                }
                if broken.is_some() || out.ended() {
                    return Poll::Pending;
                }
                match ready!(out.poll_send(body, &mut self.io, cx)) {
                    Ok(()) => {}
                    Err(Stop::Body(e)) => return Poll::Ready(Err(HopError::client_body(e))),
                    Err(Stop::Write(e)) => broken = Some(e),
                }
            }
        })
        .await
    }

    /// Parses a complete response head at the start of the read buffer, if there is one, into
    /// `headers` (emptied first).
    fn parse_head(
        &mut self,
        headers: &mut HeaderMap,
        max_head: usize,
        sent: Sent,
    ) -> Result<Option<Head>, HopError> {
        if self.read.is_empty() {
            return Ok(None);
        }
        // Uninitialised: zeroing 100 lines for every response cost more than parsing it.
        let mut uninit = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let base = self.read.as_ptr() as usize;
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &self.read,
            &mut uninit,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            // hyper's rule: a buffer this full without a whole head is refused.
            Ok(httparse::Status::Partial) if self.read.len() >= max_head => {
                return Err(HopError::after(invalid(format!(
                    "the upstream's response head is larger than {max_head} bytes"
                ))));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                return Err(HopError::after(invalid(format!(
                    "malformed response head from the upstream: {e}"
                ))));
            }
        };
        let status = response
            .code
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| HopError::after(invalid("the upstream sent an invalid status")))?;
        let reason = response
            .reason
            .filter(|r| !r.is_empty() && Some(*r) != status.canonical_reason())
            .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
        let version = if response.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Each line's name, and where its value sits in the buffer, so that the values can be
        // slices of it once frozen.
        self.lines.clear();
        for line in response.headers.iter() {
            let name = HeaderName::from_bytes(line.name.as_bytes()).map_err(|_| {
                HopError::after(invalid("the upstream sent an invalid header name"))
            })?;
            // httparse hands out slices of the buffer it parsed; an empty value needs no place.
            let range = if line.value.is_empty() {
                Some(0..0)
            } else {
                (line.value.as_ptr() as usize)
                    .checked_sub(base)
                    .map(|start| start..start + line.value.len())
                    .filter(|range| range.end <= len)
            };
            let range = range.ok_or_else(|| {
                HopError::after(invalid("a header value outside the response head"))
            })?;
            self.lines.push((name, range));
        }
        let raw = self.read.split_to(len).freeze();
        headers.clear();
        for (name, range) in self.lines.drain(..) {
            let value = HeaderValue::from_maybe_shared(raw.slice(range)).map_err(|_| {
                HopError::after(invalid(format!(
                    "the upstream sent an invalid value for {name}"
                )))
            })?;
            headers.append(name, value);
        }
        Ok(Some(Head {
            status,
            reason,
            version,
            sent,
        }))
    }
}

/// One frame of the request body as it goes to the upstream.
enum Wire {
    /// Nothing to send for it (trailers, an empty data frame).
    Nothing,
    /// The body has ended; what ends it on the wire (the last chunk when chunked).
    End(&'static [u8]),
    /// Data, sent as a chunk when the framing is chunked.
    Data(Bytes),
}

/// Checks one frame of the client's body against the framing chosen for it; an error when the
/// client's body failed or its length does not match.
fn to_wire<E>(
    frame: Option<Result<Frame<Bytes>, E>>,
    framing: RequestFraming,
    sent: &mut u64,
) -> Result<Wire, io::Error>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let data = match frame {
        None => {
            return match framing {
                RequestFraming::Length(n) if *sent != n => Err(invalid(format!(
                    "the request body ended after {sent} of its {n} bytes"
                ))),
                RequestFraming::Chunked => Ok(Wire::End(b"0\r\n\r\n")),
                _ => Ok(Wire::End(b"")),
            };
        }
        Some(Err(e)) => return Err(io::Error::other(e.into())),
        // Trailers are not forwarded: the `Trailer` field that would announce them is
        // hop-by-hop and removed, and hyper's client sent none without it either.
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => data,
            Err(_) => return Ok(Wire::Nothing),
        },
    };
    if data.is_empty() {
        return Ok(Wire::Nothing);
    }
    *sent += data.len() as u64;
    if let RequestFraming::Length(n) = framing
        && *sent > n
    {
        return Err(invalid(
            "the request body is longer than its Content-Length",
        ));
    }
    Ok(Wire::Data(data))
}

/// The request body on its way to the upstream: what a frame became on the wire and has not
/// been written yet, without allocating (a chunk-size line is kept inline).
pub(crate) struct Outgoing {
    framing: RequestFraming,
    /// Body bytes taken from the client so far.
    sent: u64,
    /// A chunk-size line, from `line_at` on.
    line: [u8; 20],
    line_at: usize,
    data: Bytes,
    /// What follows the data: a chunk's CRLF, or the last chunk.
    tail: &'static [u8],
    /// The client's body has ended (or there was none).
    done: bool,
    /// A frame came or bytes went out since this was last cleared.
    progressed: bool,
}

impl Outgoing {
    pub(crate) fn new(framing: RequestFraming) -> Outgoing {
        Outgoing {
            framing,
            sent: 0,
            line: [0; 20],
            line_at: 20,
            data: Bytes::new(),
            tail: b"",
            done: !framing.has_body(),
            progressed: false,
        }
    }

    /// The body has been sent whole.
    fn ended(&self) -> bool {
        self.done && self.line_at == self.line.len() && self.data.is_empty() && self.tail.is_empty()
    }

    /// Takes frames from `body` and writes them to `io` until the body is sent whole (ready)
    /// or neither has more to give now.
    fn poll_send<B>(
        &mut self,
        body: &mut B,
        io: &mut QuickAck,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Stop>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use tokio::io::AsyncWrite;

        loop {
            let pending: &[u8] = if self.line_at < self.line.len() {
                &self.line[self.line_at..]
            } else if !self.data.is_empty() {
                &self.data
            } else {
                self.tail
            };
            if !pending.is_empty() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, pending)).map_err(Stop::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(Stop::Write(io::ErrorKind::WriteZero.into())));
                }
                if self.line_at < self.line.len() {
                    self.line_at += n;
                } else if !self.data.is_empty() {
                    self.data.advance(n);
                } else {
                    self.tail = &self.tail[n..];
                }
                self.progressed = true;
                continue;
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
            self.progressed = true;
            match to_wire(frame, self.framing, &mut self.sent).map_err(Stop::Body)? {
                Wire::Nothing => {}
                Wire::End(last) => {
                    self.done = true;
                    self.tail = last;
                    // hyper ends an HTTP/2 request body cleanly when the client resets the
                    // stream with NO_ERROR (RFC 9113 §8.1 lets a server stop an upload that way),
                    // so a reset upload would get its last chunk and reach the upstream whole.
                    // The last chunk waits one poll: hyper looks for a reset while the handler
                    // is pending, and drops it, connection and all, before it is written.
                    if self.framing == RequestFraming::Chunked {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Wire::Data(data) => {
                    if self.framing == RequestFraming::Chunked {
                        let size = hex_line(&mut self.line, data.len()).len();
                        self.line_at = self.line.len() - size;
                        self.tail = b"\r\n";
                    }
                    self.data = data;
                }
            }
        }
    }
}

/// The rest of a request body that the upstream answered before it was sent whole. It is sent
/// while the response body is read, and on a task of its own once that has ended, so that an
/// upstream that answers a large upload early and reads on gets all of it, and the client can
/// finish sending, as with hyper's client.
pub(crate) struct Upload {
    body: UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>,
    out: Outgoing,
    /// Once the response has ended, how long the upload may make no progress.
    stall: std::time::Duration,
    /// Where the rest is sent once the response has ended: a tracked task, so that a drain
    /// waits for it, stopped at the drain deadline.
    tasks: TaskTracker,
    abort: CancellationToken,
    /// The client connection's: the rest of an HTTP/2 upload moves no byte it would count.
    activity: Activity,
}

impl Upload {
    /// What is left of `body`, and of the frame `out` was writing.
    pub(crate) fn new<B>(
        body: B,
        out: Outgoing,
        stall: std::time::Duration,
        tasks: &TaskTracker,
        abort: &CancellationToken,
        activity: &Activity,
    ) -> Upload
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Upload {
            body: body.map_err(Into::into).boxed_unsync(),
            out,
            stall,
            tasks: tasks.clone(),
            abort: abort.clone(),
            activity: activity.clone(),
        }
    }

    /// Sends the rest after the response has ended, on a tracked task of its own, then closes
    /// the connection.
    fn spawn_finish(self: Box<Self>, connection: Connection) {
        let tasks = self.tasks.clone();
        let abort = self.abort.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = self.finish(connection) => {}
                () = abort.cancelled() => {}
            }
        });
    }

    fn poll_send(&mut self, io: &mut QuickAck, cx: &mut Context<'_>) -> Poll<Result<(), Stop>> {
        self.out.poll_send(&mut self.body, io, cx)
    }

    /// Sends the rest after the response has ended, then closes the connection (see
    /// [`Sent::Partly`]). An upload on which neither the client nor the upstream moves for
    /// [`Upload::stall`] is given up with its connection, as the upstream timeout gives up any
    /// other upload: nothing else would end this task.
    async fn finish(mut self: Box<Self>, mut connection: Connection) {
        let stall = self.stall;
        let mut quiet = std::pin::pin!(tokio::time::sleep(stall));
        let sent = std::future::poll_fn(|cx| {
            if let Poll::Ready(sent) = self.poll_send(&mut connection.io, cx) {
                return Poll::Ready(sent);
            }
            if std::mem::take(&mut self.out.progressed) {
                let now = tokio::time::Instant::now();
                quiet.as_mut().reset(now + stall);
                self.activity.touch_at(now);
            }
            ready!(quiet.as_mut().poll(cx));
            Poll::Ready(Err(Stop::Write(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the rest of the request body did not move for {stall:?}"),
            ))))
        });
        if let Err(stop) = sent.await {
            stop.end(&connection);
        }
    }
}

impl Stop {
    /// Ends an upload that could not go on; the connection carries nothing more. A client body
    /// that failed has the connection shut for writing, so that the upstream sees it end short.
    fn end(self, connection: &Connection) {
        match self {
            Stop::Body(error) => {
                tracing::debug!(%error, "the client's request body failed after the answer");
                let _ = socket2::SockRef::from(connection.io.stream())
                    .shutdown(std::net::Shutdown::Write);
            }
            Stop::Write(error) => {
                tracing::debug!(%error, "the rest of the request body was not sent");
            }
        }
    }
}

/// A request head: the client's header lines in order, `Content-Length` replaced by the framing
/// chosen here, lower-case names as hyper's client sends them.
fn encode_head(out: &mut Vec<u8>, parts: &Parts, framing: RequestFraming) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, without going through `fmt`.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A chunk-size line for `n` bytes, in `line`.
fn hex_line(line: &mut [u8; 20], n: usize) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 18;
    let mut n = n;
    line[18] = b'\r';
    line[19] = b'\n';
    loop {
        i -= 1;
        line[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &line[i..]
}

/// Room in `read` for a read of at least 1 KiB; growing it by `grow` when there is less.
fn make_room(read: &mut BytesMut, grow: usize) {
    if read.capacity() - read.len() < 1024 {
        read.reserve(grow);
    }
}

/// Up to `remaining` bytes of a body from the front of `read`, and how many remain after them.
fn take(read: &mut BytesMut, remaining: u64) -> (Bytes, u64) {
    let n = remaining.min(read.len() as u64);
    (read.split_to(n as usize).freeze(), remaining - n)
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// The upstream's response body, read from its connection as the client takes it. At its end
/// the connection goes back to the client connection's lane; dropped early, it is closed.
pub struct UpstreamBody {
    framing: Framing,
    connection: Option<Connection>,
    /// The rest of the request body, when the upstream answered before it had all of it (boxed:
    /// rare, and the response body is moved on every request).
    upload: Option<Box<Upload>>,
    /// Where the connection goes back once the body is read, when it can carry another request.
    lane: Option<Lane>,
    /// Runs while the upstream sends nothing in the middle of the body: at its end the body
    /// fails, as a response head that does not come fails. Made at the first wait (a body that
    /// comes with its head needs none).
    quiet: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes moved either way since `quiet` was last set.
    moved: bool,
    /// The error the body ends with, given at a later poll than the one that found it (see
    /// `fail`).
    failed: Option<io::Error>,
    /// The HTTP/1 client connection's flush, which a failure waits for (see `fail`).
    flush: Option<Arc<ClientFlush>>,
}

/// Tells a failed response body that hyper's HTTP/1 server has written all it holds to the
/// client's socket. hyper drops what it still holds when a body fails, and it flushes the
/// socket only once its own buffer is empty, so the failure waits for that flush.
#[derive(Debug, Default)]
pub struct ClientFlush {
    awaited: AtomicBool,
}

impl ClientFlush {
    /// Called by the client connection's socket at each flush that completed. The waker is the
    /// connection's task, the one that polls an HTTP/1 response body.
    pub(crate) fn flushed(&self, cx: &mut Context<'_>) {
        // A load first: this runs for every response, and a body rarely waits.
        if self.awaited.load(Ordering::Relaxed) {
            self.awaited.store(false, Ordering::Relaxed);
            cx.waker().wake_by_ref();
        }
    }

    fn awaited(&self) -> bool {
        self.awaited.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

/// An upstream connection that switched protocols, and what it sent after its 101 head.
pub(crate) struct Switched {
    pub io: QuickAck,
    pub read: Bytes,
}

impl UpstreamBody {
    /// The body that follows `head` on `connection`, for a request with `method`, with the
    /// rest of the request body to send when the upstream answered before it.
    pub(crate) fn new(
        head: &Head,
        method: &Method,
        headers: &mut HeaderMap,
        connection: Connection,
        lane: &Lane,
        mut upload: Option<Box<Upload>>,
    ) -> Result<UpstreamBody, io::Error> {
        let (framing, mut reusable) = response_framing(head, method, headers)?;
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            // The tunnel takes the connection as it is.
            reusable = false;
            upload = None;
        }
        let mut body = UpstreamBody {
            framing,
            connection: Some(connection),
            upload,
            lane: (reusable && head.sent == Sent::Whole).then(|| lane.clone()),
            quiet: None,
            moved: false,
            failed: None,
            flush: None,
        };
        if framing == Framing::Done && head.status != StatusCode::SWITCHING_PROTOCOLS {
            body.finish();
        }
        Ok(body)
    }

    /// Makes a failure wait for `flush`: for an HTTP/1 client, whose connection's task polls
    /// this body. (An HTTP/2 stream's body is polled on a task of its own.)
    pub(crate) fn fail_after(&mut self, flush: &Arc<ClientFlush>) {
        self.flush = Some(Arc::clone(flush));
    }

    /// The connection of a 101 response, for the tunnel.
    pub(crate) fn take_switched(&mut self) -> Option<Switched> {
        let connection = self.connection.take()?;
        Some(Switched {
            io: connection.io,
            read: connection.read.freeze(),
        })
    }

    /// The body is read: the connection goes back to the lane (when it may) or is closed. A
    /// request body not yet sent whole is sent on first, on a task of its own, and the
    /// connection closed after it.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let Some(connection) = self.connection.take() else {
            return;
        };
        if let Some(upload) = self.upload.take() {
            upload.spawn_finish(connection);
        } else if let Some(lane) = self.lane.take().filter(|_| connection.read.is_empty()) {
            lane.give_back(connection);
        }
    }

    /// Ends the body with `error` at a later poll, not this one. hyper's HTTP/1 server drops
    /// the client's connection at a body's error with what it has buffered still unsent: an
    /// upstream that closed right after its head would leave the client with nothing at all,
    /// and one that closed while the client's socket was full, without the bytes hyper held.
    /// With a [`ClientFlush`] the error waits until hyper has written all it holds (for as long
    /// as the client takes to read it, within the idle timeout); without one, Pending once lets
    /// hyper write what the socket takes before it polls again. Either way the client sees the
    /// response begin and then cut short, as behind nginx.
    fn fail(
        &mut self,
        error: io::Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.framing = Framing::Done;
        self.connection = None;
        self.upload = None;
        self.quiet = None;
        self.failed = Some(error);
        if let Some(flush) = &self.flush {
            flush.awaited.store(true, Ordering::Relaxed);
        }
        // Polled again, whatever else hyper does in this poll: hyper flushes after a body that
        // stays Pending only when it holds bytes, and the next poll then reaches a flush.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Nothing to read: waits for the upstream for at most its timeout since bytes last moved,
    /// then fails the body (hyper then ends the client's connection, whose response is cut
    /// short, and the upstream connection is closed).
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let Some(stall) = self.connection.as_ref().map(|c| c.stall) else {
            return Poll::Ready(None);
        };
        let deadline = tokio::time::Instant::now() + stall;
        let quiet = match &mut self.quiet {
            Some(quiet) => {
                if std::mem::take(&mut self.moved) {
                    quiet.as_mut().reset(deadline);
                }
                quiet
            }
            none => {
                self.moved = false;
                none.insert(Box::pin(tokio::time::sleep_until(deadline)))
            }
        };
        ready!(quiet.as_mut().poll(cx));
        tracing::warn!(
            ?stall,
            "the upstream sent nothing in the middle of a response body for the upstream \
             timeout: the response is cut short"
        );
        self.fail(
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the upstream sent nothing of the response body for {stall:?}"),
            ),
            cx,
        )
    }
}

/// The body's framing and whether the connection may carry another request after it
/// (RFC 9112 §6.3 and §9.3). A `Content-Length` beside `Transfer-Encoding` is removed, as an
/// intermediary must before it forwards the message (§6.3): the client gets the body de-chunked
/// and framed anew, which that length need not describe.
fn response_framing(
    head: &Head,
    method: &Method,
    headers: &mut HeaderMap,
) -> Result<(Framing, bool), io::Error> {
    let mut keep_alive = head.version == Version::HTTP_11;
    for line in headers.get_all(header::CONNECTION) {
        if line.to_str().is_err() {
            // Bytes outside visible ASCII (obs-text): no option is read from such a line, and
            // a connection whose options are unknown is not reused.
            keep_alive = false;
            continue;
        }
        for token in crate::headers::tokens(line) {
            if token.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if token.eq_ignore_ascii_case("keep-alive") && head.version == Version::HTTP_10 {
                keep_alive = true;
            }
        }
    }
    let status = head.status;
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // No body whatever the headers say. The length of a HEAD's or a 304's representation
        // still reaches the client, as one plain number (hyper fails on two lines there), and
        // none where none may be sent (RFC 9110 §8.6) or an invalid one.
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || content_length(headers).is_err()
        {
            headers.remove(header::CONTENT_LENGTH);
        }
        return Ok((Framing::Done, keep_alive));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if head.version == Version::HTTP_10 {
            // HTTP/1.0 has no transfer codings (RFC 9112 §6.1): the framing cannot be trusted.
            return Err(invalid(
                "the upstream sent Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        // Only `chunked`, once: the proxy asks for no other coding (it never forwards `TE`),
        // and could not pass one on, since `Transfer-Encoding` ends at this hop.
        let mut chunked = 0;
        for line in headers.get_all(header::TRANSFER_ENCODING) {
            if line.to_str().is_err() {
                // A coding written with bytes outside visible ASCII is still a coding, and not
                // `chunked`: skipping the line would take the rest for the whole list.
                return Err(invalid(
                    "the upstream sent a Transfer-Encoding with bytes outside visible ASCII",
                ));
            }
            for coding in crate::headers::tokens(line) {
                if !coding.eq_ignore_ascii_case("chunked") {
                    return Err(invalid(format!(
                        "the upstream used the transfer coding {coding:?}, which the proxy \
                         does not decode (only chunked)"
                    )));
                }
                chunked += 1;
            }
        }
        if chunked != 1 {
            return Err(invalid(
                "the upstream sent an invalid Transfer-Encoding (chunked must appear once)",
            ));
        }
        // With a Content-Length beside it the message is suspect: do not reuse.
        let suspect = headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok((Framing::Chunked(Chunk::Size), keep_alive && !suspect));
    }
    Ok(match content_length(headers)? {
        Some(0) => (Framing::Done, keep_alive),
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::UntilClose, false),
    })
}

/// The response's `Content-Length`: the same number however written (`5, 5`, two lines,
/// `005`), which then replaces what the upstream sent, since hyper passes a known length's
/// line on as it came.
fn content_length(headers: &mut HeaderMap) -> Result<Option<u64>, io::Error> {
    let mut length = None;
    let mut plain = true;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let bytes = value.as_bytes();
        plain &= length.is_none()
            && bytes.iter().all(u8::is_ascii_digit)
            && (bytes.len() == 1 || bytes.first() != Some(&b'0'));
        for part in bytes.split(|&b| b == b',') {
            // Digits, with only spaces and tabs around them (RFC 9110 §5.6.1's OWS, §8.6):
            // `trim_ascii` takes no other byte a header value can hold, where `str::trim`
            // would also take Unicode spaces sent as obs-text.
            let digits = part.trim_ascii();
            let n = Some(digits)
                .filter(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse::<u64>().ok())
                .ok_or_else(|| invalid("the upstream sent an invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid(
                    "the upstream sent conflicting Content-Length values",
                ));
            }
            length = Some(n);
        }
    }
    if let Some(n) = length.filter(|_| !plain) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(length)
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.failed.is_some() {
            if this.flush.as_ref().is_some_and(|flush| flush.awaited()) {
                return Poll::Pending;
            }
            return Poll::Ready(this.failed.take().map(Err));
        }
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(upload) = this.upload.as_mut() {
                let sent = upload.poll_send(&mut connection.io, cx);
                this.moved |= std::mem::take(&mut upload.out.progressed);
                if let Poll::Ready(sent) = sent {
                    this.upload = None;
                    if let Err(stop) = sent {
                        stop.end(connection);
                        this.lane = None;
                    }
                }
            }
            let read = &mut connection.read;
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(remaining) if !read.is_empty() => {
                    let (data, left) = take(read, remaining);
                    this.framing = Framing::Length(left);
                    if left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose if !read.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(read.split().freeze()))));
                }
                Framing::Chunked(chunk) => match decode_chunk(read, chunk) {
                    Ok(Decoded::Frame(next, frame)) => {
                        this.framing = Framing::Chunked(next);
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Ok(Decoded::Step(next)) => {
                        this.framing = Framing::Chunked(next);
                        continue;
                    }
                    Ok(Decoded::End(trailers)) => {
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(e, cx),
                },
                Framing::Length(_) | Framing::UntilClose => {}
            }
            // The buffer holds nothing more to decode: read.
            make_room(read, BODY_READ);
            let n = match tokio_util::io::poll_read_buf(Pin::new(&mut connection.io), cx, read) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return this.fail(e, cx),
                Poll::Pending => return this.wait(cx),
            };
            this.moved = true;
            if n == 0 {
                if this.framing == Framing::UntilClose {
                    this.framing = Framing::Done;
                    this.connection = None;
                    return Poll::Ready(None);
                }
                return this.fail(closed_early("the end of the response body"), cx);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.failed.is_some() {
            return SizeHint::default();
        }
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

enum Decoded {
    /// A frame to hand on, and the state after it.
    Frame(Chunk, Frame<Bytes>),
    /// Progress without a frame.
    Step(Chunk),
    /// The last chunk and the trailers, if any.
    End(Option<HeaderMap>),
    /// The buffer ends before the next step can be taken.
    NeedMore,
}

/// One step of the chunked decoder over the bytes in `read` (RFC 9112 §7.1).
fn decode_chunk(read: &mut BytesMut, chunk: Chunk) -> Result<Decoded, io::Error> {
    match chunk {
        Chunk::Size => {
            let Some(end) = read.iter().position(|&b| b == b'\n') else {
                if read.len() > MAX_CHUNK_LINE {
                    return Err(invalid("a chunk-size line is too long"));
                }
                return Ok(Decoded::NeedMore);
            };
            if end > MAX_CHUNK_LINE {
                return Err(invalid("a chunk-size line is too long"));
            }
            let line = read.split_to(end + 1);
            let line = line
                .strip_suffix(b"\r\n")
                .ok_or_else(|| invalid("a chunk-size line does not end in CRLF"))?;
            let end = line
                .iter()
                .position(|b| !b.is_ascii_hexdigit())
                .unwrap_or(line.len());
            let (digits, rest) = line.split_at(end);
            // Any number of leading zeros (`1*HEXDIG`); at most 16 digits after them fit a u64.
            let zeros = digits
                .iter()
                .position(|&b| b != b'0')
                .unwrap_or(digits.len());
            if digits.is_empty() || digits.len() - zeros > 16 {
                return Err(invalid("an invalid chunk size"));
            }
            // Only spaces and tabs (RFC 9112 §7.1.1's BWS), then extensions (`;name=value`),
            // may follow the size: not a CR, which some parsers end the line at.
            let blank = rest
                .iter()
                .position(|&b| b != b' ' && b != b'\t')
                .unwrap_or(rest.len());
            let rest = &rest[blank..];
            let extension_ok = rest
                .iter()
                .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b) || b >= 0x80);
            if !(rest.is_empty() || (rest.starts_with(b";") && extension_ok)) {
                return Err(invalid("an invalid chunk size"));
            }
            let mut size: u64 = 0;
            for &b in digits {
                let digit = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    b'A'..=b'F' => b - b'A' + 10,
                    _ => return Err(invalid("an invalid chunk size")),
                };
                size = (size << 4) | u64::from(digit);
            }
            Ok(Decoded::Step(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(remaining) => {
            if read.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let (data, left) = take(read, remaining);
            let next = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok(Decoded::Frame(next, Frame::data(data)))
        }
        Chunk::DataEnd => {
            if read.len() < 2 {
                return Ok(Decoded::NeedMore);
            }
            if &read[..2] != b"\r\n" {
                return Err(invalid("a chunk's data does not end in CRLF"));
            }
            read.advance(2);
            Ok(Decoded::Step(Chunk::Size))
        }
        Chunk::Trailers => {
            if read.starts_with(b"\r\n") {
                read.advance(2);
                return Ok(Decoded::End(None));
            }
            let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
                if read.len() > MAX_TRAILERS {
                    return Err(invalid("the trailer section is too long"));
                }
                return Ok(Decoded::NeedMore);
            };
            let section = read.split_to(end + 4);
            let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let parsed = httparse::parse_headers(&section, &mut lines)
                .map_err(|e| invalid(format!("malformed trailers: {e}")))?;
            let httparse::Status::Complete((_, lines)) = parsed else {
                return Err(invalid("malformed trailers"));
            };
            let mut trailers = HeaderMap::new();
            for line in lines {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(line.name.as_bytes()),
                    HeaderValue::from_bytes(line.value),
                ) else {
                    return Err(invalid("an invalid trailer"));
                };
                trailers.append(name, value);
            }
            // Connection-specific fields describe this hop only, and an HTTP/2 client's stream
            // would be reset for them (RFC 9113 §8.2.2).
            crate::headers::strip_hop_by_hop(
                &mut trailers,
                crate::headers::Direction::ToClient,
                None,
            );
            Ok(Decoded::End((!trailers.is_empty()).then_some(trailers)))
        }
    }
}

/// Builds the response for the client from a parsed head, its headers and body.
pub(crate) fn response(
    head: &Head,
    headers: HeaderMap,
    body: UpstreamBody,
) -> Response<UpstreamBody> {
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = headers;
    if let Some(reason) = &head.reason {
        response.extensions_mut().insert(reason.clone());
    }
    response
}

#[cfg(test)]
mod tests;
