//! The CorsPolicy model, the CORS decision engine and the policy lints.
//!
//! Pure: no I/O, no async, no HTTP library. The proxy turns a request into a [`RequestInfo`],
//! asks a compiled [`Engine`] for a [`Decision`], and applies it; `corsair explain` prints it.
#![forbid(unsafe_code)]

pub mod model;

mod check;
mod decision;
mod engine;
mod load;
mod origin;
mod validate;

pub use check::{Checked, check_manifest, check_spec};
pub use decision::{
    Action, AllowReason, Decision, DenyReason, ListValue, RequestKind, ResponseHeaders, Vary,
    Verdict, merge_vary,
};
pub use engine::{DEFAULT_ALLOW_METHODS, DEFAULT_PREFLIGHT_STATUS, Engine, RequestInfo};
pub use load::{LoadError, Manifest, load_document, parse_manifests};
pub use model::{
    CorsPolicySpec, DisallowedRequests, Mode, PolicyDocument, RouteSpec, UnmatchedPreflights,
};
pub use validate::{Finding, MAX_AGE_BROWSER_CAP, Report, SPECIAL_USE_DOMAINS, Severity, validate};
