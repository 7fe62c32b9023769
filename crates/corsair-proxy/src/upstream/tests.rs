use super::*;

fn config(upstream: &str) -> ProxyConfig {
    ProxyConfig::new(
        "policy.yaml".into(),
        upstream.parse().expect("a URI"),
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
}

/// An upstream for `uri`, with a tracker and a cancellation of its own.
fn upstream_for(uri: &str) -> Result<Upstream, ProxyError> {
    Upstream::new(&config(uri), &TaskTracker::new(), &CancellationToken::new())
}

fn reason(uri: &str) -> Option<&'static str> {
    match upstream_for(uri) {
        Ok(_) => None,
        Err(ProxyError::Upstream { reason, .. }) => Some(reason),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn a_lane_keeps_at_most_max_idle_connections_and_closes_the_rest() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut byte).await;
                let _ = closed_tx.send(());
            });
        }
    });
    let upstream = upstream_for(&format!("http://{addr}")).expect("an upstream");
    let lane = Lane::default();
    let mut open = Vec::new();
    for _ in 0..MAX_IDLE + 4 {
        open.push(upstream.connect().await.expect("a connection"));
    }
    for connection in open {
        lane.give_back(connection);
    }
    assert_eq!(lane.idle.lock().map(|idle| idle.len()).ok(), Some(MAX_IDLE));
    for _ in 0..4 {
        tokio::time::timeout(std::time::Duration::from_secs(5), closed.recv())
            .await
            .expect("the connections beyond the cap are closed");
    }
}

/// `localhost` reaches an application that listens on one loopback family only, whichever,
/// and the next connection goes first to the family that answered.
#[tokio::test]
async fn localhost_reaches_an_application_on_either_loopback() {
    let v6 = tokio::net::TcpListener::bind("[::1]:0")
        .await
        .expect("an IPv6 loopback (Linux has one unless booted with ipv6.disable=1)");
    let port = v6.local_addr().expect("addr").port();
    let upstream = upstream_for(&format!("http://localhost:{port}")).expect("an upstream");
    let accepted = tokio::spawn(async move {
        let mut peers = Vec::new();
        for _ in 0..2 {
            let (_, peer) = v6.accept().await.expect("accept");
            peers.push(peer);
        }
        (peers, v6)
    });
    for _ in 0..2 {
        upstream.connect().await.expect("the IPv6 loopback answers");
    }
    let (peers, v6) = accepted.await.expect("accepted");
    assert!(peers.iter().all(std::net::SocketAddr::is_ipv6), "{peers:?}");
    let Address::Loopback { v6_first, .. } = &upstream.address else {
        panic!("localhost is the loopback");
    };
    assert!(v6_first.load(Ordering::Relaxed), "IPv6 is tried first now");
    // It is: with both families listening now, the next connection goes to IPv6.
    let v4 = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the same port on IPv4");
    upstream.connect().await.expect("a connection");
    let accepted = tokio::select! {
        v6 = v6.accept() => v6.expect("accept").1,
        v4 = v4.accept() => v4.expect("accept").1,
    };
    assert!(accepted.is_ipv6(), "went to {accepted}");
    drop(v4);

    // And on IPv4 only, from a fresh start.
    let v4 = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = v4.local_addr().expect("addr").port();
    let upstream = upstream_for(&format!("http://localhost:{port}")).expect("an upstream");
    let (connected, accepted) = tokio::join!(upstream.connect(), v4.accept());
    connected.expect("the IPv4 loopback answers");
    assert!(accepted.expect("accept").1.is_ipv4());
    // Nothing listening: refused.
    drop(v4);
    let Err(failed) = upstream.connect().await else {
        panic!("nothing listens");
    };
    assert_eq!(failed.failure, Failure::Refused, "{:?}", failed.error);
}

#[tokio::test]
async fn only_a_plain_http_authority_is_an_upstream() {
    assert_eq!(reason("http://127.0.0.1:8080"), None);
    assert_eq!(reason("http://app:8080/"), None);
    assert!(reason("https://127.0.0.1:8443").is_some_and(|r| r.contains("http://")));
    assert!(reason("/just/a/path").is_some_and(|r| r.contains("http://")));
    assert!(reason("http://user:pw@app:8080").is_some_and(|r| r.contains("userinfo")));
    assert!(reason("http://app:8080/api").is_some_and(|r| r.contains("path")));
    assert!(reason("http://app:8080/?x=1").is_some_and(|r| r.contains("query")));
}

#[test]
fn the_one_upstream_address_has_a_port() {
    let address = |uri: &str| {
        upstream_for(uri).map(|u| match u.address {
            Address::Given(address) => address,
            Address::Loopback { v4, v6, .. } => format!("{v4} or {v6}"),
        })
    };
    assert_eq!(
        address("http://localhost:8080").ok().as_deref(),
        Some("127.0.0.1:8080 or [::1]:8080")
    );
    assert_eq!(
        address("http://127.0.0.1:8080").ok().as_deref(),
        Some("127.0.0.1:8080")
    );
    assert_eq!(address("http://app/").ok().as_deref(), Some("app:80"));
    assert_eq!(
        address("http://[::1]:9000").ok().as_deref(),
        Some("[::1]:9000")
    );
}

