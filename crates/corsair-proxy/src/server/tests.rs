//! A connection served over an in-memory client stream with a small buffer, which fills the
//! moment the client stops reading: hyper then holds what the socket does not take.

use std::path::PathBuf;

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
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 4 * SENT);
            let body: Vec<u8> = (0..SENT).map(byte).collect();
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
        }
    });
    addr
}

/// Serves one client connection over a 4 KiB in-memory stream, and returns the client's end.
async fn client(idle_timeout: Duration) -> DuplexStream {
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
    let upstream = Upstream::new(&config).expect("an upstream");
    let abort = CancellationToken::new();
    let state = Arc::new(State::new(
        config,
        store,
        Arc::new(Metrics::new()),
        upstream,
        abort.clone(),
        TaskTracker::new(),
    ));
    let (mut client, server) = tokio::io::duplex(4096);
    let peer = "10.0.0.7:40000".parse().expect("addr");
    tokio::spawn(serve_known(
        server,
        peer,
        state,
        CancellationToken::new(),
        abort,
    ));
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
    let mut client = client(Duration::from_secs(300)).await;
    // Long enough for the proxy to have read the whole of what the upstream sent, and its close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = read_body(&mut client).await;
    assert_eq!(
        body.len(),
        SENT,
        "body bytes of the {SENT} the upstream sent"
    );
    assert!(
        body.iter().enumerate().all(|(i, &b)| b == byte(i)),
        "the body came out of order"
    );
}

/// The wait for the client to read what hyper holds ends with the idle timeout: a client that
/// never reads does not hold the connection open beyond it.
#[tokio::test]
async fn a_client_that_never_reads_a_failed_body_is_dropped_at_the_idle_timeout() {
    let started = Instant::now();
    let mut client = client(Duration::from_millis(200)).await;
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
