//! Every CORS rule of the engine issue as it plays out on the wire: a real client, the proxy
//! started in-process, and a real upstream that records what reached it.

mod support;

use support::{cors_names, harness, read_to_close, request, send, values};

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example.net";
const VARY_PREFLIGHT: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

const BASIC: &str = "\
allowOrigins: [\"https://app.example.com\"]
allowMethods: [GET, PUT, DELETE]
allowHeaders: [X-Custom, Content-Type]
exposeHeaders: [X-Request-Id]
";

/// One request and exactly what must come back, and whether the upstream was called.
struct Case {
    rule: &'static str,
    policy: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    upstream_called: bool,
    /// Every `access-control-*` header of the response, with its value; no other may appear.
    cors: &'static [(&'static str, &'static str)],
    /// The single `Vary` line expected; `None`: no `Vary` at all.
    vary: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            rule: "allowed simple request: forwarded, origin echoed, exposed headers set, Vary merged with the upstream's",
            policy: BASIC,
            method: "GET",
            path: "/",
            headers: &[("origin", APP)],
            status: 200,
            upstream_called: true,
            cors: &[
                ("access-control-allow-origin", APP),
                ("access-control-expose-headers", "X-Request-Id"),
            ],
            vary: Some("Accept-Encoding, Origin"),
        },
        Case {
            rule: "disallowed simple request (default Forward): forwarded without CORS headers",
            policy: BASIC,
            method: "GET",
            path: "/",
            headers: &[("origin", EVIL)],
            status: 200,
            upstream_called: true,
            cors: &[],
            vary: Some("Accept-Encoding, Origin"),
        },
        Case {
            rule: "disallowedRequests: Reject answers 403 without calling the upstream",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject",
            method: "POST",
            path: "/",
            headers: &[("origin", EVIL)],
            status: 403,
            upstream_called: false,
            cors: &[],
            vary: Some("Origin"),
        },
        Case {
            rule: "an origin that appears twice is never allowed",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject",
            method: "GET",
            path: "/",
            headers: &[("origin", APP), ("origin", APP)],
            status: 403,
            upstream_called: false,
            cors: &[],
            vary: Some("Origin"),
        },
        Case {
            rule: "allowed preflight: answered by the proxy with the configured lists",
            policy: BASIC,
            method: "OPTIONS",
            path: "/items",
            headers: &[
                ("origin", APP),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-custom"),
            ],
            status: 200,
            upstream_called: false,
            cors: &[
                ("access-control-allow-origin", APP),
                ("access-control-allow-methods", "GET, PUT, DELETE"),
                ("access-control-allow-headers", "X-Custom, Content-Type"),
                ("access-control-expose-headers", "X-Request-Id"),
            ],
            vary: Some(VARY_PREFLIGHT),
        },
        Case {
            rule: "preflightStatus 204 and maxAge",
            policy: "allowOrigins: [\"https://app.example.com\"]\npreflightStatus: 204\nmaxAge: 600",
            method: "OPTIONS",
            path: "/",
            headers: &[("origin", APP), ("access-control-request-method", "GET")],
            status: 204,
            upstream_called: false,
            cors: &[
                ("access-control-allow-origin", APP),
                ("access-control-allow-methods", "GET, HEAD, POST"),
                ("access-control-max-age", "600"),
            ],
            vary: Some(VARY_PREFLIGHT),
        },
        Case {
            rule: "preflight for a method that is not listed: 403, no CORS headers, upstream not called",
            policy: BASIC,
            method: "OPTIONS",
            path: "/",
            headers: &[("origin", APP), ("access-control-request-method", "PATCH")],
            status: 403,
            upstream_called: false,
            cors: &[],
            vary: Some(VARY_PREFLIGHT),
        },
        Case {
            rule: "preflight for a header that is not listed: 403",
            policy: BASIC,
            method: "OPTIONS",
            path: "/",
            headers: &[
                ("origin", APP),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-custom, x-forbidden"),
            ],
            status: 403,
            upstream_called: false,
            cors: &[],
            vary: Some(VARY_PREFLIGHT),
        },
        Case {
            rule: "preflight from an origin that is not allowed: 403",
            policy: BASIC,
            method: "OPTIONS",
            path: "/",
            headers: &[("origin", EVIL), ("access-control-request-method", "GET")],
            status: 403,
            upstream_called: false,
            cors: &[],
            vary: Some(VARY_PREFLIGHT),
        },
        Case {
            rule: "unmatchedPreflights: Forward passes a disallowed preflight to the upstream untouched",
            policy: "allowOrigins: [\"https://app.example.com\"]\nunmatchedPreflights: Forward",
            method: "OPTIONS",
            path: "/cors-star",
            headers: &[("origin", EVIL), ("access-control-request-method", "GET")],
            status: 200,
            upstream_called: true,
            cors: &[
                ("access-control-allow-origin", "*"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "x-secret"),
            ],
            vary: Some("Accept-Encoding"),
        },
        Case {
            rule: "unmatchedPreflights: Forward answers an allowed origin's refused method itself: the upstream's CORS headers never grant it",
            policy: "allowOrigins: [\"https://app.example.com\"]\nunmatchedPreflights: Forward",
            method: "OPTIONS",
            path: "/cors-star",
            headers: &[("origin", APP), ("access-control-request-method", "DELETE")],
            status: 403,
            upstream_called: false,
            cors: &[],
            vary: Some(VARY_PREFLIGHT),
        },
        Case {
            rule: "an OPTIONS without Access-Control-Request-Method is an ordinary request",
            policy: BASIC,
            method: "OPTIONS",
            path: "/",
            headers: &[("origin", APP)],
            status: 200,
            upstream_called: true,
            cors: &[
                ("access-control-allow-origin", APP),
                ("access-control-expose-headers", "X-Request-Id"),
            ],
            vary: Some("Accept-Encoding, Origin"),
        },
        Case {
            rule: "credentials: Allow-Credentials true and the origin echoed, on the actual request",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowCredentials: true",
            method: "GET",
            path: "/",
            headers: &[("origin", APP), ("cookie", "session=1")],
            status: 200,
            upstream_called: true,
            cors: &[
                ("access-control-allow-origin", APP),
                ("access-control-allow-credentials", "true"),
            ],
            vary: Some("Accept-Encoding, Origin"),
        },
        Case {
            rule: "credentials with allowHeaders * echo the requested headers in the preflight",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowCredentials: true\nallowHeaders: [\"*\"]",
            method: "OPTIONS",
            path: "/",
            headers: &[
                ("origin", APP),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-a, x-b"),
            ],
            status: 200,
            upstream_called: false,
            cors: &[
                ("access-control-allow-origin", APP),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET, HEAD, POST"),
                ("access-control-allow-headers", "x-a, x-b"),
            ],
            vary: Some(VARY_PREFLIGHT),
        },
        Case {
            rule: "allowHeaders * never covers Authorization",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowHeaders: [\"*\"]",
            method: "OPTIONS",
            path: "/",
            headers: &[
                ("origin", APP),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
            ],
            status: 403,
            upstream_called: false,
            cors: &[],
            vary: Some(VARY_PREFLIGHT),
        },
        Case {
            rule: "allowOrigins * without credentials: Allow-Origin * and no Vary: Origin",
            policy: "allowOrigins: [\"*\"]",
            method: "GET",
            path: "/",
            headers: &[("origin", EVIL)],
            status: 200,
            upstream_called: true,
            cors: &[("access-control-allow-origin", "*")],
            vary: Some("Accept-Encoding"),
        },
        Case {
            rule: "the upstream's own permissive CORS headers are removed for a disallowed origin",
            policy: BASIC,
            method: "GET",
            path: "/cors-star",
            headers: &[("origin", EVIL)],
            status: 200,
            upstream_called: true,
            cors: &[],
            vary: Some("Accept-Encoding, Origin"),
        },
        Case {
            rule: "the upstream's own CORS headers are replaced by the policy's for an allowed origin",
            policy: BASIC,
            method: "GET",
            path: "/cors-star",
            headers: &[("origin", APP)],
            status: 200,
            upstream_called: true,
            cors: &[
                ("access-control-allow-origin", APP),
                ("access-control-expose-headers", "X-Request-Id"),
            ],
            vary: Some("Accept-Encoding, Origin"),
        },
        Case {
            rule: "no Origin: forwarded, upstream CORS headers still removed, Vary: Origin added",
            policy: BASIC,
            method: "GET",
            path: "/cors-star",
            headers: &[],
            status: 200,
            upstream_called: true,
            cors: &[],
            vary: Some("Accept-Encoding, Origin"),
        },
        Case {
            rule: "same-origin (Origin host equals Host) is forwarded and never rejected",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject",
            method: "POST",
            path: "/",
            headers: &[("origin", "http://api.test")],
            status: 200,
            upstream_called: true,
            cors: &[],
            vary: Some("Accept-Encoding, Origin"),
        },
        Case {
            rule: "DryRun: a request Enforce would reject is forwarded, the upstream's headers untouched",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject\nmode: DryRun",
            method: "GET",
            path: "/cors-star",
            headers: &[("origin", EVIL)],
            status: 200,
            upstream_called: true,
            cors: &[
                ("access-control-allow-origin", "*"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "x-secret"),
            ],
            vary: Some("Accept-Encoding"),
        },
        Case {
            rule: "DryRun: an allowed preflight is forwarded, not answered",
            policy: "allowOrigins: [\"https://app.example.com\"]\nmode: DryRun",
            method: "OPTIONS",
            path: "/",
            headers: &[("origin", APP), ("access-control-request-method", "GET")],
            status: 200,
            upstream_called: true,
            cors: &[],
            vary: Some("Accept-Encoding"),
        },
        Case {
            rule: "Disabled: everything passes through untouched",
            policy: "allowOrigins: [\"https://app.example.com\"]\nmode: Disabled",
            method: "OPTIONS",
            path: "/cors-star",
            headers: &[
                ("origin", EVIL),
                ("access-control-request-method", "DELETE"),
            ],
            status: 200,
            upstream_called: true,
            cors: &[
                ("access-control-allow-origin", "*"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "x-secret"),
            ],
            vary: Some("Accept-Encoding"),
        },
        Case {
            rule: "routes: the longest matching pathPrefix applies",
            policy: "allowOrigins: [\"https://app.example.com\"]\nroutes:\n- pathPrefix: /public\n  allowOrigins: [\"*\"]",
            method: "GET",
            path: "/public/feed",
            headers: &[("origin", EVIL)],
            status: 200,
            upstream_called: true,
            cors: &[("access-control-allow-origin", "*")],
            vary: Some("Accept-Encoding"),
        },
        Case {
            rule: "routes match whole segments: /publicx falls back to the top level",
            policy: "allowOrigins: [\"https://app.example.com\"]\nroutes:\n- pathPrefix: /public\n  allowOrigins: [\"*\"]",
            method: "GET",
            path: "/publicx",
            headers: &[("origin", EVIL)],
            status: 200,
            upstream_called: true,
            cors: &[],
            vary: Some("Accept-Encoding, Origin"),
        },
        Case {
            rule: "routes inherit what they leave out: a route's own mode DryRun",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject\nroutes:\n- pathPrefix: /legacy\n  mode: DryRun",
            method: "GET",
            path: "/legacy/x",
            headers: &[("origin", EVIL)],
            status: 200,
            upstream_called: true,
            cors: &[],
            vary: Some("Accept-Encoding"),
        },
        Case {
            rule: "private network access: allowed when enabled, with its Vary",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowPrivateNetwork: true",
            method: "OPTIONS",
            path: "/",
            headers: &[
                ("origin", APP),
                ("access-control-request-method", "GET"),
                ("access-control-request-private-network", "true"),
            ],
            status: 200,
            upstream_called: false,
            cors: &[
                ("access-control-allow-origin", APP),
                ("access-control-allow-methods", "GET, HEAD, POST"),
                ("access-control-allow-private-network", "true"),
            ],
            vary: Some(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, Access-Control-Request-Private-Network",
            ),
        },
    ]
}

