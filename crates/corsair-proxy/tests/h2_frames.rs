//! HTTP/2 at the frame level, over h2c with frames written by hand: what a well-behaved client
//! library would not send (resets at chosen moments, unfinished header blocks, `OPTIONS *`).

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout;

/// RFC 9113 §6.9.
const WINDOW_UPDATE: u8 = 8;

use corsair_runtime::testing::h2::{
    DATA, END_HEADERS, END_STREAM, GOAWAY, H2Frame, HEADERS, PING, PREFACE, RST_STREAM, SETTINGS,
    frame, goaway_code, hpack_literal, parse_frames, request_block, reset_codes,
};

/// An upstream that reads the first request head, tells the test, and then reports every byte
/// it received once the proxy closes the connection.
async fn recording_upstream() -> (
    std::net::SocketAddr,
    mpsc::Receiver<()>,
    oneshot::Receiver<Vec<u8>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (head_tx, head_rx) = mpsc::channel(1);
    let (all_tx, all_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut told = false;
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if !told && got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"hello\r\n") {
                told = true;
                let _ = head_tx.send(()).await;
            }
        }
        let _ = all_tx.send(got);
    });
    (addr, head_rx, all_rx)
}

/// An h2 client sends a body of unknown length (no `content-length`: the proxy forwards it
/// chunked), then resets the stream with `NO_ERROR` before `END_STREAM`. The request is
/// incomplete (RFC 9113 §8.1: a request is complete only with END_STREAM; the NO_ERROR reset
/// of §8.1 is a *server's* way to stop an upload it has answered), so the upstream must see the
/// body break off, never the last chunk that says it is whole.
#[tokio::test]
async fn an_h2_upload_reset_with_no_error_never_reaches_the_upstream_complete() {
    let (upstream, mut head_rx, all_rx) = recording_upstream().await;
    let policy = support::policy_file("allowOrigins: [\"https://app.example.com\"]");
    let proxy = corsair_proxy::Proxy::start(support::config_at(&policy.path, upstream))
        .await
        .expect("starts");

    let mut client = TcpStream::connect(proxy.listen_addr())
        .await
        .expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("POST", "/upload", &[]),
    ));
    hello.extend(frame(DATA, 0, 1, b"hello"));
    client.write_all(&hello).await.expect("write");
    // Keep reading the proxy's frames so that it is never blocked on us.
    let (mut read, mut write) = client.into_split();
    tokio::spawn(async move {
        let mut sink = vec![0u8; 16384];
        while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    });

    timeout(Duration::from_secs(10), head_rx.recv())
        .await
        .expect("the upstream got the head and the first bytes in time");
    // The client gives up on its upload: RST_STREAM NO_ERROR (0x0), no END_STREAM ever.
    write
        .write_all(&frame(RST_STREAM, 0, 1, &0u32.to_be_bytes()))
        .await
        .expect("reset");

    let got = timeout(Duration::from_secs(10), all_rx)
        .await
        .expect("the proxy closed the upstream connection in time")
        .expect("bytes");
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(
        got.contains("transfer-encoding: chunked") && got.contains("5\r\nhello\r\n"),
        "{got:?}"
    );
    assert!(
        !got.ends_with("5\r\nhello\r\n0\r\n\r\n"),
        "an upload the client reset reached the upstream as a complete request: {got:?}"
    );
    drop(write);
    let _ = proxy.shutdown().await;
}

