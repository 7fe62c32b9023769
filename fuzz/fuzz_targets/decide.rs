//! The whole decision, with an oracle. A policy (top level and up to three routes) and a batch of
//! requests are built from the input, mostly from small vocabularies of the values that matter
//! (origins that differ from allowed ones by one character, `*`, `null`, `Authorization`), with
//! arbitrary text mixed in. For every compiled policy and request:
//! - an allowed origin in `Access-Control-Allow-Origin` is the request's own origin and one the
//!   policy lists (exact, wildcard, regex or `null`), checked by a reference matcher written here;
//! - `*` is answered only when the rules list `*` and credentials are off;
//! - `Access-Control-Allow-Credentials` never goes with `*`, nor with rules that did not enable it;
//! - an allowed preflight that asks for `Authorization` had it listed by name (`*` never covers it);
//! - every header is a valid `http::HeaderName` and `http::HeaderValue`.
#![no_main]

use corsair_policy::{
    Action, AllowOrigin, CorsPolicySpec, Decision, DisallowedRequests, Engine, Mode, RequestInfo,
    RequestKind, ResponseHeaders, RouteSpec, UnmatchedPreflights, Verdict,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const ORIGINS: &[&str] = &[
    "*",
    "https://app.example.com",
    "https://*.example.com",
    "https://*.example.com:8443",
    "http://app.example.com",
    "http://localhost:3000",
    "https://[::1]:8443",
    "https://a.b.example.org",
    "null",
    "https://app.example.com/",
];
const REQUEST_ORIGINS: &[&str] = &[
    "https://app.example.com",
    "https://x.example.com",
    "https://x.y.example.com",
    "https://x.example.com:8443",
    "https://example.com",
    "https://app.example.com.evil.test",
    "https://evilapp.example.com",
    "https://evilexample.com",
    "https://APP.example.com",
    "https://app.example.com:443",
    "https://app.example.com/",
    "http://app.example.com",
    "http://localhost:3000",
    "https://[::1]:8443",
    "https://a.b.example.org",
    "https://aXb.example.org",
    "https://pr-12.example.com",
    "null",
    "",
    "https://app.example.com%60.evil.test",
    "https://app.example.com_.evil.test",
];
const REGEXES: &[&str] = &[
    r"https://pr-[0-9]+\.example\.com",
    r"https://a.b.example.org",
    r"https://.*\.example\.com",
    r"https://app\.example\.com)|(.*",
    "(",
];
const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "*", "get", "PATCH", "X Y", "",
];
const HEADERS: &[&str] = &[
    "*",
    "Authorization",
    "authorization",
    "X-Token",
    "Content-Type",
    "x-token",
    "Bad:Header",
    "",
];
const PREFIXES: &[&str] = &["/", "/api", "/api/", "/api/v1", "/static", "api"];
const PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/x",
    "/apix",
    "/api/v1/y",
    "/static/a.js",
    "",
    "/%61pi/x",
    "/api;v=1/x",
    "/static/../api/x",
];

/// A value from a vocabulary, or arbitrary text.
#[derive(Debug, Arbitrary)]
enum Str {
    Pick(u8),
    Raw(String),
}

impl Str {
    fn get(&self, vocab: &[&str]) -> String {
        match self {
            Str::Pick(i) => vocab[usize::from(*i) % vocab.len()].to_owned(),
            Str::Raw(s) => s.clone(),
        }
    }
}

fn list(items: &Option<Vec<Str>>, vocab: &[&str]) -> Option<Vec<String>> {
    items
        .as_ref()
        .map(|v| v.iter().take(6).map(|s| s.get(vocab)).collect())
}

#[derive(Debug, Arbitrary)]
struct RulesIn {
    origins: Option<Vec<Str>>,
    regexes: Option<Vec<Str>>,
    null_origin: Option<bool>,
    methods: Option<Vec<Str>>,
    headers: Option<Vec<Str>>,
    expose: Option<Vec<Str>>,
    credentials: Option<bool>,
    max_age: Option<u32>,
    private_network: Option<bool>,
    status_204: Option<bool>,
    forward_unmatched: Option<bool>,
    reject_disallowed: Option<bool>,
    mode: Option<u8>,
}

