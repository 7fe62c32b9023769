//! Hostile traffic against the real `corsair proxy` binary in front of a real upstream.
//!
//! Every case asserts a bounded, correct answer, and that well-formed requests on another
//! connection keep being served while the attack runs (their latency is printed on a `RESULT`
//! line; `docs/reliability.md` records a run). The cases run one at a time so that those
//! latencies belong to one attack.

mod harness;

use std::time::{Duration, Instant};

use corsair_runtime::testing::h2::{
    self, CONTINUATION, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PREFACE, RST_STREAM, frame,
    goaway_code, h2_error, hpack_int, hpack_literal, parse_frames, request_block, reset_codes,
    settings,
};
use corsair_runtime::testing::upstream::Upstream;
use harness::{
    ALLOWED, Exchange, Probe, ProbeStats, ProxyProcess, exchange, h2_client, ms, policy,
    read_answer,
};
use http::Request;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// One attack at a time, so that the probe latencies belong to it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Well-formed requests may be slow on a loaded 2-core CI machine, never this slow.
const PROBE_LIMIT: Duration = Duration::from_secs(3);

const SPEC: &str = "\
allowMethods: [GET, POST]
allowHeaders: [x-allowed]
routes:
  - pathPrefix: /any-header
    allowHeaders: [\"*\"]
  - pathPrefix: /ws-reject
    disallowedRequests: Reject";

struct Setup {
    upstream: Upstream,
    proxy: ProxyProcess,
    _dir: tempfile::TempDir,
}

async fn setup(extra_args: &[&str], nofile: Option<u64>) -> Setup {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy(ALLOWED, "x-policy-1", SPEC)).expect("write policy");
    let proxy = ProxyProcess::start(&path, &upstream.uri(), extra_args, nofile);
    Setup {
        upstream,
        proxy,
        _dir: dir,
    }
}

/// Repeats `attack` on 4 connections at once for 1.5 s, so that the probe measures during the
/// attack. Returns the time taken, the number of attacks and the description of the last.
async fn sustain<F, Fut>(attack: F) -> (Duration, usize, String)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    let start = Instant::now();
    let deadline = start + Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let attack = attack.clone();
        tasks.push(tokio::spawn(async move {
            let mut rounds = 0;
            let mut answer = String::new();
            while rounds == 0 || Instant::now() < deadline {
                answer = attack().await;
                rounds += 1;
            }
            (rounds, answer)
        }));
    }
    let mut total = 0;
    let mut last = String::new();
    for task in tasks {
        let (rounds, answer) = task.await.expect("an attack's assertions held");
        total += rounds;
        last = answer;
    }
    (start.elapsed(), total, last)
}

/// What reached the upstream, apart from the probe's requests.
fn attack_paths(s: &Setup) -> Vec<String> {
    s.upstream
        .paths()
        .into_iter()
        .filter(|p| p != "/probe")
        .collect()
}

/// One line for docs/reliability.md: the case, how many times it ran, what it got, how long
/// the whole attack lasted and the well-formed requests' latency meanwhile.
fn report(case: &str, rounds: usize, answer: &str, took: Duration, probe: &ProbeStats) {
    eprintln!(
        "RESULT | {case} | ×{rounds} | {answer} | {:.0} ms | {}",
        ms(took),
        probe.summary()
    );
}

/// The head of an HTTP/1.1 request with `Connection: close`, ending with the blank line.
fn head(method: &str, path: &str, fields: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n{fields}\r\n")
        .into_bytes()
}

fn assert_single(case: &str, ex: &Exchange, status: u16) {
    assert_eq!(ex.statuses(), [status], "{case}: {}", ex.text());
    assert!(ex.closed, "{case}: the connection was not closed");
}