/// An upstream that counts request heads and never answers (an application still working on
/// them); each connection is held until the proxy closes it.
async fn counting_upstream() -> (std::net::SocketAddr, watch::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = watch::channel(0usize);
    let tx = Arc::new(tx);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let mut counted = false;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if !counted && got.windows(4).any(|w| w == b"\r\n\r\n") {
                        counted = true;
                        tx.send_modify(|n| *n += 1);
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// A client opens 100 streams, waits until the proxy has forwarded all 100, resets them
/// (RST_STREAM CANCEL) and does it again, on one connection. hyper drops each handler at the
/// reset, so the stream slot frees at once: neither the 200 concurrent streams nor h2's 20
/// "reset before accepted" streams bound anything, and the upstream gets an unbounded number
/// of requests whose answers nobody will read. CVE-2023-44487 is exactly this: the concurrency
/// limit is bypassed by resets. A proxy must end such a connection (nginx: `keepalive_requests`
/// 1000 per connection; Envoy: closes a connection once half of 500+ streams were reset before
/// their response). Here: 2,000 streams offered, the connection must be ended before 1,000
/// reset requests have reached the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_after_they_were_forwarded_are_bounded_per_connection() {
    let (upstream, mut seen) = counting_upstream().await;
    let policy = support::policy_file("allowOrigins: [\"https://app.example.com\"]");
    let proxy = corsair_proxy::Proxy::start(support::config_at(&policy.path, upstream))
        .await
        .expect("starts");

    let client = TcpStream::connect(proxy.listen_addr())
        .await
        .expect("connect");
    let (mut read, mut write) = client.into_split();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    write.write_all(&hello).await.expect("preface");
    // The proxy's side: ended by a GOAWAY or a close.
    let ended = Arc::new(AtomicBool::new(false));
    let (ended_tx, mut ended_rx) = watch::channel(false);
    {
        let ended = ended.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 16384];
            loop {
                match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                if parse_frames(&buf).iter().any(|f| f.kind == GOAWAY) {
                    break;
                }
            }
            ended.store(true, Ordering::SeqCst);
            let _ = ended_tx.send(true);
        });
    }

    let block = request_block("GET", "/work", &[]);
    let mut next_id = 1u32;
    let mut offered = 0usize;
    for _batch in 0..20 {
        if ended.load(Ordering::SeqCst) {
            break;
        }
        let ids: Vec<u32> = (0..100).map(|i| next_id + 2 * i).collect();
        next_id += 200;
        let mut bytes = Vec::new();
        for &id in &ids {
            bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        }
        if write.write_all(&bytes).await.is_err() {
            break;
        }
        offered += ids.len();
        // Until the proxy has forwarded every stream offered so far (or ended the connection).
        let target = offered;
        let waited = timeout(Duration::from_secs(10), async {
            tokio::select! {
                _ = seen.wait_for(|n| *n >= target) => {}
                _ = ended_rx.wait_for(|e| *e) => {}
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "the upstream got {} of {target}",
            *seen.borrow()
        );
        let mut resets = Vec::new();
        for &id in &ids {
            resets.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        if write.write_all(&resets).await.is_err() {
            break;
        }
    }
    let reached = *seen.borrow();
    let was_ended = ended.load(Ordering::SeqCst);
    eprintln!("offered {offered} streams, {reached} reached the upstream, ended: {was_ended}");
    assert!(
        was_ended && reached < 1000,
        "one connection made the proxy forward {reached} requests it reset after forwarding \
         ({offered} streams offered, connection ended: {was_ended})"
    );
    let dropped = "corsair_proxy_connections_dropped_total{cause=\"rapid_reset\"}";
    assert_eq!(support::metric(&proxy, dropped).await, 1.0);
    let _ = proxy.shutdown().await;
}

/// Writes `bytes`, then reads (discarding the proxy's SETTINGS and the like) until the proxy
/// closes the connection; how long that took, or `None` after `limit`.
async fn closed_within(
    addr: std::net::SocketAddr,
    bytes: Vec<u8>,
    limit: Duration,
) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let start = Instant::now();
    stream.write_all(&bytes).await.expect("write");
    let mut sink = vec![0u8; 16384];
    tokio::time::timeout(limit, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await
    .ok()
    .map(|()| start.elapsed())
}

/// `--header-read-timeout` is "seconds a client has to send a request's headers (also the
/// wait for a new connection's first bytes, and the keep-alive wait)" (`--help`), and
/// docs/reliability.md: "A slowloris connection lives at most that long"; a connection that
/// sends only `PRI * HTTP/2.0\r\n` is closed at it. An h2c connection that sends the whole
/// preface and then no request, or a HEADERS frame without END_HEADERS (a header block it never
/// finishes), is held until the idle timeout instead (300 s by default), and a client that
/// sends one CONTINUATION frame per idle period holds one for 6 idle periods (h2 allows 5
/// CONTINUATION frames at a 64 KiB header list).
#[tokio::test]
async fn an_h2_connection_that_never_finishes_a_request_head_is_closed_at_the_header_read_timeout()
{
    let h = support::harness_with("allowOrigins: [\"https://app.example.com\"]", |c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(20);
    })
    .await;
    let addr = h.proxy.listen_addr();
    let limit = Duration::from_secs(4);

    let mut preface_only = PREFACE.to_vec();
    preface_only.extend(frame(SETTINGS, 0, 0, &[]));

    // `:method GET`, `:scheme http`, then nothing: the block is never ended (no END_HEADERS).
    let mut half_head = preface_only.clone();
    half_head.extend(frame(HEADERS, END_STREAM, 1, &[0x82, 0x86]));

    let (a, b) = tokio::join!(
        closed_within(addr, preface_only, limit),
        closed_within(addr, half_head, limit)
    );
    assert!(
        a.is_some() && b.is_some(),
        "with --header-read-timeout 1: an h2c connection that sent its preface and no request \
         closed after {a:?}, one inside an unfinished header block after {b:?} (None: still open \
         after {limit:?})"
    );
    let _ = h.proxy.shutdown().await;
}

/// The first byte of the HEADERS block the proxy answers stream 1 with (HPACK static table:
/// 0x88 is `:status 200`, 0x8c `:status 400`), within 5 s.
async fn first_status_byte(stream: &mut TcpStream) -> Option<u8> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            let answer = parse_frames(&buf)
                .into_iter()
                .find(|f| f.kind == HEADERS && f.stream == 1 && !f.payload.is_empty());
            if let Some(headers) = answer {
                return Some(headers.payload[0]);
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// RFC 9113 §8.3.1: `:path` is `*` for an OPTIONS request in asterisk form, and RFC 9112 §3.2.4
/// has a proxy forward it as `OPTIONS * HTTP/1.1`, which the proxy does for an HTTP/1.1 client.
/// An h2 client gets a 400 `invalid request target` instead: `to_upstream` takes the
/// `:scheme`/`:authority` of every h2 request for an absolute form and refuses a path that does
/// not start with `/` or `?`.
#[tokio::test]
async fn options_asterisk_over_h2_is_forwarded_like_http_1_1() {
    let h = support::harness("allowOrigins: [\"https://app.example.com\"]").await;

    // HTTP/1.1 first: forwarded.
    let mut h1 = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    h1.write_all(b"OPTIONS * HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = support::read_to_close(&mut h1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(h.upstream.last().uri, "*");
    assert_eq!(h.upstream.requests(), 1);

    // The same over h2c.
    let mut h2 = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    let block = request_block("OPTIONS", "*", &[]);
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    h2.write_all(&bytes).await.expect("write");
    let status = first_status_byte(&mut h2).await;
    assert_eq!(
        (status, h.upstream.requests()),
        (Some(0x88), 2),
        "OPTIONS * over h2: first byte of the answer's header block {status:02x?} (0x8c: 400), \
         {} requests reached the upstream (HTTP/1.1's and this one expected)",
        h.upstream.requests()
    );
    drop(h2);
    let _ = h.proxy.shutdown().await;
}

/// Stream 1, a GET the upstream answers after 300 ms, is in flight when stream 3 sends
/// `CONNECT api.test:443` with `content-length: 5`. hyper's h2 server refuses such a CONNECT
/// by resetting its stream *and returning from the whole connection* (hyper 1.12
/// `proto/h2/server.rs:286-290`, `return Poll::Ready(Ok(()))`), so the proxy's connection ends
/// and stream 1 is lost without a GOAWAY naming it. RFC 9113 §8.1.1: a malformed request is a
/// stream error; other streams are not affected. (The proxy answers CONNECT with 501 itself.)
#[tokio::test]
#[ignore = "hyper 1.12 ends the whole connection (proto/h2/server.rs, CONNECT with a body): run when hyper is upgraded"]
async fn a_connect_with_a_body_does_not_end_the_other_streams_of_its_connection() {
    let h = support::harness("allowOrigins: [\"https://app.example.com\"]").await;
    let mut stream = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    let get = request_block("GET", "/slow?ms=300", &[]);
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get));
    stream.write_all(&bytes).await.expect("write");
    // Once the upstream has stream 1's request, the CONNECT.
    tokio::time::timeout(Duration::from_secs(5), async {
        while h.upstream.requests() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("stream 1 forwarded");
    let mut connect = vec![0x02, 7];
    connect.extend_from_slice(b"CONNECT");
    connect.extend_from_slice(&[0x01, 12]);
    connect.extend_from_slice(b"api.test:443");
    connect.extend(hpack_literal(b"content-length", b"5"));
    let mut bytes = frame(HEADERS, END_HEADERS, 3, &connect);
    bytes.extend(frame(DATA, END_STREAM, 3, b"hello"));
    stream.write_all(&bytes).await.expect("write");

    // Until stream 1 ends, the connection closes, or 5 s pass.
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    let mut ended: HashSet<u32> = HashSet::new();
    let mut goaway = false;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return true;
            }
            buf.extend_from_slice(&chunk[..n]);
            let frames = parse_frames(&buf);
            ended = frames
                .iter()
                .filter(|f| (f.kind == HEADERS || f.kind == DATA) && f.flags & END_STREAM != 0)
                .map(|f| f.stream)
                .collect();
            goaway = frames.iter().any(|f| f.kind == GOAWAY);
            if ended.contains(&1) {
                return false;
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(
        ended.contains(&1),
        "stream 1 (in flight) was never answered after a CONNECT with a body on stream 3: \
         connection closed: {closed}, GOAWAY seen: {goaway}"
    );
    let _ = h.proxy.shutdown().await;
}

/// Sends a PING every 200 ms and reads what the proxy sends, until `done` holds for the frames
/// read so far, the proxy closes the connection, or 6 s pass. What was read, and when `done`
/// first held.
async fn pinging(
    stream: &mut TcpStream,
    done: impl Fn(&[H2Frame]) -> bool,
) -> (Vec<H2Frame>, Option<Instant>) {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    while start.elapsed() < Duration::from_secs(6) {
        if stream.write_all(&frame(PING, 0, 0, &[7; 8])).await.is_err() {
            break;
        }
        let next_ping = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(read) = tokio::time::timeout_at(next_ping, stream.read(&mut chunk)).await {
            match read {
                Ok(0) | Err(_) => return (parse_frames(&buf), None),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if done(&parse_frames(&buf)) {
                return (parse_frames(&buf), Some(Instant::now()));
            }
        }
    }
    (parse_frames(&buf), None)
}

/// A proxy in front of `upstream` with a 1 s idle timeout, its policy file (kept while the
/// proxy runs), and a client connection to it.
async fn connected_with_idle_1s(
    upstream: std::net::SocketAddr,
) -> (corsair_proxy::Proxy, support::PolicyFile, TcpStream) {
    let policy = support::policy_file("allowOrigins: [\"https://app.example.com\"]");
    let mut config = support::config_at(&policy.path, upstream);
    config.idle_timeout = Duration::from_secs(1);
    let proxy = corsair_proxy::Proxy::start(config).await.expect("starts");
    let stream = TcpStream::connect(proxy.listen_addr())
        .await
        .expect("connect");
    (proxy, policy, stream)
}

const STREAMS_STALLED: &str = "corsair_proxy_http2_streams_stalled_total";

/// An h2c preface that gives streams no window (`SETTINGS_INITIAL_WINDOW_SIZE`, 0x4, = 0), and
/// `GET /endless` on stream 1.
fn no_window_get_endless() -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    let get = request_block("GET", "/endless", &[]);
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get));
    bytes
}

/// A client that gives a stream no flow-control window (`SETTINGS_INITIAL_WINDOW_SIZE` 0) gets
/// the response head, and the body can never be sent. Its PINGs move bytes on the connection,
/// so a timer of the connection's bytes never fires: the stream, its upstream connection and
/// the application's work stay held for as long as the client likes. The stream must be reset
/// (`CANCEL`, not a dropped connection) once it went `--idle-timeout` without progress, and
/// its upstream connection closed.
#[tokio::test]
async fn a_stream_given_no_window_is_reset_though_pings_keep_its_connection_busy() {
    let (upstream, mut upstream_closed) = endless_upstream().await;
    let (proxy, _policy, mut stream) = connected_with_idle_1s(upstream).await;
    let sent = Instant::now();
    stream
        .write_all(&no_window_get_endless())
        .await
        .expect("write");

    let (frames, reset) = pinging(&mut stream, |frames| {
        frames.iter().any(|f| f.kind == RST_STREAM && f.stream == 1)
    })
    .await;
    assert!(
        frames.iter().any(|f| f.kind == HEADERS && f.stream == 1),
        "the response head was sent: {frames:?}"
    );
    let Some(took) = reset.map(|at| at - sent) else {
        panic!(
            "stream 1 was not reset within 6 s with --idle-timeout 1 (connection closed or \
             still open without it): {frames:?}"
        );
    };
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "reset after {took:?}"
    );
    assert_eq!(reset_codes(&frames), [8], "one reset, CANCEL: {frames:?}");
    assert!(
        timeout(Duration::from_secs(2), &mut upstream_closed)
            .await
            .is_ok(),
        "the upstream connection of the reset stream is still open"
    );
    assert_eq!(support::metric(&proxy, STREAMS_STALLED).await, 1.0);
    let _ = proxy.shutdown().await;
}

