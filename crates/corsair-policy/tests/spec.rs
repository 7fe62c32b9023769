//! The decision rules of issue 2, one table row per rule. Each row names the rule, the policy,
//! the request, and the exact outcome: proxy answer or forward, and every header the proxy sets.

mod support;

use corsair_policy::{AllowReason, DenyReason, RequestKind, Verdict};
use support::{Out, Outcome, Req, engine, get, headers, preflight, run, with_decision};

const VARY_PREFLIGHT: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

const BASIC: &str = "\
allowOrigins: [\"https://app.example.com\", \"https://*.example.org\"]
allowMethods: [GET, PUT, DELETE]
allowHeaders: [X-Custom, Content-Type]
";

struct Row {
    rule: &'static str,
    policy: &'static str,
    req: Req,
    out: Out,
    headers: &'static [(&'static str, &'static str)],
}

const FWD: Out = Out::Forward { strip: true };

fn rows() -> Vec<Row> {
    vec![
        Row {
            rule: "a request without Origin is not CORS: forwarded, upstream CORS stripped, Vary: Origin",
            policy: BASIC,
            req: get("x").no_origin(),
            out: FWD,
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "without Origin, under `*` too, Vary: Origin: an allowed cross-origin request gets `Access-Control-Allow-Origin: *` and this one none, so a cache must not hand this answer to it",
            policy: "allowOrigins: [\"*\"]",
            req: get("x").no_origin(),
            out: FWD,
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "same-origin (Origin host equals Host) is forwarded as it is, never rejected",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject",
            req: get("https://api.test"),
            out: FWD,
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "same-origin compares the host case-insensitively",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject",
            req: get("https://api.test").host("API.Test"),
            out: FWD,
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "same-origin treats the scheme's default port as no port",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject",
            req: get("http://api.test:80"),
            out: FWD,
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "same-origin: an explicit default port in Host equals no port in Origin",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject",
            req: get("https://api.test").host("api.test:443"),
            out: FWD,
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "another port is another origin",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject",
            req: get("https://api.test:8443"),
            out: Out::Respond(403),
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "a same-origin preflight is forwarded, not answered",
            policy: BASIC,
            req: preflight("https://api.test", "PATCH", &[]),
            out: FWD,
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "an allowed preflight is answered: origin echoed, configured lists, preflight Vary, status 200",
            policy: BASIC,
            req: preflight("https://app.example.com", "PUT", &["x-custom"]),
            out: Out::Respond(200),
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-methods", "GET, PUT, DELETE"),
                ("access-control-allow-headers", "X-Custom, Content-Type"),
                ("vary", VARY_PREFLIGHT),
            ],
        },
        Row {
            rule: "preflightStatus: 204 answers allowed preflights with 204",
            policy: "allowOrigins: [\"https://app.example.com\"]\npreflightStatus: 204",
            req: preflight("https://app.example.com", "GET", &[]),
            out: Out::Respond(204),
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-methods", "GET, HEAD, POST"),
                ("vary", VARY_PREFLIGHT),
            ],
        },
        Row {
            rule: "allowMethods left out allows the CORS-safelisted methods only",
            policy: "allowOrigins: [\"https://app.example.com\"]",
            req: preflight("https://app.example.com", "PUT", &[]),
            out: Out::Respond(403),
            headers: &[("vary", VARY_PREFLIGHT)],
        },
        Row {
            rule: "GET, HEAD and POST pass a preflight whatever allowMethods lists, as browsers pass them after any successful preflight (a JSON POST, as the same page's form POST)",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowMethods: [PUT, DELETE]\nallowHeaders: [Content-Type]",
            req: preflight("https://app.example.com", "POST", &["content-type"]),
            out: Out::Respond(200),
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-methods", "PUT, DELETE"),
                ("access-control-allow-headers", "Content-Type"),
                ("vary", VARY_PREFLIGHT),
            ],
        },
        Row {
            rule: "an empty allowMethods still passes a GET preflight (a custom header), and refuses the others",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowMethods: []\nallowHeaders: [X-Token]",
            req: preflight("https://app.example.com", "GET", &["x-token"]),
            out: Out::Respond(200),
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-headers", "X-Token"),
                ("vary", VARY_PREFLIGHT),
            ],
        },
        Row {
            rule: "a method browsers do not normalise keeps its case: `patch` is not PATCH",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowMethods: [PATCH]",
            req: preflight("https://app.example.com", "patch", &[]),
            out: Out::Respond(403),
            headers: &[("vary", VARY_PREFLIGHT)],
        },
        Row {
            rule: "an OPTIONS without Access-Control-Request-Method is an ordinary request",
            policy: BASIC,
            req: get("https://app.example.com").method("OPTIONS"),
            out: FWD,
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("vary", "Origin"),
            ],
        },
        Row {
            rule: "`*` without credentials answers `*` for origin, methods and headers",
            policy: "allowOrigins: [\"*\"]\nallowMethods: [\"*\"]\nallowHeaders: [\"*\"]",
            req: preflight("https://anything.test", "PATCH", &["x-a, x-b"]),
            out: Out::Respond(200),
            headers: &[
                ("access-control-allow-origin", "*"),
                ("access-control-allow-methods", "*"),
                ("access-control-allow-headers", "*"),
                ("vary", VARY_PREFLIGHT),
            ],
        },
        Row {
            rule: "`*` methods and headers with credentials echo what was requested (all header lines)",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowMethods: [\"*\"]\nallowHeaders: [\"*\"]\nallowCredentials: true",
            req: preflight("https://app.example.com", "PATCH", &["x-a,x-b", "x-c"]),
            out: Out::Respond(200),
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "PATCH"),
                ("access-control-allow-headers", "x-a,x-b, x-c"),
                ("vary", VARY_PREFLIGHT),
            ],
        },
        Row {
            rule: "methods are matched case-sensitively",
            policy: BASIC,
            req: preflight("https://app.example.com", "put", &[]),
            out: Out::Respond(403),
            headers: &[("vary", VARY_PREFLIGHT)],
        },
        Row {
            rule: "header names are matched case-insensitively; several lines, OWS and empty elements are fine",
            policy: BASIC,
            req: preflight(
                "https://app.example.com",
                "GET",
                &[" X-CUSTOM ,, ", "\tcontent-type"],
            ),
            out: Out::Respond(200),
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-methods", "GET, PUT, DELETE"),
                ("access-control-allow-headers", "X-Custom, Content-Type"),
                ("vary", VARY_PREFLIGHT),
            ],
        },
        Row {
            rule: "a header that is not listed rejects the preflight with 403, no CORS headers, preflight Vary",
            policy: BASIC,
            req: preflight("https://app.example.com", "GET", &["x-custom, x-other"]),
            out: Out::Respond(403),
            headers: &[("vary", VARY_PREFLIGHT)],
        },
        Row {
            rule: "`*` in allowHeaders never covers Authorization",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowHeaders: [\"*\"]",
            req: preflight("https://app.example.com", "GET", &["x-a, Authorization"]),
            out: Out::Respond(403),
            headers: &[("vary", VARY_PREFLIGHT)],
        },
        Row {
            rule: "Authorization listed by name beside `*` is allowed, and the answer names it",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowHeaders: [\"*\", Authorization]",
            req: preflight("https://app.example.com", "GET", &["x-a, authorization"]),
            out: Out::Respond(200),
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-methods", "GET, HEAD, POST"),
                ("access-control-allow-headers", "*, Authorization"),
                ("vary", VARY_PREFLIGHT),
            ],
        },
        Row {
            rule: "a preflight from an origin that is not allowed is rejected by default",
            policy: BASIC,
            req: preflight("https://evil.test", "GET", &[]),
            out: Out::Respond(403),
            headers: &[("vary", VARY_PREFLIGHT)],
        },
        Row {
            rule: "unmatchedPreflights: Forward passes a preflight from an origin the policy does not allow to the upstream untouched",
            policy: "allowOrigins: [\"https://app.example.com\"]\nunmatchedPreflights: Forward",
            req: preflight("https://evil.test", "GET", &[]),
            out: Out::Forward { strip: false },
            headers: &[],
        },
        Row {
            rule: "unmatchedPreflights: Forward still refuses an allowed origin a method the policy does not allow: the upstream never grants it",
            policy: "allowOrigins: [\"https://app.example.com\"]\nunmatchedPreflights: Forward",
            req: preflight("https://app.example.com", "DELETE", &[]),
            out: Out::Respond(403),
            headers: &[("vary", VARY_PREFLIGHT)],
        },
        Row {
            rule: "unmatchedPreflights: Forward still refuses an allowed origin a header the policy does not allow",
            policy: "allowOrigins: [\"https://app.example.com\"]\nunmatchedPreflights: Forward",
            req: preflight("https://app.example.com", "GET", &["x-secret"]),
            out: Out::Respond(403),
            headers: &[("vary", VARY_PREFLIGHT)],
        },
        Row {
            rule: "credentials, maxAge and exposeHeaders on an allowed preflight",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowCredentials: true\nmaxAge: 600\nexposeHeaders: [X-Total, X-Page]",
            req: preflight("https://app.example.com", "POST", &[]),
            out: Out::Respond(200),
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET, HEAD, POST"),
                ("access-control-expose-headers", "X-Total, X-Page"),
                ("access-control-max-age", "600"),
                ("vary", VARY_PREFLIGHT),
            ],
        },
        Row {
            rule: "an allowed actual request is forwarded with origin, credentials and exposed headers",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowCredentials: true\nmaxAge: 600\nexposeHeaders: [X-Total]",
            req: get("https://app.example.com"),
            out: FWD,
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "X-Total"),
                ("vary", "Origin"),
            ],
        },
        Row {
            rule: "an actual request with `*` and no credentials gets `*` and no Vary",
            policy: "allowOrigins: [\"*\"]",
            req: get("https://anything.test"),
            out: FWD,
            headers: &[("access-control-allow-origin", "*")],
        },
        Row {
            rule: "a disallowed actual request is forwarded without CORS headers by default",
            policy: BASIC,
            req: get("https://evil.test"),
            out: FWD,
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "disallowedRequests: Reject answers 403 with Vary and no CORS headers",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject",
            req: get("https://evil.test"),
            out: Out::Respond(403),
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "allowNullOrigin: true answers Origin: null with null",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowNullOrigin: true",
            req: get("null"),
            out: FWD,
            headers: &[("access-control-allow-origin", "null"), ("vary", "Origin")],
        },
        Row {
            rule: "Origin: null is not allowed by `*` alone, and its refusal varies on Origin",
            policy: "allowOrigins: [\"*\"]\ndisallowedRequests: Reject",
            req: get("null"),
            out: Out::Respond(403),
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "an Origin that appeared twice (passed as empty) is never allowed",
            policy: "allowOrigins: [\"*\"]\ndisallowedRequests: Reject",
            req: get(""),
            out: Out::Respond(403),
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "an Origin with a path is malformed and never allowed",
            policy: "allowOrigins: [\"https://app.example.com\"]\ndisallowedRequests: Reject",
            req: get("https://app.example.com/"),
            out: Out::Respond(403),
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "Access-Control-Request-Private-Network is answered when allowPrivateNetwork is on",
            policy: "allowOrigins: [\"https://app.example.com\"]\nallowPrivateNetwork: true",
            req: preflight("https://app.example.com", "GET", &[]).private_network(),
            out: Out::Respond(200),
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-methods", "GET, HEAD, POST"),
                ("access-control-allow-private-network", "true"),
                (
                    "vary",
                    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, Access-Control-Request-Private-Network",
                ),
            ],
        },
        Row {
            rule: "a private-network preflight is refused when allowPrivateNetwork is off",
            policy: "allowOrigins: [\"https://app.example.com\"]",
            req: preflight("https://app.example.com", "GET", &[]).private_network(),
            out: Out::Respond(403),
            headers: &[("vary", VARY_PREFLIGHT)],
        },
        Row {
            rule: "regexes are matched against the whole origin",
            policy: "allowOriginRegexes: ['https://[a-z]+\\.example\\.com']\ndisallowedRequests: Reject",
            req: get("https://app.example.com.evil.test"),
            out: Out::Respond(403),
            headers: &[("vary", "Origin")],
        },
        Row {
            rule: "a regex allows what it matches whole",
            policy: "allowOriginRegexes: ['https://[a-z]+\\.example\\.com']",
            req: get("https://app.example.com"),
            out: FWD,
            headers: &[
                ("access-control-allow-origin", "https://app.example.com"),
                ("vary", "Origin"),
            ],
        },
    ]
}