#[derive(Debug, Arbitrary)]
struct ReqIn {
    preflight: bool,
    method: Str,
    path: Str,
    same_host: bool,
    origin: Option<Str>,
    request_method: Option<Str>,
    request_headers: Vec<Str>,
    private_network: bool,
}

#[derive(Debug, Arbitrary)]
struct Input {
    top: RulesIn,
    routes: Vec<(Str, RulesIn)>,
    requests: Vec<ReqIn>,
}

macro_rules! fill {
    ($target:expr, $r:expr) => {{
        let r = $r;
        $target.allow_origins = list(&r.origins, ORIGINS);
        $target.allow_origin_regexes = list(&r.regexes, REGEXES);
        $target.allow_null_origin = r.null_origin;
        $target.allow_methods = list(&r.methods, METHODS);
        $target.allow_headers = list(&r.headers, HEADERS);
        $target.expose_headers = list(&r.expose, HEADERS);
        $target.allow_credentials = r.credentials;
        $target.max_age = r.max_age;
        $target.allow_private_network = r.private_network;
        $target.preflight_status = r.status_204.map(|b| if b { 204 } else { 200 });
        $target.unmatched_preflights = r.forward_unmatched.map(|f| {
            if f {
                UnmatchedPreflights::Forward
            } else {
                UnmatchedPreflights::Reject
            }
        });
        $target.disallowed_requests = r.reject_disallowed.map(|f| {
            if f {
                DisallowedRequests::Reject
            } else {
                DisallowedRequests::Forward
            }
        });
        $target.mode = r.mode.map(|m| match m % 3 {
            0 => Mode::Enforce,
            1 => Mode::DryRun,
            _ => Mode::Disabled,
        });
    }};
}

/// The rules in force for a route (or the top level), inheritance applied.
struct Effective<'s> {
    origins: &'s [String],
    regexes: Vec<regex::Regex>,
    null: bool,
    headers: &'s [String],
    credentials: bool,
}

fn effective<'s>(spec: &'s CorsPolicySpec, route: Option<&'s RouteSpec>) -> Effective<'s> {
    macro_rules! pick {
        ($f:ident) => {
            route.and_then(|r| r.$f.as_ref()).or(spec.$f.as_ref())
        };
    }
    let regexes = pick!(allow_origin_regexes)
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| match regex::Regex::new(&format!("^(?:{r})$")) {
            Ok(re) => re,
            Err(e) => panic!("the engine compiled a regex the reference cannot: {r:?}: {e}"),
        })
        .collect();
    Effective {
        origins: pick!(allow_origins)
            .map(|v| v.as_slice())
            .unwrap_or_default(),
        regexes,
        null: pick!(allow_null_origin).copied().unwrap_or(false),
        headers: pick!(allow_headers)
            .map(|v| v.as_slice())
            .unwrap_or_default(),
        credentials: pick!(allow_credentials).copied().unwrap_or(false),
    }
}

/// Whether `origin` is listed by `entry` of `allowOrigins` (`*` aside).
fn entry_allows(entry: &str, origin: &str) -> bool {
    if entry == origin {
        return true;
    }
    let Some((scheme, rest)) = entry.split_once("://*.") else {
        return false;
    };
    let (suffix, port) = match rest.rsplit_once(':') {
        Some((suffix, port)) => (suffix, Some(port)),
        None => (rest, None),
    };
    let Some(authority) = origin
        .strip_prefix(scheme)
        .and_then(|o| o.strip_prefix("://"))
    else {
        return false;
    };
    let host = match port {
        Some(port) => match authority.rsplit_once(':') {
            Some((host, p)) if p == port => host,
            _ => return false,
        },
        None if authority.contains(':') => return false,
        None => authority,
    };
    host.strip_suffix(suffix)
        .and_then(|h| h.strip_suffix('.'))
        .is_some_and(|labels| {
            !labels.is_empty()
                && labels.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        })
}

fn reference_allows(rules: &Effective<'_>, origin: &str) -> bool {
    if origin == "null" {
        return rules.null;
    }
    rules
        .origins
        .iter()
        .any(|e| e != "*" && entry_allows(e, origin))
        || rules.regexes.iter().any(|re| re.is_match(origin))
}