/// An HTTP/2 connection with nothing in flight is closed after `--idle-timeout`, as an HTTP/1.1
/// one is, though the client keeps sending PINGs: they are not requests (nginx's HTTP/2 idle
/// timer does not count them either).
#[tokio::test]
async fn an_h2_connection_that_only_pings_is_closed_at_the_idle_timeout() {
    let h = support::harness_with("allowOrigins: [\"https://app.example.com\"]", |c| {
        c.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("GET", "/", &[]),
    ));
    // The idle time starts after the request's last wake, so after this.
    let sent = Instant::now();
    stream.write_all(&bytes).await.expect("write");
    let (frames, answered) = pinging(&mut stream, |frames| {
        frames.iter().any(|f| {
            f.stream == 1 && (f.kind == HEADERS || f.kind == DATA) && f.flags & END_STREAM != 0
        })
    })
    .await;
    assert!(answered.is_some(), "stream 1 was not answered: {frames:?}");

    let (frames, goaway) = pinging(&mut stream, |frames| goaway_code(frames).is_some()).await;
    let Some(took) = goaway.map(|at| at - sent) else {
        panic!("no GOAWAY within 6 s of PINGs with --idle-timeout 1: {frames:?}");
    };
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "GOAWAY {took:?} after the request"
    );
    assert_eq!(goaway_code(&frames), Some(0), "NO_ERROR");
    let _ = h.proxy.shutdown().await;
}

