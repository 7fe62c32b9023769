use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use http::Request;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};

use super::*;
use crate::ProxyConfig;
use crate::upstream::{Failure, Lane, MAX_RESPONSE_HEAD, Upstream};

fn parts(method: &str, headers: &[(&'static str, &'static str)]) -> Parts {
    let mut builder = Request::builder().method(method).uri("/a/b?c=1");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("a request").into_parts().0
}

#[test]
fn a_request_head_keeps_the_clients_lines_and_takes_the_framing_chosen_here() {
    let mut out = Vec::new();
    let get = parts(
        "GET",
        &[
            ("host", "app"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("content-length", "7"),
        ],
    );
    encode_head(&mut out, &get, RequestFraming::Length(5));
    assert_eq!(
        String::from_utf8_lossy(&out),
        "GET /a/b?c=1 HTTP/1.1\r\nhost: app\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\n"
    );
    encode_head(&mut out, &parts("POST", &[]), RequestFraming::Chunked);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "POST /a/b?c=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    encode_head(&mut out, &parts("DELETE", &[]), RequestFraming::None);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "DELETE /a/b?c=1 HTTP/1.1\r\n\r\n"
    );
}

#[test]
fn the_framing_follows_the_body() {
    let empty = Empty::<Bytes>::new();
    assert_eq!(
        RequestFraming::of(&parts("GET", &[]), &empty),
        RequestFraming::None
    );
    // An empty POST still says so; so does a GET whose client sent Content-Length: 0.
    assert_eq!(
        RequestFraming::of(&parts("POST", &[]), &empty),
        RequestFraming::Length(0)
    );
    assert_eq!(
        RequestFraming::of(&parts("GET", &[("content-length", "0")]), &empty),
        RequestFraming::Length(0)
    );
    let full = Full::new(Bytes::from_static(b"hello"));
    assert_eq!(
        RequestFraming::of(&parts("PUT", &[]), &full),
        RequestFraming::Length(5)
    );
    let stream = StreamBody::new(futures::stream::iter([Ok::<_, Infallible>(Frame::data(
        Bytes::from_static(b"x"),
    ))]));
    assert_eq!(
        RequestFraming::of(&parts("POST", &[]), &stream),
        RequestFraming::Chunked
    );
}

#[test]
fn numbers_are_written_without_fmt() {
    for n in [0, 7, 10, 1_234_567_890, u64::MAX] {
        let mut out = Vec::new();
        push_decimal(&mut out, n);
        assert_eq!(out, n.to_string().into_bytes());
    }
    for n in [0usize, 9, 0x1a2b, 0xffff_ffff] {
        let mut line = [0u8; 20];
        assert_eq!(hex_line(&mut line, n), format!("{n:x}\r\n").as_bytes());
    }
}

fn head(status: u16, version: Version) -> Head {
    Head {
        status: StatusCode::from_u16(status).expect("a status"),
        reason: None,
        version,
        sent: Sent::Whole,
    }
}

fn map(lines: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in lines {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

/// hyper passes a known length's `Content-Length` on as it came, and fails to write a head
/// with two such lines: the client gets one plain number, or none where none may be.
#[test]
fn the_client_sees_one_plain_content_length() {
    let after = |status: u16, method: Method, lines: &[(&'static str, &'static str)]| {
        let mut headers = map(lines);
        let framing = response_framing(&head(status, Version::HTTP_11), &method, &mut headers);
        assert!(framing.is_ok(), "{framing:?}");
        headers
            .get_all("content-length")
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
    };
    let twice = [("content-length", "5"), ("content-length", "5")];
    for method in [Method::GET, Method::HEAD] {
        assert_eq!(after(200, method.clone(), &twice), ["5"], "{method}");
        assert_eq!(
            after(200, method.clone(), &[("content-length", "5, 5")]),
            ["5"]
        );
        assert_eq!(
            after(200, method.clone(), &[("content-length", "005")]),
            ["5"]
        );
        assert_eq!(after(200, method, &[("content-length", "0")]), ["0"]);
    }
    assert_eq!(after(304, Method::GET, &twice), ["5"]);
    // None in a 204 (RFC 9110 §8.6), and no invalid one where the body does not depend on it.
    assert!(after(204, Method::GET, &twice).is_empty());
    assert!(after(200, Method::HEAD, &[("content-length", "5, 6")]).is_empty());
    assert!(after(304, Method::GET, &[("content-length", "x")]).is_empty());
}

#[test]
fn the_response_body_is_delimited_as_rfc_9112_says() {
    let v11 = Version::HTTP_11;
    let framing = |status, version, method: Method, lines: &[(&'static str, &'static str)]| {
        response_framing(&head(status, version), &method, &mut map(lines))
            .map_err(|e| e.to_string())
    };
    let length = [("content-length", "12")];
    assert_eq!(
        framing(200, v11, Method::GET, &length),
        Ok((Framing::Length(12), true))
    );
    // No body whatever the headers say.
    assert_eq!(
        framing(200, v11, Method::HEAD, &length),
        Ok((Framing::Done, true))
    );
    for status in [204, 304] {
        assert_eq!(
            framing(status, v11, Method::GET, &length),
            Ok((Framing::Done, true))
        );
    }
    assert_eq!(
        framing(200, v11, Method::GET, &[("transfer-encoding", "Chunked")]),
        Ok((Framing::Chunked(Chunk::Size), true))
    );
    // Chunked beside a Content-Length: chunked wins, the length is removed (below), and the
    // connection is not trusted again.
    assert_eq!(
        framing(
            200,
            v11,
            Method::GET,
            &[("transfer-encoding", "chunked"), ("content-length", "3")]
        ),
        Ok((Framing::Chunked(Chunk::Size), false))
    );
    // Any other coding is refused, named: the proxy asked for none and could not pass it on.
    for lines in [
        &[("transfer-encoding", "gzip, chunked")][..],
        &[("transfer-encoding", "gzip")],
        &[
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked"),
        ],
    ] {
        let error = framing(200, v11, Method::GET, lines).expect_err("refused");
        assert!(error.contains("\"gzip\""), "{error}");
    }
    for value in ["chunked, chunked", ""] {
        let lines = [("transfer-encoding", value)];
        let error = framing(200, v11, Method::GET, &lines).expect_err("refused");
        assert!(error.contains("chunked must appear once"), "{error}");
    }
    assert_eq!(
        framing(200, v11, Method::GET, &[]),
        Ok((Framing::UntilClose, false))
    );
    assert_eq!(
        framing(
            200,
            v11,
            Method::GET,
            &[("content-length", "5"), ("content-length", "5, 5")]
        ),
        Ok((Framing::Length(5), true))
    );
    assert_eq!(
        framing(
            200,
            v11,
            Method::GET,
            &[("connection", "Keep-Alive, Close")]
        )
        .map(|(_, reuse)| reuse),
        Ok(false)
    );
    let v10 = Version::HTTP_10;
    assert_eq!(
        framing(200, v10, Method::GET, &length).map(|(_, reuse)| reuse),
        Ok(false)
    );
    assert_eq!(
        framing(
            200,
            v10,
            Method::GET,
            &[("content-length", "1"), ("connection", "keep-alive")]
        )
        .map(|(_, reuse)| reuse),
        Ok(true)
    );
    let error =
        framing(200, v10, Method::GET, &[("transfer-encoding", "chunked")]).expect_err("refused");
    assert!(error.contains("HTTP/1.0"), "{error}");
    for (lines, cause) in [
        (
            &[("content-length", "5"), ("content-length", "6")][..],
            "conflicting",
        ),
        (&[("content-length", "+5")][..], "invalid Content-Length"),
        (&[("content-length", "")][..], "invalid Content-Length"),
        (
            &[("content-length", "99999999999999999999")][..],
            "invalid Content-Length",
        ),
    ] {
        let error = framing(200, v11, Method::GET, lines).expect_err("refused");
        assert!(error.contains(cause), "{lines:?}: {error}");
    }
}

/// Runs the chunked decoder over `input` arriving `step` bytes at a time.
fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), String> {
    let mut read = BytesMut::new();
    let mut chunk = Chunk::Size;
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match decode_chunk(&mut read, chunk).map_err(|e| e.to_string())? {
            Decoded::Frame(next, frame) => {
                chunk = next;
                data.extend_from_slice(&frame.into_data().expect("data"));
            }
            Decoded::Step(next) => chunk = next,
            Decoded::End(trailers) => {
                assert!(read.is_empty(), "bytes left after the body: {read:?}");
                return Ok((data, trailers));
            }
            Decoded::NeedMore => {
                let Some(more) = input.get(fed..(fed + step).min(input.len())) else {
                    return Err("input ended".into());
                };
                if more.is_empty() {
                    return Err("input ended".into());
                }
                read.extend_from_slice(more);
                fed += more.len();
            }
        }
    }
}

