//! The compiled policy and the decision function.
//!
//! `rules` holds one level of rules and the CORS checks, `origins` the origin tables, `tokens`
//! the byte scanners; this module picks the level (route) for a path and compiles the whole.

mod origins;
mod rules;
mod tokens;

pub(crate) use tokens::is_token;
#[cfg(test)]
use tokens::request_header_names;

use crate::decision::Decision;
use crate::model::CorsPolicySpec;
use crate::validate::{self, Finding, Report, Severity};
use rules::Rules;

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
        if self.routes.is_empty() {
            return (None, &self.top);
        }
        let path = route_path(path);
        self.routes
            .iter()
            .find(|r| prefix_matches(&r.prefix, &path))
            .map_or((None, &self.top), |r| {
                (Some(r.path_prefix.as_str()), &r.rules)
            })
    }
}

/// The path a request's route is chosen by: `path` itself, or, when it could name a different
/// path to the application than it spells, that path ([`canonical_path`]).
pub fn route_path(path: &str) -> std::borrow::Cow<'_, str> {
    if needs_canonical(path) {
        std::borrow::Cow::Owned(canonical_path(path))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

/// Whether `path` could name, to the application, a different path than it spells: a
/// percent-escape, a `;` parameter, an empty, `.` or `..` segment.
fn needs_canonical(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%' || b == b';' || (b == b'/' && matches!(bytes.get(i + 1), Some(b'/' | b'.')))
    })
}

/// The path routes are matched against, as an application's router is likely to see it:
/// every percent-escape decoded (`%2F` too, as Go's and others' routers do), `;` parameters cut
/// from each segment (as Tomcat and Spring do), empty and `.` segments dropped and `..` resolved
/// (RFC 3986 §5.2.4). Browsers send all of these as written, so a route matched on the raw path
/// could be dodged: `/%69nternal` or `/internal;x/` reaching the application's `/internal`
/// under the top level's rules. Case is kept: prefixes match case-sensitively, as the Gateway
/// API's `PathPrefix` does. Allocates, so only for the paths [`needs_canonical`] picks.
fn canonical_path(path: &str) -> String {
    let raw = path.as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits: the value fits a byte.
                decoded.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        let segment = segment.split(|&b| b == b';').next().unwrap_or_default();
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            name => segments.push(name),
        }
    }
    let mut canonical = String::with_capacity(decoded.len() + 1);
    for segment in segments {
        canonical.push('/');
        canonical.push_str(&String::from_utf8_lossy(segment));
    }
    if canonical.is_empty() {
        canonical.push('/');
    }
    canonical
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
pub(crate) struct CompileError {
    pub(crate) field: &'static str,
    pub(crate) message: String,
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

#[cfg(test)]
mod tests;