/// `h0,h1,…` with `n` names.
fn names(n: usize, prefix: &str) -> String {
    (0..n)
        .map(|i| format!("{prefix}{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_naming_10000_headers() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let addr = s.proxy.listen;
    let (took, rounds, _) = sustain(move || async move {

        // 10,000 short names (58 KiB): under the 64 KiB header limit, so the engine sees them all.
        let short = names(10_000, "h");
        let preflight = |path: &str, acrh: &str| {
            head(
                "OPTIONS",
                path,
                &format!(
                    "Origin: {ALLOWED}\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: {acrh}\r\n"
                ),
            )
        };
        let denied = exchange(addr, &preflight("/p", &short), Duration::from_secs(5)).await;
        // A name the route does not allow: refused, without CORS headers.
        assert_single("10,000 names, allowHeaders [x-allowed]", &denied, 403);
        assert!(!denied.text().to_ascii_lowercase().contains("access-control-allow-origin"));
        // Under `allowHeaders: ["*"]` every name is allowed.
        let wildcard = exchange(
            addr,
            &preflight("/any-header", &short),
            Duration::from_secs(5),
        )
        .await;
        assert_single("10,000 names, allowHeaders [*]", &wildcard, 200);
        assert!(
            wildcard
                .text()
                .to_ascii_lowercase()
                .contains(&format!("access-control-allow-origin: {ALLOWED}\r\n")),
            "{}",
            wildcard.text()
        );
        // 10,000 realistic names (about 200 KiB) exceed the header limit.
        let long = names(10_000, "x-application-header-");
        let too_big = exchange(addr, &preflight("/p", &long), Duration::from_secs(5)).await;
        assert_single("10,000 long names", &too_big, 431);
        String::new()
    })
    .await;
    let stats = probe.finish().await;
    report(
        "Access-Control-Request-Headers with 10,000 names",
        rounds,
        "58 KiB: 403 (not allowed) / 200 under `*`; 200 KiB: 431",
        took,
        &stats,
    );
    stats.assert_healthy("10,000 names", PROBE_LIMIT);
    assert!(
        attack_paths(&s).is_empty(),
        "no preflight reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_with_1000_request_header_lines() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let addr = s.proxy.listen;
    let (took, rounds, _) = sustain(move || async move {
        let mut fields = format!("Origin: {ALLOWED}\r\nAccess-Control-Request-Method: GET\r\n");
        for i in 0..1000 {
            fields.push_str(&format!(
                "Access-Control-Request-Headers: {}\r\n",
                names(10, &format!("h{i}-"))
            ));
        }
        let h1 = exchange(
            addr,
            &head("OPTIONS", "/any-header", &fields),
            Duration::from_secs(5),
        )
        .await;
        // hyper parses at most 100 header fields per request.
        assert_single("1,000 ACRH lines over HTTP/1.1", &h1, 431);

        // Over HTTP/2 the same 1,000 fields exceed the 64 KiB header list limit.
        let mut sender = h2_client(addr).await;
        let mut req = Request::builder()
            .method("OPTIONS")
            .uri("http://api.test/any-header")
            .header("origin", ALLOWED)
            .header("access-control-request-method", "GET");
        for i in 0..1000 {
            req = req.header(
                "access-control-request-headers",
                names(10, &format!("h{i}-")),
            );
        }
        let h2 = sender
            .send_request(req.body(harness::empty()).expect("valid request"))
            .await
            .expect("an answer over h2");
        assert_eq!(h2.status(), 431, "1,000 ACRH lines over h2");

        // 100 lines of 10 names fit, and are read as one list.
        let mut req = Request::builder()
            .method("OPTIONS")
            .uri("http://api.test/p")
            .header("origin", ALLOWED)
            .header("access-control-request-method", "GET");
        for _ in 0..99 {
            req = req.header("access-control-request-headers", "x-allowed");
        }
        req = req.header("access-control-request-headers", "x-other");
        let mixed = sender
            .send_request(req.body(harness::empty()).expect("valid request"))
            .await
            .expect("an answer over h2");
        assert_eq!(
            mixed.status(),
            403,
            "the one disallowed name in the 100th line is seen"
        );
        String::new()
    })
    .await;
    let stats = probe.finish().await;
    report(
        "1,000 Access-Control-Request-Headers lines",
        rounds,
        "HTTP/1.1: 431 (over 100 fields); h2: 431 (over 64 KiB)",
        took,
        &stats,
    );
    stats.assert_healthy("1,000 ACRH lines", PROBE_LIMIT);
    assert_eq!(attack_paths(&s), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_header_lines() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let addr = s.proxy.listen;
    let (took, rounds, _) = sustain(move || async move {
        let fields: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
        let h1 = exchange(addr, &head("GET", "/", &fields), Duration::from_secs(5)).await;
        assert_single("10,000 header lines over HTTP/1.1", &h1, 431);

        let mut sender = h2_client(addr).await;
        let mut req = Request::builder().uri("http://api.test/");
        for i in 0..10_000 {
            req = req.header(format!("x-h{i}"), "v");
        }
        let h2 = sender
            .send_request(req.body(harness::empty()).expect("valid request"))
            .await
            .expect("an answer over h2");
        assert_eq!(h2.status(), 431, "10,000 header lines over h2");
        String::new()
    })
    .await;
    let stats = probe.finish().await;
    report(
        "10,000 header lines",
        rounds,
        "HTTP/1.1: 431; h2: 431",
        took,
        &stats,
    );
    stats.assert_healthy("10,000 header lines", PROBE_LIMIT);
    assert_eq!(attack_paths(&s), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_and_obs_text_in_header_values() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let addr = s.proxy.listen;
    let (took, rounds, answer) = sustain(move || async move {
        // Control characters (other than tab) are invalid in a field value: 400, nothing forwarded.
        for value in [&b"a\x00b"[..], b"a\x01b", b"a\x1bb", b"a\x7fb", b"a\rb"] {
            let mut bytes = b"GET /ctl HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nX-Test: ".to_vec();
            bytes.extend_from_slice(value);
            bytes.extend_from_slice(b"\r\n\r\n");
            let ex = exchange(addr, &bytes, Duration::from_secs(5)).await;
            assert_single(&format!("control character {value:?}"), &ex, 400);
        }
        let mut origin_ctl = b"GET /ctl HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nOrigin: https://app.example.com\x0b\r\n\r\n".to_vec();
        let ex = exchange(addr, &origin_ctl, Duration::from_secs(5)).await;
        assert_single("control character in Origin", &ex, 400);
        origin_ctl.clear();

        // obs-text (bytes 0x80-0xff) is allowed in a value and passed on as opaque bytes…
        let ex = exchange(
            addr,
            b"GET /obs HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nX-Test: caf\xe9 \xff\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert_single("obs-text in X-Test", &ex, 200);
        // …but an Origin with obs-text is no origin the policy lists: forwarded without CORS headers.
        let ex = exchange(
            addr,
            b"GET /obs-origin HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nOrigin: https://app.example.com\xff\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert_single("obs-text in Origin", &ex, 200);
        assert!(!ex.text().to_ascii_lowercase().contains("access-control-allow-origin"), "{}", ex.text());
        // A requested header name with obs-text is never allowed.
        let ex = exchange(
            addr,
            b"OPTIONS /p HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: x-allowed\xe9\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert_single("obs-text in Access-Control-Request-Headers", &ex, 403);

        // Over h2, a control character in a value makes the request malformed: the stream is reset.
        let mut bytes = PREFACE.to_vec();
        bytes.extend(settings(&[]));
        bytes.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &request_block("GET", "/ctl-h2", &[(b"x-test", b"a\x01b")]),
        ));
        let ex = exchange(addr, &bytes, Duration::from_secs(2)).await;
        let frames = parse_frames(&ex.answer);
        let h2_answer = if let Some(code) = reset_codes(&frames).first() {
            format!("RST_STREAM {}", h2_error(*code))
        } else if let Some(code) = goaway_code(&frames) {
            format!("GOAWAY {}", h2_error(code))
        } else {
            panic!("h2 control character: neither RST_STREAM nor GOAWAY: {frames:?}");
        };
        assert!(
            !frames.iter().any(|f| f.kind == HEADERS && f.stream == 1 && f.payload.first() == Some(&0x88)),
            "h2 control character answered 200"
        );
        h2_answer
    })
    .await;
    let stats = probe.finish().await;
    report(
        "control characters and obs-text in values",
        rounds,
        &format!("CTL: 400 (HTTP/1.1), {answer} (h2); obs-text: forwarded opaque, never a match"),
        took,
        &stats,
    );
    stats.assert_healthy("control characters", PROBE_LIMIT);
    let paths = attack_paths(&s);
    assert!(
        paths.iter().all(|p| p == "/obs" || p == "/obs-origin"),
        "only the obs-text requests were forwarded: {paths:?}"
    );
    assert_eq!(
        paths.len(),
        2 * rounds,
        "both obs-text requests were forwarded"
    );
}

/// A request that tries to hide a second one (`GET /smuggled`) behind ambiguous framing.
struct Smuggle {
    case: &'static str,
    bytes: String,
    /// What the proxy may answer to the first request.
    allowed: &'static [u16],
    /// When answered 200: the body length the upstream must have read (the framing it used).
    body: &'static str,
    /// Once the first request is read unambiguously, what follows may be served as the next
    /// pipelined request (then both the client and the upstream see it as a request of its own).
    pipelined: bool,
}

fn smuggling_cases() -> Vec<Smuggle> {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n";
    let post = "POST /upload HTTP/1.1\r\nHost: api.test\r\n";
    vec![
        Smuggle {
            case: "Content-Length and Transfer-Encoding",
            bytes: format!(
                "{post}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            // RFC 9112 6.3: reject, or read the body by Transfer-Encoding and then close.
            allowed: &[200, 400],
            body: "5",
            pipelined: false,
        },
        Smuggle {
            case: "Transfer-Encoding then Content-Length",
            bytes: format!(
                "{post}Transfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            allowed: &[200, 400],
            body: "0",
            pipelined: false,
        },
        Smuggle {
            case: "two different Content-Length lines",
            bytes: format!("{post}Content-Length: 5\r\nContent-Length: 46\r\n\r\nhello{smuggled}"),
            allowed: &[400],
            body: "",
            pipelined: false,
        },
        Smuggle {
            case: "Content-Length: 5, 46",
            bytes: format!("{post}Content-Length: 5, 46\r\n\r\nhello{smuggled}"),
            allowed: &[400],
            body: "",
            pipelined: false,
        },
        Smuggle {
            case: "chunk size overflow",
            bytes: format!(
                "{post}Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            // The client's own body is malformed: its error, not the upstream's.
            allowed: &[400],
            body: "",
            pipelined: false,
        },
        Smuggle {
            case: "Transfer-Encoding: xchunked",
            bytes: format!("{post}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
            allowed: &[400, 501],
            body: "",
            pipelined: false,
        },
        Smuggle {
            case: "obs-fold Transfer-Encoding",
            bytes: format!("{post}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            allowed: &[400],
            body: "",
            pipelined: false,
        },
        Smuggle {
            case: "bare LF line ends",
            bytes: format!(
                "POST /upload HTTP/1.1\nHost: api.test\nContent-Length: 5\n\nhello{smuggled}"
            ),
            allowed: &[200, 400],
            body: "5",
            pipelined: true,
        },
        Smuggle {
            case: "bare LF inside a header block",
            bytes: format!("{post}X-A: b\nContent-Length: 5\r\n\r\nhello{smuggled}"),
            allowed: &[200, 400],
            body: "5",
            pipelined: true,
        },
        Smuggle {
            case: "bare LF after a chunk size",
            bytes: format!(
                "{post}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            allowed: &[200, 400],
            body: "5",
            pipelined: true,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_attempts() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let addr = s.proxy.listen;
    let served_second = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served_second.clone();
    let (took, rounds, answer) = sustain(move || {
        let counter = counter.clone();
        async move {
            let mut answers = Vec::new();
            for c in smuggling_cases() {
                let ex = exchange(addr, c.bytes.as_bytes(), Duration::from_secs(5)).await;
                let statuses = ex.statuses();
                let case = c.case;
                assert!(ex.closed, "{case}: the connection stayed open");
                // One answer, then the connection is closed: whatever followed the first request
                // is discarded. Only where the first request was unambiguous may the rest be served
                // as the next request, and then the client gets its answer too.
                if c.pipelined && statuses.len() == 2 {
                    assert_eq!(statuses[1], 200, "{case}: {}", ex.text());
                    assert!(ex.text().ends_with("hello"), "{case}: {}", ex.text());
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    assert_eq!(statuses.len(), 1, "{case}: {}", ex.text());
                }
                assert!(
                    c.allowed.contains(&statuses[0]),
                    "{case}: answered {statuses:?}: {}",
                    ex.text()
                );
                if statuses[0] == 200 {
                    let first = ex
                        .text()
                        .split("HTTP/1.1 ")
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    assert!(
                        first.ends_with(&format!("\r\n\r\n{}", c.body)),
                        "{case}: the upstream read the wrong body: {}",
                        ex.text()
                    );
                }
                answers.push(format!("{case}: {statuses:?}"));
            }
            answers.join("; ")
        }
    })
    .await;
    let stats = probe.finish().await;
    report("request smuggling", rounds, &answer, took, &stats);
    // The upstream saw exactly the follow-up requests the client got a second answer for.
    let smuggled = attack_paths(&s)
        .iter()
        .filter(|p| *p == "/smuggled")
        .count();
    assert_eq!(
        smuggled,
        served_second.load(std::sync::atomic::Ordering::Relaxed),
        "the upstream saw a request the proxy did not answer as one"
    );
    stats.assert_healthy("smuggling", PROBE_LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_over_200_connections() {
    let _serial = SERIAL.lock().await;
    let s = setup(&["--header-read-timeout", "2"], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let start = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..200 {
        let addr = s.proxy.listen;
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let started = Instant::now();
            let head = b"GET / HTTP/1.1\r\nHost: api.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for byte in head {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                // Stop writing once the proxy answered or closed.
                let ex = read_answer(&mut stream, Duration::from_secs(1)).await;
                if ex.closed || !ex.answer.is_empty() {
                    return (started.elapsed(), ex.text());
                }
            }
            (started.elapsed(), "still open after the whole head".to_owned())
        }));
    }
    let mut slowest = Duration::ZERO;
    let mut answers = std::collections::BTreeSet::new();
    for client in clients {
        let (took, answer) = client.await.expect("client task");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "slowloris answer: {answer:?}"
        );
        answers.insert(if answer.is_empty() {
            "close".to_owned()
        } else {
            "408".to_owned()
        });
        slowest = slowest.max(took);
    }
    // Cut off at the header read timeout (2 s), not when the client gives up.
    assert!(
        slowest < Duration::from_secs(5),
        "a slowloris connection lasted {slowest:?}"
    );
    let took = start.elapsed();
    let stats = probe.finish().await;
    report(
        "slowloris, 200 connections, 1 byte/s",
        1,
        &format!(
            "{answers:?} after at most {:.1} s (--header-read-timeout 2)",
            slowest.as_secs_f64()
        ),
        took,
        &stats,
    );
    stats.assert_healthy("slowloris", PROBE_LIMIT);
    assert_eq!(attack_paths(&s), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_up_to_the_fd_limit() {
    let _serial = SERIAL.lock().await;
    // A limit of 128 keeps the test fast; the behaviour at 1,048,576 is the same. The idle
    // timeout keeps its default (300 s): connections that send nothing are closed by the header
    // read timeout.
    let s = setup(&["--header-read-timeout", "2"], Some(128)).await;
    let probe = Probe::start(s.proxy.listen).await;
    let baseline = s.proxy.open_fds();
    let start = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..200 {
        // Connections beyond the limit wait in the listen backlog.
        idle.push(TcpStream::connect(s.proxy.listen).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_limit = s.proxy.open_fds();
    assert!(
        at_limit >= 120,
        "the flood did not reach the limit: {at_limit} fds"
    );
    // A new connection waits until idle ones are closed, then is served.
    let fresh_started = Instant::now();
    let mut fresh = harness::H1::open(s.proxy.listen).await.expect("connect");
    let answer = tokio::time::timeout(Duration::from_secs(15), fresh.send(harness::get("/fresh")))
        .await
        .expect("a new connection is served once idle ones are closed")
        .expect("response");
    let fresh_took = fresh_started.elapsed();
    assert_eq!(answer.status(), 200);
    drop(idle);
    let stats = probe.finish().await;
    // Everything is released afterwards.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.proxy.open_fds() > baseline + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = s.proxy.open_fds();
    let accept_errors = s.proxy.log_count("accept failed");
    report(
        "200 idle connections against a 128-fd limit",
        1,
        &format!(
            "{at_limit} fds in use at the limit ({baseline} before, {after} after); {accept_errors} `accept failed` logs; a new connection answered after {:.1} s",
            fresh_took.as_secs_f64()
        ),
        start.elapsed(),
        &stats,
    );
    assert!(
        after <= baseline + 2,
        "fds leaked: {baseline} before, {after} after"
    );
    stats.assert_healthy("fd flood", PROBE_LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout() {
    let _serial = SERIAL.lock().await;
    let s = setup(
        &["--header-read-timeout", "1", "--idle-timeout", "30"],
        None,
    )
    .await;
    // Nothing; one byte, which could begin an HTTP/1.1 method or the HTTP/2 preface; part of
    // the preface: in each case the proxy cannot tell the protocol yet, and waits only as long
    // as for a request's head.
    for sent in [&b""[..], b"P", b"PRI * HTTP/2.0\r\n"] {
        let start = Instant::now();
        let silent = exchange(s.proxy.listen, sent, Duration::from_secs(10)).await;
        let took = start.elapsed();
        let case = String::from_utf8_lossy(sent);
        assert!(silent.closed, "{case:?}: the connection was kept open");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{case:?}: closed after {took:?}, not at the 1 s header read timeout"
        );
        assert!(silent.answer.is_empty(), "{case:?}: {}", silent.text());
    }
}

/// Opens an h2c connection by hand: preface and empty SETTINGS.
async fn raw_h2(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(settings(&[]));
    stream.write_all(&hello).await.expect("preface");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let addr = s.proxy.listen;
    let (took, rounds, answer) = sustain(move || async move {
        // Up to 10,000 streams, each opened and cancelled at once (CVE-2023-44487).
        let mut stream = raw_h2(addr).await;
        let block = request_block("GET", "/reset", &[]);
        let mut sent = 0u32;
        for batch in 0..100u32 {
            let mut bytes = Vec::new();
            for i in 0..100u32 {
                let id = 2 * (batch * 100 + i) + 1;
                bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
                bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
            }
            if stream.write_all(&bytes).await.is_err() {
                break;
            }
            sent += 100;
        }
        let ex = read_answer(&mut stream, Duration::from_secs(5)).await;
        let goaway = goaway_code(&parse_frames(&ex.answer));
        assert_eq!(
            goaway,
            Some(0xb),
            "the proxy must end a rapid-reset connection with ENHANCE_YOUR_CALM"
        );
        assert!(ex.closed, "the connection was closed");
        format!(
            "GOAWAY {} after the client wrote ≤{sent} streams, {:.0} ms",
            goaway.map_or("none", h2_error),
            ms(ex.first_byte)
        )
    })
    .await;
    // Give requests already on their way a moment to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reached = attack_paths(&s).len();
    let stats = probe.finish().await;
    report(
        "h2 rapid reset, 10,000 HEADERS+RST_STREAM per connection",
        rounds,
        &format!("{answer}; {reached} reset requests reached the upstream in all"),
        took,
        &stats,
    );
    assert!(
        reached < 100 * rounds,
        "{reached} reset requests reached the upstream in {rounds} connections"
    );
    stats.assert_healthy("rapid reset", PROBE_LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let addr = s.proxy.listen;
    let (took, rounds, answer) = sustain(move || async move {
        let mut outcomes = Vec::new();
        // Fields in many CONTINUATION frames, and empty CONTINUATION frames without end.
        let field = hpack_literal(b"x-flood", b"0123456789");
        for (case, payload) in [
            ("16-byte fields", field.as_slice()),
            ("empty frames", &[][..]),
        ] {
            let mut stream = raw_h2(addr).await;
            let mut bytes = frame(HEADERS, 0, 1, &request_block("GET", "/continuation", &[]));
            let mut write_failed = false;
            let mut written = 0;
            for _ in 0..100 {
                for _ in 0..1000 {
                    bytes.extend(frame(CONTINUATION, 0, 1, payload));
                }
                if stream.write_all(&bytes).await.is_err() {
                    write_failed = true;
                    break;
                }
                written += 1000;
                bytes.clear();
            }
            let ex = read_answer(&mut stream, Duration::from_secs(5)).await;
            let frames = parse_frames(&ex.answer);
            let goaway = goaway_code(&frames);
            outcomes.push(format!(
                "{case}: GOAWAY {} after ≤{written} frames, {:.0} ms",
                goaway.map_or("none", h2_error),
                ms(ex.first_byte)
            ));
            assert!(
                goaway.is_some(),
                "{case}: no GOAWAY: {frames:?} (write failed: {write_failed})"
            );
            assert!(ex.closed, "{case}: the connection stayed open");
        }
        outcomes.join("; ")
    })
    .await;
    let stats = probe.finish().await;
    report("h2 CONTINUATION flood", rounds, &answer, took, &stats);
    stats.assert_healthy("continuation flood", PROBE_LIMIT);
    assert_eq!(attack_paths(&s), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_settings_flood() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let rss_before = s.proxy.rss_kib();
    let start = Instant::now();
    let mut stream = raw_h2(s.proxy.listen).await;
    // 500,000 SETTINGS frames, never reading the ACKs.
    let one = settings(&[(0x4, 65_535), (0x3, 100)]);
    let mut written = 0u32;
    let mut write_failed = false;
    for _ in 0..500 {
        let bytes: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        match tokio::time::timeout(Duration::from_secs(3), stream.write_all(&bytes)).await {
            Ok(Ok(())) => written += 1000,
            // The proxy stopped reading (its ACKs are not being read) or closed.
            _ => {
                write_failed = true;
                break;
            }
        }
    }
    let rss_during = s.proxy.rss_kib();
    let ex = read_answer(&mut stream, Duration::from_secs(3)).await;
    let frames = parse_frames(&ex.answer);
    let acks = frames
        .iter()
        .filter(|f| f.kind == h2::SETTINGS && f.flags == h2::ACK)
        .count();
    let goaway = goaway_code(&frames);
    drop(stream);
    let took = start.elapsed();
    let stats = probe.finish().await;
    report(
        "h2 SETTINGS flood, 500,000 frames, ACKs unread",
        1,
        &format!(
            "{written} written before {}; GOAWAY {}; {acks} ACKs read back; RSS {} → {} KiB",
            if write_failed {
                "the proxy stopped reading"
            } else {
                "the end"
            },
            goaway.map_or("none", h2_error),
            rss_before,
            rss_during
        ),
        took,
        &stats,
    );
    // Each SETTINGS is acknowledged (RFC 9113 6.5.3), or the proxy stops reading when its ACKs
    // are not read (TCP back-pressure), or it closes; its memory stays bounded either way.
    assert!(
        goaway.is_some() || write_failed || acks == written as usize + 1,
        "{written} SETTINGS frames, {acks} ACKs, no GOAWAY"
    );
    assert!(
        rss_during < rss_before + 32 * 1024,
        "RSS grew from {rss_before} to {rss_during} KiB"
    );
    stats.assert_healthy("settings flood", PROBE_LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_huge_hpack_table_size() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let addr = s.proxy.listen;
    let (took, rounds, answer) = sustain(move || async move {
        // The client offers a 4 GiB table for the proxy's responses: the proxy's encoder keeps its
        // own cap, and requests are answered normally.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut bytes = PREFACE.to_vec();
        bytes.extend(settings(&[(0x1, u32::MAX)]));
        for i in 0..50u32 {
            bytes.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                2 * i + 1,
                &request_block("GET", &format!("/table-{i}"), &[]),
            ));
        }
        bytes.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]));
        stream.write_all(&bytes).await.expect("write");
        let ex = read_answer(&mut stream, Duration::from_secs(5)).await;
        let frames = parse_frames(&ex.answer);
        let answered = frames.iter().filter(|f| f.kind == HEADERS).count();
        assert_eq!(answered, 50, "every request answered: {frames:?}");

        // A dynamic table size update above the proxy's own SETTINGS_HEADER_TABLE_SIZE (4096) in a
        // request's header block is a compression error.
        let mut stream = raw_h2(addr).await;
        let mut block = hpack_int(5, 0x20, usize::try_from(u32::MAX).expect("fits"));
        block.extend(request_block("GET", "/table-update", &[]));
        stream
            .write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
            .await
            .expect("write");
        let update = read_answer(&mut stream, Duration::from_secs(5)).await;
        let code = goaway_code(&parse_frames(&update.answer));
        assert!(
            matches!(code, Some(0x1 | 0x9)),
            "a connection error expected, got {code:?}"
        );
        assert!(update.closed);
        format!("GOAWAY {}", code.map_or("none", h2_error))
    })
    .await;
    let stats = probe.finish().await;
    report(
        "h2 huge HPACK table size",
        rounds,
        &format!(
            "SETTINGS_HEADER_TABLE_SIZE 2^32-1: 50/50 answered (encoder capped at 4 KiB); table size update 2^32-1: {answer}"
        ),
        took,
        &stats,
    );
    stats.assert_healthy("hpack table", PROBE_LIMIT);
    assert!(!s.upstream.paths().iter().any(|p| p == "/table-update"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_many_streams_at_once() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let start = Instant::now();
    // A well-behaved client with 1,000 requests in flight on one connection: the proxy's
    // concurrency limit queues them in the client, and all are answered.
    let sender = h2_client(s.proxy.listen).await;
    let mut requests = Vec::new();
    for _ in 0..1000 {
        let mut sender = sender.clone();
        requests.push(tokio::spawn(async move {
            let req = Request::builder()
                .uri("http://api.test/slow?ms=50")
                .header("origin", ALLOWED)
                .body(harness::empty())
                .expect("valid request");
            sender.send_request(req).await.map(|r| r.status())
        }));
    }
    let mut ok = 0;
    for request in requests {
        if matches!(request.await.expect("task"), Ok(status) if status == 200) {
            ok += 1;
        }
    }
    assert_eq!(ok, 1000, "every request answered 200");
    let well_behaved = start.elapsed();

    // A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS: streams over the limit are refused.
    let mut stream = TcpStream::connect(s.proxy.listen).await.expect("connect");
    let mut bytes = PREFACE.to_vec();
    bytes.extend(settings(&[]));
    for i in 0..1000u32 {
        bytes.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            2 * i + 1,
            &request_block("GET", "/slow?ms=500", &[]),
        ));
    }
    stream.write_all(&bytes).await.expect("write");
    let ex = read_answer(&mut stream, Duration::from_secs(3)).await;
    let frames = parse_frames(&ex.answer);
    let refused = reset_codes(&frames).iter().filter(|c| **c == 0x7).count();
    let goaway = goaway_code(&frames);
    let took = start.elapsed();
    let stats = probe.finish().await;
    report(
        "h2 many streams at once",
        1,
        &format!(
            "1,000 via a client: all 200 in {:.1} s; 1,000 ignoring the limit: {refused} REFUSED_STREAM, GOAWAY {}",
            well_behaved.as_secs_f64(),
            goaway.map_or("none", h2_error)
        ),
        took,
        &stats,
    );
    assert!(
        refused >= 700 || goaway.is_some(),
        "streams over the limit were neither refused nor the connection closed"
    );
    stats.assert_healthy("many streams", PROBE_LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_from_a_disallowed_origin_on_a_reject_route() {
    let _serial = SERIAL.lock().await;
    let s = setup(&[], None).await;
    let probe = Probe::start(s.proxy.listen).await;
    let start = Instant::now();
    let upgrade = |origin: &str| {
        format!(
            "GET /ws-reject/chat HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n"
        )
    };
    let denied = exchange(
        s.proxy.listen,
        upgrade("https://evil.example.net").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(denied.statuses(), [403], "{}", denied.text());
    assert!(
        attack_paths(&s).is_empty(),
        "the refused upgrade was not forwarded"
    );
    let denied_took = denied.first_byte;
    // The same upgrade from the allowed origin is tunnelled.
    let mut stream = TcpStream::connect(s.proxy.listen).await.expect("connect");
    stream
        .write_all(upgrade(ALLOWED).as_bytes())
        .await
        .expect("write");
    let head = read_answer(&mut stream, Duration::from_millis(500)).await;
    assert_eq!(head.statuses(), [101], "{}", head.text());
    stream.write_all(b"ping").await.expect("write");
    let echo = read_answer(&mut stream, Duration::from_millis(500)).await;
    assert_eq!(echo.text(), "ping");
    let took = start.elapsed();
    let stats = probe.finish().await;
    report(
        "WebSocket upgrade from a disallowed origin, `disallowedRequests: Reject`",
        1,
        &format!(
            "403 in {:.1} ms, not forwarded (allowed origin: 101 and echo)",
            ms(denied_took)
        ),
        took,
        &stats,
    );
    stats.assert_healthy("websocket", PROBE_LIMIT);
    assert_eq!(
        attack_paths(&s),
        ["/ws-reject/chat"],
        "only the allowed upgrade was forwarded"
    );
}