#[test]
fn failures_map_to_502_or_504_with_a_cause() {
    for failure in [Failure::Refused, Failure::Reset, Failure::Other] {
        assert_eq!(failure.status(), StatusCode::BAD_GATEWAY);
    }
    for failure in [Failure::ConnectTimeout, Failure::Timeout] {
        assert_eq!(failure.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    let labels: std::collections::HashSet<_> = [
        Failure::Refused,
        Failure::ConnectTimeout,
        Failure::Timeout,
        Failure::Reset,
        Failure::Other,
    ]
    .iter()
    .filter_map(|f| f.metric_label())
    .collect();
    assert_eq!(labels.len(), 5, "each cause has its own label");
    // The client's own broken body is its error, and no upstream error.
    assert_eq!(Failure::ClientBody.status(), StatusCode::BAD_REQUEST);
    assert_eq!(Failure::ClientBody.metric_label(), None);
}

#[test]
fn an_error_is_classified_by_the_io_error_behind_it() {
    use std::io::{Error, ErrorKind};
    #[derive(Debug)]
    struct Wrapped(Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the exchange failed")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let wrapped = |kind: ErrorKind| Wrapped(Error::new(kind, "behind"));
    for (kind, failure) in [
        (ErrorKind::ConnectionRefused, Failure::Refused),
        // A time-out in the middle of an exchange is the upstream's, not the connect's.
        (ErrorKind::TimedOut, Failure::Timeout),
        (ErrorKind::ConnectionReset, Failure::Reset),
        (ErrorKind::UnexpectedEof, Failure::Reset),
        (ErrorKind::InvalidData, Failure::Other),
    ] {
        assert_eq!(Failure::classify(&wrapped(kind)), failure, "{kind:?}");
    }
}

/// A loopback upstream that answers each 4-byte request with a 68-byte response, in one send
/// with `TCP_NODELAY`, or (`nagle`) in two sends without it, as Python's `http.server` does.
fn echo_upstream(nagle: bool) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.set_nodelay(!nagle);
        let mut request = [0u8; 4];
        while stream.read_exact(&mut request).is_ok() {
            let head = [b'h'; 60];
            let sent = if nagle {
                stream
                    .write_all(&head)
                    .and_then(|()| stream.write_all(b"bodybody"))
            } else {
                stream.write_all(&[&head[..], b"bodybody"].concat())
            };
            if sent.is_err() {
                return;
            }
        }
    });
    addr
}

/// `rounds` exchanges through a [`QuickAck`] socket, `pause` between them; the slowest one.
async fn exchanges(socket: &mut QuickAck, rounds: usize, pause: Duration) -> std::time::Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slowest = Duration::ZERO;
    for _ in 0..rounds {
        let started = std::time::Instant::now();
        socket.write_all(b"ping").await.expect("write");
        let mut response = [0u8; 68];
        socket.read_exact(&mut response).await.expect("read");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(pause).await;
    }
    slowest
}

async fn quick_ack(addr: std::net::SocketAddr) -> (QuickAck, Arc<AtomicBool>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let nagles = Arc::new(AtomicBool::new(false));
    (QuickAck::new(stream, nagles.clone()), nagles)
}

#[tokio::test]
async fn an_upstream_that_waits_for_acknowledgements_is_learned_and_not_left_waiting() {
    let (mut socket, nagles) = quick_ack(echo_upstream(true)).await;
    // A fresh connection is acknowledged at once by the kernel anyway; once it is kept alive
    // the kernel delays acknowledgements, and the first body held back waits for one (40 ms).
    // That teaches the socket; from then on nothing waits.
    let mut slow = 0;
    for _ in 0..20 {
        if exchanges(&mut socket, 1, Duration::ZERO).await >= Duration::from_millis(20) {
            slow += 1;
        }
    }
    assert!(
        slow <= 1,
        "{slow} exchanges waited for a delayed acknowledgement"
    );
    assert!(
        nagles.load(Ordering::Relaxed),
        "the waiting upstream was not noticed"
    );
    let slowest = exchanges(&mut socket, 20, Duration::ZERO).await;
    assert!(
        slowest < Duration::from_millis(5),
        "an exchange took {slowest:?}"
    );
}

#[tokio::test]
async fn an_upstream_that_sends_whole_responses_is_never_taken_for_one_that_waits() {
    let (mut socket, nagles) = quick_ack(echo_upstream(false)).await;
    // Back to back: every acknowledgement rides on the next request.
    exchanges(&mut socket, 50, Duration::ZERO).await;
    // With pauses longer than ACK_WAIT: our next request still comes before any data, which is
    // how a whole response looks.
    exchanges(&mut socket, 3, Duration::from_millis(50)).await;
    assert!(!nagles.load(Ordering::Relaxed));
}
