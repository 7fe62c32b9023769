//! The compiled policy and the decision function.

use crate::decision::Decision;
use crate::model::CorsPolicySpec;
use crate::validate::Report;

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

/// A policy compiled for fast decisions. Build once per policy version; share behind an `Arc`.
#[derive(Debug)]
pub struct Engine {}

impl Engine {
    /// Validates and compiles `spec`. On error the report lists every error (and the warnings).
    pub fn compile(spec: &CorsPolicySpec) -> Result<(Engine, Report), Report> {
        let _ = spec;
        todo!("engine issue")
    }

    /// Decides what to do with one request. Allocation-free for an allowed simple request.
    pub fn decide<'a>(&'a self, req: &RequestInfo<'a>) -> Decision<'a> {
        let _ = req;
        todo!("engine issue")
    }
}
