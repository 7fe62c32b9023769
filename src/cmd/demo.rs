//! `corsair demo`: the whole runtime on one machine, with nothing to install.
//!
//! Four listeners on 127.0.0.1: a tiny JSON API (the upstream, which answers every origin with
//! `Access-Control-Allow-Origin: *` on purpose), the corsair proxy in front of it running an
//! embedded policy, and one page served on two origins: the origin the policy allows, and another
//! one it does not. The page calls the API through the proxy with `fetch()` and shows what the
//! browser allowed and blocked, next to the policy.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use corsair_runtime::{ShutdownSignals, response as reply, text};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The policy the demo runs: the same file as `deploy/examples/demo-policy.yaml`.
const POLICY: &str = include_str!("../../deploy/examples/demo-policy.yaml");
/// The origin the embedded policy allows; replaced when the page has to use another port.
const POLICY_PAGE_ORIGIN: &str = "http://127.0.0.1:8081";
/// The page, self-contained: no CDN, no external fonts.
const PAGE: &str = include_str!("demo/page.html");
/// Where the page's configuration (URLs of the other parts) is spliced in.
const PAGE_CONFIG_MARKER: &str = "/*CORSAIR_CONFIG*/{}";
/// The cookie the page sets so that the credentialed call has something to carry.
const SESSION_COOKIE: &str = "corsair_demo_session=demo";
/// Largest request body the demo servers read (the JSON the page posts is tiny).
const MAX_BODY: usize = 64 * 1024;

/// `corsair demo`: each port falls back to a free one when it is busy; 0 always picks a free one.
#[derive(clap::Args)]
pub struct Args {
    /// Port of the proxy, the API origin the page calls.
    #[arg(long, default_value_t = 8080, env = "CORSAIR_DEMO_PROXY_PORT")]
    proxy_port: u16,
    /// Port of the page on the origin the policy allows.
    #[arg(long, default_value_t = 8081, env = "CORSAIR_DEMO_PAGE_PORT")]
    page_port: u16,
    /// Port of the same page on an origin the policy does not allow.
    #[arg(long, default_value_t = 8082, env = "CORSAIR_DEMO_OTHER_PORT")]
    other_port: u16,
    /// Port of the proxy's admin endpoints (/healthz, /readyz, /metrics, /policy).
    #[arg(long, default_value_t = 8083, env = "CORSAIR_DEMO_ADMIN_PORT")]
    admin_port: u16,
    #[command(flatten)]
    log: corsair_runtime::logging::LogArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    corsair_runtime::logging::init(&args.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_demo(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn run_demo(args: Args) -> anyhow::Result<()> {
    // Installed first: Ctrl-C during start-up stops the demo cleanly instead of killing it.
    let mut signals = ShutdownSignals::install()?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let upstream_listener = bind(0, "upstream").await?;
    let page_listener = bind(args.page_port, "page").await?;
    let other_listener = bind(args.other_port, "other origin").await?;
    let upstream_addr = upstream_listener.local_addr()?;
    let page_origin = format!("http://{}", page_listener.local_addr()?);
    let other_origin = format!("http://{}", other_listener.local_addr()?);

    let policy_dir = tempfile::Builder::new()
        .prefix("corsair-demo-")
        .tempdir()
        .context("cannot create a temporary directory for the policy")?;
    let policy_path = policy_dir.path().join("policy.yaml");
    let policy = POLICY.replace(POLICY_PAGE_ORIGIN, &page_origin);
    std::fs::write(&policy_path, &policy)
        .with_context(|| format!("cannot write {}", policy_path.display()))?;

    let upstream_uri: http::Uri = format!("http://{upstream_addr}")
        .parse()
        .context("upstream address is not a URI")?;
    let proxy = start_proxy(&policy_path, upstream_uri, args.proxy_port, args.admin_port).await?;
    let api_origin = format!("http://{}", proxy.listen_addr());

    let page = Arc::new(PageState {
        html: render_page(&api_origin, &page_origin, &other_origin, &policy_path)?,
        policy_path: policy_path.clone(),
        results: watch::channel(None).0,
    });
    let upstream = Arc::new(UpstreamState::default());

    let servers = [
        tokio::spawn(serve(upstream_listener, stop_rx.clone(), move |req| {
            upstream_api(req, upstream.clone())
        })),
        tokio::spawn(serve(page_listener, stop_rx.clone(), {
            let page = page.clone();
            move |req| page_server(req, page.clone())
        })),
        tokio::spawn(serve(other_listener, stop_rx, move |req| {
            page_server(req, page.clone())
        })),
    ];

    println!("corsair demo is running. Open the page in a browser; Ctrl-C stops.");
    println!("  page:         {page_origin}/");
    println!("  api:          {api_origin}/api/items   (the proxy)");
    println!("  other origin: {other_origin}/   (not allowed by the policy)");
    println!("  admin:        http://{}/metrics", proxy.admin_addr());
    println!("  upstream:     http://{upstream_addr}/api/items   (the API without the proxy)");
    println!(
        "  policy:       {}   (edit it: the proxy reloads it)",
        policy_path.display()
    );

    signals.recv().await;
    eprintln!("stopping");
    let _ = stop_tx.send(true);
    let proxy_result = proxy.shutdown().await;
    for server in servers {
        server.await.context("a demo server task failed")?;
    }
    drop(policy_dir);
    proxy_result.context("the proxy did not stop cleanly")
}

/// Starts the proxy on the wanted ports, or on free ones when they are taken.
async fn start_proxy(
    policy_path: &Path,
    upstream: http::Uri,
    port: u16,
    admin_port: u16,
) -> anyhow::Result<corsair_proxy::Proxy> {
    let config = |port: u16, admin_port: u16| {
        corsair_proxy::ProxyConfig::new(
            policy_path.to_path_buf(),
            upstream.clone(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port)),
        )
    };
    match corsair_proxy::Proxy::start(config(port, admin_port)).await {
        Ok(proxy) => Ok(proxy),
        Err(corsair_proxy::ProxyError::Bind { addr, cause, .. }) => {
            tracing::warn!(%addr, error = %cause, "port taken; the proxy uses free ports instead");
            corsair_proxy::Proxy::start(config(0, 0))
                .await
                .context("cannot start the proxy")
        }
        Err(err) => Err(err).context("cannot start the proxy"),
    }
}

/// Binds 127.0.0.1:`port`, or a free port when that one is taken.
async fn bind(port: u16, role: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
        Ok(listener) => Ok(listener),
        Err(err) if port != 0 => {
            tracing::warn!(port, role, error = %err, "port taken; using a free port instead");
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .with_context(|| format!("cannot listen on 127.0.0.1 ({role})"))
        }
        Err(err) => Err(err).with_context(|| format!("cannot listen on 127.0.0.1 ({role})")),
    }
}

type Reply = Response<Full<Bytes>>;

/// Serves HTTP/1.1 until `stop` turns true, then lets open connections finish (up to 5 s).
async fn serve<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<bool>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                let service = service_fn(move |req| {
                    let reply = handler(req);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        tracing::debug!(error = %err, "demo connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    reply(status, "application/json", value.to_string())
}

/// Reads a small request body, or says why not.
async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body unreadable or over 64 KiB\n",
        )),
    }
}