#[test]
fn a_chunked_body_decodes_the_same_whatever_the_reads() {
    let body = "x".repeat(26);
    let input = format!("5;name=value\r\nhello\r\n1A\r\n{body}\r\n0\r\nx-checksum: abc\r\n\r\n");
    for step in [1, 2, 3, 7, input.len()] {
        let (data, trailers) = decode(input.as_bytes(), step).expect("decodes");
        assert_eq!(
            String::from_utf8_lossy(&data),
            format!("hello{body}"),
            "step {step}"
        );
        let trailers = trailers.expect("trailers");
        assert_eq!(
            trailers.get("x-checksum").map(|v| v.as_bytes()),
            Some(&b"abc"[..])
        );
    }
    // Whitespace before an extension is allowed (RFC 9112 §7.1.1: BWS).
    let (data, _) = decode(b"3 ;x=1\r\nabc\r\n0\r\n\r\n", 2).expect("decodes");
    assert_eq!(data, b"abc");
    let (data, trailers) = decode(b"3\r\nabc\r\n0\r\n\r\n", 1).expect("decodes");
    assert_eq!(data, b"abc");
    assert!(trailers.is_none());
}

#[test]
fn a_malformed_chunked_body_is_an_error_naming_what_is_wrong() {
    let long_line = format!("{}\r\n", "1".repeat(MAX_CHUNK_LINE + 10));
    for (input, cause) in [
        ("zz\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        ("\r\n", "invalid chunk size"),
        ("10000000000000000\r\n", "invalid chunk size"),
        ("5\nhello\r\n0\r\n\r\n", "CRLF"),
        ("5\r\nhelloXX0\r\n\r\n", "does not end in CRLF"),
        (long_line.as_str(), "too long"),
        (&long_line[..MAX_CHUNK_LINE + 5], "too long"),
        ("0\r\nno colon here\r\n\r\n", "malformed trailers"),
        ("5 6\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        ("5\tjunk\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        ("5;a\x01b\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        ("5\r\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        ("5\x0c;a\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
    ] {
        let error = decode(input.as_bytes(), input.len()).expect_err(input);
        assert!(error.contains(cause), "{input:?}: {error}");
    }
}

/// A loopback upstream that serves each accepted connection with `serve` on a thread of its
/// own; the count of connections it accepted.
fn serve(
    serve: impl Fn(usize, TcpStream) + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let serve = serve.clone();
            std::thread::spawn(move || serve(n, stream));
        }
    });
    (addr, accepted)
}

/// Reads one request head (through the blank line); `None` when the client closed.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The proxy's defaults with `addr` as the upstream.
fn upstream_config(addr: SocketAddr) -> ProxyConfig {
    ProxyConfig::new(
        "policy.yaml".into(),
        format!("http://{addr}").parse().expect("a URI"),
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
}

fn proxy_upstream(addr: SocketAddr) -> Upstream {
    Upstream::new(
        &upstream_config(addr),
        &TaskTracker::new(),
        &CancellationToken::new(),
    )
    .expect("an upstream")
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("/").body(Empty::new()).expect("a request")
}

/// Sends `req` and reads the whole response.
async fn exchange<B>(
    upstream: &Upstream,
    lane: &Lane,
    req: Request<B>,
) -> Result<(StatusCode, HeaderMap, Vec<u8>, Option<HeaderMap>), Failure>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let response = upstream
        .send(lane, &Activity::new(), req)
        .await
        .map_err(|f| f.failure)?;
    let status = response.status();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(|_| Failure::Reset)?;
    let trailers = collected.trailers().cloned();
    Ok((
        status,
        parts.headers,
        collected.to_bytes().to_vec(),
        trailers,
    ))
}

#[tokio::test]
async fn requests_one_after_the_other_share_one_kept_alive_connection() {
    let (addr, accepted) = serve(|_, mut stream| {
        while read_head(&mut stream).is_some() {
            let _ = stream.write_all(
                b"HTTP/1.1 200 Fine Thanks\r\ncontent-length: 2\r\nx-a: b\r\nx-empty:\r\n\r\nok",
            );
        }
    });
    let upstream = proxy_upstream(addr);
    let lane = Lane::default();
    for _ in 0..5 {
        let (status, headers, body, _) =
            exchange(&upstream, &lane, get()).await.expect("a response");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get("x-a").map(|v| v.as_bytes()), Some(&b"b"[..]));
        assert_eq!(headers.get("x-empty").map(|v| v.as_bytes()), Some(&b""[..]));
        assert_eq!(body, b"ok");
    }
    // A reason phrase of its own reaches hyper, which writes it to the client.
    let response = upstream
        .send(&lane, &Activity::new(), get())
        .await
        .expect("a response");
    let reason = response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| r.as_bytes().to_vec());
    assert_eq!(reason.as_deref(), Some(&b"Fine Thanks"[..]));
    response.into_body().collect().await.expect("the body");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// How many idle connections the lane holds.
