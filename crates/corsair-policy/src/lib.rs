//! The CorsPolicy model, the CORS decision engine and the policy lints.
//!
//! Pure: no I/O, no async, no HTTP library (the optional `http` feature adds typed header
//! values from the `http` crate, for servers that answer with them). The proxy turns a request into a [`RequestInfo`],
//! asks a compiled [`Engine`] for a [`Decision`], and applies it; `corsair explain` prints it.
#![forbid(unsafe_code)]

pub mod model;

mod check;
mod decision;
mod engine;
#[cfg(feature = "http")]
pub mod http;
mod load;
mod origin;
mod validate;

pub use check::{Checked, check_manifest, check_spec, describe, schema_bounds};
pub use decision::{
    Action, AllowOrigin, AllowReason, Decision, DenyReason, ListValue, Rendered, RequestKind,
    ResponseHeaders, Vary, Verdict, merge_vary, write_merged_vary,
};
pub use engine::{
    DEFAULT_ALLOW_METHODS, DEFAULT_PREFLIGHT_STATUS, Engine, RequestInfo, is_token, route_path,
};
pub use load::{LoadError, Manifest, Positions, load_document, parse_manifests};
pub use model::{
    CorsPolicySpec, DisallowedRequests, Mode, PolicyDocument, RouteSpec, UnmatchedPreflights,
};
pub use validate::{
    Finding, MAX_AGE_BROWSER_CAP, Report, SPECIAL_USE_DOMAINS, Severity, regex_error_line, validate,
};
