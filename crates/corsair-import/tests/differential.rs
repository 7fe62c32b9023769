//! Differential test: each source's documented behaviour, written here as a small model that
//! answers requests the way the source did, against the produced policy's engine decisions. A
//! browser model (the Fetch standard's CORS checks) reads both answers for the same origins,
//! methods, request headers and credentials modes; the outcomes must agree, except where the
//! policy is less open and a finding of the conversion names that kind of difference.
//!
//! The source models are written from the sources' documentation and code (ingress-nginx's
//! annotation parser and template, Envoy's CORS filter, the Gateway API `HTTPCORSFilter` docs,
//! Traefik's headers middleware, ESP's nginx template and ESPv2's flags), not from the converter.

use corsair_import::{Converted, import};
use corsair_policy::{Action, Engine, RequestInfo};
use regex::Regex;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Requests and answers

#[derive(Debug, Clone, Copy)]
enum Exchange<'a> {
    Preflight {
        origin: &'a str,
        method: &'a str,
        headers: &'a [&'a str],
        path: &'a str,
    },
    Actual {
        origin: &'a str,
        method: &'a str,
        path: &'a str,
    },
}

impl Exchange<'_> {
    fn origin(&self) -> &str {
        match self {
            Exchange::Preflight { origin, .. } | Exchange::Actual { origin, .. } => origin,
        }
    }
    fn path(&self) -> &str {
        match self {
            Exchange::Preflight { path, .. } | Exchange::Actual { path, .. } => path,
        }
    }
}