#[test]
fn every_rule_of_the_issue() {
    let mut failures = Vec::new();
    for row in rows() {
        let engine = engine(row.policy);
        let got = run(&engine, &row.req);
        let want = Outcome {
            out: row.out.clone(),
            headers: headers(row.headers),
        };
        if got != want {
            failures.push(format!("{}\n  want {want:?}\n  got  {got:?}", row.rule));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rule(s) broken:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `https://*.example.com` stands for one or more whole labels of that scheme and port, nothing else.
#[test]
fn wildcards_match_whole_labels_of_the_same_scheme_and_port() {
    let engine = engine(
        "allowOrigins: [\"https://*.example.com\", \"https://*.example.net:8443\"]\ndisallowedRequests: Reject",
    );
    let table = [
        ("https://a.example.com", true),
        ("https://a.b.example.com", true),
        ("https://example.com", false),
        ("https://evilexample.com", false),
        ("https://a.example.com.evil.net", false),
        ("http://a.example.com", false),
        ("https://a.example.com:8443", false),
        ("https://a.example.net:8443", true),
        ("https://a.example.net", false),
        ("https://.example.com", false),
        ("https://a..example.com", false),
    ];
    for (origin, allowed) in table {
        let (wildcard, verdict) = with_decision(&engine, &get(origin), |d| {
            (
                matches!(d.verdict, Verdict::Allowed(AllowReason::Wildcard(_))),
                format!("{:?}", d.verdict),
            )
        });
        assert_eq!(wildcard, allowed, "{origin}: {verdict}");
    }
}

/// The longest `pathPrefix` wins, on whole segments; a route inherits what it leaves out.
#[test]
fn routes_pick_the_longest_whole_segment_prefix_and_inherit() {
    let engine = engine(
        "\
allowOrigins: [\"https://top.test\"]
allowMethods: [GET, PUT]
maxAge: 60
routes:
- pathPrefix: /api
  allowOrigins: [\"https://api.test.example\"]
- pathPrefix: /api/admin/
  allowOrigins: [\"https://admin.test.example\"]
  maxAge: 5
",
    );
    let cases = [
        ("/", "https://top.test", None, true),
        ("/apix", "https://top.test", None, true),
        ("/apix", "https://api.test.example", None, false),
        ("/api", "https://api.test.example", Some("/api"), true),
        ("/api/x", "https://api.test.example", Some("/api"), true),
        ("/api/x", "https://top.test", Some("/api"), false),
        (
            "/api/admin",
            "https://admin.test.example",
            Some("/api/admin/"),
            true,
        ),
        (
            "/api/admin/users",
            "https://admin.test.example",
            Some("/api/admin/"),
            true,
        ),
        (
            "/api/administrator",
            "https://api.test.example",
            Some("/api"),
            true,
        ),
    ];
    for (path, origin, route, allowed) in cases {
        let req = preflight(origin, "PUT", &[]).path(path);
        let (got_route, ok, verdict) = with_decision(&engine, &req, |d| {
            (
                d.route.map(str::to_owned),
                matches!(d.verdict, Verdict::Allowed(_)),
                format!("{:?}", d.verdict),
            )
        });
        assert_eq!(got_route.as_deref(), route, "{path}");
        assert_eq!(ok, allowed, "{path} {origin}: {verdict}");
    }
    // Inherited allowMethods (PUT) and the route's own maxAge.
    let out = run(
        &engine,
        &preflight("https://admin.test.example", "PUT", &[]).path("/api/admin/x"),
    );
    assert_eq!(
        support::header(&out, "access-control-allow-methods"),
        Some("GET, PUT")
    );
    assert_eq!(support::header(&out, "access-control-max-age"), Some("5"));
    let out = run(
        &engine,
        &preflight("https://api.test.example", "PUT", &[]).path("/api"),
    );
    assert_eq!(support::header(&out, "access-control-max-age"), Some("60"));
}

/// DryRun decides like Enforce but forwards untouched; Disabled passes through; a route inherits mode.
#[test]
fn dry_run_and_off_forward_untouched_but_record_the_decision() {
    let engine = engine(
        "\
allowOrigins: [\"https://app.example.com\"]
mode: DryRun
routes:
- pathPrefix: /off
  mode: Disabled
- pathPrefix: /enforced
  mode: Enforce
- pathPrefix: /inherits
",
    );
    let untouched = Outcome {
        out: Out::Forward { strip: false },
        headers: vec![],
    };
    for path in ["/", "/off", "/inherits"] {
        let req = preflight("https://evil.test", "GET", &[]).path(path);
        let (now, would) = with_decision(&engine, &req, |d| {
            (support::outcome(d.action()), support::outcome(d.enforced))
        });
        assert_eq!(now, untouched, "{path}");
        assert_eq!(
            would.out,
            Out::Respond(403),
            "{path}: enforced is what Enforce would do"
        );
    }
    let req = preflight("https://evil.test", "GET", &[]).path("/enforced");
    assert_eq!(run(&engine, &req).out, Out::Respond(403));
}

/// The verdict names the entry or the reason, for `corsair explain` and metrics.
#[test]
fn verdicts_name_the_rule() {
    let engine = engine(
        "\
allowOrigins: [\"https://app.example.com\", \"https://*.example.org\"]
allowOriginRegexes: ['https://pr-[0-9]+\\.preview\\.test']
allowHeaders: [\"*\"]
allowMethods: [GET]
",
    );
    let cases: Vec<(Req, RequestKind, Verdict<'static>)> = vec![
        (
            get("x").no_origin(),
            RequestKind::NotCors,
            Verdict::NotApplicable,
        ),
        (
            get("https://api.test"),
            RequestKind::SameOrigin,
            Verdict::NotApplicable,
        ),
        (
            get("https://app.example.com"),
            RequestKind::Actual,
            Verdict::Allowed(AllowReason::Exact("https://app.example.com")),
        ),
        (
            get("https://x.example.org"),
            RequestKind::Actual,
            Verdict::Allowed(AllowReason::Wildcard("https://*.example.org")),
        ),
        (
            get("https://pr-12.preview.test"),
            RequestKind::Actual,
            Verdict::Allowed(AllowReason::Regex("https://pr-[0-9]+\\.preview\\.test")),
        ),
        (
            get("https://evil.test"),
            RequestKind::Actual,
            Verdict::Denied(DenyReason::OriginNotAllowed),
        ),
        (
            get("not an origin"),
            RequestKind::Actual,
            Verdict::Denied(DenyReason::MalformedOrigin),
        ),
        (
            preflight("https://app.example.com", "DELETE", &[]),
            RequestKind::Preflight,
            Verdict::Denied(DenyReason::MethodNotAllowed("DELETE")),
        ),
        (
            preflight("https://app.example.com", "GET", &["authorization"]),
            RequestKind::Preflight,
            Verdict::Denied(DenyReason::AuthorizationNotCoveredByWildcard),
        ),
        (
            preflight("https://app.example.com", "GET", &["bad header"]),
            RequestKind::Preflight,
            Verdict::Denied(DenyReason::HeaderNotAllowed("bad header")),
        ),
        (
            preflight("https://app.example.com", "GET", &[]).private_network(),
            RequestKind::Preflight,
            Verdict::Denied(DenyReason::PrivateNetworkNotAllowed),
        ),
    ];
    for (req, kind, verdict) in cases {
        let got = with_decision(&engine, &req, |d| (d.kind, format!("{:?}", d.verdict)));
        assert_eq!(got, (kind, format!("{verdict:?}")), "{req:?}");
    }
}

/// The CORS `Vary` names merge into the upstream's `Vary`: one line, no duplicates (any case),
/// `*` absorbing everything, and no change when nothing is new.
#[test]
fn vary_merges_into_a_single_line() {
    use corsair_policy::{Vary, merge_vary};
    let origin = Vary {
        origin: true,
        ..Vary::default()
    };
    let preflight = Vary {
        origin: true,
        request_method: true,
        request_headers: true,
        request_private_network: false,
    };
    let table: [(&[&str], Vary, Option<&str>); 9] = [
        (&[], origin, Some("Origin")),
        (
            &["Accept-Encoding"],
            origin,
            Some("Accept-Encoding, Origin"),
        ),
        (&["accept-encoding, origin"], origin, None),
        (&["Accept", "Origin"], origin, Some("Accept, Origin")),
        (&["Accept,  ,Accept"], Vary::default(), Some("Accept")),
        (&["*"], preflight, None),
        (&["Accept, *"], origin, Some("*")),
        (&[], Vary::default(), None),
        (
            &["Cookie"],
            preflight,
            Some("Cookie, Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ),
    ];
    for (existing, add, want) in table {
        assert_eq!(
            merge_vary(existing.iter().copied(), add).as_deref(),
            want,
            "{existing:?} + {add:?}"
        );
    }
}
