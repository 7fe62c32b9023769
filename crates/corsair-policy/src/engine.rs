//! The compiled policy and the decision function.

use std::collections::{HashMap, HashSet};

use regex::{Regex, RegexSet};

use crate::decision::{
    Action, AllowReason, Decision, DenyReason, ListValue, RequestKind, ResponseHeaders, Vary,
    Verdict,
};
use crate::model::{CorsPolicySpec, DisallowedRequests, Mode, RouteSpec, UnmatchedPreflights};
use crate::origin::{self, OriginPattern};
use crate::validate::{self, Finding, Report, Severity};

/// The parts of a request that CORS looks at. Header values are raw field values.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// The path of the request target, without the query.
    pub path: &'a str,
    /// The `Host` header (or the `:authority` of HTTP/2).
    pub host: Option<&'a str>,
    /// The `Origin` header; `None` when absent. The proxy passes an origin that appeared more
    /// than once or is not UTF-8 as `Some("")`, which is never allowed.
    pub origin: Option<&'a str>,
    /// `Access-Control-Request-Method`.
    pub request_method: Option<&'a str>,
    /// Each `Access-Control-Request-Headers` field line.
    pub request_headers: &'a [&'a str],
    /// `Access-Control-Request-Private-Network: true` was sent.
    pub request_private_network: bool,
}

/// The methods a policy allows when it leaves `allowMethods` out: the CORS-safelisted methods,
/// which browsers never preflight for on their own.
pub const DEFAULT_ALLOW_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];
/// The status of an allowed preflight when `preflightStatus` is left out.
pub const DEFAULT_PREFLIGHT_STATUS: u16 = 200;

/// A policy compiled for fast decisions. Build once per policy version; share behind an `Arc`.
#[derive(Debug)]
pub struct Engine {
    spec: CorsPolicySpec,
    top: Rules,
    /// Sorted by normalized prefix length, longest first, so the first match wins.
    routes: Vec<CompiledRoute>,
}

#[derive(Debug)]
struct CompiledRoute {
    /// The prefix without a trailing `/` (`/` itself stays `/`).
    prefix: String,
    /// `pathPrefix` as written, reported in [`Decision::route`].
    path_prefix: String,
    rules: Rules,
}

/// One level of rules (the top level or a route) with inheritance and defaults applied.
#[derive(Debug)]
struct Rules {
    origins: OriginMatcher,
    methods: TokenList,
    headers: TokenList,
    /// Rendered `Access-Control-Expose-Headers`.
    expose: Option<String>,
    credentials: bool,
    /// Rendered `Access-Control-Max-Age`.
    max_age: Option<String>,
    private_network: bool,
    preflight_status: u16,
    unmatched_preflights: UnmatchedPreflights,
    disallowed_requests: DisallowedRequests,
    mode: Mode,
    /// `*` without credentials: `Access-Control-Allow-Origin: *`, the same for every request.
    wildcard_answer: bool,
}

/// `allowMethods` or `allowHeaders`.
#[derive(Debug)]
struct TokenList {
    any: bool,
    /// Methods as written (matched case-sensitively); header names lowercased.
    items: Vec<String>,
    /// The configured list rendered for the response (`GET, POST`), `None` when empty.
    rendered: Option<String>,
}

#[derive(Debug, Default)]
struct OriginMatcher {
    any: bool,
    allow_null: bool,
    exact: HashSet<Box<str>, FastHash>,
    /// Keyed by the host suffix after `*.`, so a lookup costs one probe per label of the host.
    wildcards: HashMap<Box<str>, Vec<WildcardEntry>, FastHash>,
    regexes: Option<RegexMatcher>,
}

#[derive(Debug)]
struct WildcardEntry {
    scheme: String,
    port: Option<String>,
    pattern: String,
}

#[derive(Debug)]
struct RegexMatcher {
    set: RegexSet,
    /// The same expressions one by one, consulted only after the set matched, to name the entry.
    each: Vec<(Regex, String)>,
}