#[tokio::test]
async fn every_rule_on_the_wire() {
    let mut failures = Vec::new();
    for case in cases() {
        let h = harness(case.policy).await;
        let mut req = request(case.method, case.path);
        for (name, value) in case.headers {
            req = req.header(*name, *value);
        }
        let response = send(h.proxy.listen_addr(), req).await;
        let seen = h.upstream.seen();
        let mut problems = Vec::new();
        if response.status().as_u16() != case.status {
            problems.push(format!("status {} != {}", response.status(), case.status));
        }
        if seen.is_empty() == case.upstream_called {
            problems.push(format!(
                "upstream called {} time(s), expected {}",
                seen.len(),
                if case.upstream_called {
                    "once"
                } else {
                    "never"
                }
            ));
        }
        let mut expected: Vec<String> = case.cors.iter().map(|(n, _)| n.to_string()).collect();
        expected.sort();
        let got = cors_names(response.headers());
        if got != expected {
            problems.push(format!("CORS headers {got:?} != {expected:?}"));
        }
        for (name, value) in case.cors {
            let got = values(response.headers(), name);
            if got != [value.to_string()] {
                problems.push(format!("{name}: {got:?} != [{value:?}]"));
            }
        }
        let vary = values(response.headers(), "vary");
        let expected_vary: Vec<String> = case.vary.iter().map(|v| v.to_string()).collect();
        if vary != expected_vary {
            problems.push(format!("vary {vary:?} != {expected_vary:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!("{}:\n    {}", case.rule, problems.join("\n    ")));
        }
        h.proxy.shutdown().await.expect("clean shutdown");
    }
    assert!(
        failures.is_empty(),
        "{} rule(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn forwarded_requests_keep_their_origin_and_host() {
    let h = harness(BASIC).await;
    let response = send(
        h.proxy.listen_addr(),
        request("GET", "/path?q=1").header("origin", EVIL),
    )
    .await;
    assert_eq!(response.status(), 200);
    let seen = h.upstream.last();
    assert_eq!(seen.uri, "/path?q=1");
    assert_eq!(values(&seen.headers, "origin"), [EVIL]);
    assert_eq!(values(&seen.headers, "host"), ["api.test"]);
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// Raw bytes to the proxy, on a connection of their own; all it answers until it closes.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_to_close(&mut stream).await
}

#[tokio::test]
async fn a_request_with_two_hosts_is_refused_and_one_that_names_host_in_connection_keeps_it() {
    let h = harness(BASIC).await;
    let addr = h.proxy.listen_addr();
    // Which of two Hosts the proxy decided on and which the upstream routes on could differ.
    let answer = raw(
        addr,
        b"GET /two HTTP/1.1\r\nHost: api.test\r\nHost: other.test\r\nOrigin: https://api.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(h.upstream.seen().iter().all(|s| s.uri != "/two"));
    // `Connection: host` names Host as hop-by-hop; an HTTP/1.1 request still needs one.
    let answer = raw(
        addr,
        b"GET /named HTTP/1.1\r\nHost: api.test\r\nConnection: host, close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = h.upstream.last();
    assert_eq!(seen.uri, "/named");
    assert_eq!(values(&seen.headers, "host"), ["api.test"]);
    h.proxy.shutdown().await.expect("clean shutdown");
}
