//! Failure handling: a dead, slow or resetting upstream, oversized headers, garbage on the wire,
//! idle and stalled clients, and draining on shutdown.

mod support;

use std::time::{Duration, Instant};

use corsair_proxy::Proxy;
use corsair_runtime::testing::listening_here;
use corsair_runtime::testing::upstream::answers_each_connection;
use support::{
    Conn, Harness, admin, empty, harness, harness_with, metric, policy_file, read_to_close,
    request, send, values,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const POLICY: &str = "allowOrigins: [\"https://app.example.com\"]";

#[tokio::test]
async fn upstream_down_is_a_502_naming_the_cause() {
    let policy = policy_file(POLICY);
    // A port that was just free: nothing listens on it.
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let mut config = support::config_at(&policy.path, dead_addr);
    config.drain_timeout = Duration::from_secs(2);
    let proxy = Proxy::start(config)
        .await
        .expect("starts with the upstream down");
    let response = send(
        proxy.listen_addr(),
        request("GET", "/").header("origin", "https://app.example.com"),
    )
    .await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.body(), "upstream refused the connection\n");
    assert_eq!(
        values(response.headers(), "content-type"),
        ["text/plain; charset=utf-8"]
    );
    // An allowed page can read the error instead of seeing a CORS failure.
    assert_eq!(
        values(response.headers(), "access-control-allow-origin"),
        ["https://app.example.com"]
    );
    assert_eq!(
        metric(
            &proxy,
            "corsair_proxy_upstream_errors_total{cause=\"refused\"}"
        )
        .await,
        1.0
    );
    proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_slow_upstream_is_a_504() {
    let h = harness_with(POLICY, |c| c.upstream_timeout = Duration::from_millis(300)).await;
    let start = Instant::now();
    let response = send(h.proxy.listen_addr(), request("GET", "/slow?ms=5000")).await;
    assert_eq!(response.status(), 504);
    assert_eq!(response.body(), "upstream did not respond in time\n");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        metric(
            &h.proxy,
            "corsair_proxy_upstream_errors_total{cause=\"timeout\"}"
        )
        .await,
        1.0
    );
    // A request within the timeout still works.
    let response = send(h.proxy.listen_addr(), request("GET", "/slow?ms=10")).await;
    assert_eq!(response.status(), 200);
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_upstream_that_cannot_be_connected_in_time_is_a_504() {
    // A listener that never accepts, its tiny backlog filled: further SYNs are dropped and
    // a connect hangs, as it would towards a blackholed address.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    let _listener = socket.listen(1).expect("listen");
    let mut fillers = Vec::new();
    loop {
        match timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
        assert!(fillers.len() < 64, "the backlog never filled up");
    }
    let policy = policy_file(POLICY);
    let mut config = support::config_at(&policy.path, addr);
    config.connect_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(config).await.expect("starts");
    let start = Instant::now();
    let response = send(proxy.listen_addr(), request("GET", "/")).await;
    assert_eq!(response.status(), 504);
    assert_eq!(response.body(), "upstream connect timed out\n");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        metric(
            &proxy,
            "corsair_proxy_upstream_errors_total{cause=\"connect_timeout\"}"
        )
        .await,
        1.0
    );
    proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_upstream_that_resets_is_a_502() {
    // Closes after reading the request, without a response.
    let addr = answers_each_connection(b"", Duration::ZERO).await;
    let policy = policy_file(POLICY);
    let config = support::config_at(&policy.path, addr);
    let proxy = Proxy::start(config).await.expect("starts");
    let response = send(proxy.listen_addr(), request("GET", "/")).await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.body(), "upstream reset the connection\n");
    proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn headers_over_64_kib_are_a_431_and_under_it_pass() {
    let h = harness(POLICY).await;
    let under = "a".repeat(60 * 1024);
    let response = send(
        h.proxy.listen_addr(),
        request("GET", "/").header("x-big", under.as_str()),
    )
    .await;
    assert_eq!(response.status(), 200, "60 KiB of headers pass");

    let mut stream = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    let over = "a".repeat(70 * 1024);
    let head = format!("GET / HTTP/1.1\r\nHost: api.test\r\nX-Big: {over}\r\n\r\n");
    // The proxy may stop reading once the limit is hit; a write error is fine.
    let _ = stream.write_all(head.as_bytes()).await;
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert_eq!(
        h.upstream.seen().len(),
        1,
        "the oversized request was not forwarded"
    );

    // Over HTTP/2 the limit is the header list size.
    let stream = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("http://api.test/")
        .header("x-big", over.as_str())
        .body(empty())
        .expect("valid request");
    match sender.send_request(req).await {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(err) => panic!("expected a 431 over h2, got {err}"),
    }
    assert_eq!(h.upstream.seen().len(), 1);
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn garbage_on_the_wire_gets_a_400_or_a_close_and_the_proxy_keeps_serving() {
    let h = harness(POLICY).await;
    let http1: [&[u8]; 4] = [
        b"\x00\x01\x02\xff\xfe garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api.test\r\nBad Header Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"GET /\x7f HTTP/1.1\r\nHost: api.test\r\n\r\n",
    ];
    for bytes in http1 {
        let mut stream = TcpStream::connect(h.proxy.listen_addr())
            .await
            .expect("connect");
        let _ = stream.write_all(bytes).await;
        let answer = read_to_close(&mut stream).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{bytes:?} -> {answer:?}"
        );
        let response = send(h.proxy.listen_addr(), request("GET", "/")).await;
        assert_eq!(
            response.status(),
            200,
            "the proxy still serves after {bytes:?}"
        );
    }
    assert_eq!(
        h.upstream.seen().len(),
        4,
        "no garbage reached the upstream"
    );

    // The HTTP/2 preface followed by a frame of an unknown shape: a GOAWAY, then a close.
    let mut stream = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    let _ = stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x09\x00\x00\x00\x00\x00junk")
        .await;
    let mut answer = Vec::new();
    let read = timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the proxy did not close the h2 connection");
    let goaway = answer.windows(4).any(|w| w == [0, 0, 8, 7]);
    assert!(goaway, "no GOAWAY frame in {answer:?}");
    let response = send(h.proxy.listen_addr(), request("GET", "/")).await;
    assert_eq!(
        response.status(),
        200,
        "the proxy still serves after bad h2"
    );

    // A chunked body that breaks after the head was forwarded: the upstream request fails,
    // the client gets a 400 (the client's error, not the upstream's) or a close, never a hang.
    let mut stream = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    let _ = stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
        )
        .await;
    let answer = read_to_close(&mut stream).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    let metrics = admin(&h.proxy, "/metrics").await.1;
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("corsair_proxy_upstream_errors_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(
        counted.is_empty(),
        "a client's broken body is counted as an upstream error: {counted:?}"
    );
    let response = send(h.proxy.listen_addr(), request("GET", "/")).await;
    assert_eq!(
        response.status(),
        200,
        "the proxy still serves after a broken body"
    );
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// xorshift64*: a fixed seed gives the same payloads on every run.
fn pseudo_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[tokio::test]
async fn random_bytes_never_crash_or_stall_the_proxy() {
    let h = harness_with(POLICY, |c| {
        c.header_read_timeout = Duration::from_millis(500)
    })
    .await;
    let addr = h.proxy.listen_addr();
    let mut seed = 0x5eed_c0de_u64;
    let prefixes: [&[u8]; 5] = [
        b"",
        b"GET / HTTP/1.1\r\n",
        b"OPTIONS / HTTP/1.1\r\nHost: api.test\r\nOrigin: ",
        b"POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: 10\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    let mut clients = Vec::new();
    for i in 0..200usize {
        let mut payload = prefixes[i % prefixes.len()].to_vec();
        let len = usize::try_from(pseudo_random(&mut seed) % 512).unwrap_or(0);
        for _ in 0..len {
            // Bias towards bytes that matter to HTTP parsers.
            let byte = match pseudo_random(&mut seed) % 8 {
                0 => b'\r',
                1 => b'\n',
                2 => b':',
                3 => b' ',
                _ => pseudo_random(&mut seed).to_le_bytes()[0],
            };
            payload.push(byte);
        }
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let _ = stream.write_all(&payload).await;
            // Half-close: the proxy must answer or close, not wait forever.
            let _ = stream.shutdown().await;
            let mut out = Vec::new();
            let read = timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
            (read.is_ok(), payload)
        }));
    }
    for client in clients {
        let (closed, payload) = client.await.expect("client task");
        assert!(closed, "the proxy stalled on {payload:?}");
    }
    let response = send(addr, request("GET", "/")).await;
    assert_eq!(response.status(), 200, "the proxy still serves");
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// A proxy with the given header read timeout, and a client connection to it.
async fn connected_with_header_timeout(limit: Duration) -> (Harness, TcpStream) {
    let h = harness_with(POLICY, |c| c.header_read_timeout = limit).await;
    let stream = TcpStream::connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    (h, stream)
}