fn check_headers(headers: &ResponseHeaders<'_>, context: &dyn std::fmt::Debug) {
    headers.for_each(|name, value| {
        let value = value.to_string();
        assert!(
            http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
            "invalid header name {name:?}: {context:?}"
        );
        assert!(
            http::HeaderValue::from_str(&value).is_ok(),
            "invalid value of {name}: {value:?}: {context:?}"
        );
    });
}

fn headers_of<'h, 'a>(action: &'h Action<'a>) -> &'h ResponseHeaders<'a> {
    match action {
        Action::Respond { headers, .. } | Action::Forward { headers, .. } => headers,
    }
}

fn check(spec: &CorsPolicySpec, req: &RequestInfo<'_>, decision: &Decision<'_>) {
    let route =
        decision.route.map(
            |prefix| match spec.routes.iter().find(|r| r.path_prefix == prefix) {
                Some(route) => route,
                None => panic!("decision names route {prefix:?}, which the policy does not have"),
            },
        );
    if let Some(prefix) = decision.route {
        // Routes are chosen by the path as an application's router reads it.
        let path = corsair_policy::route_path(req.path);
        let p = prefix.trim_end_matches('/');
        let whole = path == p || path.starts_with(&format!("{p}/")) || p.is_empty();
        assert!(whole, "route {prefix:?} chosen for path {:?} ({path:?})", req.path);
    }
    let rules = effective(spec, route);
    let context = (req, decision);
    check_headers(headers_of(&decision.enforced), &context);
    check_headers(headers_of(&decision.action()), &context);
    let headers = headers_of(&decision.enforced);

    if let Some(acao) = headers.allow_origin {
        assert!(
            matches!(decision.verdict, Verdict::Allowed(_)),
            "allow-origin on a refusal: {context:?}"
        );
        match acao {
            AllowOrigin::Any => {
                assert!(
                    rules.origins.iter().any(|o| o == "*"),
                    "`*` answered without `*` listed: {context:?}"
                );
                assert!(
                    !headers.allow_credentials,
                    "`*` with credentials: {context:?}"
                );
            }
            AllowOrigin::Echo(origin) => {
                assert_eq!(
                    Some(origin),
                    req.origin,
                    "echoed another origin: {context:?}"
                );
                assert!(
                    reference_allows(&rules, origin),
                    "allowed an origin the policy does not list: {context:?}"
                );
            }
        }
    }
    if headers.allow_credentials {
        assert!(rules.credentials, "credentials not enabled: {context:?}");
        assert!(
            matches!(headers.allow_origin, Some(AllowOrigin::Echo(_))),
            "credentials without an echoed origin: {context:?}"
        );
    }
    if decision.kind == RequestKind::Preflight && matches!(decision.verdict, Verdict::Allowed(_)) {
        let asks_authorization = req
            .request_headers
            .iter()
            .flat_map(|line| line.split(','))
            .any(|h| {
                h.trim_matches([' ', '\t'])
                    .eq_ignore_ascii_case("authorization")
            });
        if asks_authorization {
            assert!(
                rules
                    .headers
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case("authorization")),
                "`*` covered Authorization: {context:?}"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let mut spec = CorsPolicySpec::default();
    fill!(spec, &input.top);
    for (prefix, rules) in input.routes.iter().take(3) {
        let mut route = RouteSpec {
            path_prefix: prefix.get(PREFIXES),
            ..RouteSpec::default()
        };
        fill!(route, rules);
        spec.routes.push(route);
    }
    let Ok((engine, _)) = Engine::compile(&spec) else {
        return;
    };
    for r in input.requests.iter().take(8) {
        let origin = r.origin.as_ref().map(|o| o.get(REQUEST_ORIGINS));
        let request_method = r.request_method.as_ref().map(|m| m.get(METHODS));
        let lines: Vec<String> = r
            .request_headers
            .iter()
            .take(4)
            .map(|h| h.get(HEADERS))
            .collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let method = if r.preflight {
            "OPTIONS".to_owned()
        } else {
            r.method.get(METHODS)
        };
        let path = r.path.get(PATHS);
        let host = if r.same_host {
            "app.example.com"
        } else {
            "api.example.com"
        };
        let req = RequestInfo {
            method: &method,
            path: &path,
            host: Some(host),
            origin: origin.as_deref(),
            request_method: request_method.as_deref(),
            request_headers: &lines,
            request_private_network: r.private_network,
        };
        let decision = engine.decide(&req);
        check(&spec, &req, &decision);
    }
});
