//! The compiled policy and the decision function.
//!
//! `rules` holds one level of rules and the CORS checks, `origins` the origin tables, `tokens`
//! the byte scanners; this module picks the level (route) for a path and compiles the whole.

mod origins;
mod path;
mod rules;
mod tokens;

pub use tokens::is_token;
#[cfg(test)]
use tokens::request_header_names;

use crate::decision::Decision;
use crate::model::CorsPolicySpec;
use crate::validate::{self, Finding, Report, Severity};
pub use path::route_path;
pub(crate) use path::{canonical_path, needs_canonical, normalize_prefix, prefix_matches};
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
    #[inline]
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
        if needs_canonical(path) {
            return self.rules_for_canonical(path);
        }
        self.route_of(path)
    }

    /// The route of a path spelled otherwise than the application reads it: rare, so kept off
    /// the common path, whose code it would otherwise widen.
    #[cold]
    #[inline(never)]
    fn rules_for_canonical(&self, path: &str) -> (Option<&str>, &Rules) {
        self.route_of(&path::canonical_path(path))
    }

    fn route_of(&self, path: &str) -> (Option<&str>, &Rules) {
        self.routes
            .iter()
            .find(|r| prefix_matches(&r.prefix, path))
            .map_or((None, &self.top), |r| {
                (Some(r.path_prefix.as_str()), &r.rules)
            })
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
