//! corsair's decision against tower-http's `CorsLayer` (over a no-op `service_fn`) with the
//! equivalent configuration, measured in the same run.
//!
//! Both sides start from the same prebuilt `http::Request` and end with the response headers in
//! an `http::HeaderMap`: corsair's timing includes reading the CORS headers out of the request
//! into a `RequestInfo`, the decision, and inserting the decided `HeaderValue`s (feature `http`)
//! into a header map that is reused from one call to the next, as hyper reuses a connection's
//! maps; tower-http's includes its whole service call. Request construction is outside the timed
//! part for both (`iter_batched`). "header map inserts only" times the insertion of the same
//! decided headers alone: the floor under any path that ends in a header map.
//!
//! Run: `cargo bench -p corsair-policy --features http --bench decide -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use corsair_policy::http::Echo;
use corsair_policy::{Action, CorsPolicySpec, Engine, RequestInfo};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use tower::{Layer, Service};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

const APP: &str = "https://app.example.com";
const METHODS: [&str; 3] = ["GET", "POST", "PUT"];
const HEADERS: [&str; 2] = ["content-type", "x-request-id"];

fn exact_origins(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("https://app{i}.example.com"))
        .collect()
}

fn wildcard_suffixes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tenant{i}.example.net")).collect()
}

fn corsair(origins: Vec<String>) -> Engine {
    let spec = CorsPolicySpec {
        allow_origins: Some(origins),
        allow_methods: Some(METHODS.iter().map(|m| (*m).to_owned()).collect()),
        allow_headers: Some(HEADERS.iter().map(|h| (*h).to_owned()).collect()),
        ..CorsPolicySpec::default()
    };
    match Engine::compile(&spec) {
        Ok((engine, _)) => engine,
        Err(report) => panic!("bench policy refused: {:?}", report.findings),
    }
}

fn tower_layer(origin: AllowOrigin) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(AllowMethods::list(
            METHODS
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).expect("method")),
        ))
        .allow_headers(AllowHeaders::list(
            HEADERS.iter().map(|h| header::HeaderName::from_static(h)),
        ))
}

fn simple_get(origin: &str) -> Request<()> {
    Request::builder()
        .method("GET")
        .uri("/api/items")
        .header(header::HOST, "api.example.com")
        .header(header::ORIGIN, origin)
        .body(())
        .expect("request")
}

fn preflight(origin: &str) -> Request<()> {
    Request::builder()
        .method("OPTIONS")
        .uri("/api/items")
        .header(header::HOST, "api.example.com")
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "PUT")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "content-type, x-request-id",
        )
        .body(())
        .expect("request")
}

/// The request's header values a decision may echo.
#[derive(Default, Clone, Copy)]
struct Raw<'r> {
    origin: Option<&'r HeaderValue>,
    method: Option<&'r HeaderValue>,
    headers: Option<&'r HeaderValue>,
}

/// Reads the CORS headers in one pass over the header map, as the proxy does, and calls `f`.
fn with_info<R>(req: &Request<()>, f: impl FnOnce(&RequestInfo<'_>, Raw<'_>) -> R) -> R {
    let mut info = RequestInfo {
        method: req.method().as_str(),
        path: req.uri().path(),
        ..RequestInfo::default()
    };
    let mut raw = Raw::default();
    let mut lines: [&str; 4] = [""; 4];
    let mut n = 0;
    for (name, value) in req.headers() {
        let Ok(text) = value.to_str() else { continue };
        if name == header::ORIGIN {
            info.origin = Some(text);
            raw.origin = Some(value);
        } else if name == header::HOST {
            info.host = Some(text);
        } else if name == header::ACCESS_CONTROL_REQUEST_METHOD {
            info.request_method = Some(text);
            raw.method = Some(value);
        } else if name == header::ACCESS_CONTROL_REQUEST_HEADERS && n < lines.len() {
            lines[n] = text;
            raw.headers = Some(value);
            n += 1;
        }
    }
    info.request_headers = &lines[..n];
    f(&info, raw)
}

/// What the proxy does per request: read the CORS headers, decide, insert the response headers.
fn corsair_handle(engine: &Engine, req: &Request<()>, out: &mut HeaderMap) -> usize {
    out.clear();
    with_info(req, |info, raw| {
        let decision = engine.decide(info);
        let headers = match decision.action() {
            Action::Respond { headers, .. } | Action::Forward { headers, .. } => headers,
        };
        let echo = Echo {
            origin: raw.origin,
            request_method: raw.method,
            request_headers: &|| raw.headers.cloned(),
        };
        let values = headers.to_values(echo);
        let vary = values.vary();
        values.insert_into(out);
        if let Some(vary) = vary.header_value() {
            out.insert(header::VARY, vary.clone());
        }
        out.len()
    })
}

