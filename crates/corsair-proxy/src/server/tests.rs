//! A connection served over an in-memory client stream with a small buffer, which fills the
//! moment the client stops reading: hyper then holds what the socket does not take.

use std::path::PathBuf;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// Body bytes the upstream sends of the `4 * SENT` it promises, before it closes. Less than
/// hyper's write buffer holds, so hyper reads them all, and the close, while the client is not
/// reading; far more than the client's stream takes.
const SENT: usize = 40_000;

fn byte(i: usize) -> u8 {
    b'a' + (i % 26) as u8
}

/// An upstream that answers every request with a head promising `4 * SENT` bytes, then sends
/// `SENT` of them and closes.
async fn upstream_that_dies_mid_body() -> SocketAddr {
    let mut answer =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 4 * SENT).into_bytes();
    answer.extend((0..SENT).map(byte));
    corsair_runtime::testing::upstream::answers_each_connection(answer, Duration::ZERO).await
}

/// The client's stream as the proxy sees a `TcpStream`: it takes vectored writes, so hyper
/// queues its buffers (its `Queue` write strategy) instead of copying them into one.
struct Vectored(DuplexStream);

impl AsyncRead for Vectored {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Vectored {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// How the proxy's end of the client stream takes writes.
#[derive(Debug, Clone, Copy)]
enum Writes {
    /// One buffer at a time: hyper copies its buffers into one (`Flatten`).
    Plain,
    /// Vectored, as a `TcpStream`.
    Vectored,
}

/// Serves one client connection over a 4 KiB in-memory stream, and returns the client's end.
async fn client(idle_timeout: Duration, writes: Writes, protocol: Protocol) -> DuplexStream {
    let upstream = upstream_that_dies_mid_body().await;
    let mut config = ProxyConfig::new(
        PathBuf::from("/nonexistent/policy.yaml"),
        format!("http://{upstream}").parse().expect("a URI"),
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    );
    config.idle_timeout = idle_timeout;
    // No policy file: no origin is allowed, and a request without `Origin` is proxied.
    let store = Arc::new(PolicyStore::load(&config.policy_path, true).expect("no policy yet"));
    let abort = CancellationToken::new();
    let tasks = TaskTracker::new();
    let upstream = Upstream::new(&config, &tasks, &abort).expect("an upstream");
    let state = Arc::new(State::new(
        config,
        store,
        Arc::new(Metrics::new()),
        upstream,
        abort.clone(),
        tasks,
    ));
    let (client, server) = tokio::io::duplex(4096);
    let peer = "10.0.0.7:40000".parse().expect("addr");
    let shutdown = CancellationToken::new();
    match writes {
        Writes::Plain => tokio::spawn(serve_known(server, protocol, peer, state, shutdown, abort)),
        Writes::Vectored => tokio::spawn(serve_known(
            Vectored(server),
            protocol,
            peer,
            state,
            shutdown,
            abort,
        )),
    };
    client
}

/// The HTTP/1.1 client's end, its request sent.
async fn http1_client(idle_timeout: Duration, writes: Writes) -> DuplexStream {
    let mut client = client(idle_timeout, writes, Protocol::Http1).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .expect("write");
    client
}

/// The response body the client read, after the head.
async fn read_body(client: &mut DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out))
        .await
        .expect("the proxy ends the connection")
        .expect("read");
    assert!(out.starts_with(b"HTTP/1.1 200"), "{out:?}");
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    out.split_off(end + 4)
}

/// The upstream dies while the client is not reading: once it reads, the client gets every
/// byte the upstream sent, then the close (the response is shorter than its length).
#[tokio::test]
async fn an_upstream_that_dies_while_the_client_is_not_reading_loses_none_of_its_bytes() {
    for writes in [Writes::Plain, Writes::Vectored] {
        let mut client = http1_client(Duration::from_secs(300), writes).await;
        // Long enough for the proxy to have read all the upstream sent, and its close.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let body = read_body(&mut client).await;
        assert_eq!(
            body.len(),
            SENT,
            "{writes:?}: body bytes of the {SENT} the upstream sent"
        );
        assert!(
            body.iter().enumerate().all(|(i, &b)| b == byte(i)),
            "{writes:?}: the body came out of order"
        );
    }
}

/// An HTTP/2 stream's body is polled on a task of its own, which the connection's flush does
/// not wake: its failure must not wait for one. The stream is reset, at once.
#[tokio::test]
async fn an_upstream_that_dies_mid_body_resets_an_http2_stream_at_once() {
    let client = client(Duration::from_secs(300), Writes::Vectored, Protocol::Http2).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(client),
    )
    .await
    .expect("an h2c connection");
    tokio::spawn(connection);
    let request = http::Request::get("http://api.test/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("a response head");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut got = 0;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => got += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(err)) => return Some(err),
                None => return None,
            }
        }
    })
    .await
    .expect("the stream ends within seconds, not at the idle timeout");
    let err = ended.expect("the cut body ends in an error, not as a whole body");
    assert!(got <= SENT, "{got} bytes of the {SENT} sent");
    assert!(
        format!("{err:?}").contains("INTERNAL_ERROR"),
        "not a stream reset: {err:?}"
    );
}

/// The wait for the client to read what hyper holds ends with the idle timeout: a client that
/// never reads does not hold the connection open beyond it.
#[tokio::test]
async fn a_client_that_never_reads_a_failed_body_is_dropped_at_the_idle_timeout() {
    let started = Instant::now();
    let mut client = http1_client(Duration::from_millis(200), Writes::Vectored).await;
    let mut out = Vec::new();
    // Nothing read for well past the idle timeout: the proxy has dropped the connection by
    // then, so the read gets what the stream held and its end, not the whole body.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out))
        .await
        .expect("the proxy ended the connection")
        .expect("read");
    assert!(
        out.len() < SENT,
        "the client got {} bytes though it read nothing while the connection was open",
        out.len()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