/// An upstream that answers one request with a body it never ends, writing until the proxy
/// closes the connection, which it then reports.
async fn endless_upstream() -> (std::net::SocketAddr, oneshot::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed_tx, closed_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n".to_vec();
        answer.extend_from_slice(&[b'x'; 16384]);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        // The proxy reads what fits in its buffers, then the writes block until it closes.
        while stream.write_all(&[b'x'; 16384]).await.is_ok() {}
        let _ = closed_tx.send(());
    });
    (addr, closed_rx)
}

/// A client that reads slowly but steadily (16 KiB of window every 200 ms, no PINGs) takes each
/// piece of the body (one upstream read, at most 16 KiB or so) well within `--idle-timeout`:
/// neither the stream nor the connection may be cut while it does. (A stream's task is woken
/// when a piece has gone out, not at each WINDOW_UPDATE, so a reader slower than a piece per
/// idle timeout is reset: 55 bytes/s at the default 300 s.)
#[tokio::test]
async fn a_stream_read_slowly_but_steadily_is_not_reset() {
    let (upstream, _upstream_closed) = endless_upstream().await;
    let (proxy, _policy, mut stream) = connected_with_idle_1s(upstream).await;
    stream
        .write_all(&no_window_get_endless())
        .await
        .expect("write");

    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        // 16 KiB more for stream 1, and as much for the connection.
        let mut update = frame(WINDOW_UPDATE, 0, 1, &16384u32.to_be_bytes());
        update.extend(frame(WINDOW_UPDATE, 0, 0, &16384u32.to_be_bytes()));
        stream
            .write_all(&update)
            .await
            .expect("the connection stays open");
        let next = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(read) = tokio::time::timeout_at(next, stream.read(&mut chunk)).await {
            let n = read.expect("read");
            assert!(
                n > 0,
                "the proxy closed the connection after {:?}",
                start.elapsed()
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    let frames = parse_frames(&buf);
    let received: usize = frames
        .iter()
        .filter(|f| f.kind == DATA && f.stream == 1)
        .map(|f| f.payload.len())
        .sum();
    assert!(
        !frames
            .iter()
            .any(|f| f.kind == RST_STREAM || f.kind == GOAWAY),
        "cut while it read: {:?}",
        frames.iter().map(|f| f.kind).collect::<Vec<_>>()
    );
    // 15 updates of 16 KiB in 3 s, answered with DATA.
    assert!(received >= 100_000, "{received} bytes of DATA in 3 s");
    assert_eq!(support::metric(&proxy, STREAMS_STALLED).await, 0.0);
    let _ = proxy.shutdown().await;
}

/// An upstream that answers at once and then reads the whole request body (an early answer);
/// it reports how many body bytes it got once it has `expected` or the proxy closes.
async fn early_answer_upstream(
    expected: usize,
) -> (std::net::SocketAddr, oneshot::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
        let mut body = got.len() - head_end;
        while body < expected {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body += n,
            }
        }
        let _ = tx.send(body);
    });
    (addr, rx)
}

