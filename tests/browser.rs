//! Headless Chromium against the real binary: what a page's `fetch()` sees through corsair.
//!
//! Each test serves a page from one origin, runs `corsair` (the `proxy` subcommand in front of a
//! recording upstream, or the whole `demo`) on another, loads the page in a fresh headless
//! Chromium, and waits for the page to POST back what its `fetch()` calls saw. Needs the Debian
//! package `chromium` (`make test` installs it); without it the tests fail and say so.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long a page gets to report; the whole test stays well under it on a quiet machine.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
const TEST_PAGE: &str = include_str!("browser/page.html");
const TEST_PAGE_MARKER: &str = "/*TEST_CONFIG*/{}";
const SESSION_COOKIE: &str = "session=browser-test";

/// Chromium is heavy for a 2-core machine: one browser at a time.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A headless Chromium with its own profile; killed with all its processes when dropped.
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "the browser tests need headless Chromium at {CHROMIUM}: install the Debian package \
             `chromium` (`make test` does: apt-get install chromium)"
        );
        let profile = tempfile::tempdir().expect("temporary Chromium profile");
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log file");
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            // Its scratch directories (`org.chromium.Chromium.*`) go with the profile, not into
            // the machine's /tmp, where a killed Chromium would leave them.
            .env("TMPDIR", profile.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group, so that the renderers and helpers die with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start Chromium");
        Browser { child, profile }
    }

    /// The end of Chromium's log, without the D-Bus noise of a machine without a session bus.
    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("dbus")).collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
}

type Reply = Response<Full<Bytes>>;

/// Serves HTTP/1.1 on `listener` with `handler` until the test's runtime ends.
fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let reply = handler(req);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

/// A port that was free a moment ago, for the processes that must be told their port.
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A careless upstream that records every request and allows every origin itself.
async fn start_upstream() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let (listener, addr) = bind().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    serve(listener, move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            log.lock().expect("upstream log").push(Seen {
                method: parts.method.clone(),
                path_and_query: parts
                    .uri
                    .path_and_query()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                headers: parts.headers.clone(),
            });
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let mut response = match (&parts.method, parts.uri.path()) {
                (&Method::GET, "/api/items") => reply(
                    StatusCode::OK,
                    "application/json",
                    r#"{"items":["compass","spyglass"]}"#,
                ),
                (&Method::POST, "/api/private") => {
                    let echo = serde_json::json!({
                        "cookie": header("cookie"),
                        "custom": header("x-custom"),
                        "body": String::from_utf8_lossy(&body),
                    });
                    reply(StatusCode::OK, "application/json", echo.to_string())
                }
                (&Method::OPTIONS, _) => {
                    let mut response = reply(StatusCode::NO_CONTENT, "text/plain", "");
                    let headers = response.headers_mut();
                    headers.insert(
                        "access-control-allow-methods",
                        HeaderValue::from_static("*"),
                    );
                    headers.insert(
                        "access-control-allow-headers",
                        HeaderValue::from_static("*"),
                    );
                    response
                }
                _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found"),
            };
            let headers = response.headers_mut();
            headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
            headers.insert("x-request-id", HeaderValue::from_static("42"));
            headers.insert("x-internal", HeaderValue::from_static("not exposed"));
            response
        }
    });
    (addr, seen)
}

/// Serves the test page on `listener`; whatever the page POSTs to `/results` goes to `results`.
fn serve_page(listener: TcpListener, html: Arc<String>, results: mpsc::Sender<Bytes>) {
    serve(listener, move |req: Request<Incoming>| {
        let html = html.clone();
        let results = results.clone();
        async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/") => {
                    let mut response =
                        reply(StatusCode::OK, "text/html; charset=utf-8", html.to_string());
                    response.headers_mut().insert(
                        header::SET_COOKIE,
                        HeaderValue::from_str(&format!("{SESSION_COOKIE}; Path=/; SameSite=Lax"))
                            .expect("cookie header"),
                    );
                    response
                }
                (&Method::POST, "/results") => {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    let _ = results.send(body.unwrap_or_default()).await;
                    reply(StatusCode::NO_CONTENT, "text/plain", "")
                }
                _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found"),
            }
        }
    });
}

/// `GET` over a fresh connection: (status, body). None when the server is not answering.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

