//! The allocation-free claim of the request path, held by a test.
//!
//! `allocation-counter` is this test binary's global allocator; `measure` counts the
//! allocations of the current thread inside its closure. Each case runs corsair's own work
//! for one request, everything between hyper handing over the request and hyper taking the
//! response: the decision, the CORS headers, `Vary`, hop-by-hop removal, `X-Forwarded-*`,
//! the metrics and the log call (a subscriber at the default `info` level is installed).
//!
//! Header maps are made with room to spare, as hyper's are in steady state: hyper parses each
//! message of a connection into the storage of the previous message's map.

use std::sync::Arc;
use std::time::Duration;

use corsair_policy::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};

use super::*;
use crate::metrics::{Metrics, RequestLabels};
use crate::server::{Activity, Conn};
use crate::upstream::Lane;

const POLICY: &str = "\
apiVersion: corsair.dev/v1alpha1
kind: CorsPolicy
metadata: {name: alloc}
spec:
  allowOrigins: [\"https://app.example.com\", \"https://*.example.org\"]
  allowMethods: [GET, POST, PUT]
  allowHeaders: [content-type, x-request-id]
  exposeHeaders: [X-Total]
  allowCredentials: true
  maxAge: 600
";

fn engine() -> Engine {
    let document = corsair_policy::load_document(POLICY).expect("test policy loads");
    Engine::compile(&document.spec)
        .expect("test policy compiles")
        .0
}

fn conn() -> Conn {
    Conn {
        forwarded_for: crate::headers::forwarded_for("10.0.0.7".parse().expect("literal")),
        activity: Activity::new(),
        lane: Lane::default(),
        flush: Arc::default(),
        requests: Default::default(),
    }
}

fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(32);
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

fn request(method: &str, headers: &[(&'static str, &'static str)]) -> Request<()> {
    let mut req = Request::builder()
        .method(method)
        .uri("/api/items?page=2")
        .body(())
        .expect("request");
    *req.headers_mut() = map(headers);
    req
}

const GET: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    ("origin", "https://app.example.com"),
    ("user-agent", "test"),
    ("accept", "*/*"),
    ("connection", "keep-alive"),
];

const PREFLIGHT: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    ("origin", "https://eu.example.org"),
    ("access-control-request-method", "PUT"),
    (
        "access-control-request-headers",
        "content-type, x-request-id",
    ),
    ("user-agent", "test"),
    ("accept", "*/*"),
];

/// What the upstream answered, as the upstream hop hands it over.
fn upstream_response(extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = map(&[
        ("content-type", "application/json"),
        ("content-length", "90"),
        ("access-control-allow-origin", "*"),
    ]);
    for (name, value) in extra {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

/// corsair's work on one forwarded request; returns the response headers the client gets.
fn forwarded(
    engine: &Engine,
    conn: &Conn,
    metrics: &Metrics,
    req: Request<()>,
    response: HeaderMap,
) -> (Request<()>, HeaderMap) {
    let plan = Plan::new(engine, &req);
    let mut labels = plan.labels.clone();
    let upstream = to_upstream(req, conn, None).expect("rewritable target");
    let mut response = response;
    plan.finish(&mut response);
    labels.status = "2xx";
    metrics.request(&labels, Duration::from_micros(100));
    (upstream, response)
}

/// corsair's work on one preflight answered here.
fn preflight(engine: &Engine, metrics: &Metrics, req: Request<()>) -> Response<ProxyBody> {
    let plan = Plan::new(engine, &req);
    let mut labels = plan.labels.clone();
    let status = plan.respond.expect("answered here");
    let response = plan.answer(status, req);
    labels.status = "2xx";
    metrics.request(&labels, Duration::from_micros(100));
    response
}

fn with_info_logging<R>(f: impl FnOnce() -> R) -> R {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(subscriber, f)
}

fn value<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("<bytes>"))
        .collect()
}

#[test]
fn an_allowed_simple_get_allocates_nothing() {
    with_info_logging(|| {
        let (engine, conn, metrics) = (engine(), conn(), Arc::new(Metrics::new()));
        // The first request resolves the metric series.
        let _ = forwarded(
            &engine,
            &conn,
            &metrics,
            request("GET", GET),
            upstream_response(&[]),
        );
        let (req, resp) = (request("GET", GET), upstream_response(&[]));
        let mut out = None;
        let info = allocation_counter::measure(|| {
            out = Some(forwarded(&engine, &conn, &metrics, req, resp));
        });
        let (upstream, response) = out.expect("measured");
        assert_eq!(info.count_total, 0, "allocated: {info:?}");
        // It did the work: CORS answer, upstream's own CORS removed, request rewritten.
        assert_eq!(
            value(&response, "access-control-allow-origin"),
            ["https://app.example.com"]
        );
        assert_eq!(
            value(&response, "access-control-allow-credentials"),
            ["true"]
        );
        assert_eq!(
            value(&response, "access-control-expose-headers"),
            ["X-Total"]
        );
        assert_eq!(value(&response, "vary"), ["Origin"]);
        assert_eq!(value(upstream.headers(), "x-forwarded-for"), ["10.0.0.7"]);
        assert_eq!(value(upstream.headers(), "x-forwarded-proto"), ["http"]);
        assert_eq!(
            value(upstream.headers(), "x-forwarded-host"),
            ["api.example.com"]
        );
        assert!(!upstream.headers().contains_key("connection"));
    });
}