/// A client cut off in its head gets a 408 or nothing before the close.
fn assert_cut_off(answer: &str) {
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
}

/// The header read timer runs per head, not per connection: from when the proxy starts waiting
/// for a head (after the previous answer) until the head is in. A kept-alive connection that
/// sends a request every 100 ms for longer than the timeout is served throughout, and a head it
/// then leaves unfinished is still cut off, at the timeout after the last answer.
#[tokio::test]
async fn the_header_read_timeout_restarts_with_every_request_of_a_connection() {
    let (_proxy, mut stream) = connected_with_header_timeout(Duration::from_millis(300)).await;
    let head = b"GET /kept HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let start = Instant::now();
    let mut served = 0;
    let mut last_answer = start;
    while start.elapsed() < Duration::from_millis(900) {
        stream.write_all(head).await.expect("write a request");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // The upstream's answer has a Content-Length; read until its head and body are in.
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
            let n = timeout(Duration::from_secs(2), stream.read(&mut buf))
                .await
                .expect("an answer in time")
                .expect("read");
            assert!(
                n > 0,
                "closed after {served} requests, {:?}",
                start.elapsed()
            );
            answer.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        last_answer = Instant::now();
        served += 1;
        // Let any body bytes arrive before the next request.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = timeout(Duration::from_millis(1), stream.read(&mut buf)).await;
    }
    assert!(served >= 6, "only {served} requests in 900 ms");
    stream
        .write_all(b"GET /stalled HTTP/1.1\r\nHost: api.test\r\nX-Slow")
        .await
        .expect("write part of a head");
    let answer = read_to_close(&mut stream).await;
    let took = last_answer.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "cut off {took:?} after the last answer, not at the 300 ms timeout"
    );
    assert_cut_off(&answer);
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_is_cut_off() {
    let (h, mut stream) = connected_with_header_timeout(Duration::from_millis(300)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Slow")
        .await
        .expect("write part of the head");
    let start = Instant::now();
    let answer = read_to_close(&mut stream).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_cut_off(&answer);
    assert!(h.upstream.seen().is_empty());
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let h = harness_with(POLICY, |c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut conn = Conn::open(h.proxy.listen_addr()).await;
    let response = conn
        .send(request("GET", "/").body(empty()).expect("valid"))
        .await;
    assert_eq!(response.status(), 200);
    let start = Instant::now();
    while !conn.is_closed() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "idle connection still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    // Closing a connection that waits for nothing is housekeeping, not a defence.
    assert_eq!(metric(&h.proxy, STALLED).await, 0.0);
    h.proxy.shutdown().await.expect("clean shutdown");
}

const STALLED: &str = "corsair_proxy_connections_dropped_total{cause=\"stalled\"}";

#[tokio::test]
async fn a_client_that_stops_reading_a_response_is_dropped_after_the_idle_timeout() {
    let h = harness_with(POLICY, |c| c.idle_timeout = Duration::from_millis(500)).await;
    // A small receive window, so that the proxy's writes stop soon after this client's reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket
        .connect(h.proxy.listen_addr())
        .await
        .expect("connect");
    // 5,000 chunks of 4 KiB, 2 ms apart: at least 10 s to send, 20 MiB.
    stream
        .write_all(b"GET /stream?chunks=5000 HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut out = Vec::new();
    let read = timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the stalled connection was still open ({} bytes read)",
        out.len()
    );
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &out[..out.len().min(40)]
    );
    assert!(
        out.len() < 5000 * 4096,
        "the response was cut short: {} bytes",
        out.len()
    );
    let response = send(h.proxy.listen_addr(), request("GET", "/")).await;
    assert_eq!(response.status(), 200, "the proxy still serves");
    assert_eq!(metric(&h.proxy, STALLED).await, 1.0, "the drop is counted");
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_request_and_reports_not_ready() {
    let h = harness(POLICY).await;
    let addr = h.proxy.listen_addr();
    let in_flight = tokio::spawn(async move { send(addr, request("GET", "/slow?ms=1000")).await });
    // Let the request reach the upstream before shutting down.
    let start = Instant::now();
    while h.upstream.seen().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let admin_addr = h.proxy.admin_addr();
    let proxy = h.proxy;
    let shutdown = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let readyz = send(admin_addr, request("GET", "/readyz")).await;
    assert_eq!(readyz.status(), 503, "not ready while draining");
    assert!(
        !listening_here(addr),
        "no new connections while draining: still listening on {addr}"
    );

    let response = in_flight.await.expect("client task");
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), "slow");
    timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown finished")
        .expect("shutdown task")
        .expect("drained without hitting the drain timeout");
    assert!(
        !listening_here(admin_addr),
        "admin port {admin_addr} still listening after the drain"
    );
}