/// The rest of an HTTP/2 upload that the upstream answered early is sent by a task of the
/// proxy's own, after the stream's task has ended. Its progress is the connection's activity:
/// a client still uploading must not get a GOAWAY, nor lose the rest of its body.
#[tokio::test]
async fn an_h2_upload_answered_early_keeps_its_connection_while_it_moves() {
    const CHUNK: usize = 500;
    const CHUNKS: usize = 10;
    let (upstream, got) = early_answer_upstream(CHUNK * CHUNKS).await;
    let (proxy, _policy, mut stream) = connected_with_idle_1s(upstream).await;
    let length = (CHUNK * CHUNKS).to_string();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("POST", "/upload", &[(b"content-length", length.as_bytes())]),
    ));
    bytes.extend(frame(DATA, 0, 1, &[b'u'; CHUNK]));
    stream.write_all(&bytes).await.expect("write");

    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    for i in 1..CHUNKS {
        let next = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(read) = tokio::time::timeout_at(next, stream.read(&mut chunk)).await {
            let n = read.expect("read");
            assert!(n > 0, "the proxy closed the connection before chunk {i}");
            buf.extend_from_slice(&chunk[..n]);
        }
        let last = if i == CHUNKS - 1 { END_STREAM } else { 0 };
        stream
            .write_all(&frame(DATA, last, 1, &[b'u'; CHUNK]))
            .await
            .expect("the connection stays open");
    }
    let frames = parse_frames(&buf);
    assert!(
        frames
            .iter()
            .any(|f| f.stream == 1 && f.kind == DATA && f.flags & END_STREAM != 0),
        "the early answer came: {frames:?}"
    );
    assert_eq!(goaway_code(&frames), None, "GOAWAY while the upload moved");
    let got = timeout(Duration::from_secs(5), got)
        .await
        .expect("the upstream's report")
        .expect("the upstream read the body");
    assert_eq!(got, CHUNK * CHUNKS, "body bytes the upstream received");
    let _ = proxy.shutdown().await;
}