impl Engine {
    /// Validates and compiles `spec`. On error the report lists every error (and the warnings).
    pub fn compile(spec: &CorsPolicySpec) -> Result<(Engine, Report), Report> {
        let mut report = validate::validate(spec);
        if report.has_errors() {
            return Err(report);
        }
        let top = match Rules::compile(spec, None) {
            Ok(rules) => rules,
            Err(finding) => {
                report.findings.push(finding.at("spec"));
                return Err(report);
            }
        };
        let mut routes = Vec::with_capacity(spec.routes.len());
        for (i, route) in spec.routes.iter().enumerate() {
            match Rules::compile(spec, Some(route)) {
                Ok(rules) => routes.push(CompiledRoute {
                    prefix: normalize_prefix(&route.path_prefix).to_owned(),
                    path_prefix: route.path_prefix.clone(),
                    rules,
                }),
                Err(finding) => {
                    report
                        .findings
                        .push(finding.at(&format!("spec.routes[{i}]")));
                    return Err(report);
                }
            }
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok((
            Engine {
                spec: spec.clone(),
                top,
                routes,
            },
            report,
        ))
    }

    /// The spec this engine was compiled from.
    pub fn spec(&self) -> &CorsPolicySpec {
        &self.spec
    }

    /// Decides what to do with one request. Allocation-free for an allowed simple request.
    pub fn decide<'a>(&'a self, req: &RequestInfo<'a>) -> Decision<'a> {
        let (route, rules) = self.rules_for(req.path);
        let (kind, verdict, enforced) = rules.decide(req);
        Decision {
            mode: rules.mode,
            route,
            kind,
            verdict,
            enforced,
        }
    }

    fn rules_for(&self, path: &str) -> (Option<&str>, &Rules) {
        self.routes
            .iter()
            .find(|r| prefix_matches(&r.prefix, path))
            .map_or((None, &self.top), |r| {
                (Some(r.path_prefix.as_str()), &r.rules)
            })
    }
}

/// `/api/` and `/api` are the same prefix, as in the Gateway API's `PathPrefix`.
pub(crate) fn normalize_prefix(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// Whole-segment prefix match: `/api` matches `/api` and `/api/x`, never `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// An error found while compiling something validation let through; should not happen.
struct CompileError {
    field: &'static str,
    message: String,
}

impl CompileError {
    fn at(self, base: &str) -> Finding {
        Finding {
            severity: Severity::Error,
            path: format!("{base}.{}", self.field),
            code: "compile-error",
            message: self.message,
        }
    }
}

/// Picks the route's value, else the top level's.
macro_rules! inherit {
    ($spec:expr, $route:expr, $field:ident) => {
        $route
            .and_then(|r: &RouteSpec| r.$field.as_ref())
            .or($spec.$field.as_ref())
    };
}

impl Rules {
    fn compile(spec: &CorsPolicySpec, route: Option<&RouteSpec>) -> Result<Rules, CompileError> {
        let empty = Vec::new();
        let origins = inherit!(spec, route, allow_origins).unwrap_or(&empty);
        let regexes = inherit!(spec, route, allow_origin_regexes).unwrap_or(&empty);
        let credentials = inherit!(spec, route, allow_credentials)
            .copied()
            .unwrap_or(false);
        let mut matcher = OriginMatcher {
            allow_null: inherit!(spec, route, allow_null_origin)
                .copied()
                .unwrap_or(false),
            ..OriginMatcher::default()
        };
        for entry in origins {
            match origin::parse_config_origin(entry) {
                Ok(OriginPattern::Any) => matcher.any = true,
                Ok(OriginPattern::Exact) => {
                    matcher.exact.insert(entry.as_str().into());
                }
                Ok(OriginPattern::Wildcard {
                    scheme,
                    suffix,
                    port,
                }) => matcher
                    .wildcards
                    .entry(suffix.into_boxed_str())
                    .or_default()
                    .push(WildcardEntry {
                        scheme,
                        port,
                        pattern: entry.clone(),
                    }),
                Err(message) => {
                    return Err(CompileError {
                        field: "allowOrigins",
                        message: format!("{entry:?} {message}"),
                    });
                }
            }
        }
        if !regexes.is_empty() {
            let anchored: Vec<String> = regexes.iter().map(|r| anchor(r)).collect();
            let set = RegexSet::new(&anchored).map_err(|e| CompileError {
                field: "allowOriginRegexes",
                message: e.to_string(),
            })?;
            let mut each = Vec::with_capacity(regexes.len());
            for (src, re) in regexes.iter().zip(&anchored) {
                let compiled = Regex::new(re).map_err(|e| CompileError {
                    field: "allowOriginRegexes",
                    message: e.to_string(),
                })?;
                each.push((compiled, src.clone()));
            }
            matcher.regexes = Some(RegexMatcher { set, each });
        }

        let methods = inherit!(spec, route, allow_methods)
            .map(|m| TokenList::new(m, false))
            .unwrap_or_else(|| {
                let defaults: Vec<String> = DEFAULT_ALLOW_METHODS
                    .iter()
                    .map(|m| (*m).to_owned())
                    .collect();
                TokenList::new(&defaults, false)
            });
        let headers = TokenList::new(inherit!(spec, route, allow_headers).unwrap_or(&empty), true);
        let expose = inherit!(spec, route, expose_headers)
            .filter(|e| !e.is_empty())
            .map(|e| e.join(", "));
        let wildcard_answer = matcher.any && !credentials;
        Ok(Rules {
            origins: matcher,
            methods,
            headers,
            expose,
            credentials,
            max_age: inherit!(spec, route, max_age).map(u32::to_string),
            private_network: inherit!(spec, route, allow_private_network)
                .copied()
                .unwrap_or(false),
            preflight_status: inherit!(spec, route, preflight_status)
                .copied()
                .unwrap_or(DEFAULT_PREFLIGHT_STATUS),
            unmatched_preflights: inherit!(spec, route, unmatched_preflights)
                .copied()
                .unwrap_or_default(),
            disallowed_requests: inherit!(spec, route, disallowed_requests)
                .copied()
                .unwrap_or_default(),
            mode: inherit!(spec, route, mode).copied().unwrap_or_default(),
            wildcard_answer,
        })
    }

    /// `Vary` of every response that is not a preflight answer.
    fn simple_vary(&self) -> Vary {
        Vary {
            origin: !self.wildcard_answer,
            ..Vary::default()
        }
    }

    fn preflight_vary(&self) -> Vary {
        Vary {
            origin: true,
            request_method: true,
            request_headers: true,
            request_private_network: self.private_network,
        }
    }

    fn decide<'a>(&'a self, req: &RequestInfo<'a>) -> (RequestKind, Verdict<'a>, Action<'a>) {
        let Some(origin) = req.origin else {
            return (
                RequestKind::NotCors,
                Verdict::NotApplicable,
                self.plain_forward(),
            );
        };
        if let Some(host) = req.host
            && origin::is_same_origin(origin, host)
        {
            return (
                RequestKind::SameOrigin,
                Verdict::NotApplicable,
                self.plain_forward(),
            );
        }
        let checked = self.origins.matches(origin);
        if req.method == "OPTIONS" && req.request_method.is_some() {
            let (verdict, action) = self.preflight(origin, checked, req);
            (RequestKind::Preflight, verdict, action)
        } else {
            let (verdict, action) = self.actual(origin, checked);
            (RequestKind::Actual, verdict, action)
        }
    }

    fn plain_forward<'a>(&self) -> Action<'a> {
        Action::Forward {
            headers: ResponseHeaders {
                vary: self.simple_vary(),
                ..ResponseHeaders::default()
            },
            strip_upstream_cors: true,
        }
    }

    fn allow_origin_value<'a>(&self, origin: &'a str) -> &'a str {
        if self.wildcard_answer { "*" } else { origin }
    }

    fn actual<'a>(
        &'a self,
        origin: &'a str,
        checked: Result<AllowReason<'a>, DenyReason<'a>>,
    ) -> (Verdict<'a>, Action<'a>) {
        match checked {
            Ok(reason) => (
                Verdict::Allowed(reason),
                Action::Forward {
                    headers: ResponseHeaders {
                        allow_origin: Some(self.allow_origin_value(origin)),
                        allow_credentials: self.credentials,
                        expose_headers: self.expose.as_deref(),
                        vary: self.simple_vary(),
                        ..ResponseHeaders::default()
                    },
                    strip_upstream_cors: true,
                },
            ),
            Err(reason) => {
                let action = match self.disallowed_requests {
                    DisallowedRequests::Forward => self.plain_forward(),
                    DisallowedRequests::Reject => Action::Respond {
                        status: 403,
                        headers: ResponseHeaders {
                            vary: self.simple_vary(),
                            ..ResponseHeaders::default()
                        },
                    },
                };
                (Verdict::Denied(reason), action)
            }
        }
    }

    fn preflight<'a>(
        &'a self,
        origin: &'a str,
        checked: Result<AllowReason<'a>, DenyReason<'a>>,
        req: &RequestInfo<'a>,
    ) -> (Verdict<'a>, Action<'a>) {
        match checked.and_then(|reason| self.check_preflight(req).map(|()| reason)) {
            Ok(reason) => (
                Verdict::Allowed(reason),
                self.allowed_preflight(origin, req),
            ),
            Err(reason) => {
                let action = match self.unmatched_preflights {
                    UnmatchedPreflights::Reject => Action::Respond {
                        status: 403,
                        headers: ResponseHeaders {
                            vary: self.preflight_vary(),
                            ..ResponseHeaders::default()
                        },
                    },
                    // The upstream owns this answer: nothing is added or removed.
                    UnmatchedPreflights::Forward => Action::Forward {
                        headers: ResponseHeaders::default(),
                        strip_upstream_cors: false,
                    },
                };
                (Verdict::Denied(reason), action)
            }
        }
    }

    /// Everything but the origin, which the caller checked.
    fn check_preflight<'a>(&'a self, req: &RequestInfo<'a>) -> Result<(), DenyReason<'a>> {
        let method = req.request_method.unwrap_or_default();
        // Listed methods are tokens; only `*` needs the request's checked.
        if !self.methods.allows_method(method) || (self.methods.any && !is_token(method)) {
            return Err(DenyReason::MethodNotAllowed(method));
        }
        for name in request_header_names(req.request_headers) {
            self.headers.check_header(name)?;
        }
        if req.request_private_network && !self.private_network {
            return Err(DenyReason::PrivateNetworkNotAllowed);
        }
        Ok(())
    }

    fn allowed_preflight<'a>(&'a self, origin: &'a str, req: &RequestInfo<'a>) -> Action<'a> {
        let echo = self.credentials;
        let allow_methods = if self.methods.any && echo {
            req.request_method.map(ListValue::Text)
        } else if self.methods.any {
            Some(ListValue::Text("*"))
        } else {
            self.methods.rendered.as_deref().map(ListValue::Text)
        };
        let allow_headers = if self.headers.any && echo {
            let requested_any = request_header_names(req.request_headers).next().is_some();
            requested_any.then_some(ListValue::Lines(req.request_headers))
        } else {
            // With `*` and no credentials this is `*` (plus any names listed beside it, which
            // matters for `Authorization`).
            self.headers.rendered.as_deref().map(ListValue::Text)
        };
        Action::Respond {
            status: self.preflight_status,
            headers: ResponseHeaders {
                allow_origin: Some(self.allow_origin_value(origin)),
                allow_credentials: self.credentials,
                allow_methods,
                allow_headers,
                expose_headers: self.expose.as_deref(),
                max_age: self.max_age.as_deref(),
                allow_private_network: req.request_private_network && self.private_network,
                vary: self.preflight_vary(),
            },
        }
    }
}