async fn wait_until_ready(admin: SocketAddr, proxy: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((200, _)) = http_get(admin, "/readyz").await {
            return;
        }
        if let Ok(Some(status)) = proxy.try_wait() {
            panic!("corsair proxy exited before it was ready: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "corsair proxy not ready on {admin}/readyz after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The result the page reported for one case.
fn case<'a>(results: &'a Value, id: &str) -> &'a Value {
    results
        .as_array()
        .and_then(|cases| cases.iter().find(|c| c["id"] == id))
        .unwrap_or_else(|| panic!("the page reported no case {id:?}: {results}"))
}

fn requests_to(seen: &[Seen], case_name: &str) -> Vec<Seen> {
    let suffix = format!("case={case_name}");
    seen.iter()
        .filter(|s| s.path_and_query.ends_with(&suffix))
        .cloned()
        .collect()
}

fn header<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_fetch_through_corsair_proxy() {
    let _one_browser = ONE_BROWSER.lock().await;
    let (upstream, seen) = start_upstream().await;
    let (page_listener, page_addr) = bind().await;
    let (other_listener, other_addr) = bind().await;
    let page_origin = format!("http://{page_addr}");
    let other_origin = format!("http://{other_addr}");
    let proxy_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let api = format!("http://{proxy_addr}");

    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: corsair.dev/v1alpha1\nkind: CorsPolicy\nmetadata:\n  name: browser\n\
             spec:\n  allowOrigins: [\"{page_origin}\"]\n  allowMethods: [GET, POST]\n  \
             allowHeaders: [Content-Type, X-Custom]\n  exposeHeaders: [X-Request-Id]\n  \
             allowCredentials: true\n"
        ),
    )
    .expect("write policy");
    let proxy_log = dir.path().join("proxy.log");
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_corsair"))
        .arg("proxy")
        .arg("--policy")
        .arg(&policy)
        .args(["--upstream", &format!("http://{upstream}")])
        .args(["--listen", &proxy_addr.to_string()])
        .args(["--admin", &admin_addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&proxy_log).expect("proxy log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start corsair proxy");
    wait_until_ready(admin_addr, &mut proxy).await;

    let config = serde_json::json!({
        "api": api, "pageOrigin": page_origin, "otherOrigin": other_origin,
    });
    let html = Arc::new(TEST_PAGE.replace(TEST_PAGE_MARKER, &config.to_string()));
    assert_ne!(
        *html, TEST_PAGE,
        "the test page lost its configuration marker"
    );
    let (results_tx, mut results_rx) = mpsc::channel(4);
    serve_page(page_listener, html.clone(), results_tx.clone());
    serve_page(other_listener, html, results_tx);

    let browser = Browser::open(&format!("{page_origin}/"));
    let report = tokio::time::timeout(PAGE_TIMEOUT, results_rx.recv()).await;
    let Ok(Some(report)) = report else {
        panic!(
            "the page did not report within {PAGE_TIMEOUT:?}.\nChromium:\n{}\ncorsair:\n{}",
            browser.log_tail(),
            std::fs::read_to_string(&proxy_log).unwrap_or_default()
        );
    };
    drop(browser);
    let results: Value = serde_json::from_slice(&report).expect("the page reports JSON");

    // An allowed simple request: status, body and the exposed header are readable, the
    // header that is not exposed is not.
    let simple = case(&results, "simple");
    assert_eq!(simple["fulfilled"], true, "{simple}");
    assert_eq!(simple["status"], 200, "{simple}");
    assert_eq!(
        simple["body"], r#"{"items":["compass","spyglass"]}"#,
        "{simple}"
    );
    assert_eq!(simple["requestId"], "42", "{simple}");
    assert_eq!(simple["internal"], Value::Null, "{simple}");

    // An allowed preflighted request with a custom header and credentials: the page reads the
    // upstream's echo, which shows the cookie and the custom header arrived.
    let preflighted = case(&results, "preflighted");
    assert_eq!(preflighted["fulfilled"], true, "{preflighted}");
    assert_eq!(preflighted["status"], 200, "{preflighted}");
    let echo: Value = serde_json::from_str(preflighted["body"].as_str().unwrap_or_default())
        .unwrap_or_else(|err| panic!("upstream echo is not JSON ({err}): {preflighted}"));
    assert_eq!(echo["cookie"], SESSION_COOKIE, "{echo}");
    assert_eq!(echo["custom"], "from-the-page", "{echo}");
    assert_eq!(echo["body"], r#"{"hello":"upstream"}"#, "{echo}");

    // A header the policy does not list, and an origin it does not list: fetch() rejects.
    for id in ["disallowed-header", "disallowed-origin"] {
        let result = case(&results, id);
        assert_eq!(result["fulfilled"], false, "{result}");
        assert_eq!(result["error"], "TypeError", "{result}");
    }

    // What reached the upstream.
    let seen = seen.lock().expect("upstream log").clone();
    assert!(
        seen.iter().all(|s| s.method != Method::OPTIONS),
        "preflights must be answered by the proxy, yet the upstream got: {seen:#?}"
    );
    assert!(
        requests_to(&seen, "disallowed-header").is_empty(),
        "a request whose preflight was refused reached the upstream: {seen:#?}"
    );
    let simple = requests_to(&seen, "simple");
    assert_eq!(simple.len(), 1, "{seen:#?}");
    assert_eq!(simple[0].method, Method::GET);
    assert_eq!(header(&simple[0], "origin"), page_origin);
    let preflighted = requests_to(&seen, "preflighted");
    assert_eq!(preflighted.len(), 1, "{seen:#?}");
    assert_eq!(preflighted[0].method, Method::POST);
    assert_eq!(header(&preflighted[0], "origin"), page_origin);
    assert_eq!(header(&preflighted[0], "cookie"), SESSION_COOKIE);
    assert_eq!(header(&preflighted[0], "x-custom"), "from-the-page");
    // disallowedRequests defaults to Forward: the request from the other origin reaches the
    // upstream, and the browser refused it only because the proxy removed the upstream's own
    // `Access-Control-Allow-Origin: *` (which would have let a non-credentialed fetch through).
    let other = requests_to(&seen, "disallowed-origin");
    assert_eq!(other.len(), 1, "{seen:#?}");
    assert_eq!(header(&other[0], "origin"), other_origin);
}

/// What `corsair demo`'s page must report for each of its calls: (case, outcome, HTTP status).
const DEMO_EXPECTATIONS: [(&str, &str, Option<u64>); 6] = [
    ("simple-get", "allowed", Some(200)),
    ("preflighted-post", "allowed", Some(201)),
    // 200 (not 401) means the demo page's cookie reached the demo's API through the proxy.
    ("credentialed", "allowed", Some(200)),
    ("disallowed-header", "blocked", None),
    ("disallowed-method", "blocked", None),
    ("disallowed-origin", "blocked", None),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_shows_allowed_and_blocked_calls() {
    let _one_browser = ONE_BROWSER.lock().await;
    let mut demo = Command::new(env!("CARGO_BIN_EXE_corsair"))
        .args(["demo", "--proxy-port", "0", "--page-port", "0"])
        .args(["--other-port", "0", "--admin-port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start corsair demo");
    let stdout = demo.stdout.take().expect("demo stdout");
    let mut lines = BufReader::new(stdout).lines();
    // The demo prints "  label:   URL   (comment)" lines, the policy file last.
    let printed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut printed = std::collections::HashMap::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((label, rest)) = line.trim().split_once(':')
                && let Some(value) = rest.split_whitespace().next()
            {
                printed.insert(label.to_owned(), value.to_owned());
                if label == "policy" {
                    return printed;
                }
            }
        }
        panic!("corsair demo ended before printing its URLs: {printed:?}");
    })
    .await
    .expect("corsair demo printed no URLs within 15 s");
    let addr_of = |label: &str| -> SocketAddr {
        let url = printed
            .get(label)
            .unwrap_or_else(|| panic!("corsair demo printed no {label:?} line: {printed:?}"));
        url.trim_start_matches("http://")
            .split('/')
            .next()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("{label} URL {url:?} is not http://ADDR/..."))
    };
    let page_addr = addr_of("page");
    let page_url = format!("http://{page_addr}/");
    // The proxy in the demo is the real one, with its admin endpoints.
    assert_eq!(
        http_get(addr_of("admin"), "/readyz")
            .await
            .map(|(status, _)| status),
        Some(200)
    );
    // The policy shown beside the calls allows the page's real origin, whatever port it got.
    let (status, policy) = http_get(page_addr, "/policy.yaml")
        .await
        .expect("the demo page server answers /policy.yaml");
    assert_eq!(status, 200);
    assert!(
        policy.contains(&format!("- http://{page_addr}\n")),
        "the demo policy does not allow the page's origin http://{page_addr}:\n{policy}"
    );
    // Keep reading so that the demo never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let browser = Browser::open(&page_url);
    let deadline = Instant::now() + PAGE_TIMEOUT;
    let report = loop {
        if let Some((200, body)) = http_get(page_addr, "/results").await {
            break body;
        }
        if Instant::now() > deadline {
            panic!(
                "the demo page did not report within {PAGE_TIMEOUT:?}.\nChromium:\n{}",
                browser.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(browser);

    let results: Value = serde_json::from_str(&report).expect("the demo reports JSON");
    assert_eq!(
        results.as_array().map(Vec::len),
        Some(DEMO_EXPECTATIONS.len()),
        "{results}"
    );
    for (id, outcome, status) in DEMO_EXPECTATIONS {
        let result = case(&results, id);
        assert_eq!(result["outcome"], outcome, "{id}: {result}");
        if let Some(status) = status {
            assert_eq!(result["status"].as_u64(), Some(status), "{id}: {result}");
        }
    }

    // SIGTERM stops the demo cleanly.
    let pid = demo.id().expect("demo pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), demo.wait())
        .await
        .expect("corsair demo did not stop within 15 s of SIGTERM")
        .expect("wait for corsair demo");
    assert!(status.success(), "corsair demo exited with {status}");
}