/// With a shutdown delay the proxy reports not ready at once but keeps accepting and serving
/// for that long (Kubernetes still sends a terminating pod new connections for a while), then
/// drains as without one.
#[tokio::test]
async fn the_shutdown_delay_keeps_serving_while_not_ready() {
    let delay = Duration::from_secs(3);
    let h = harness_with(POLICY, |c| c.shutdown_delay = delay).await;
    let (addr, admin_addr) = (h.proxy.listen_addr(), h.proxy.admin_addr());
    let started = Instant::now();
    let shutdown = tokio::spawn(h.proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let readyz = send(admin_addr, request("GET", "/readyz")).await;
    assert_eq!(readyz.status(), 503, "not ready once asked to stop");
    assert!(
        listening_here(addr),
        "stopped accepting before the delay ended"
    );
    // A new connection in the delay is served end to end.
    let response = send(
        addr,
        request("GET", "/").header("origin", "https://app.example.com"),
    )
    .await;
    assert_eq!(response.status(), 200);
    timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown finished")
        .expect("shutdown task")
        .expect("drained");
    assert!(
        started.elapsed() >= delay,
        "stopped before the delay: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_drain_timeout_bounds_shutdown() {
    let h = harness_with(POLICY, |c| c.drain_timeout = Duration::from_millis(300)).await;
    let addr = h.proxy.listen_addr();
    let in_flight = tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        sender
            .send_request(
                request("GET", "/slow?ms=10000")
                    .body(empty())
                    .expect("valid"),
            )
            .await
    });
    let start = Instant::now();
    while h.upstream.seen().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    let result = h.proxy.shutdown().await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(result, Err(corsair_proxy::ProxyError::DrainTimeout(1))),
        "{result:?}"
    );
    let outcome = timeout(Duration::from_secs(2), in_flight)
        .await
        .expect("client saw the connection close")
        .expect("client task");
    assert!(
        outcome.is_err(),
        "the slow request was cut off: {outcome:?}"
    );
}

