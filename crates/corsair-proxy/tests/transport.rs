//! Transport behaviour over real sockets: streaming both ways, HTTP/2, upgrades, headers.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use corsair_runtime::testing::upstream::{CHUNK, answers_each_connection};
use http::{HeaderValue, Request, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Conn, empty, harness, harness_with, request, send, values};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const POLICY: &str = "allowOrigins: [\"https://app.example.com\"]";
const CHUNKS: usize = 64;

#[tokio::test]
async fn a_64_mib_upload_is_streamed_not_buffered() {
    let h = harness(POLICY).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(futures::stream::poll_fn({
        let mut rx = rx;
        move |cx| rx.poll_recv(cx)
    }));
    let mut conn = Conn::open(h.proxy.listen_addr()).await;
    let req = request("POST", "/upload")
        .body(body.boxed())
        .expect("valid request");
    let response = tokio::spawn(async move { conn.send(req).await });

    tx.send(Ok(Frame::data(Bytes::from(vec![b'u'; CHUNK]))))
        .await
        .expect("first chunk accepted");
    // The rest is held back until the upstream has seen the first bytes: a proxy that buffered
    // the whole body would never get there.
    timeout(
        Duration::from_secs(10),
        h.upstream.state.upload_started.notified(),
    )
    .await
    .expect("the upstream received the first bytes before the client finished sending");
    for _ in 1..CHUNKS {
        tx.send(Ok(Frame::data(Bytes::from(vec![b'u'; CHUNK]))))
            .await
            .expect("chunk accepted");
    }
    drop(tx);
    let response = timeout(Duration::from_secs(30), response)
        .await
        .expect("upload finished in time")
        .expect("client task");
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), (CHUNKS * CHUNK).to_string().as_bytes());
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_64_mib_download_is_streamed_not_buffered() {
    let h = harness(POLICY).await;
    let stream = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = request("GET", &format!("/download?chunks={CHUNKS}"))
        .header("origin", "https://app.example.com")
        .body(empty())
        .expect("valid request");
    let response = timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("response head before the body is complete")
        .expect("response");
    assert_eq!(
        values(response.headers(), "access-control-allow-origin"),
        ["https://app.example.com"]
    );
    let mut body = response.into_body();
    let mut total = 0usize;
    let mut acked = false;
    while let Some(frame) = timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the next bytes arrive: the upstream waits for us after its first chunk")
    {
        if let Some(data) = frame.expect("body frame").data_ref() {
            total += data.len();
        }
        if !acked && total > 0 {
            // The upstream produces nothing more until the first bytes reached the client.
            h.upstream.state.download_acked.notify_one();
            acked = true;
        }
    }
    assert_eq!(total, CHUNKS * CHUNK);
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_and_forwarded_as_http_1_1() {
    let h = harness(POLICY).await;
    let stream = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    // Several concurrent streams on the one connection.
    let mut streams = Vec::new();
    for i in 0..4 {
        let mut sender = sender.clone();
        streams.push(tokio::spawn(async move {
            let req = Request::builder()
                .uri(format!("http://api.test/h2/{i}"))
                .header("origin", "https://app.example.com")
                // HTTP/2 clients may send each cookie as a field of its own.
                .header("cookie", "a=1")
                .header("cookie", format!("b={i}"))
                .body(empty())
                .expect("valid request");
            let response = sender.send_request(req).await.expect("h2 response");
            let version = response.version();
            let acao = values(response.headers(), "access-control-allow-origin");
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (version, acao, body)
        }));
    }
    for stream in streams {
        let (version, acao, body) = stream.await.expect("stream task");
        assert_eq!(version, Version::HTTP_2);
        assert_eq!(acao, ["https://app.example.com"]);
        assert_eq!(body, "hello");
    }
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 4);
    for request in seen {
        assert_eq!(request.version, Version::HTTP_11);
        assert_eq!(values(&request.headers, "host"), ["api.test"]);
        let i = request.uri.strip_prefix("/h2/").expect("an /h2/ request");
        // One `Cookie` line for HTTP/1.1 (RFC 9113 §8.2.3).
        assert_eq!(values(&request.headers, "cookie"), [format!("a=1; b={i}")]);
    }
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_websocket_upgrade_is_tunnelled_both_ways() {
    let h = harness(POLICY).await;
    let mut stream = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("write upgrade request");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    for message in [&b"ping"[..], b"a longer second message"] {
        stream.write_all(message).await.expect("write over tunnel");
        let mut echoed = vec![0; message.len()];
        timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .expect("read echo");
        assert_eq!(echoed, message);
    }
    let seen = h.upstream.last();
    assert_eq!(values(&seen.headers, "upgrade"), ["websocket"]);
    assert_eq!(values(&seen.headers, "connection"), ["upgrade"]);
    assert_eq!(
        values(&seen.headers, "sec-websocket-key"),
        ["dGhlIHNhbXBsZSBub25jZQ=="]
    );
    drop(stream);
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let h = harness_with(POLICY, |c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .expect("write upgrade request");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"x").await.expect("write");
    let mut echoed = [0u8; 1];
    stream.read_exact(&mut echoed).await.expect("echo");
    let start = std::time::Instant::now();
    let mut rest = Vec::new();
    timeout(Duration::from_secs(3), stream.read_to_end(&mut rest))
        .await
        .expect("the idle tunnel was closed")
        .expect("clean close");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    assert!(rest.is_empty());
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// Only HTTP/1.1 upgrades other than `h2c` are tunnelled: an `h2c` upgrade (its HTTP/2 requests
/// would pass no CORS decision) and an HTTP/1.0 one (hyper cannot switch that connection) are
/// forwarded as plain requests, without `Upgrade`.
#[tokio::test]
async fn h2c_and_http_1_0_upgrades_are_plain_requests() {
    let h = harness(POLICY).await;
    for request in [
        &b"GET /h2c HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
           Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"[..],
        b"GET /old HTTP/1.0\r\nHost: api.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        // A byte outside ASCII beside `h2c` hides nothing.
        b"GET /h2c HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: h2c, \xff\r\n\r\n",
    ] {
        let head = head_of(h.proxy.listen_addr(), request).await;
        assert_eq!(head.split(' ').nth(1), Some("200"), "{head}");
        let seen = h.upstream.last();
        for gone in ["upgrade", "http2-settings", "connection"] {
            assert!(
                !seen.headers.contains_key(gone),
                "{gone}: {:?}",
                seen.headers
            );
        }
    }
    assert_eq!(h.upstream.seen().len(), 3);
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// A request body under a transfer coding other than `chunked` (which hyper decodes) would
/// reach the upstream still coded: 501, and nothing goes up (RFC 9112 §6.1).
#[tokio::test]
async fn a_request_transfer_coding_other_than_chunked_is_a_501() {
    let h = harness(POLICY).await;
    // Also the coding on a line of its own, and chunked applied twice (its inner framing would
    // go up as the body).
    for (codings, status) in [
        (&b"Transfer-Encoding: gzip, chunked\r\n"[..], "HTTP/1.1 501"),
        (
            b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            "HTTP/1.1 501",
        ),
        (b"Transfer-Encoding: chunked, chunked\r\n", "HTTP/1.1 400"),
    ] {
        let request = [
            &b"POST /te HTTP/1.1\r\nHost: api.test\r\n"[..],
            codings,
            b"\r\n5\r\nhello\r\n0\r\n\r\n",
        ]
        .concat();
        let head = head_of(h.proxy.listen_addr(), &request).await;
        assert!(head.starts_with(status), "{head}");
    }
    assert!(h.upstream.seen().is_empty());
    // A chunked body alone goes up.
    let response = send(
        h.proxy.listen_addr(),
        request("POST", "/te").header("transfer-encoding", "chunked"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.upstream.seen().len(), 1);
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host` is a 400; an HTTP/1.0 one, which may
/// have none, goes up with an empty `Host`, as HTTP/1.1 wants.
#[tokio::test]
async fn a_request_without_host() {
    let h = harness(POLICY).await;
    for (request, status) in [
        (&b"GET /nohost HTTP/1.1\r\n\r\n"[..], "HTTP/1.1 400"),
        (b"GET /nohost HTTP/1.0\r\n\r\n", "HTTP/1.0 200"),
        // Not even when `Connection` names it.
        (
            b"GET /nohost HTTP/1.0\r\nConnection: host\r\n\r\n",
            "HTTP/1.0 200",
        ),
    ] {
        let head = head_of(h.proxy.listen_addr(), request).await;
        assert!(head.starts_with(status), "{head}");
    }
    let seen = h.upstream.seen();
    assert_eq!(seen.len(), 2, "only the HTTP/1.0 requests went up");
    for request in &seen {
        assert_eq!(values(&request.headers, "host"), [""]);
    }
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// A target or `Host` that is no host and port is a 400, never sent on: the authority form
/// outside CONNECT (RFC 9112 §3.2.3), a port past 65535, a `Host` with a space (RFC 9112
/// §3.2). IPv6 literals and ports in range go up.
#[tokio::test]
async fn a_target_or_host_that_is_no_authority_is_a_400() {
    let h = harness(POLICY).await;
    for request in [
        &b"GET x HTTP/1.1\r\nHost: api.test\r\n\r\n"[..],
        b"GET api.test:80 HTTP/1.1\r\nHost: api.test\r\n\r\n",
        b"GET http://api.test:99999/ HTTP/1.1\r\nHost: api.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api.test:8o\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api.test:65536\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: evil.example@api.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: []\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [1.2.3.4]\r\n\r\n",
    ] {
        let head = head_of(h.proxy.listen_addr(), request).await;
        assert!(
            head.starts_with("HTTP/1.1 400"),
            "{}: {head}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(h.upstream.seen().len(), 0, "none of them went up");
    for (request, host) in [
        (
            &b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"[..],
            "[::1]:8080",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: api.test:65535\r\n\r\n",
            "api.test:65535",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: xn--bcher-kva.example\r\n\r\n",
            "xn--bcher-kva.example",
        ),
        (
            b"GET http://api.test:8080/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "api.test:8080",
        ),
    ] {
        let head = head_of(h.proxy.listen_addr(), request).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{host}: {head}");
        let seen = h.upstream.seen();
        let last = seen.last().expect("went up");
        assert_eq!(values(&last.headers, "host"), [host]);
    }
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// Writes `request` on a new connection to `addr` and reads the response head.
async fn head_of(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    read_head(&mut stream).await
}

/// Reads up to the end of a response head.
async fn read_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("read");
        assert_eq!(
            n, 1,
            "connection closed before the end of the head: {head:?}"
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_forwarded_headers_appended() {
    let h = harness(POLICY).await;
    let response = send(
        h.proxy.listen_addr(),
        request("GET", "/hops")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            // A line with a byte outside ASCII still names its fields.
            .header(
                "connection",
                HeaderValue::from_bytes(b"x-hop2, \xff").expect("obs-text"),
            )
            .header("x-hop2", "secret")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-end-to-end", "kept"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let seen = h.upstream.last();
    for gone in ["x-hop", "x-hop2", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(values(&seen.headers, "x-end-to-end"), ["kept"]);
    assert_eq!(
        values(&seen.headers, "x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(values(&seen.headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&seen.headers, "x-forwarded-host"), ["api.test"]);
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_absolute_request_target_never_chooses_the_destination() {
    let h = harness(POLICY).await;
    // A port nothing listens on: were it used, the answer would be a 502.
    let response = send(
        h.proxy.listen_addr(),
        http::Request::builder()
            .uri("http://127.0.0.1:9/steer?x=1")
            .header("host", "127.0.0.1:9"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), "hello");
    let seen = h.upstream.last();
    assert_eq!(seen.uri, "/steer?x=1");
    assert_eq!(values(&seen.headers, "host"), ["127.0.0.1:9"]);
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// RFC 9112 §3.2.2: with an absolute-form target, the target's authority is the host and `Host`
/// is ignored, for the CORS decision and towards the upstream alike.
#[tokio::test]
async fn an_absolute_request_target_names_the_host() {
    let h = harness(POLICY).await;
    // The allowed origin's own host as the target: a same-origin request, so no CORS headers,
    // whatever `Host` says. Taken from `Host`, it would be an allowed cross-origin request.
    let head = head_of(
        h.proxy.listen_addr(),
        b"GET http://app.example.com/items HTTP/1.1\r\nHost: api.test\r\n\
          Origin: https://app.example.com\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    let seen = h.upstream.last();
    assert_eq!(seen.uri, "/items");
    assert_eq!(values(&seen.headers, "host"), ["app.example.com"]);
    assert_eq!(
        values(&seen.headers, "x-forwarded-host"),
        ["app.example.com"]
    );

    // Userinfo has no place in an HTTP target (RFC 9110 §4.2.4): refused whether the request
    // would be forwarded or answered by the proxy (an allowed preflight).
    for request in [
        &b"GET http://user@api.test/items HTTP/1.1\r\nHost: api.test\r\n\r\n"[..],
        b"GET http://user:pw@api.test/items HTTP/1.1\r\nHost: api.test\r\n\r\n",
        b"OPTIONS http://user@api.test/items HTTP/1.1\r\nHost: api.test\r\n\
          Origin: https://app.example.com\r\nAccess-Control-Request-Method: GET\r\n\r\n",
    ] {
        let head = head_of(h.proxy.listen_addr(), request).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("access-control-"),
            "{head}"
        );
    }
    assert_eq!(h.upstream.seen().len(), 1, "only the first request went up");

    // An empty path before a query is `/` (RFC 9110 §4.2.3).
    let head = head_of(
        h.proxy.listen_addr(),
        b"GET http://api.test?x=1 HTTP/1.1\r\nHost: api.test\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(h.upstream.last().uri, "/?x=1");
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn connect_is_refused() {
    let h = harness(POLICY).await;
    let response = send(
        h.proxy.listen_addr(),
        http::Request::builder()
            .method("CONNECT")
            .uri("127.0.0.1:22")
            .header("host", "127.0.0.1:22"),
    )
    .await;
    assert_eq!(response.status(), 501);
    assert!(h.upstream.seen().is_empty());
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// An upstream that writes each response's head and body in two sends without `TCP_NODELAY`,
/// as Python's `http.server` does: the body waits (Nagle) for the head's ACK, which a
/// kept-alive reader's kernel delays by up to 40 ms unless the reader asks for quick ACKs.
fn nagling_upstream() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                loop {
                    let Ok(n) = stream.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n";
                        if stream.write_all(head).is_err() || stream.write_all(b"hello").is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_nagling_upstream_costs_no_delayed_ack_per_request() {
    let upstream = nagling_upstream();
    let policy = support::policy_file(POLICY);
    let config = support::config_at(&policy.path, upstream);
    let proxy = corsair_proxy::Proxy::start(config)
        .await
        .expect("proxy starts");
    let mut conn = Conn::open(proxy.listen_addr()).await;
    let mut times = Vec::new();
    for _ in 0..21 {
        let started = std::time::Instant::now();
        let response = conn
            .send(request("GET", "/").body(empty()).expect("request"))
            .await;
        times.push(started.elapsed());
        assert_eq!(response.body().as_ref(), b"hello");
    }
    times.sort();
    // A delayed ACK is 40 ms on Linux; a request on loopback without one takes well under 1 ms.
    let median = times[times.len() / 2];
    assert!(
        median < Duration::from_millis(20),
        "median {median:?} per request: the upstream's body waited for a delayed ACK ({times:?})"
    );
    proxy.shutdown().await.expect("shutdown");
}

/// For the test upstreams: one request head, `None` once the proxy has closed the connection.
async fn head_or_close(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// An upstream that answers a POST with a 413 as soon as it has the head, then reads the whole
/// body anyway (as servers that reject an upload and drain it do), and reports how much came.
/// Later requests on the connection get a 200.
async fn rejects_uploads_early(
    read: mpsc::UnboundedSender<usize>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let read = read.clone();
            tokio::spawn(async move {
                while let Some(head) = head_or_close(&mut stream).await {
                    let head = head.to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or(0);
                    if length == 0 {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                        continue;
                    }
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!",
                        )
                        .await;
                    let mut rest = vec![0u8; length];
                    let got = stream.read_exact(&mut rest).await.map_or(0, |_| length);
                    let _ = read.send(got);
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_upstream_that_answers_an_upload_early_still_gets_all_of_it() {
    const SIZE: usize = 8 * 1024 * 1024;
    let (read_tx, mut read_rx) = mpsc::unbounded_channel();
    let (addr, _upstream) = rejects_uploads_early(read_tx).await;
    let policy = support::policy_file(POLICY);
    let config = support::config_at(&policy.path, addr);
    let proxy = corsair_proxy::Proxy::start(config).await.expect("starts");
    let client = TcpStream::connect(proxy.listen_addr())
        .await
        .expect("connect");
    let (mut reader, mut writer) = client.into_split();
    // The body is more than the sockets on the way hold: the 413 comes back while most of it
    // is still being sent.
    let upload = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: {SIZE}\r\n\r\n");
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&vec![b'u'; SIZE]).await?;
        Ok::<_, std::io::Error>(writer)
    });
    let answer = read_head(&mut reader).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    let mut body = [0u8; 4];
    timeout(Duration::from_secs(5), reader.read_exact(&mut body))
        .await
        .expect("the answer's body in time")
        .expect("the answer's body");
    assert_eq!(&body, b"big!");
    // The client finishes its upload, and the upstream gets all of it.
    let mut writer = timeout(Duration::from_secs(30), upload)
        .await
        .expect("the upload ended in time")
        .expect("the upload task")
        .expect("the whole body was taken");
    let got = timeout(Duration::from_secs(30), read_rx.recv())
        .await
        .expect("the upstream read in time");
    assert_eq!(got, Some(SIZE), "the upstream got only part of the body");
    // The client's connection still serves the next request.
    writer
        .write_all(b"GET /next HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .expect("the next request");
    let mut next = [0u8; 12];
    timeout(Duration::from_secs(5), reader.read_exact(&mut next))
        .await
        .expect("the next answer in time")
        .expect("the next answer");
    assert_eq!(&next, b"HTTP/1.1 200");
    proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_upload_refused_by_an_upstream_that_reads_no_more_gets_its_answer_at_once() {
    // The upstream answers 401 to the head and does not read the body for three seconds.
    let addr = answers_each_connection(
        b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let policy = support::policy_file(POLICY);
    let mut config = support::config_at(&policy.path, addr);
    config.upstream_timeout = Duration::from_millis(500);
    let proxy = corsair_proxy::Proxy::start(config).await.expect("starts");
    let client = TcpStream::connect(proxy.listen_addr())
        .await
        .expect("connect");
    let (mut reader, mut writer) = client.into_split();
    const SIZE: usize = 64 * 1024 * 1024;
    tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: {SIZE}\r\n\r\n");
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&vec![b'u'; SIZE]).await;
    });
    let mut status = [0u8; 12];
    timeout(Duration::from_millis(1500), reader.read_exact(&mut status))
        .await
        .expect("the answer before the upstream reads again")
        .expect("the answer");
    assert_eq!(&status, b"HTTP/1.1 401");
    // The rest of the upload stalls behind the upstream; after the upstream timeout it is
    // given up, and the client's connection with it, before the upstream would read again.
    let mut rest = Vec::new();
    let closed = timeout(Duration::from_millis(2500), reader.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the client's connection was kept open");
    proxy.shutdown().await.expect("clean shutdown");
}

/// On `[::]` (the default) the proxy takes IPv4 and IPv6 clients on one socket, and names an
/// IPv4 client by its IPv4 address, not as `::ffff:127.0.0.1`.
#[tokio::test]
async fn the_default_address_takes_ipv4_and_ipv6_clients() {
    let h = harness_with(POLICY, |c| {
        c.listen = "[::]:0".parse().expect("addr");
        c.admin = "[::]:0".parse().expect("addr");
    })
    .await;
    let port = h.proxy.listen_addr().port();
    let mut clients = vec![("127.0.0.1", "127.0.0.1")];
    // A host (or container) whose loopback has no IPv6 address cannot be the IPv6 client.
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        clients.push(("::1", "::1"));
    } else {
        eprintln!("no IPv6 loopback on this host: the IPv6 client was not tried");
    }
    for (client, forwarded) in clients {
        let ip: std::net::IpAddr = client.parse().expect("ip");
        let response = send((ip, port).into(), request("GET", "/")).await;
        assert_eq!(response.status(), 200, "{client}");
        assert_eq!(
            values(&h.upstream.last().headers, "x-forwarded-for"),
            [forwarded],
            "{client}"
        );
    }
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], h.proxy.admin_addr().port()));
    let mut stream = TcpStream::connect(admin).await.expect("admin over IPv4");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = support::read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// The upstream's response trailers reach an HTTP/2 client, and an HTTP/1.1 client that said
/// it takes them (`TE: trailers`), as the fields the response's `Trailer` header declares
/// (hyper's rule); an HTTP/1.1 client that did not say so gets the body whole without them.
/// A proxy under `POLICY` in front of an upstream that answers every connection with `answer`;
/// the policy file lives as long as the proxy needs it.
async fn proxy_before(answer: &'static [u8]) -> (corsair_proxy::Proxy, support::PolicyFile) {
    let addr = answers_each_connection(answer, Duration::ZERO).await;
    let policy = support::policy_file(POLICY);
    let proxy = corsair_proxy::Proxy::start(support::config_at(&policy.path, addr))
        .await
        .expect("starts");
    (proxy, policy)
}

#[tokio::test]
async fn response_trailers_reach_the_clients_that_take_them() {
    let (proxy, _policy) = proxy_before(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
          Trailer: x-checksum\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\nx-checksum: abc123\r\nx-undeclared: no\r\n\
          keep-alive: timeout=5\r\n\r\n",
    )
    .await;

    for (te, expect_trailer) in [("TE: trailers\r\n", true), ("", false)] {
        let mut stream = TcpStream::connect(proxy.listen_addr())
            .await
            .expect("connect");
        let head = format!("GET / HTTP/1.1\r\nHost: api.test\r\n{te}Connection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        let out = support::read_to_close(&mut stream).await;
        let (_, body) = out.split_once("\r\n\r\n").expect("a head");
        let whole = if expect_trailer {
            "5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n"
        } else {
            "5\r\nhello\r\n0\r\n\r\n"
        };
        assert_eq!(body, whole, "{te:?}");
    }

    let stream = TcpStream::connect(proxy.listen_addr())
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://api.test/")
        .body(empty())
        .expect("valid request");
    let response = sender.send_request(req).await.expect("a response");
    assert_eq!(response.status(), 200);
    let collected = timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("the body ends")
        .expect("a whole body");
    let trailers = collected.trailers().cloned().expect("trailers over h2");
    assert_eq!(values(&trailers, "x-checksum"), ["abc123"]);
    // A connection-specific field would have reset the stream (RFC 9113 §8.2.2).
    assert_eq!(trailers.get("keep-alive"), None);
    assert_eq!(collected.to_bytes(), "hello");
    proxy.shutdown().await.expect("clean shutdown");
}

/// The upstream's `Connection` line names fields for its hop only, also beside a byte outside
/// ASCII (RFC 9110 §7.6.1): they do not reach the client.
#[tokio::test]
async fn fields_an_upstream_connection_line_names_stay_behind() {
    let (proxy, _policy) = proxy_before(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-leak, \xff\r\n\
          X-Leak: upstream-hop-only\r\nX-Kept: yes\r\n\r\nok",
    )
    .await;
    let head = head_of(
        proxy.listen_addr(),
        b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-kept: yes"), "{head}");
    assert!(!head.contains("x-leak"), "{head}");
    proxy.shutdown().await.expect("clean shutdown");
}