fn anchor(re: &str) -> String {
    format!("^(?:{re})$")
}

impl TokenList {
    fn new(items: &[String], lowercase: bool) -> TokenList {
        let any = items.iter().any(|i| i == "*");
        let rendered = (!items.is_empty()).then(|| items.join(", "));
        let items = items
            .iter()
            .filter(|i| *i != "*")
            .map(|i| {
                if lowercase {
                    i.to_ascii_lowercase()
                } else {
                    i.clone()
                }
            })
            .collect();
        TokenList {
            any,
            items,
            rendered,
        }
    }

    fn allows_method(&self, method: &str) -> bool {
        self.any || self.items.iter().any(|m| m == method)
    }

    fn check_header<'a>(&self, name: &'a str) -> Result<(), DenyReason<'a>> {
        // Items are lowercase tokens, so a match is a token too.
        if self.items.iter().any(|h| eq_lowercase(h, name)) {
            return Ok(());
        }
        if !is_token(name) {
            return Err(DenyReason::HeaderNotAllowed(name));
        }
        if self.any {
            if name.eq_ignore_ascii_case("authorization") {
                return Err(DenyReason::AuthorizationNotCoveredByWildcard);
            }
            return Ok(());
        }
        Err(DenyReason::HeaderNotAllowed(name))
    }
}