/// Drives one tower-http call to completion; the no-op service is always ready.
fn tower_handle<S>(svc: &mut S, req: Request<()>) -> Response<()>
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("no-op service not ready"),
    }
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(resp)) => resp,
        _ => panic!("no-op service did not answer at once"),
    }
}

fn noop_service()
-> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone {
    tower::service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

fn bench_pair(
    c: &mut Criterion,
    name: &str,
    engine: &Engine,
    layer: CorsLayer,
    make: impl Fn() -> Request<()> + Copy,
    expect_allowed: bool,
) {
    // Both sides must agree that the request is allowed before their times mean anything.
    let resp = tower_handle(&mut layer.layer(noop_service()), make());
    assert_eq!(
        resp.headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
        expect_allowed,
        "tower-http on {name}"
    );
    let mut out = HeaderMap::with_capacity(16);
    assert!(
        corsair_handle(engine, &make(), &mut out) > 1,
        "corsair on {name}"
    );

    let mut group = c.benchmark_group(name);
    group.bench_function("corsair", |b| {
        b.iter_batched_ref(
            make,
            |req| corsair_handle(engine, req, &mut out),
            BatchSize::SmallInput,
        )
    });
    // The same call on a request that stays in cache, without criterion's batching.
    let hot = make();
    group.bench_function("corsair (hot request)", |b| {
        b.iter(|| corsair_handle(engine, black_box(&hot), &mut out))
    });
    // The floor of any path that ends in a header map: the same headers, already decided,
    // inserted into the same reused map. No reading of the request, no decision.
    let decided: Vec<_> = out.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    group.bench_function("header map inserts only", |b| {
        b.iter(|| {
            out.clear();
            for (name, value) in black_box(&decided) {
                out.insert(name.clone(), value.clone());
            }
            out.len()
        })
    });
    with_info(&hot, |info, _| {
        group.bench_function("corsair decide only", |b| {
            b.iter(|| engine.decide(black_box(info)).kind)
        })
    });
    let mut svc = layer.layer(noop_service());
    group.bench_function("tower-http", |b| {
        b.iter_batched(
            make,
            |req| tower_handle(&mut svc, req),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let small = corsair(vec![APP.to_owned()]);
    let small_tower = || tower_layer(AllowOrigin::list([HeaderValue::from_static(APP)]));
    bench_pair(
        c,
        "simple GET, 1 origin",
        &small,
        small_tower(),
        || simple_get(APP),
        true,
    );
    bench_pair(
        c,
        "preflight 2 headers, 1 origin",
        &small,
        small_tower(),
        || preflight(APP),
        true,
    );

    // 1,000 exact origins and 50 wildcards; the request matches the last wildcard, so a linear
    // matcher looks at everything.
    let exact = exact_origins(1000);
    let suffixes = wildcard_suffixes(50);
    let mut entries = exact.clone();
    entries.extend(suffixes.iter().map(|s| format!("https://*.{s}")));
    let big = corsair(entries);
    let tower_exact: Vec<HeaderValue> = exact
        .iter()
        .map(|o| HeaderValue::from_str(o).expect("origin"))
        .collect();
    let tower_suffixes: Vec<String> = suffixes.iter().map(|s| format!(".{s}")).collect();
    let big_tower = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _parts| {
            tower_exact.contains(origin)
                || origin
                    .to_str()
                    .ok()
                    .and_then(|o| o.strip_prefix("https://"))
                    .is_some_and(|host| {
                        tower_suffixes
                            .iter()
                            .any(|s| host.len() > s.len() && host.ends_with(s.as_str()))
                    })
        }))
        .allow_methods(AllowMethods::list(
            METHODS
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).expect("method")),
        ))
        .allow_headers(AllowHeaders::list(
            HEADERS.iter().map(|h| header::HeaderName::from_static(h)),
        ));
    const WILD: &str = "https://eu.tenant49.example.net";
    bench_pair(
        c,
        "simple GET, 1000 exact + 50 wildcards",
        &big,
        big_tower,
        || simple_get(WILD),
        true,
    );

    // corsair alone, decision only: the exact-origin lookup must not grow with the list. The
    // request carries the last origin of the list.
    let mut group = c.benchmark_group("corsair exact origins");
    for n in [10usize, 1000, 10_000] {
        let origins = exact_origins(n);
        let req = simple_get(&origins[n - 1]);
        let engine = corsair(origins);
        assert!(corsair_handle(&engine, &req, &mut HeaderMap::new()) > 1);
        with_info(&req, |info, _| {
            group.bench_function(format!("{n}"), |b| {
                b.iter(|| engine.decide(black_box(info)).kind)
            })
        });
    }
    group.finish();
}

criterion_group!(decide, benches);
criterion_main!(decide);