/// A response as the browser sees it; header names lowercase.
#[derive(Debug, Default, Clone)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Resp {
    fn ok() -> Resp {
        Resp {
            status: 200,
            headers: Vec::new(),
        }
    }
    fn with(mut self, name: &str, value: impl Into<String>) -> Resp {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

type Model = Box<dyn Fn(&Exchange<'_>) -> Resp>;
/// Whether an origin matches one configured entry.
type Matcher = Box<dyn Fn(&str) -> bool>;

// ---------------------------------------------------------------------------------------------
// The browser (Fetch: CORS check, CORS-preflight fetch, exposed headers, Chromium's cache cap)

const SAFELISTED: [&str; 3] = ["GET", "HEAD", "POST"];
const RESPONSE_HEADERS: [&str; 4] = ["x-request-id", "x-review-id", "x-header-3", "x-other"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The browser reports a CORS error (the page cannot tell why).
    Blocked,
    Read {
        exposed: Vec<&'static str>,
        /// Seconds Chromium caches the preflight; `None` when there was none.
        cache: Option<u64>,
    },
}

/// A list header as Chromium and Firefox read it: split at commas, trimmed, empty items
/// skipped; `None` (the whole list refused) when an item is not a token.
fn list(value: Option<&str>) -> Option<Vec<String>> {
    value
        .unwrap_or_default()
        .split(',')
        .map(|item| item.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty())
        .map(|s| corsair_policy::is_token(s).then(|| s.to_owned()))
        .collect()
}

fn cors_check(r: &Resp, origin: &str, credentials: bool) -> bool {
    match r.get("access-control-allow-origin") {
        None => false,
        Some("*") if !credentials => true,
        Some(v) if v != origin => false,
        Some(_) => !credentials || r.get("access-control-allow-credentials") == Some("true"),
    }
}

fn browser(model: &dyn Fn(&Exchange<'_>) -> Resp, c: &Case) -> Outcome {
    let needs_preflight = !SAFELISTED.contains(&c.method) || !c.headers.is_empty();
    let mut cache = None;
    if needs_preflight {
        let r = model(&Exchange::Preflight {
            origin: c.origin,
            method: c.method,
            headers: &c.headers,
            path: c.path,
        });
        if !(200..300).contains(&r.status) || !cors_check(&r, c.origin, c.credentials) {
            return Outcome::Blocked;
        }
        // A list that does not parse fails the preflight.
        let (Some(methods), Some(names)) = (
            list(r.get("access-control-allow-methods")),
            list(r.get("access-control-allow-headers")),
        ) else {
            return Outcome::Blocked;
        };
        let star_m = methods.iter().any(|m| m == "*") && !c.credentials;
        if !(methods.iter().any(|m| m == c.method) || SAFELISTED.contains(&c.method) || star_m) {
            return Outcome::Blocked;
        }
        let star_h = names.iter().any(|h| h == "*") && !c.credentials;
        for h in &c.headers {
            let listed = names.iter().any(|n| n.eq_ignore_ascii_case(h));
            let ok = listed || (star_h && !h.eq_ignore_ascii_case("authorization"));
            if !ok {
                return Outcome::Blocked;
            }
        }
        let age = r
            .get("access-control-max-age")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(5);
        cache = Some(age.min(7200));
    }
    let r = model(&Exchange::Actual {
        origin: c.origin,
        method: c.method,
        path: c.path,
    });
    if !cors_check(&r, c.origin, c.credentials) {
        return Outcome::Blocked;
    }
    // A list that does not parse exposes nothing.
    let expose = list(r.get("access-control-expose-headers")).unwrap_or_default();
    let star = expose.iter().any(|e| e == "*") && !c.credentials;
    let exposed = RESPONSE_HEADERS
        .iter()
        .copied()
        .filter(|h| star || expose.iter().any(|e| e.eq_ignore_ascii_case(h)))
        .collect();
    Outcome::Read { exposed, cache }
}

/// Less open: blocked where the source was read, or fewer headers exposed.
fn less_open(policy: &Outcome, source: &Outcome) -> bool {
    match (policy, source) {
        (Outcome::Blocked, _) => true,
        (Outcome::Read { exposed: p, .. }, Outcome::Read { exposed: s, .. }) => {
            p.iter().all(|h| s.contains(h))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The produced policy, through the engine

fn engine_model(engine: Engine) -> Model {
    Box::new(move |ex: &Exchange<'_>| {
        let joined;
        let lines: Vec<&str>;
        let req = match ex {
            Exchange::Preflight {
                origin,
                method,
                headers,
                path,
            } => {
                joined = headers.join(",");
                lines = if headers.is_empty() {
                    vec![]
                } else {
                    vec![joined.as_str()]
                };
                RequestInfo {
                    method: "OPTIONS",
                    path,
                    host: Some("api.internal.test"),
                    origin: Some(origin),
                    request_method: Some(method),
                    request_headers: &lines,
                    request_private_network: false,
                }
            }
            Exchange::Actual {
                origin,
                method,
                path,
            } => RequestInfo {
                method,
                path,
                host: Some("api.internal.test"),
                origin: Some(origin),
                ..RequestInfo::default()
            },
        };
        let decision = engine.decide(&req);
        let (status, headers) = match decision.action() {
            Action::Respond { status, headers } => (status, headers),
            // The upstream answers 200 and sets no CORS headers of its own.
            Action::Forward { headers, .. } => (200, headers),
        };
        let mut r = Resp {
            status,
            headers: Vec::new(),
        };
        headers.for_each(|name, value| r.headers.push((name.to_owned(), value.to_string())));
        r
    })
}

// ---------------------------------------------------------------------------------------------
// Source models

fn at<'v>(v: &'v Value, path: &[&str]) -> &'v Value {
    path.iter().fold(v, |v, k| v.get(k).unwrap_or(&Value::Null))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn seconds(d: &str) -> u64 {
    let (n, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len()));
    let n: u64 = n.parse().unwrap();
    n * match unit {
        "h" => 3600,
        "m" => 60,
        _ => 1,
    }
}

/// ingress-nginx: the annotation parser's defaults and the template's `$cors` logic.
fn nginx_model(doc: &Value) -> Model {
    let ann = |k: &str| {
        at(
            doc,
            &[
                "metadata",
                "annotations",
                &format!("nginx.ingress.kubernetes.io/{k}"),
            ],
        )
        .as_str()
        .map(str::to_owned)
    };
    // corsOriginRegexValidator (v1.9+, validation on by default) judges the whole value, spaces
    // removed: a value it refuses is "*". Then corsOriginRegex skips the entries it cannot read.
    let validator =
        Regex::new(r"^((((([a-z]+://)?(\*\.)?[A-Za-z0-9\-.]*(:\d+)?,?)|null)+)|\*)?$").unwrap();
    let entry = Regex::new(r"^([a-z]+://(\*\.)?[A-Za-z0-9\-.]*(:\d+)?|\*|null)?$").unwrap();
    let origins: Vec<String> = ann("cors-allow-origin")
        .filter(|v| validator.is_match(&v.replace(' ', "")))
        .unwrap_or_else(|| "*".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && entry.is_match(s))
        .collect();
    let star = origins.iter().any(|o| o == "*");
    // buildOriginRegex: QuoteMeta, first `\*` → one label; the whole list `(...)$`, `~*`.
    let alternatives: Vec<String> = origins
        .iter()
        .map(|o| {
            format!(
                "({})",
                regex::escape(o).replacen(r"\*", r"[A-Za-z0-9\-]+", 1)
            )
        })
        .collect();
    let re = Regex::new(&format!("(?i)({})$", alternatives.join("|"))).unwrap();
    let creds = ann("cors-allow-credentials").is_none_or(|v| v == "true");
    let methods = ann("cors-allow-methods")
        .unwrap_or_else(|| "GET, PUT, POST, DELETE, PATCH, OPTIONS".into());
    let headers = ann("cors-allow-headers").unwrap_or_else(|| {
        "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization".into()
    });
    let expose = ann("cors-expose-headers").unwrap_or_default();
    let max_age = ann("cors-max-age").unwrap_or_else(|| "1728000".into());
    Box::new(move |ex| {
        let origin = ex.origin();
        if !(star || re.is_match(origin)) {
            return Resp::ok(); // no CORS headers; preflights reach the backend
        }
        let acao = if star { "*" } else { origin };
        let mut r = Resp::ok().with("access-control-allow-origin", acao);
        if creds {
            r = r.with("access-control-allow-credentials", "true");
        }
        r = r
            .with("access-control-allow-methods", methods.clone())
            .with("access-control-allow-headers", headers.clone())
            .with("access-control-max-age", max_age.clone());
        match ex {
            Exchange::Preflight { .. } => Resp { status: 204, ..r },
            Exchange::Actual { .. } if !expose.is_empty() => {
                r.with("access-control-expose-headers", expose.clone())
            }
            Exchange::Actual { .. } => r,
        }
    })
}

/// Envoy's CORS filter (Istio, Envoy Gateway, ESPv2).
struct EnvoyCors {
    allowed: Matcher,
    methods: String,
    headers: String,
    expose: String,
    credentials: bool,
    max_age: Option<String>,
    forward_unmatched: bool,
    /// What an unmatched preflight gets when it is not forwarded and no route answers it (ESPv2).
    unmatched_status: u16,
}

impl EnvoyCors {
    fn respond(&self, ex: &Exchange<'_>) -> Resp {
        let origin = ex.origin();
        let allowed = (self.allowed)(origin);
        match ex {
            Exchange::Preflight {
                method, headers, ..
            } => {
                if !allowed && self.forward_unmatched {
                    return Resp::ok();
                }
                if !allowed && self.unmatched_status != 200 {
                    return Resp {
                        status: self.unmatched_status,
                        headers: Vec::new(),
                    };
                }
                let mut r = Resp::ok();
                if allowed {
                    r = r.with("access-control-allow-origin", origin);
                }
                if self.credentials {
                    r = r.with("access-control-allow-credentials", "true");
                }
                if self.methods == "*" {
                    r = r.with("access-control-allow-methods", *method);
                } else if !self.methods.is_empty() {
                    r = r.with("access-control-allow-methods", self.methods.clone());
                }
                if self.headers == "*" {
                    r = r.with("access-control-allow-headers", headers.join(","));
                } else if !self.headers.is_empty() {
                    r = r.with("access-control-allow-headers", self.headers.clone());
                }
                if let Some(age) = &self.max_age {
                    r = r.with("access-control-max-age", age.clone());
                }
                r
            }
            Exchange::Actual { .. } => {
                if !allowed {
                    return Resp::ok();
                }
                let mut r = Resp::ok().with("access-control-allow-origin", origin);
                if self.credentials {
                    r = r.with("access-control-allow-credentials", "true");
                }
                if !self.expose.is_empty() {
                    r = r.with("access-control-expose-headers", self.expose.clone());
                }
                r
            }
        }
    }
}

fn full(re: &str) -> Regex {
    Regex::new(&format!("^(?:{re})$")).unwrap()
}

fn istio_model(doc: &Value) -> Model {
    // (path, exact, policy) in order; the first matching `http` entry wins, Istio prefixes are
    // string prefixes and an `exact` match takes its one path.
    let mut routes: Vec<(String, bool, Option<EnvoyCors>)> = Vec::new();
    for http in at(doc, &["spec", "http"]).as_array().unwrap() {
        let uri = at(http, &["match"])
            .as_array()
            .and_then(|m| m.first())
            .map(|m| at(m, &["uri"]).clone())
            .unwrap_or(Value::Null);
        let (prefix, exact) = match (
            at(&uri, &["prefix"]).as_str(),
            at(&uri, &["exact"]).as_str(),
        ) {
            (Some(p), _) => (p.to_owned(), false),
            (None, Some(e)) => (e.to_owned(), true),
            (None, None) => ("/".to_owned(), false),
        };
        let cors = at(http, &["corsPolicy"]);
        let policy = (!cors.is_null()).then(|| {
            let mut matchers: Vec<Matcher> = Vec::new();
            for m in at(cors, &["allowOrigins"]).as_array().unwrap() {
                if let Some(e) = at(m, &["exact"]).as_str() {
                    let e = e.to_owned();
                    matchers.push(Box::new(move |o| o == e));
                } else if let Some(p) = at(m, &["prefix"]).as_str() {
                    let p = p.to_owned();
                    matchers.push(Box::new(move |o| o.starts_with(&p)));
                } else if let Some(r) = at(m, &["regex"]).as_str() {
                    let r = full(r);
                    matchers.push(Box::new(move |o| r.is_match(o)));
                }
            }
            EnvoyCors {
                allowed: Box::new(move |o| matchers.iter().any(|m| m("*") || m(o))),
                methods: strings(at(cors, &["allowMethods"])).join(","),
                headers: strings(at(cors, &["allowHeaders"])).join(","),
                expose: strings(at(cors, &["exposeHeaders"])).join(","),
                credentials: at(cors, &["allowCredentials"]).as_bool() == Some(true),
                max_age: at(cors, &["maxAge"])
                    .as_str()
                    .map(|d| seconds(d).to_string()),
                forward_unmatched: at(cors, &["unmatchedPreflights"]).as_str() != Some("IGNORE"),
                unmatched_status: 200,
            }
        });
        routes.push((prefix, exact, policy));
    }
    Box::new(move |ex| {
        match routes.iter().find(|(p, exact, _)| {
            if *exact {
                ex.path() == p
            } else {
                ex.path().starts_with(p.as_str())
            }
        }) {
            Some((_, _, Some(cors))) => cors.respond(ex),
            _ => Resp::ok(),
        }
    })
}

fn envoy_gateway_model(doc: &Value) -> Model {
    let cors = at(doc, &["spec", "cors"]);
    let matchers: Vec<Regex> = strings(at(cors, &["allowOrigins"]))
        .iter()
        .map(|o| {
            if o.contains('*') {
                full(&o.replace('.', r"\.").replace('*', ".*"))
            } else {
                full(&regex::escape(o))
            }
        })
        .collect();
    let e = EnvoyCors {
        allowed: Box::new(move |o| matchers.iter().any(|m| m.is_match("*") || m.is_match(o))),
        methods: strings(at(cors, &["allowMethods"])).join(", "),
        headers: strings(at(cors, &["allowHeaders"])).join(", "),
        expose: strings(at(cors, &["exposeHeaders"])).join(", "),
        credentials: at(cors, &["allowCredentials"]).as_bool() == Some(true),
        max_age: at(cors, &["maxAge"])
            .as_str()
            .map(|d| seconds(d).to_string()),
        forward_unmatched: true,
        unmatched_status: 200,
    };
    Box::new(move |ex| e.respond(ex))
}

/// Gateway API `HTTPCORSFilter` as its documentation specifies it; longest path prefix wins.
fn gateway_model(doc: &Value) -> Model {
    struct Filter {
        origins: Vec<Regex>,
        any: bool,
        methods: Vec<String>,
        headers: Vec<String>,
        expose: Vec<String>,
        credentials: bool,
        max_age: u64,
    }
    // (path prefix, index into `filters`); a rule without a CORS filter has `None` there.
    let mut rules: Vec<(String, usize)> = Vec::new();
    let mut filters: Vec<Option<Filter>> = Vec::new();
    for rule in at(doc, &["spec", "rules"]).as_array().unwrap() {
        let cors = at(rule, &["filters"])
            .as_array()
            .and_then(|f| f.iter().find(|f| at(f, &["type"]).as_str() == Some("CORS")))
            .map(|f| at(f, &["cors"]).clone());
        filters.push(cors.map(|c| {
            let origins = strings(at(&c, &["allowOrigins"]));
            Filter {
                any: origins.iter().any(|o| o == "*"),
                origins: origins
                    .iter()
                    .map(|o| full(&regex::escape(o).replace(r"\*", ".*")))
                    .collect(),
                methods: strings(at(&c, &["allowMethods"])),
                headers: strings(at(&c, &["allowHeaders"])),
                expose: strings(at(&c, &["exposeHeaders"])),
                credentials: at(&c, &["allowCredentials"]).as_bool() == Some(true),
                max_age: at(&c, &["maxAge"]).as_u64().unwrap_or(5),
            }
        }));
        let prefixes: Vec<String> = at(rule, &["matches"])
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| at(m, &["path", "value"]).as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_else(|| vec!["/".to_owned()]);
        for p in prefixes {
            rules.push((p, filters.len() - 1));
        }
    }
    Box::new(move |ex| {
        let path = ex.path();
        let rule = rules
            .iter()
            .filter(|(p, _)| {
                path == p || path.starts_with(&format!("{}/", p.trim_end_matches('/')))
            })
            .max_by_key(|(p, _)| p.len());
        let Some(f) = rule.and_then(|(_, i)| filters[*i].as_ref()) else {
            return Resp::ok();
        };
        let origin = ex.origin();
        if !(f.any || f.origins.iter().any(|r| r.is_match(origin))) {
            return Resp::ok(); // 200 without CORS headers
        }
        let acao = if f.any && !f.credentials { "*" } else { origin };
        let mut r = Resp::ok().with("access-control-allow-origin", acao);
        if f.credentials {
            r = r.with("access-control-allow-credentials", "true");
        }
        match ex {
            Exchange::Preflight {
                method, headers, ..
            } => {
                let star = |l: &[String]| l.len() == 1 && l[0] == "*";
                if star(&f.methods) {
                    r = r.with(
                        "access-control-allow-methods",
                        if f.credentials {
                            method.to_string()
                        } else {
                            "*".into()
                        },
                    );
                } else if !f.methods.is_empty() {
                    r = r.with("access-control-allow-methods", f.methods.join(", "));
                }
                if star(&f.headers) {
                    r = r.with(
                        "access-control-allow-headers",
                        if f.credentials {
                            headers.join(",")
                        } else {
                            "*".into()
                        },
                    );
                } else if !f.headers.is_empty() {
                    r = r.with("access-control-allow-headers", f.headers.join(", "));
                }
                r.with("access-control-max-age", f.max_age.to_string())
            }
            Exchange::Actual { .. } if !f.expose.is_empty() => {
                r.with("access-control-expose-headers", f.expose.join(", "))
            }
            Exchange::Actual { .. } => r,
        }
    })
}

/// Traefik v3's headers middleware.
fn traefik_model(doc: &Value) -> Model {
    let h = at(doc, &["spec", "headers"]).clone();
    let list = strings(at(&h, &["accessControlAllowOriginList"]));
    let regexes: Vec<Regex> = strings(at(&h, &["accessControlAllowOriginListRegex"]))
        .iter()
        .map(|r| Regex::new(r).unwrap())
        .collect();
    let creds = at(&h, &["accessControlAllowCredentials"]).as_bool() == Some(true);
    let methods = strings(at(&h, &["accessControlAllowMethods"]));
    let headers = strings(at(&h, &["accessControlAllowHeaders"]));
    let expose = strings(at(&h, &["accessControlExposeHeaders"]));
    let max_age = at(&h, &["accessControlMaxAge"]).as_i64();
    Box::new(move |ex| {
        let origin = ex.origin();
        let matched = list
            .iter()
            .find_map(|item| {
                if item == origin {
                    Some(item.clone())
                } else if item == "*" {
                    Some(if creds {
                        origin.to_owned()
                    } else {
                        "*".to_owned()
                    })
                } else {
                    None
                }
            })
            .or_else(|| {
                regexes
                    .iter()
                    .any(|r| r.is_match(origin))
                    .then(|| origin.to_owned())
            });
        let mut r = Resp::ok();
        if let Some(m) = matched {
            r = r.with("access-control-allow-origin", m);
        }
        if creds {
            r = r.with("access-control-allow-credentials", "true");
        }
        let withheld = expose.iter().any(|e| e == "*") && creds;
        if !expose.is_empty() && !withheld {
            r = r.with("access-control-expose-headers", expose.join(","));
        }
        if let Exchange::Preflight {
            method,
            headers: req,
            ..
        } = ex
        {
            if headers.iter().any(|x| x == "*") && creds {
                r = r.with("access-control-allow-headers", req.join(","));
            } else if !headers.is_empty() {
                r = r.with("access-control-allow-headers", headers.join(","));
            }
            if methods.iter().any(|x| x == "*") && creds {
                r = r.with("access-control-allow-methods", *method);
            } else if !methods.is_empty() {
                r = r.with("access-control-allow-methods", methods.join(","));
            }
            if let Some(age) = max_age {
                r = r.with("access-control-max-age", age.to_string());
            }
        }
        r
    })
}

/// ESPv2 (Envoy, flags with start_proxy.py's defaults) or ESP v1 (nginx template).
fn esp_model(doc: &Value) -> Model {
    let c = &at(doc, &["spec", "template", "spec", "containers"])
        .as_array()
        .unwrap()[0];
    let v1 = at(c, &["image"]).as_str().unwrap().ends_with(":1");
    let mut args = strings(at(c, &["args"]));
    // ESPv2's serverless entrypoint appends ESPv2_ARGS: `^D^` first names the separator D.
    if let Some(env) = at(c, &["env"]).as_array() {
        for e in env.iter().filter(|e| at(e, &["name"]) == "ESPv2_ARGS") {
            let value = at(e, &["value"]).as_str().unwrap();
            let (sep, list) = match value.strip_prefix('^').and_then(|r| r.split_once('^')) {
                Some((sep, list)) => (sep, list),
                None => (",", value),
            };
            args.extend(list.split(sep).map(str::to_owned));
        }
    }
    let flag = |name: &str| -> Option<String> {
        // argparse keeps the last value of a flag.
        args.iter().enumerate().rev().find_map(|(i, a)| {
            if let Some(v) = a.strip_prefix(&format!("--{name}=")) {
                Some(v.to_owned())
            } else if a == &format!("--{name}") {
                Some(
                    args.get(i + 1)
                        .filter(|n| !n.starts_with("--"))
                        .cloned()
                        .unwrap_or_default(),
                )
            } else {
                None
            }
        })
    };
    let creds = flag("cors_allow_credentials").is_some();
    let methods = flag("cors_allow_methods")
        .unwrap_or_else(|| "GET, POST, PUT, PATCH, DELETE, OPTIONS".into());
    let default_headers = if v1 {
        "DNT,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization"
    } else {
        "DNT,User-Agent,X-User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization"
    };
    let headers = flag("cors_allow_headers").unwrap_or_else(|| default_headers.into());
    let expose =
        flag("cors_expose_headers").unwrap_or_else(|| "Content-Length,Content-Range".into());
    let regex = flag("cors_allow_origin_regex").unwrap();
    if v1 {
        // `if ($http_origin ~* (REGEX))`: case-insensitive search.
        let re = Regex::new(&format!("(?i){regex}")).unwrap();
        return Box::new(move |ex| {
            let origin = ex.origin();
            if !re.is_match(origin) {
                return Resp::ok();
            }
            let mut r = Resp::ok()
                .with("access-control-allow-origin", origin)
                .with("access-control-allow-methods", methods.clone())
                .with("access-control-allow-headers", headers.clone());
            if creds {
                r = r.with("access-control-allow-credentials", "true");
            }
            match ex {
                Exchange::Preflight { .. } => {
                    Resp { status: 204, ..r }.with("access-control-max-age", "1728000")
                }
                Exchange::Actual { .. } => r.with("access-control-expose-headers", expose.clone()),
            }
        });
    }
    let re = full(&regex);
    let e = EnvoyCors {
        allowed: Box::new(move |o| re.is_match("*") || re.is_match(o)),
        methods,
        headers,
        expose,
        credentials: creds,
        max_age: Some(seconds(&flag("cors_max_age").unwrap_or_else(|| "480h".into())).to_string()),
        forward_unmatched: false,
        unmatched_status: 404,
    };
    Box::new(move |ex| e.respond(ex))
}

// ---------------------------------------------------------------------------------------------
// The grid and the comparison

#[derive(Debug)]
struct Case {
    origin: &'static str,
    method: &'static str,
    headers: Vec<&'static str>,
    credentials: bool,
    path: &'static str,
}

const ORIGINS: &[&str] = &[
    "https://shop.example.com",
    "https://admin.example.com",
    "https://a.preview.example.com",
    "https://a.b.preview.example.com",
    "https://app.example.com",
    "http://app.example.com",
    "https://app.example.com:8443",
    "https://www.example.com",
    "https://www.example.com.attacker.example",
    "https://x.example.org",
    "https://a.b.example.org",
    "https://partner.example.net",
    "https://partner.example.net:8443",
    "https://partner.example.net.attacker.example",
    "https://foo.bar.org",
    "https://example.org",
    "https://a.example.com",
    "https://a.example.com.attacker.example",
    "http://a.foo.com",
    "http://a.b.foo.com:8080",
    "https://attacker.example",
    "https://example.com",
    "null",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH"];
const HEADER_SETS: &[&[&str]] = &[
    &[],
    &["x-request-id"],
    &["authorization"],
    &["content-type"],
    &["x-header-1"],
    &["x-other"],
];

/// Finding codes that explain a difference in whether an origin is allowed at all.
const ORIGIN_CODES: &[&str] = &["origin-anchored", "regex-not-converted", "origin-ignored"];

fn compare(name: &str, c: &Converted, source: &Model, paths: &[&'static str]) -> usize {
    assert!(
        !c.incomplete,
        "{name}: incomplete policies are compared nowhere"
    );
    let (engine, _) = Engine::compile(&c.document.spec).unwrap_or_else(|r| panic!("{name}: {r:?}"));
    let policy = engine_model(engine);
    let codes: Vec<&str> = c.findings.iter().map(|f| f.code).collect();
    let mut compared = 0;
    let mut explained = 0;
    for &path in paths {
        for &origin in ORIGINS {
            for &method in METHODS {
                for headers in HEADER_SETS {
                    for credentials in [false, true] {
                        let case = Case {
                            origin,
                            method,
                            headers: headers.to_vec(),
                            credentials,
                            path,
                        };
                        let s = browser(source.as_ref(), &case);
                        let p = browser(policy.as_ref(), &case);
                        compared += 1;
                        if s == p {
                            continue;
                        }
                        // The one kind of difference that may be more open: a path that an
                        // Istio string prefix without CORS took, which a route cannot, said so.
                        // Only on paths that start with that prefix, are not under it as a
                        // route sees paths (the prefix itself, or the prefix and a `/`), and
                        // get the rules of the broader route the finding names.
                        let under = |path: &str, prefix: &str| {
                            let p = prefix.trim_end_matches('/');
                            path == p || path.starts_with(&format!("{p}/")) || p.is_empty()
                        };
                        let applied = c
                            .document
                            .spec
                            .routes
                            .iter()
                            .map(|r| r.path_prefix.as_str())
                            .filter(|r| under(path, r))
                            .max_by_key(|r| r.trim_end_matches('/').len());
                        let wider = c.findings.iter().any(|f| {
                            let Some(prefix) = f.message.split('"').nth(1) else {
                                return false;
                            };
                            let cover = f
                                .message
                                .split(", MORE open")
                                .next()
                                .and_then(|m| m.rsplit('"').nth(1));
                            f.code == "string-prefix-wider"
                                && path.starts_with(prefix)
                                && !under(path, prefix)
                                && cover.is_some()
                                && applied == cover
                        });
                        assert!(
                            less_open(&p, &s) || wider,
                            "{name}: the policy is MORE open than the source for {case:?}: source {s:?}, policy {p:?}"
                        );
                        if wider && !less_open(&p, &s) {
                            explained += 1;
                            continue;
                        }
                        // A plain GET from the origin, no credentials: is the origin itself refused?
                        let origin_refused = matches!(
                            browser(
                                policy.as_ref(),
                                &Case {
                                    origin,
                                    method: "GET",
                                    headers: vec![],
                                    credentials: false,
                                    path
                                }
                            ),
                            Outcome::Blocked
                        );
                        let named = (origin_refused
                            && codes.iter().any(|c| ORIGIN_CODES.contains(c)))
                            || (origin == "null" && codes.contains(&"null-origin-not-covered"))
                            // A `*` in a list sent as text: a wildcard for requests without
                            // credentials only, which no policy can answer by.
                            || (!credentials && codes.contains(&"star-sent-literally"));
                        assert!(
                            named,
                            "{name}: outcomes differ for {case:?} (source {s:?}, policy {p:?}) and no finding names it: {codes:?}"
                        );
                        explained += 1;
                    }
                }
            }
        }
    }
    assert!(compared > 1000, "{name}: only {compared} cases");
    explained
}

fn load(fixture: &str) -> (Vec<Value>, Vec<Converted>) {
    let path = format!(
        "{}/../../tests/fixtures/import/{fixture}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let out = import(text.as_bytes()).unwrap();
    (docs, out.policies)
}

fn doc_of<'a>(docs: &'a [Value], c: &Converted) -> &'a Value {
    &docs[c.source.document]
}

#[test]
fn ingress_nginx_agrees() {
    let (docs, policies) = load("ingress-nginx.yaml");
    assert_eq!(policies.len(), 2);
    for c in &policies {
        compare(
            &c.source.to_string(),
            c,
            &nginx_model(doc_of(&docs, c)),
            &["/", "/x"],
        );
    }
}

/// Lists browsers cannot parse (`"X-A X-B"`), which ingress-nginx and Istio send as written:
/// the policies block what the browsers blocked and expose what they exposed.
#[test]
fn unparsable_lists_agree() {
    let ingress = |annotations: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: i\n  annotations:\n    nginx.ingress.kubernetes.io/enable-cors: \"true\"\n    nginx.ingress.kubernetes.io/cors-allow-origin: https://shop.example.com\n{annotations}spec: {{}}\n"
        )
    };
    for text in [
        ingress(
            "    nginx.ingress.kubernetes.io/cors-allow-headers: \"X-Request-Id Authorization\"\n",
        ),
        ingress("    nginx.ingress.kubernetes.io/cors-allow-methods: \"PUT DELETE\"\n"),
        ingress("    nginx.ingress.kubernetes.io/cors-expose-headers: \"X-Request-Id X-Other\"\n"),
    ] {
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        let out = import(text.as_bytes()).unwrap();
        let c = &out.policies[0];
        assert!(c.findings.iter().any(|f| f.code == "unparsable-list"));
        compare(&text, c, &nginx_model(&doc), &["/"]);
    }
    // Items Istio joins with commas: "A, B" and " A" are lists browsers read.
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  http:\n  - corsPolicy:\n      allowOrigins: [{exact: \"https://shop.example.com\"}]\n      allowMethods: [PUT]\n      allowHeaders: [\"X-Request-Id, Authorization\", \" Content-Type\"]\n      exposeHeaders: [\"X-Request-Id X-Other\"]\n";
    let doc: Value = serde_saphyr::from_str(text).unwrap();
    let out = import(text.as_bytes()).unwrap();
    let c = &out.policies[0];
    compare("VirtualService v", c, &istio_model(&doc), &["/"]);
    let route = &c.document.spec.routes[0];
    assert_eq!(
        route.allow_headers.as_deref(),
        Some(
            &[
                "X-Request-Id".to_owned(),
                "Authorization".to_owned(),
                "Content-Type".to_owned()
            ][..]
        )
    );
    assert_eq!(route.expose_headers, None);
}

#[test]
fn gateway_api_agrees() {
    let (docs, policies) = load("gateway-api.yaml");
    let api = policies.iter().find(|c| c.source.name == "api").unwrap();
    compare(
        "HTTPRoute api",
        api,
        &gateway_model(doc_of(&docs, api)),
        &["/api/x", "/api/internal/x", "/public", "/other"],
    );
}

#[test]
fn istio_agrees_except_anchored_prefixes() {
    let (docs, policies) = load("istio.yaml");
    let explained = compare(
        "VirtualService reviews",
        &policies[0],
        &istio_model(doc_of(&docs, &policies[0])),
        &["/v1/reviews", "/v2"],
    );
    // The prefix allowed https://partner.example.net.attacker.example; the policy does not.
    assert!(explained > 0, "the anchored prefix made no difference");
}

#[test]
fn envoy_gateway_agrees() {
    let (docs, policies) = load("envoy-gateway.yaml");
    compare(
        "SecurityPolicy",
        &policies[0],
        &envoy_gateway_model(doc_of(&docs, &policies[0])),
        &["/"],
    );
}

#[test]
fn traefik_agrees_except_anchored_regexes() {
    let (docs, policies) = load("traefik.yaml");
    let explained = compare(
        "Middleware",
        &policies[0],
        &traefik_model(doc_of(&docs, &policies[0])),
        &["/"],
    );
    assert!(explained > 0, "the anchored regex made no difference");
}

#[test]
fn esp_agrees() {
    let (docs, policies) = load("esp.yaml");
    assert_eq!(policies.len(), 3);
    for c in &policies {
        compare(
            &c.source.to_string(),
            c,
            &esp_model(doc_of(&docs, c)),
            &["/"],
        );
    }
}

#[test]
fn istio_edges_agree() {
    let (docs, policies) = load("istio-edges.yaml");
    let names: Vec<_> = policies
        .iter()
        .map(|p| p.document.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "mixed-star",
            "mixed-star-anonymous",
            "string-prefix",
            "no-origin-rule",
            "exact-then-prefix",
            "exact-without-cors",
        ]
    );
    for (policy, paths) in policies.iter().zip([
        &["/"][..],
        &["/"],
        &["/api-v2/x", "/api/x", "/other"],
        &["/api/internal/users", "/api/x"],
        &["/api", "/api-v2/x", "/other"],
        &["/api", "/api-v2/x", "/other"],
    ]) {
        let name = policy.document.metadata.name.as_deref().unwrap_or_default();
        compare(name, policy, &istio_model(doc_of(&docs, policy)), paths);
    }
}

#[test]
fn gateway_api_edges_agree() {
    let (docs, policies) = load("gateway-api-edges.yaml");
    let [policy] = &policies[..] else {
        panic!("one policy: {policies:?}")
    };
    compare(
        "no-origin-rule",
        policy,
        &gateway_model(doc_of(&docs, policy)),
        &["/api/internal/users", "/api/x"],
    );
}

#[test]
fn ingress_nginx_edges_agree() {
    let (docs, policies) = load("ingress-nginx-edges.yaml");
    let names: Vec<_> = policies
        .iter()
        .map(|p| p.document.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["refused-list", "scheme-less-entry"]);
    for policy in &policies {
        let name = policy.document.metadata.name.as_deref().unwrap_or_default();
        compare(name, policy, &nginx_model(doc_of(&docs, policy)), &["/"]);
    }
}