/// `lower` (already lowercase) equals `name` ignoring ASCII case.
fn eq_lowercase(lower: &str, name: &str) -> bool {
    lower.len() == name.len()
        && lower
            .bytes()
            .zip(name.bytes())
            .all(|(l, n)| l == n.to_ascii_lowercase())
}

impl OriginMatcher {
    fn matches<'a>(&'a self, origin: &str) -> Result<AllowReason<'a>, DenyReason<'a>> {
        if origin == "null" {
            return if self.allow_null {
                Ok(AllowReason::NullOrigin)
            } else {
                Err(DenyReason::OriginNotAllowed)
            };
        }
        // Entries were validated as origins, so a hit needs no parsing of the request's.
        if let Some(entry) = self.exact.get(origin) {
            return Ok(AllowReason::Exact(entry));
        }
        let Some(parts) = origin::parse_request_origin(origin) else {
            return Err(DenyReason::MalformedOrigin);
        };
        if self.any {
            return Ok(AllowReason::AnyOrigin);
        }
        if !self.wildcards.is_empty() {
            // Every suffix of the host that starts after a dot: `a.b.example.com` probes
            // `b.example.com`, `example.com`, `com`. The part left of the suffix is then one or
            // more whole, non-empty labels, because the host was checked to have no empty label.
            let host = parts.host;
            for (i, _) in host.match_indices('.') {
                let Some(entries) = self.wildcards.get(&host[i + 1..]) else {
                    continue;
                };
                if let Some(w) = entries
                    .iter()
                    .find(|w| w.scheme == parts.scheme && w.port.as_deref() == parts.port)
                {
                    return Ok(AllowReason::Wildcard(&w.pattern));
                }
            }
        }
        if let Some(re) = &self.regexes
            && re.set.is_match(origin)
            && let Some((_, src)) = re.each.iter().find(|(r, _)| r.is_match(origin))
        {
            return Ok(AllowReason::Regex(src));
        }
        Err(DenyReason::OriginNotAllowed)
    }
}

