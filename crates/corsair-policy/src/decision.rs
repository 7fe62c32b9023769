//! What the engine decided, borrowed from the compiled policy and the request so that an allowed
//! simple request costs no allocation.

use crate::model::Mode;

/// How the request relates to CORS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// No `Origin` header.
    NotCors,
    /// `Origin` host and port equal the `Host` header.
    SameOrigin,
    /// `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    Preflight,
    /// Any other cross-origin request.
    Actual,
}

/// Why an origin (and the rest of the request) was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowReason<'a> {
    /// `allowOrigins` contains `*`.
    AnyOrigin,
    /// An exact entry of `allowOrigins`.
    Exact(&'a str),
    /// A wildcard entry of `allowOrigins`.
    Wildcard(&'a str),
    /// An entry of `allowOriginRegexes`.
    Regex(&'a str),
    /// `allowNullOrigin: true`.
    NullOrigin,
}

/// Why the request was not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason<'a> {
    /// The origin matched no entry.
    OriginNotAllowed,
    /// `Origin` is not a serialized origin (nor `null`), or appears more than once.
    MalformedOrigin,
    /// `Access-Control-Request-Method` is not listed.
    MethodNotAllowed(&'a str),
    /// A requested header is not listed.
    HeaderNotAllowed(&'a str),
    /// `Authorization` was requested and only `*` is listed: `*` never covers it.
    AuthorizationNotCoveredByWildcard,
    /// `Access-Control-Request-Private-Network: true` while `allowPrivateNetwork` is off.
    PrivateNetworkNotAllowed,
}

/// The outcome of the CORS checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Not a cross-origin request (no `Origin`, or same-origin): nothing to check.
    NotApplicable,
    Allowed(AllowReason<'a>),
    Denied(DenyReason<'a>),
}

/// A header value that is either precomputed from the policy or echoes the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListValue<'a> {
    /// Precomputed at compile time (`GET, POST`, `*`, …) or a single echoed token.
    Text(&'a str),
    /// The `Access-Control-Request-Headers` field lines, echoed (credentials on, `*` listed).
    /// Rendered by joining the lines with `", "`.
    Lines(&'a [&'a str]),
}

/// Which request headers a response varies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vary {
    pub origin: bool,
    pub request_method: bool,
    pub request_headers: bool,
    pub request_private_network: bool,
}

/// The CORS response headers to set. Header names are lowercase, as HTTP/2 writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseHeaders<'a> {
    pub allow_origin: Option<&'a str>,
    pub allow_credentials: bool,
    pub allow_methods: Option<ListValue<'a>>,
    pub allow_headers: Option<ListValue<'a>>,
    pub expose_headers: Option<&'a str>,
    pub max_age: Option<&'a str>,
    pub allow_private_network: bool,
    pub vary: Vary,
}

/// What the proxy must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Answer without calling the upstream (an allowed or rejected preflight, a rejected request).
    Respond { status: u16, headers: ResponseHeaders<'a> },
    /// Call the upstream, then: when `strip_upstream_cors`, remove every `Access-Control-*`
    /// header it set; set `headers`; merge `headers.vary` into its `Vary`.
    Forward { headers: ResponseHeaders<'a>, strip_upstream_cors: bool },
}

/// The engine's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    /// The mode of the matched rules.
    pub mode: Mode,
    /// `pathPrefix` of the route that matched, `None` for the top-level rules.
    pub route: Option<&'a str>,
    pub kind: RequestKind,
    pub verdict: Verdict<'a>,
    /// What `Enforce` mode does. In `DryRun` this is what would have been done.
    pub enforced: Action<'a>,
}

impl<'a> Decision<'a> {
    /// What to do now, with the mode applied: `DryRun` and `Off` forward untouched.
    pub fn action(&self) -> Action<'a> {
        match self.mode {
            Mode::Enforce => self.enforced,
            Mode::DryRun | Mode::Off => Action::Forward {
                headers: ResponseHeaders::default(),
                strip_upstream_cors: false,
            },
        }
    }
}

impl ResponseHeaders<'_> {
    /// Calls `f` with each header to set, name in lowercase, value rendered.
    pub fn for_each(&self, mut f: impl FnMut(&'static str, &dyn std::fmt::Display)) {
        let _ = &mut f;
        todo!("engine issue")
    }
}

/// Merges `add` into the existing `Vary` field lines, keeping their order and dropping duplicates
/// (case-insensitive). Returns `None` when nothing has to change. `*` absorbs everything.
pub fn merge_vary<'v>(existing: impl Iterator<Item = &'v str>, add: Vary) -> Option<String> {
    let _ = (existing, add);
    todo!("engine issue")
}