#[tokio::test]
async fn admin_endpoints() {
    let h = harness(POLICY).await;
    assert_eq!(
        admin(&h.proxy, "/healthz").await,
        (http::StatusCode::OK, "ok\n".to_owned())
    );
    assert_eq!(admin(&h.proxy, "/readyz").await.0, 200);
    assert_eq!(admin(&h.proxy, "/nope").await.0, 404);

    send(
        h.proxy.listen_addr(),
        request("GET", "/").header("origin", "https://app.example.com"),
    )
    .await;
    send(
        h.proxy.listen_addr(),
        request("GET", "/").header("origin", "https://evil.example.net"),
    )
    .await;
    send(
        h.proxy.listen_addr(),
        request("OPTIONS", "/")
            .header("origin", "https://evil.example.net")
            .header("access-control-request-method", "GET"),
    )
    .await;
    let (status, body) = admin(&h.proxy, "/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "corsair_proxy_requests_total{kind=\"actual\",decision=\"allowed\",mode=\"enforce\",status=\"2xx\"} 1",
        "corsair_proxy_requests_total{kind=\"actual\",decision=\"denied\",mode=\"enforce\",status=\"2xx\"} 1",
        "corsair_proxy_requests_total{kind=\"preflight\",decision=\"denied\",mode=\"enforce\",status=\"4xx\"} 1",
        "corsair_proxy_request_duration_seconds_count 3",
        "corsair_proxy_policy_generation 1",
        "corsair_proxy_policy_reloads_total{result=\"failed\"} 0",
    ] {
        assert!(
            body.lines().any(|l| l == series),
            "missing {series:?} in:\n{body}"
        );
    }
    let (status, body) = admin(&h.proxy, "/policy").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("policy is JSON");
    assert_eq!(json["kind"], "CorsPolicy");
    assert_eq!(json["spec"]["allowOrigins"][0], "https://app.example.com");
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// An upstream that sends its head and part of its body, then closes at once: the client gets
/// the head and the part, then the close, never a close with nothing (hyper drops what it has
/// buffered when a body fails before it flushed).
#[tokio::test]
async fn an_upstream_that_dies_right_after_its_head_still_gives_the_client_that_head() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"[..],
    ] {
        let addr = answers_each_connection(answer, Duration::ZERO).await;
        let policy = policy_file(POLICY);
        let proxy = Proxy::start(support::config_at(&policy.path, addr))
            .await
            .expect("starts");
        for _ in 0..20 {
            let mut stream = TcpStream::connect(proxy.listen_addr())
                .await
                .expect("connect");
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
                .await
                .expect("write");
            let out = read_to_close(&mut stream).await;
            assert!(
                out.starts_with("HTTP/1.1 200"),
                "{:?}: the client got {out:?}",
                String::from_utf8_lossy(answer)
            );
            assert!(
                !out.ends_with("0\r\n\r\n"),
                "a cut body ended as whole: {out:?}"
            );
            let sent_hello = answer.ends_with(b"hello") || answer.ends_with(b"hello\r\n");
            assert_eq!(
                out.contains("hello"),
                sent_hello,
                "the body's bytes before the close: {out:?}"
            );
        }
        proxy.shutdown().await.expect("clean shutdown");
    }
}