#[test]
fn an_allowed_preflight_allocates_nothing() {
    with_info_logging(|| {
        let (engine, metrics) = (engine(), Arc::new(Metrics::new()));
        let _ = preflight(&engine, &metrics, request("OPTIONS", PREFLIGHT));
        let req = request("OPTIONS", PREFLIGHT);
        let mut out = None;
        let info = allocation_counter::measure(|| out = Some(preflight(&engine, &metrics, req)));
        let response = out.expect("measured");
        assert_eq!(info.count_total, 0, "allocated: {info:?}");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(
            value(headers, "access-control-allow-origin"),
            ["https://eu.example.org"]
        );
        assert_eq!(
            value(headers, "access-control-allow-methods"),
            ["GET, POST, PUT"]
        );
        assert_eq!(
            value(headers, "access-control-allow-headers"),
            ["content-type, x-request-id"]
        );
        assert_eq!(value(headers, "access-control-max-age"), ["600"]);
        assert_eq!(
            value(headers, "vary"),
            ["Origin, Access-Control-Request-Method, Access-Control-Request-Headers"]
        );
        // The request's own headers are gone from the answer.
        assert!(!headers.contains_key("user-agent"));
    });
}

#[test]
fn merging_the_upstreams_vary_and_an_ingress_forwarded_for_allocate_nothing() {
    with_info_logging(|| {
        let (engine, conn, metrics) = (engine(), conn(), Arc::new(Metrics::new()));
        let mut get: Vec<(&str, &str)> = GET.to_vec();
        get.push(("x-forwarded-for", "203.0.113.9"));
        let vary = [("vary", "Accept-Encoding")];
        // Warm-up: the metric series and this thread's scratch buffer.
        let _ = forwarded(
            &engine,
            &conn,
            &metrics,
            request("GET", &get),
            upstream_response(&vary),
        );
        let (req, resp) = (request("GET", &get), upstream_response(&vary));
        let mut out = None;
        let info = allocation_counter::measure(|| {
            out = Some(forwarded(&engine, &conn, &metrics, req, resp));
        });
        let (upstream, response) = out.expect("measured");
        assert_eq!(info.count_total, 0, "allocated: {info:?}");
        assert_eq!(value(&response, "vary"), ["Accept-Encoding, Origin"]);
        assert_eq!(
            value(upstream.headers(), "x-forwarded-for"),
            ["203.0.113.9, 10.0.0.7"]
        );
    });
}

/// The counter does count: building a header value from a string is seen.
#[test]
fn the_counter_sees_allocations() {
    let info = allocation_counter::measure(|| {
        let value = HeaderValue::from_str("https://app.example.com").expect("valid");
        assert_eq!(value.len(), 23);
    });
    assert!(info.count_total > 0);
}

/// A GET from `origin`, which the test policy refuses, through the forward path.
fn forward_denied(engine: &Engine, conn: &Conn, metrics: &Arc<Metrics>, origin: &'static str) {
    let denied = [("host", "api.example.com"), ("origin", origin)];
    let _ = forwarded(
        engine,
        conn,
        metrics,
        request("GET", &denied),
        upstream_response(&[]),
    );
}

/// A denied request is logged at info level, which formats: the counter sees it, so the
/// allowed cases above are not passing because logging is off.
#[test]
fn a_denied_request_logged_at_info_is_counted() {
    with_info_logging(|| {
        let (engine, conn, metrics) = (engine(), conn(), Arc::new(Metrics::new()));
        forward_denied(&engine, &conn, &metrics, "https://evil.test");
        let denied = [("host", "api.example.com"), ("origin", "https://evil.test")];
        let (req, resp) = (request("GET", &denied), upstream_response(&[]));
        let info = allocation_counter::measure(|| {
            let _ = forwarded(&engine, &conn, &metrics, req, resp);
        });
        assert!(
            info.count_total > 0,
            "the deny log line should allocate: {info:?}"
        );
    });
}

/// A client cannot make a denial's log line as long as its headers: each value it chose is cut.
#[test]
fn a_denial_log_line_keeps_a_client_value_short() {
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut lines) = self.0.lock() {
                lines.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // `request` takes static values, as the other cases' are.
    let origin: &'static str =
        Box::leak(format!("https://{}.test", "a".repeat(60_000)).into_boxed_str());
    tracing::subscriber::with_default(subscriber, || {
        let (engine, conn, metrics) = (engine(), conn(), Arc::new(Metrics::new()));
        forward_denied(&engine, &conn, &metrics, origin);
    });
    let logged = lines
        .0
        .lock()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .unwrap_or_default();
    assert!(logged.contains("CORS request denied"), "{logged}");
    assert!(
        logged.contains(&format!("({} bytes)", origin.len())),
        "{logged}"
    );
    assert!(logged.len() < 1_000, "a {} byte line", logged.len());
}

#[test]
fn labels_name_the_decision() {
    let engine = engine();
    let plan = Plan::new(&engine, &request("OPTIONS", PREFLIGHT));
    assert_eq!(
        plan.labels,
        RequestLabels {
            kind: "preflight",
            decision: "allowed",
            mode: "enforce",
            status: ""
        }
    );
}