fn idle(lane: &Lane) -> usize {
    lane.idle
        .lock()
        .map(|idle| idle.len())
        .unwrap_or(usize::MAX)
}

#[tokio::test]
async fn a_connection_is_given_back_only_when_it_can_carry_another_request() {
    // The upstream keeps every connection open: only the proxy's reading decides.
    let cases: [(&'static [u8], Method, &'static [u8], usize); 8] = [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Method::GET,
            b"ok",
            1,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            Method::HEAD,
            b"",
            1,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", Method::GET, b"", 1),
        (
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
            Method::GET,
            b"",
            1,
        ),
        (
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
            Method::GET,
            b"ok",
            1,
        ),
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            Method::GET,
            b"ok",
            0,
        ),
        (
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Method::GET,
            b"ok",
            0,
        ),
        // More than the body: the next response would start with it.
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
            Method::GET,
            b"ok",
            0,
        ),
    ];
    for (answer, method, expected, kept) in cases {
        let (addr, _) = serve(move |_, mut stream| {
            if read_head(&mut stream).is_some() {
                let _ = stream.write_all(answer);
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        let upstream = proxy_upstream(addr);
        let lane = Lane::default();
        let req = Request::builder()
            .method(method)
            .uri("/")
            .body(Empty::<Bytes>::new())
            .expect("a request");
        let (_, _, body, _) = exchange(&upstream, &lane, req).await.expect("a response");
        let case = String::from_utf8_lossy(answer);
        assert_eq!(body, expected, "{case}");
        assert_eq!(idle(&lane), kept, "{case}");
    }
}

#[tokio::test]
async fn a_content_length_beside_chunked_is_removed_and_the_whole_body_read() {
    let (addr, _) = serve(|_, mut stream| {
        if read_head(&mut stream).is_some() {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n\
                  a\r\n0123456789\r\n0\r\n\r\n",
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let upstream = proxy_upstream(addr);
    let lane = Lane::default();
    let (_, headers, body, _) = exchange(&upstream, &lane, get()).await.expect("a response");
    assert_eq!(body, b"0123456789");
    // Left in, the length would frame the client's copy of the body at its first 3 bytes.
    assert_eq!(headers.get(header::CONTENT_LENGTH), None);
    assert_eq!(
        idle(&lane),
        0,
        "a message with both framings is not trusted again"
    );
}

#[tokio::test]
async fn bytes_sent_unasked_after_a_response_keep_its_connection_from_the_next_request() {
    // An upstream that writes a body after a HEAD's head, in a later segment: read as the answer
    // to the next request, it would shift every answer on the connection by one.
    let (addr, accepted) = serve(|_, mut stream| {
        while let Some(head) = read_head(&mut stream) {
            let answer: &[u8] = if head.starts_with("HEAD") {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n");
                std::thread::sleep(Duration::from_millis(50));
                b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nreal"
            };
            let _ = stream.write_all(answer);
        }
    });
    let upstream = proxy_upstream(addr);
    let lane = Lane::default();
    let head = Request::head("/")
        .body(Empty::<Bytes>::new())
        .expect("a request");
    let (_, _, body, _) = exchange(&upstream, &lane, head).await.expect("a response");
    assert!(body.is_empty());
    assert_eq!(idle(&lane), 1, "nothing unasked had come yet");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, _, body, _) = exchange(&upstream, &lane, get()).await.expect("a response");
    assert_eq!(String::from_utf8_lossy(&body), "real");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the GET went on a new connection"
    );
}

#[tokio::test]
async fn a_response_body_may_pause_but_not_stall_for_the_upstream_timeout() {
    // Eight bytes, one every 200 ms, then (on the second connection) three and silence.
    let (addr, _) = serve(|n, mut stream| {
        if read_head(&mut stream).is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n");
            let sent: &[u8] = if n == 0 { b"trickled" } else { b"sta" };
            for byte in sent {
                std::thread::sleep(Duration::from_millis(200));
                let _ = stream.write_all(&[*byte]);
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    let mut config = upstream_config(addr);
    config.upstream_timeout = Duration::from_millis(500);
    let upstream = Upstream::new(&config, &TaskTracker::new(), &CancellationToken::new())
        .expect("an upstream");
    let lane = Lane::default();
    let (_, _, body, _) = exchange(&upstream, &lane, get()).await.expect("a response");
    assert_eq!(
        body, b"trickled",
        "pauses shorter than the timeout are waited out"
    );

    let started = std::time::Instant::now();
    let response = upstream
        .send(&Lane::default(), &Activity::new(), get())
        .await
        .expect("a head");
    let error = response
        .into_body()
        .collect()
        .await
        .expect_err("a stalled body fails");
    let waited = started.elapsed();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    assert!(error.to_string().contains("500ms"), "{error}");
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(3),
        "three bytes over 600 ms, then the 500 ms timeout: {waited:?}"
    );
}

#[tokio::test]
async fn a_body_until_close_ends_with_the_connection() {
    let (addr, accepted) = serve(|_, mut stream| {
        if read_head(&mut stream).is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it");
        }
    });
    let upstream = proxy_upstream(addr);
    let lane = Lane::default();
    for _ in 0..2 {
        let (_, _, body, _) = exchange(&upstream, &lane, get()).await.expect("a response");
        assert_eq!(body, b"all of it");
        assert_eq!(idle(&lane), 0);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_switch_of_protocols_hands_the_connection_and_its_early_bytes_over() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _) = serve(|_, mut stream| {
        if read_head(&mut stream).is_some() {
            let _ = stream.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                  connection: upgrade\r\n\r\nfirst",
            );
            let mut ping = [0u8; 4];
            if stream.read_exact(&mut ping).is_ok() {
                let _ = stream.write_all(&ping);
            }
        }
    });
    let upstream = proxy_upstream(addr);
    let lane = Lane::default();
    let mut response = upstream
        .send(&lane, &Activity::new(), get())
        .await
        .expect("a response");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut switched = response.body_mut().take_switched().expect("the connection");
    assert_eq!(&switched.read[..], b"first");
    switched.io.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    switched.io.read_exact(&mut echo).await.expect("read");
    assert_eq!(&echo, b"ping");
    assert_eq!(idle(&lane), 0);
}

/// An upstream whose first connection answers one request, then takes the next and closes
/// unanswered (its keep-alive timeout firing just then); later connections answer every request.
/// A 4-byte body is read before answering.
fn loses_the_second_request(n: usize, mut stream: TcpStream) {
    let mut answered = 0;
    while let Some(head) = read_head(&mut stream) {
        if n == 0 && answered == 1 {
            return;
        }
        if head.contains("content-length: 4") {
            let mut body = [0u8; 4];
            let _ = stream.read_exact(&mut body);
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        answered += 1;
    }
}

#[tokio::test]
async fn a_request_lost_with_a_closing_connection_is_sent_again_only_without_a_body() {
    let (addr, accepted) = serve(loses_the_second_request);
    let upstream = proxy_upstream(addr);
    let lane = Lane::default();
    exchange(&upstream, &lane, get())
        .await
        .expect("the first answer");
    let (_, _, body, _) = exchange(&upstream, &lane, get()).await.expect("sent again");
    assert_eq!(body, b"ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // A body may have been taken by the upstream, and a POST may have done its work even
    // without one: neither is sent twice.
    let with_body = || {
        Request::post("/")
            .body(Full::new(Bytes::from_static(b"data")))
            .expect("a request")
    };
    let empty_post = || {
        Request::post("/")
            .body(Full::new(Bytes::new()))
            .expect("a request")
    };
    for second in [with_body(), empty_post()] {
        let (addr, accepted) = serve(loses_the_second_request);
        let upstream = proxy_upstream(addr);
        let lane = Lane::default();
        exchange(&upstream, &lane, with_body())
            .await
            .expect("the first answer");
        assert_eq!(
            exchange(&upstream, &lane, second).await.err(),
            Some(Failure::Reset)
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn a_closed_idle_connection_is_noticed_before_a_request_is_written_to_it() {
    let (addr, accepted) = serve(|_, mut stream| {
        if read_head(&mut stream).is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
        // Closes without saying so, as a keep-alive timeout does.
    });
    let upstream = proxy_upstream(addr);
    let lane = Lane::default();
    let post = || {
        Request::post("/")
            .body(Full::new(Bytes::from_static(b"data")))
            .expect("a request")
    };
    exchange(&upstream, &lane, post())
        .await
        .expect("the first answer");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Not a retry (a body cannot be sent twice): the closed connection was never used.
    let (_, _, body, _) = exchange(&upstream, &lane, post())
        .await
        .expect("a fresh connection");
    assert_eq!(body, b"ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn interim_responses_are_skipped_and_a_chunked_body_is_read_across_pauses() {
    let (addr, accepted) = serve(|_, mut stream| {
        while read_head(&mut stream).is_some() {
            let pieces: [&[u8]; 5] = [
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nab",
                b"cd\r\n3\r",
                b"\nefg\r\n0\r\nx-sum: 7\r\n",
                b"\r\n",
            ];
            for piece in pieces {
                let _ = stream.write_all(piece);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let upstream = proxy_upstream(addr);
    let lane = Lane::default();
    for _ in 0..2 {
        let (status, headers, body, trailers) =
            exchange(&upstream, &lane, get()).await.expect("a response");
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers.get("link").is_none(),
            "an interim response's header leaked"
        );
        assert_eq!(body, b"abcdefg");
        assert_eq!(
            trailers.and_then(|t| t.get("x-sum").cloned()),
            Some(HeaderValue::from_static("7"))
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the connection was not reused"
    );
}

#[tokio::test]
async fn a_body_of_unknown_length_is_sent_chunked_and_its_trailers_are_not() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr, _) = serve(move |_, mut stream| {
        let Some(head) = read_head(&mut stream) else {
            return;
        };
        let mut body = Vec::new();
        let mut byte = [0u8; 1];
        // The last chunk, then the trailer section up to its blank line.
        while !(body.ends_with(b"\r\n\r\n") && body.windows(5).any(|w| w == b"\r\n0\r\n"))
            && stream.read(&mut byte).is_ok_and(|n| n == 1)
        {
            body.push(byte[0]);
        }
        let _ = tx.send((head, String::from_utf8_lossy(&body).into_owned()));
        let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
    });
    let upstream = proxy_upstream(addr);
    let mut frames: Vec<_> = ["hello", "", " world, and more than fifteen bytes"]
        .map(|s| Ok::<_, Infallible>(Frame::data(Bytes::from_static(s.as_bytes()))))
        .into();
    frames.push(Ok(Frame::trailers(map(&[("x-checksum", "abc")]))));
    let req = Request::post("/")
        .body(StreamBody::new(futures::stream::iter(frames)))
        .expect("a request");
    let (status, _, body, _) = exchange(&upstream, &Lane::default(), req)
        .await
        .expect("a response");
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    let (head, sent) = rx.recv().expect("the upstream saw the request");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert_eq!(
        sent,
        "5\r\nhello\r\n23\r\n world, and more than fifteen bytes\r\n0\r\n\r\n"
    );
}

/// A request body whose frames the test sends when it chooses, its length announced up front
/// (`Content-Length`) or not (chunked).
struct Paced {
    frames: futures::channel::mpsc::UnboundedReceiver<Result<Frame<Bytes>, io::Error>>,
    length: Option<u64>,
}

type Pace = futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, io::Error>>;

impl Paced {
    fn new(length: Option<u64>, first: &'static [u8]) -> (Pace, Paced) {
        let (pace, frames) = futures::channel::mpsc::unbounded();
        let _ = pace.unbounded_send(Ok(Frame::data(Bytes::from_static(first))));
        (pace, Paced { frames, length })
    }

    fn none() -> Paced {
        let (_, frames) = futures::channel::mpsc::unbounded();
        Paced {
            frames,
            length: Some(0),
        }
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.frames.poll_next_unpin(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.length == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map(SizeHint::with_exact).unwrap_or_default()
    }
}

/// The proxy's upstream hop, or hyper's client connection, which it replaced: the tests below
/// hold the hop to what hyper's client did with the same upstream.
enum Client {
    Ours(Upstream, Lane),
    Hyper(hyper::client::conn::http1::SendRequest<Paced>),
}

type AnyBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A hyper client connection to `addr`, driven on a task of its own.
async fn hyper_client<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("a handshake");
    tokio::spawn(connection);
    sender
}

impl Client {
    async fn connect(ours: bool, addr: SocketAddr) -> Client {
        if ours {
            return Client::Ours(proxy_upstream(addr), Lane::default());
        }
        Client::Hyper(hyper_client(addr).await)
    }

    /// The connection is fit for the next request: a GET on it gets `status`, and the upstream
    /// accepted no other connection.
    async fn reused(&mut self, status: StatusCode, accepted: &AtomicUsize, ours: bool) {
        assert!(self.reusable().await, "ours: {ours}");
        let next = self
            .send(Request::get("/").body(Paced::none()).expect("a GET"))
            .await;
        assert_eq!(next.status(), status, "ours: {ours}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "ours: {ours}");
    }

    /// The connection that carried an upload the upstream answered before it was whole: hyper's
    /// client uses it again ([`Client::reused`]); the hop, as nginx, closes it (an upstream that
    /// did not drain the body would read the rest as requests of their own), and the next GET
    /// gets `status` on a second connection.
    async fn after_an_early_answer(&mut self, status: StatusCode, accepted: &AtomicUsize) {
        let Client::Ours(_, lane) = self else {
            return self.reused(status, accepted, false).await;
        };
        assert_eq!(idle(lane), 0, "the connection is not given back");
        let next = self
            .send(Request::get("/").body(Paced::none()).expect("a GET"))
            .await;
        assert_eq!(next.status(), status);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    async fn send(&mut self, req: Request<Paced>) -> Response<AnyBody> {
        self.try_send(req).await.expect("a response head")
    }

    async fn try_send(&mut self, req: Request<Paced>) -> Result<Response<AnyBody>, String> {
        let sent = async {
            match self {
                Client::Ours(upstream, lane) => upstream
                    .send(lane, &Activity::new(), req)
                    .await
                    .map(|r| r.map(|b| b.map_err(Into::into).boxed_unsync()))
                    .map_err(|f| format!("{:?}: {:?}", f.failure, f.error)),
                Client::Hyper(sender) => {
                    sender.ready().await.map_err(|e| e.to_string())?;
                    sender
                        .send_request(req)
                        .await
                        .map(|r| r.map(|b| b.map_err(Into::into).boxed_unsync()))
                        .map_err(|e| e.to_string())
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(2), sent)
            .await
            .expect("a response head or an error in time")
    }

    /// The connection is ready for another request (ours: back in its lane).
    async fn reusable(&mut self) -> bool {
        let ready = async {
            match self {
                Client::Ours(_, lane) => {
                    while idle(lane) == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Client::Hyper(sender) => {
                    let _ = sender.ready().await;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(2), ready)
            .await
            .is_ok()
    }
}

async fn body_of(response: Response<AnyBody>) -> Result<Vec<u8>, String> {
    let collected = tokio::time::timeout(Duration::from_secs(2), response.into_body().collect())
        .await
        .map_err(|_| "the response body did not end".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(collected.to_bytes().to_vec())
}

/// What an upstream read after its answer, and whether the connection ended there.
type AfterAnswer = std::sync::mpsc::Receiver<(Vec<u8>, bool)>;

/// An upstream that answers 413 after the first 3 bytes of the body and then reads on: what it
/// read after its answer (up to 9 bytes, or to the connection's end), and whether the
/// connection ended there. Further requests on the connection, or on others, get a 200; once
/// the first connection ends, a second report says so (nothing read, ended).
fn answers_early() -> (SocketAddr, Arc<AtomicUsize>, AfterAnswer) {
    const ANSWER: &[u8] = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!";
    const REST: usize = 9;
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr, accepted) = serve(move |n, mut stream| {
        if n > 0 {
            return answer_gets(stream, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        }
        if read_head(&mut stream).is_none() {
            return;
        }
        let mut first = [0u8; 3];
        if stream.read_exact(&mut first).is_err() || stream.write_all(ANSWER).is_err() {
            return;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
        let mut after = Vec::new();
        let mut byte = [0u8; 1];
        let mut ended = false;
        while after.len() < REST {
            match stream.read(&mut byte) {
                Ok(1) => after.push(byte[0]),
                Ok(_) => {
                    ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = tx.send((after, ended));
        answer_gets(stream, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        // The proxy closed the connection.
        let _ = tx.send((Vec::new(), true));
    });
    (addr, accepted, rx)
}

/// Answers every request head on `stream` with `answer`, until the connection ends.
fn answer_gets(mut stream: TcpStream, answer: &[u8]) {
    while read_head(&mut stream).is_some() {
        let _ = stream.write_all(answer);
    }
}

/// What the upstream's thread reports, waited for without blocking the runtime that sends to it.
async fn upstream_read<T>(rx: &std::sync::mpsc::Receiver<T>) -> T {
    for _ in 0..500 {
        if let Ok(read) = rx.try_recv() {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the upstream did not report within 5 s");
}

fn post(body: Paced) -> Request<Paced> {
    Request::post("/upload").body(body).expect("a request")
}

/// A 12-byte upload, of which the test has sent only 3 bytes when the upstream of
/// [`answers_early`] answers 413: the answer, read whole, and what is left to drive the rest.
async fn answered_early(ours: bool) -> (Client, Pace, Arc<AtomicUsize>, AfterAnswer) {
    let (addr, accepted, rx) = answers_early();
    let mut client = Client::connect(ours, addr).await;
    let (pace, body) = Paced::new(Some(12), b"abc");
    let response = client.send(post(body)).await;
    assert_eq!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "ours: {ours}"
    );
    assert_eq!(
        body_of(response).await.as_deref(),
        Ok(&b"big!"[..]),
        "ours: {ours}"
    );
    (client, pace, accepted, rx)
}

#[tokio::test]
async fn an_upstream_that_answers_before_the_whole_body_still_gets_all_of_it_as_from_hyper() {
    for ours in [false, true] {
        // The answer came whole while 9 bytes of the body were still to come.
        let (mut client, pace, accepted, rx) = answered_early(ours).await;
        let _ = pace.unbounded_send(Ok(Frame::data(Bytes::from_static(b"defghijkl"))));
        drop(pace);
        let (after, _) = upstream_read(&rx).await;
        assert_eq!(after, b"defghijkl", "ours: {ours}");
        if ours {
            assert_eq!(upstream_read(&rx).await, (Vec::new(), true), "closed");
        }
        client
            .after_an_early_answer(StatusCode::OK, &accepted)
            .await;
    }
}

#[tokio::test]
async fn an_early_answer_streams_while_the_body_is_still_sent_as_from_hyper() {
    for ours in [false, true] {
        // The upstream starts its answer after 3 bytes of the chunked body and ends it after
        // the last chunk.
        let (tx, rx) = std::sync::mpsc::channel();
        let (addr, accepted) = serve(move |n, mut stream| {
            if n > 0 {
                return answer_gets(stream, b"HTTP/1.1 204 No Content\r\n\r\n");
            }
            if read_head(&mut stream).is_none() {
                return;
            }
            let mut first = [0u8; 3];
            let _ = stream.read_exact(&mut first);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            let mut body = Vec::new();
            let mut byte = [0u8; 1];
            while !body.ends_with(b"\r\n0\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1)
            {
                body.push(byte[0]);
            }
            let _ = stream.write_all(b"4\r\ndone\r\n0\r\n\r\n");
            let _ = tx.send(body);
            answer_gets(stream, b"HTTP/1.1 204 No Content\r\n\r\n");
            // The proxy closed the connection: nothing more read.
            let _ = tx.send(Vec::new());
        });
        let mut client = Client::connect(ours, addr).await;
        let (pace, body) = Paced::new(None, b"abc");
        let response = client.send(post(body)).await;
        assert_eq!(response.status(), StatusCode::OK, "ours: {ours}");
        let _ = pace.unbounded_send(Ok(Frame::data(Bytes::from_static(b"defghijkl"))));
        drop(pace);
        // Reading the answer on sends the rest of the body.
        assert_eq!(
            body_of(response).await.as_deref(),
            Ok(&b"done"[..]),
            "ours: {ours}"
        );
        let sent = upstream_read(&rx).await;
        // After the first chunk's size line, which the upstream read before answering.
        assert_eq!(sent, b"abc\r\n9\r\ndefghijkl\r\n0\r\n\r\n", "ours: {ours}");
        if ours {
            assert_eq!(upstream_read(&rx).await, b"", "closed");
        }
        client
            .after_an_early_answer(StatusCode::NO_CONTENT, &accepted)
            .await;
    }
}

/// An upstream that answers 413 after the first 3 bytes of an upload and then neither reads
/// nor closes for two seconds; then it reads to the end: how much it read, and whether the
/// connection ended (rather than the read timing out).
fn answers_early_and_stops_reading() -> (SocketAddr, AfterAnswer) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr, _) = serve(move |_, mut stream| {
        let mut first = [0u8; 3];
        if read_head(&mut stream).is_none()
            || stream.read_exact(&mut first).is_err()
            || stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!")
                .is_err()
        {
            return;
        }
        std::thread::sleep(Duration::from_secs(2));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut read = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let ended = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => read += n,
                Err(_) => break false,
            }
        };
        let _ = tx.send((read.to_le_bytes().to_vec(), ended));
    });
    (addr, rx)
}

/// 64 MiB, all of it ready at once: more than the sockets between the two hold.
fn a_large_upload()
-> Request<StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>>>> {
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let frames = (0..1024).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    Request::post("/upload")
        .header(header::CONTENT_LENGTH, 64 << 20)
        .body(StreamBody::new(futures::stream::iter(frames)))
        .expect("a request")
}

#[tokio::test]
async fn an_early_answer_reaches_the_client_even_if_the_upstream_reads_no_more_as_from_hyper() {
    for ours in [false, true] {
        let (addr, _) = answers_early_and_stops_reading();
        let started = std::time::Instant::now();
        let response = if ours {
            let upstream = proxy_upstream(addr);
            upstream
                .send(&Lane::default(), &Activity::new(), a_large_upload())
                .await
                .map(|r| r.status())
                .map_err(|f| format!("{:?}", f.failure))
        } else {
            hyper_client(addr)
                .await
                .send_request(a_large_upload())
                .await
                .map(|r| r.status())
                .map_err(|e| e.to_string())
        };
        // Not held until the upstream reads again (two seconds), nor until a timeout.
        assert_eq!(response, Ok(StatusCode::PAYLOAD_TOO_LARGE), "ours: {ours}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "ours: {ours}: the answer took {:?}",
            started.elapsed()
        );
    }
}

/// Sends [`a_large_upload`] to [`answers_early_and_stops_reading`], and reads its whole answer.
async fn large_upload_answered_early(upstream: &Upstream, lane: &Lane) {
    let response = upstream
        .send(lane, &Activity::new(), a_large_upload())
        .await
        .expect("the answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        body_of(response.map(|b| b.map_err(Into::into).boxed_unsync()))
            .await
            .as_deref(),
        Ok(&b"big!"[..])
    );
}

/// What [`answers_early_and_stops_reading`] read after its pause: the connection's end, short of
/// [`a_large_upload`]'s 64 MiB.
async fn closed_short_of_a_large_upload(rx: &AfterAnswer) {
    let (read, ended) = upstream_read(rx).await;
    let read = usize::from_le_bytes(read.try_into().expect("a count"));
    assert!(ended, "the connection was not closed ({read} bytes read)");
    assert!(read < 64 << 20, "the whole body went: {read} bytes");
}

#[tokio::test]
async fn an_upload_that_stalls_after_the_answer_is_given_up_with_its_connection() {
    let (addr, rx) = answers_early_and_stops_reading();
    let mut config = upstream_config(addr);
    config.upstream_timeout = Duration::from_millis(300);
    let upstream = Upstream::new(&config, &TaskTracker::new(), &CancellationToken::new())
        .expect("an upstream");
    let lane = Lane::default();
    large_upload_answered_early(&upstream, &lane).await;
    // The upstream reads again after two seconds: by then the upload, stalled for 300 ms, has
    // been given up and its connection closed.
    closed_short_of_a_large_upload(&rx).await;
    assert_eq!(idle(&lane), 0, "the stalled connection was kept");
}

/// The rest of an early-answered upload outlives the response, and the client's connection
/// with it: it is a tracked task, which a drain waits for and its deadline stops.
#[tokio::test]
async fn the_rest_of_an_upload_after_its_answer_is_tracked_and_stopped_at_the_drain_deadline() {
    let (addr, rx) = answers_early_and_stops_reading();
    let (tasks, abort) = (TaskTracker::new(), CancellationToken::new());
    let upstream = Upstream::new(&upstream_config(addr), &tasks, &abort).expect("an upstream");
    large_upload_answered_early(&upstream, &Lane::default()).await;
    assert_eq!(tasks.len(), 1, "the rest of the upload is not tracked");
    tasks.close();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), tasks.wait())
            .await
            .is_err(),
        "the drain did not wait for the rest of the upload"
    );
    abort.cancel();
    tokio::time::timeout(Duration::from_secs(1), tasks.wait())
        .await
        .expect("the drain deadline stops the upload");
    // The upstream reads again after two seconds: the connection was closed.
    closed_short_of_a_large_upload(&rx).await;
}

#[tokio::test]
async fn a_client_body_that_fails_after_an_early_answer_ends_the_connection_as_with_hyper() {
    for ours in [false, true] {
        let (mut client, pace, accepted, rx) = answered_early(ours).await;
        let _ = pace.unbounded_send(Err(io::Error::other("the client went away")));
        // The upstream sees the body end short, not a wait for the rest.
        let (after, ended) = upstream_read(&rx).await;
        assert!(ended, "ours: {ours}: the upstream did not see the body end");
        assert!(
            after.is_empty(),
            "ours: {ours}: sent after the answer: {after:?}"
        );
        assert!(
            !client.reusable().await || !ours,
            "ours: the connection was kept"
        );
        drop(client);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "ours: {ours}");
    }
}

#[tokio::test]
async fn an_answer_from_an_upstream_that_stopped_taking_the_body_still_reaches_the_client() {
    // 32 MiB offered, more than the sockets' buffers hold; the upstream reads the head and no
    // more, answers once the proxy is stuck writing, and closes, so that write fails: the
    // answer is what the client gets, not a 502.
    let (addr, _) = serve(|_, mut stream| {
        if read_head(&mut stream).is_some() {
            std::thread::sleep(Duration::from_millis(200));
            let _ = stream.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\
                  connection: close\r\n\r\nbig!",
            );
            let _ = stream.shutdown(std::net::Shutdown::Write);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let upstream = proxy_upstream(addr);
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let frames: Vec<_> = (0..512)
        .map(|_| Ok::<_, Infallible>(Frame::data(chunk.clone())))
        .collect();
    let req = Request::post("/")
        .body(StreamBody::new(futures::stream::iter(frames)))
        .expect("a request");
    let (status, _, body, _) = exchange(&upstream, &Lane::default(), req)
        .await
        .expect("the upstream's answer");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body, b"big!");
}

#[tokio::test]
async fn a_broken_response_is_a_failure_naming_its_cause() {
    let cases: [(&'static [u8], Failure); 4] = [
        (b"HTTP/1.1 2000 Nope\r\n\r\n", Failure::Other),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", Failure::Other),
        (b"HTTP/1.1 200 OK\r\ncontent-len", Failure::Reset),
        (b"", Failure::Reset),
    ];
    for (answer, failure) in cases {
        let (addr, _) = serve(move |_, mut stream| {
            if read_head(&mut stream).is_some() {
                let _ = stream.write_all(answer);
            }
        });
        let result = exchange(&proxy_upstream(addr), &Lane::default(), get()).await;
        assert_eq!(
            result.err(),
            Some(failure),
            "{}",
            String::from_utf8_lossy(answer)
        );
    }
    // A head that never ends is cut off at the limit.
    let (addr, _) = serve(|_, mut stream| {
        if read_head(&mut stream).is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n");
            let line = format!("x-filler: {}\r\n", "f".repeat(10_000));
            for _ in 0..(MAX_RESPONSE_HEAD / 10_000 + 10) {
                if stream.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
        }
    });
    let failed = proxy_upstream(addr)
        .send(&Lane::default(), &Activity::new(), get())
        .await
        .expect_err("refused");
    assert_eq!(failed.failure, Failure::Other);
    let message = failed.error.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("larger than"), "{message}");

    // A body cut short is an error at its end, not a short body passed off as whole.
    let (addr, _) = serve(|_, mut stream| {
        if read_head(&mut stream).is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
        }
    });
    let response = proxy_upstream(addr)
        .send(&Lane::default(), &Activity::new(), get())
        .await
        .expect("a head");
    let error = response.into_body().collect().await.expect_err("cut short");
    assert!(
        error
            .to_string()
            .contains("before the end of the response body"),
        "{error}"
    );
}

#[tokio::test]
async fn a_response_head_is_taken_up_to_the_size_that_hyper_took() {
    // 40 lines of 10,000 bytes: under hyper's 408 KiB. 52 of 20,000: over it, and both under
    // the 100 lines that either takes.
    for (lines, size, taken) in [(40, 10_000, true), (52, 20_000, false)] {
        for ours in [false, true] {
            let (addr, _) = serve(move |_, mut stream| {
                if read_head(&mut stream).is_some() {
                    let mut head = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n".to_vec();
                    for i in 0..lines {
                        head.extend_from_slice(format!("x-filler-{i}: ").as_bytes());
                        head.extend(std::iter::repeat_n(b'f', size));
                        head.extend_from_slice(b"\r\n");
                    }
                    head.extend_from_slice(b"\r\n");
                    let _ = stream.write_all(&head);
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
            let mut client = Client::connect(ours, addr).await;
            let sent = client
                .try_send(Request::get("/").body(Paced::none()).expect("a GET"))
                .await;
            let lines_back = sent.as_ref().map(|r| r.headers().len() - 1);
            assert_eq!(
                lines_back.is_ok(),
                taken,
                "ours: {ours}, {lines} lines of {size}: {:?}",
                lines_back
            );
            if taken {
                assert_eq!(lines_back, Ok(lines), "ours: {ours}");
            }
        }
    }
}

/// Framing lines holding bytes outside visible ASCII (obs-text, which httparse and `HeaderValue`
/// accept) are read for what they are, never skipped as if absent.
#[test]
fn framing_lines_outside_visible_ascii_are_not_skipped() {
    let framing = |lines: &[&'static [u8]], name: HeaderName| {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(&name, HeaderValue::from_bytes(line).expect("obs-text"));
        }
        headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        response_framing(&head(200, Version::HTTP_11), &Method::GET, &mut headers)
            .map_err(|e| e.to_string())
    };
    // A coding that is not `chunked`, whichever line it is on: the rest is not the whole list
    // (RFC 9112 §6.3: chunked must be the final coding, else the body runs to the close).
    for lines in [
        &[&b"chunked"[..], b"g\xffzip"][..],
        &[b"g\xffzip", b"chunked"],
    ] {
        let error = framing(lines, header::TRANSFER_ENCODING).expect_err("refused");
        assert!(
            error.contains("outside visible ASCII"),
            "{lines:?}: {error}"
        );
    }
    // Connection options that cannot be read: the connection is not reused.
    assert_eq!(
        framing(&[b"close, \xff"], header::CONNECTION),
        Ok((Framing::Done, false))
    );
    assert_eq!(
        framing(&[b"keep-alive"], header::CONNECTION),
        Ok((Framing::Done, true))
    );
}

/// `Content-Length` is digits with only spaces and tabs around them (RFC 9110 §8.6): Unicode
/// spaces sent as obs-text make it invalid, a 502 (RFC 9112 §6.3 item 5), not a length.
#[test]
fn a_content_length_is_digits_with_only_spaces_and_tabs_around_them() {
    let framing = |value: &'static [u8]| {
        let mut headers = HeaderMap::new();
        headers.append(
            header::CONTENT_LENGTH,
            HeaderValue::from_bytes(value).expect("a valid field value"),
        );
        response_framing(&head(200, Version::HTTP_11), &Method::GET, &mut headers)
            .map_err(|e| e.to_string())
    };
    for value in [
        &b"5\xc2\xa0"[..],
        b"\xc2\xa05",
        b"\xc2\x855",
        b"5\xe3\x80\x80",
        b"5,\xc2\xa05",
    ] {
        let error = framing(value).expect_err("refused");
        assert!(
            error.contains("invalid Content-Length"),
            "{value:?}: {error}"
        );
    }
    for value in [&b" 5\t"[..], b"5 ,\t5", b"\t5"] {
        assert_eq!(framing(value), Ok((Framing::Length(5), true)), "{value:?}");
    }
}

#[tokio::test]
async fn a_response_with_unreadable_framing_is_refused_and_its_connection_closed() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: x\xff\r\n\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: \xc2\xa05\r\n\r\nhello",
    ] {
        let (addr, _) = serve(move |_, mut stream| {
            if read_head(&mut stream).is_some() {
                let _ = stream.write_all(answer);
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        let lane = Lane::default();
        let result = exchange(&proxy_upstream(addr), &lane, get()).await;
        assert_eq!(
            result.as_ref().err(),
            Some(&Failure::Other),
            "{}: {:?}",
            String::from_utf8_lossy(answer),
            result.as_ref().map(|(status, _, body, _)| (status, body))
        );
        assert_eq!(idle(&lane), 0, "{}", String::from_utf8_lossy(answer));
    }
}

/// `chunk-size = 1*HEXDIG` (RFC 9112 §7.1): any number of leading zeros, as hyper's client
/// took them; what must fit a u64 is the digits after them.
#[test]
fn a_chunk_size_may_have_any_number_of_leading_zeros() {
    let input = b"00000000000000005\r\nhello\r\n0000000000000000000\r\n\r\n";
    for step in [1, input.len()] {
        let (data, _) = decode(input, step).expect("decodes");
        assert_eq!(data, b"hello", "step {step}");
    }
    let error = decode(b"0010000000000000000\r\n", 21).expect_err("too large");
    assert!(error.contains("invalid chunk size"), "{error}");
}

/// Trailers are passed on without the fields that describe this hop only.
#[test]
fn connection_specific_trailer_fields_are_dropped() {
    let input = b"0\r\nx-checksum: abc\r\nkeep-alive: timeout=5\r\nconnection: x-hop\r\n\
                  x-hop: 1\r\ntransfer-encoding: chunked\r\n\r\n";
    let (_, trailers) = decode(input, input.len()).expect("decodes");
    let trailers = trailers.expect("trailers");
    let names: Vec<_> = trailers.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["x-checksum"]);
    // None left: no trailers at all.
    let input = b"0\r\nkeep-alive: timeout=5\r\n\r\n";
    assert_eq!(decode(input, input.len()).map(|(_, t)| t), Ok(None));
}