/// the upstream error counter's causes are known in advance (refused, connect_timeout,
/// timeout, reset, other) and, like `policy_reloads_total`'s results, must be exported at 0
/// from the start: Prometheus' `rate()`/`increase()` cannot see the first increment of a
/// series that appears with it, so an alert on `increase(..._upstream_errors_total[5m]) > 0`
/// misses the first burst of errors of every pod ("Avoid missing metrics", Prometheus
/// instrumentation practices). Today the family is not in `/metrics` at all until an error.
#[tokio::test]
async fn upstream_error_series_exist_before_the_first_error() {
    let h = harness(POLICY).await;
    let (_, body) = admin(&h.proxy, "/metrics").await;
    let missing: Vec<&str> = ["refused", "connect_timeout", "timeout", "reset", "other"]
        .into_iter()
        .filter(|cause| {
            let series = format!("corsair_proxy_upstream_errors_total{{cause=\"{cause}\"}} 0");
            !body.lines().any(|l| l == series)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "no zero series for causes {missing:?}; TYPE line present: {}",
        body.contains("# TYPE corsair_proxy_upstream_errors counter")
    );
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// the admin port answers other methods than GET and HEAD with 405, which "MUST"
/// carry an `Allow` field listing the methods the resource supports (RFC 9110 §15.5.6).
#[tokio::test]
async fn an_admin_405_says_which_methods_are_allowed() {
    let h = harness(POLICY).await;
    let mut missing = Vec::new();
    for (method, path) in [
        ("POST", "/metrics"),
        ("DELETE", "/policy"),
        ("PUT", "/readyz"),
    ] {
        let response = send(h.proxy.admin_addr(), request(method, path)).await;
        assert_eq!(response.status(), 405, "{method} {path}");
        if !response.headers().contains_key("allow") {
            missing.push(format!("{method} {path}"));
        }
    }
    assert!(
        missing.is_empty(),
        "405 without an Allow field: {missing:?}"
    );
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// A timeout of 0 would fail every request or connection of a proxy that reports ready: each
/// of the four is refused by name, and a fraction of a second is still taken.
#[test]
fn a_zero_timeout_is_refused_naming_the_flag() {
    use clap::Parser as _;
    let parse = |flag: &str, value: &str| {
        corsair_proxy::cli::Cli::try_parse_from([
            "corsair-proxy",
            "--policy",
            "/etc/corsair/policy.json",
            "--upstream",
            "http://127.0.0.1:8080",
            flag,
            value,
        ])
    };
    for flag in [
        "--header-read-timeout",
        "--connect-timeout",
        "--upstream-timeout",
        "--idle-timeout",
    ] {
        let err = parse(flag, "0").expect_err(flag);
        assert!(err.to_string().contains(flag), "{err}");
        assert!(err.to_string().contains("more than 0"), "{err}");
        assert!(parse(flag, "0.5").is_ok(), "{flag} 0.5");
    }
    // Zero stays valid where it means "none".
    assert!(parse("--shutdown-delay", "0").is_ok());
    assert!(parse("--drain-timeout", "0").is_ok());
}

/// an upstream URL whose port is out of range (a typo such as `:80800`) or whose host
/// is empty is not `http://host:port`; it must be refused at start, naming it, as a path or an
/// https scheme is. Today `http::Uri` parses it, `Authority::port_u16()` is `None`, and
/// `Address::of` falls back to port 80: the proxy silently forwards to another port (in a pod,
/// whatever other container listens on :80).
#[tokio::test]
async fn an_upstream_with_an_invalid_port_or_no_host_is_refused_at_start() {
    let policy = policy_file(POLICY);
    let mut accepted = Vec::new();
    for upstream in [
        "http://127.0.0.1:80800",
        "http://localhost:65536",
        "http://[::1]:0",
        "http://127.0.0.1:",
        "http://:8080",
    ] {
        let mut cfg = config_for(&policy.path, upstream);
        cfg.drain_timeout = Duration::from_secs(1);
        match Proxy::start(cfg).await {
            Ok(proxy) => {
                accepted.push(upstream);
                let _ = proxy.shutdown().await;
            }
            Err(err) => assert!(
                matches!(err, corsair_proxy::ProxyError::Upstream { .. }),
                "{upstream}: {err}"
            ),
        }
    }
    assert!(
        accepted.is_empty(),
        "started with upstream URLs that name no valid host:port: {accepted:?}"
    );
    // A port left out is 80; an IPv6 literal's colons are not a port.
    for upstream in ["http://localhost", "http://[::1]:65535", "http://[::1]"] {
        let proxy = Proxy::start(config_for(&policy.path, upstream))
            .await
            .unwrap_or_else(|err| panic!("{upstream}: {err}"));
        proxy.shutdown().await.expect("clean shutdown");
    }
}

fn config_for(policy: &std::path::Path, upstream: &str) -> corsair_proxy::ProxyConfig {
    corsair_proxy::ProxyConfig::new(
        policy.to_owned(),
        upstream.parse().expect("http::Uri parses it"),
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
}

/// the admin port gives a client 10 s to send a request head (corsair_runtime's
/// HEADER_READ_TIMEOUT, "also the keep-alive wait"), and does close a connection stalled in an
/// HTTP/1 head then; but a connection that sends nothing at all, or only the start of the
/// HTTP/2 preface, is never closed: hyper-util's protocol detection runs no timer (the proxy
/// port guards against exactly this in `server::protocol_known`). Such connections pile up
/// without bound in the sidecar, whose admin port any pod of the cluster can reach.
#[tokio::test]
async fn an_admin_connection_that_sends_nothing_is_closed() {
    let h = harness(POLICY).await;
    let admin_addr = h.proxy.admin_addr();
    let silent = TcpStream::connect(admin_addr).await.expect("connect");
    let mut preface = TcpStream::connect(admin_addr).await.expect("connect");
    preface
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    let mut stalled = TcpStream::connect(admin_addr).await.expect("connect");
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow")
        .await
        .expect("write");
    let closed_within = |mut stream: TcpStream| async move {
        let mut out = Vec::new();
        timeout(Duration::from_secs(15), stream.read_to_end(&mut out))
            .await
            .is_ok()
    };
    let (silent, preface, stalled) = tokio::join!(
        closed_within(silent),
        closed_within(preface),
        closed_within(stalled)
    );
    assert!(
        stalled,
        "control: a stalled HTTP/1 head is cut off after 10 s"
    );
    assert!(
        silent && preface,
        "admin connections not closed within 15 s: silent one still open: {}, partial HTTP/2 preface one still open: {}",
        !silent,
        !preface
    );
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// a second proxy asked to listen on a port another proxy already serves must fail to
/// start ("cannot listen on …"), as any server does. Because every proxy listener sets
/// `SO_REUSEPORT` (for its own worker threads), the kernel lets a second process of the same
/// user join the port: both start, and the kernel splits new connections between them,
/// whatever policy and upstream each one has.
#[tokio::test]
async fn a_second_proxy_on_a_port_in_use_does_not_start() {
    let first = harness(POLICY).await;
    let other = policy_file("allowOrigins: [\"https://evil.example.net\"]");
    let mut cfg = support::config(&other.path, &first.upstream);
    cfg.listen = first.proxy.listen_addr();
    match Proxy::start(cfg).await {
        Err(err) => assert!(err.to_string().contains("cannot listen"), "{err}"),
        Ok(second) => {
            let addr = second.listen_addr();
            // Fresh connections to the port: how many the second proxy's policy answers.
            let mut by_second = 0;
            for _ in 0..32 {
                let response = send(
                    addr,
                    request("GET", "/").header("origin", "https://evil.example.net"),
                )
                .await;
                if response
                    .headers()
                    .contains_key("access-control-allow-origin")
                {
                    by_second += 1;
                }
            }
            let _ = second.shutdown().await;
            panic!(
                "a second proxy started on {addr}, the port the first one serves; \
                 {by_second} of 32 new connections got the second one's policy"
            );
        }
    }
    first.proxy.shutdown().await.expect("clean shutdown");
}