/// The upstream's state: it numbers its responses so the page can read an exposed header.
#[derive(Default)]
struct UpstreamState {
    requests: AtomicU64,
    created: AtomicU64,
}

/// The JSON API. It answers every origin with `Access-Control-Allow-Origin: *` (and preflights
/// with everything allowed): a careless upstream, so the demo shows the proxy taking over.
async fn upstream_api(req: Request<Incoming>, state: Arc<UpstreamState>) -> Reply {
    let id = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::info!(
        method = %req.method(),
        path = req.uri().path(),
        origin = ?req.headers().get(header::ORIGIN),
        "upstream received a request"
    );
    let (parts, body) = req.into_parts();
    let mut response = match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/api/items") => json(
            StatusCode::OK,
            &serde_json::json!([
                {"id": 1, "name": "compass"},
                {"id": 2, "name": "spyglass"},
                {"id": 3, "name": "sextant"},
            ]),
        ),
        (&Method::POST, "/api/items") => match read_body(body).await {
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(item) => {
                    let name = item
                        .get("name")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("unnamed");
                    let new_id = 3 + state.created.fetch_add(1, Ordering::Relaxed) + 1;
                    json(
                        StatusCode::CREATED,
                        &serde_json::json!({"id": new_id, "name": name}),
                    )
                }
                Err(_) => text(StatusCode::BAD_REQUEST, "body is not JSON\n"),
            },
            Err(response) => response,
        },
        (&Method::GET, "/api/private") => {
            let has_session = parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(';'))
                .any(|cookie| cookie.trim() == SESSION_COOKIE);
            if has_session {
                json(
                    StatusCode::OK,
                    &serde_json::json!({"message": "the session cookie reached the API"}),
                )
            } else {
                json(
                    StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"message": "no session cookie: call with credentials"}),
                )
            }
        }
        (&Method::OPTIONS, _) => {
            let mut response = reply(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
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
        (_, path) if path.starts_with("/api/items") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let headers = response.headers_mut();
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    headers.insert("x-request-id", HeaderValue::from(id));
    response
}

/// What the page server shares between its two origins.
struct PageState {
    html: String,
    policy_path: PathBuf,
    /// The last results the page reported (JSON), for `GET /results`.
    results: watch::Sender<Option<Bytes>>,
}

/// Splices the URLs of the running demo into the page.
fn render_page(
    api: &str,
    page_origin: &str,
    other_origin: &str,
    policy_path: &Path,
) -> anyhow::Result<String> {
    let config = serde_json::json!({
        "api": api,
        "pageOrigin": page_origin,
        "otherOrigin": other_origin,
        "policyPath": policy_path.display().to_string(),
    });
    anyhow::ensure!(
        PAGE.contains(PAGE_CONFIG_MARKER),
        "the embedded page has no configuration marker"
    );
    // `<` escaped so that no value can close the script element.
    let config = config.to_string().replace('<', "\\u003c");
    Ok(PAGE.replace(PAGE_CONFIG_MARKER, &config))
}

async fn page_server(req: Request<Incoming>, state: Arc<PageState>) -> Reply {
    let (parts, body) = req.into_parts();
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/") => {
            let mut response = reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                state.html.clone(),
            );
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(
                header::SET_COOKIE,
                HeaderValue::from_static("corsair_demo_session=demo; Path=/; SameSite=Lax"),
            );
            response
        }
        (&Method::GET, "/policy.yaml") => match tokio::fs::read(&state.policy_path).await {
            Ok(policy) => reply(StatusCode::OK, "text/plain; charset=utf-8", policy),
            Err(_) => text(StatusCode::NOT_FOUND, "the policy file is gone\n"),
        },
        (&Method::POST, "/results") => match read_body(body).await {
            Ok(results) if serde_json::from_slice::<serde_json::Value>(&results).is_ok() => {
                tracing::info!(results = %String::from_utf8_lossy(&results), "the page reported");
                state.results.send_replace(Some(results));
                reply(StatusCode::NO_CONTENT, "text/plain", Bytes::new())
            }
            Ok(_) => text(StatusCode::BAD_REQUEST, "results are not JSON\n"),
            Err(response) => response,
        },
        (&Method::GET, "/results") => match state.results.borrow().clone() {
            Some(results) => reply(StatusCode::OK, "application/json", results),
            None => text(StatusCode::NOT_FOUND, "the page has not reported yet\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_port_falls_back_to_a_free_one() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let busy = taken.local_addr().expect("address").port();
        let listener = bind(busy, "test").await.expect("fallback to a free port");
        let port = listener.local_addr().expect("address").port();
        assert_ne!(port, busy);
        assert_ne!(port, 0);
    }

    #[test]
    fn the_page_gets_the_urls_and_no_value_can_close_its_script() {
        let html = render_page(
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
            Path::new("/tmp/</script><b>.yaml"),
        )
        .expect("render");
        assert!(!html.contains(PAGE_CONFIG_MARKER));
        assert!(html.contains(r#""api":"http://127.0.0.1:1""#));
        assert!(html.contains(r#""pageOrigin":"http://127.0.0.1:2""#));
        assert!(html.contains(r#""otherOrigin":"http://127.0.0.1:3""#));
        assert!(html.contains(r#""policyPath":"/tmp/\u003c/script>\u003cb>.yaml""#));
        assert_eq!(
            html.matches("</script>").count(),
            PAGE.matches("</script>").count()
        );
    }

    #[test]
    fn the_embedded_policy_is_valid_and_follows_the_page_port() {
        assert!(POLICY.contains(POLICY_PAGE_ORIGIN));
        let policy = POLICY.replace(POLICY_PAGE_ORIGIN, "http://127.0.0.1:9999");
        let document = corsair_policy::load_document(&policy).expect("the demo policy loads");
        assert_eq!(
            document.spec.allow_origins,
            Some(vec!["http://127.0.0.1:9999".to_owned()])
        );
        let report = corsair_policy::validate(&document.spec);
        assert!(report.findings.is_empty(), "{:?}", report.findings);
    }
}