/// The names in `Access-Control-Request-Headers` field lines: comma-separated, optional
/// whitespace around each, empty elements ignored.
pub(crate) fn request_header_names<'a>(lines: &'a [&'a str]) -> HeaderNames<'a> {
    HeaderNames { lines, rest: "" }
}

/// Iterator behind [`request_header_names`]; a byte scanner, as this runs on every preflight.
#[derive(Debug, Clone)]
pub(crate) struct HeaderNames<'a> {
    lines: &'a [&'a str],
    /// What is left of the line being read.
    rest: &'a str,
}

impl<'a> Iterator for HeaderNames<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let bytes = self.rest.as_bytes();
            let start = bytes
                .iter()
                .position(|&b| !matches!(b, b' ' | b'\t' | b','));
            let Some(start) = start else {
                let (first, others) = self.lines.split_first()?;
                self.rest = first;
                self.lines = others;
                continue;
            };
            let mut end = start;
            let mut name_end = start;
            while let Some(&b) = bytes.get(end) {
                if b == b',' {
                    break;
                }
                end += 1;
                if !matches!(b, b' ' | b'\t') {
                    name_end = end;
                }
            }
            // `start`, `name_end` and `end` sit next to ASCII bytes, so all are char boundaries.
            let name = &self.rest[start..name_end];
            self.rest = &self.rest[end..];
            return Some(name);
        }
    }
}

/// RFC 9110 `tchar`, indexed by byte.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    table
};

/// An RFC 9110 token: what a method or a header name must be.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| TCHAR[usize::from(b)])
}

/// A fast non-cryptographic hash (the rustc "Fx" multiply-rotate scheme) for the origin tables.
///
/// SipHash's flooding resistance protects tables that attackers can insert into; these tables
/// are built once from the policy and only probed with request data, so a crafted origin can at
/// worst collide with entries the policy itself wrote.
#[derive(Debug, Clone, Copy, Default)]
struct FastHash;

impl std::hash::BuildHasher for FastHash {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

#[derive(Debug)]
struct FxHasher(u64);

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests;
