//! What the engine decided, borrowed from the compiled policy and the request so that an allowed
//! simple request costs no allocation.

use crate::model::Mode;

/// How the request relates to CORS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// No `Origin` header.
    NotCors,
    /// `Origin` host and port equal the request's host (`Host`, or the target's authority).
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

/// A response header value rendered once, when the policy is compiled, so that answering a
/// request never formats it. With the `http` feature it also holds the ready `HeaderValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    text: Box<str>,
    #[cfg(feature = "http")]
    value: http::HeaderValue,
}

impl Rendered {
    /// Renders `text`; gives it back when no header could carry it.
    pub(crate) fn new(text: String) -> Result<Rendered, String> {
        #[cfg(feature = "http")]
        {
            let Ok(value) = http::HeaderValue::from_str(&text) else {
                return Err(text);
            };
            // The first clone of a `Bytes` made from a `Vec` allocates its shared header; do it
            // now, so that cloning the value per request is only a reference count.
            drop(value.clone());
            Ok(Rendered {
                text: text.into_boxed_str(),
                value,
            })
        }
        #[cfg(not(feature = "http"))]
        {
            if text.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(text);
            }
            Ok(Rendered {
                text: text.into_boxed_str(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value as a header value, built when the policy was compiled.
    #[cfg(feature = "http")]
    pub fn header_value(&self) -> &http::HeaderValue {
        &self.value
    }
}

impl std::fmt::Display for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `Access-Control-Allow-Origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowOrigin<'a> {
    /// `*`: the rules allow every origin without credentials.
    Any,
    /// The request's own `Origin`, echoed (`null` included).
    Echo(&'a str),
}

impl std::fmt::Display for AllowOrigin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowOrigin::Any => f.write_str("*"),
            AllowOrigin::Echo(origin) => f.write_str(origin),
        }
    }
}

/// `Access-Control-Allow-Methods` or `-Headers`: from the policy, or echoing the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListValue<'a> {
    /// The list the policy configures, rendered at compile time (`GET, POST`, `*, X-Id`).
    Policy(&'a Rendered),
    /// `*` alone (`allowMethods: ["*"]` without credentials).
    Any,
    /// The requested method, echoed (`*` listed, credentials on).
    Echo(&'a str),
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
    pub allow_origin: Option<AllowOrigin<'a>>,
    pub allow_credentials: bool,
    pub allow_methods: Option<ListValue<'a>>,
    pub allow_headers: Option<ListValue<'a>>,
    pub expose_headers: Option<&'a Rendered>,
    pub max_age: Option<&'a Rendered>,
    pub allow_private_network: bool,
    pub vary: Vary,
}

/// What the proxy must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Answer without calling the upstream (an allowed or rejected preflight, a rejected request).
    Respond {
        status: u16,
        headers: ResponseHeaders<'a>,
    },
    /// Call the upstream, then: when `strip_upstream_cors`, remove every `Access-Control-*`
    /// header it set; set `headers`; merge `headers.vary` into its `Vary`.
    Forward {
        headers: ResponseHeaders<'a>,
        strip_upstream_cors: bool,
    },
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
    /// What to do now, with the mode applied: `DryRun` and `Disabled` forward untouched.
    pub fn action(&self) -> Action<'a> {
        match self.mode {
            Mode::Enforce => self.enforced,
            Mode::DryRun | Mode::Disabled => Action::Forward {
                headers: ResponseHeaders::default(),
                strip_upstream_cors: false,
            },
        }
    }
}

impl ResponseHeaders<'_> {
    /// Calls `f` with each header to set, name in lowercase, value rendered: the
    /// `access-control-*` headers first, then `vary` when it names anything.
    ///
    /// On a response the proxy builds itself ([`Action::Respond`]) every header is set as given.
    /// On a forwarded response the upstream may have its own `Vary`: merge with [`merge_vary`]
    /// instead of setting the `vary` given here, so that the response never has two `Vary` lines.
    pub fn for_each(&self, mut f: impl FnMut(&'static str, &dyn std::fmt::Display)) {
        if let Some(origin) = &self.allow_origin {
            f("access-control-allow-origin", origin);
        }
        if self.allow_credentials {
            f("access-control-allow-credentials", &"true");
        }
        if let Some(methods) = &self.allow_methods {
            f("access-control-allow-methods", methods);
        }
        if let Some(headers) = &self.allow_headers {
            f("access-control-allow-headers", headers);
        }
        if let Some(expose) = self.expose_headers {
            f("access-control-expose-headers", expose);
        }
        if let Some(max_age) = self.max_age {
            f("access-control-max-age", max_age);
        }
        if self.allow_private_network {
            f("access-control-allow-private-network", &"true");
        }
        if !self.vary.is_empty() {
            f("vary", &self.vary);
        }
    }
}

impl std::fmt::Display for ListValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListValue::Policy(rendered) => f.write_str(rendered.as_str()),
            ListValue::Any => f.write_str("*"),
            ListValue::Echo(text) => f.write_str(text),
            ListValue::Lines(lines) => {
                for (i, line) in lines.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(line)?;
                }
                Ok(())
            }
        }
    }
}

impl Vary {
    /// Whether the response varies on nothing CORS adds.
    pub fn is_empty(&self) -> bool {
        self.names().next().is_none()
    }

    /// The header names, in the canonical order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.origin, "Origin"),
            (self.request_method, "Access-Control-Request-Method"),
            (self.request_headers, "Access-Control-Request-Headers"),
            (
                self.request_private_network,
                "Access-Control-Request-Private-Network",
            ),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
    }
}

/// `Origin, Access-Control-Request-Method, …`: the value of a fresh `Vary` field.
impl std::fmt::Display for Vary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// Merges `add` into the existing `Vary` field lines, keeping their order and dropping duplicates
/// (case-insensitive). Returns `None` when nothing has to change. `*` absorbs everything.
///
/// A `Some` result is the single value that replaces every existing `Vary` line.
pub fn merge_vary<'v>(
    existing: impl Iterator<Item = &'v str> + Clone,
    add: Vary,
) -> Option<String> {
    let mut merged = String::new();
    match write_merged_vary(existing, add, &mut merged) {
        Ok(true) => Some(merged),
        Ok(false) | Err(_) => None,
    }
}

/// [`merge_vary`] writing into `out` instead of a new `String`, so that a caller with a buffer
/// of its own allocates nothing. Returns whether the lines must be replaced by what was written
/// (`false`: nothing was written and nothing has to change).
pub fn write_merged_vary<'v>(
    existing: impl Iterator<Item = &'v str> + Clone,
    add: Vary,
    out: &mut impl std::fmt::Write,
) -> Result<bool, std::fmt::Error> {
    let elements = || {
        existing
            .clone()
            .flat_map(|line| line.split(','))
            .map(|name| name.trim_matches([' ', '\t']))
            .filter(|name| !name.is_empty())
    };
    let lines = existing.clone().count();
    if elements().any(|name| name == "*") {
        // `Vary: *` already says the response varies on everything.
        let only_star = lines == 1
            && existing
                .clone()
                .all(|line| line.trim_matches([' ', '\t']) == "*");
        if only_star {
            return Ok(false);
        }
        out.write_str("*")?;
        return Ok(true);
    }
    // An element is a repeat when an earlier one equals it; lists are a handful of names.
    let is_repeat = |index: usize, name: &str| {
        elements()
            .take(index)
            .any(|earlier| earlier.eq_ignore_ascii_case(name))
    };
    let duplicates = elements().enumerate().any(|(i, name)| is_repeat(i, name));
    let missing = |name: &str| !elements().any(|e| e.eq_ignore_ascii_case(name));
    let adds = add.names().any(missing);
    if !adds && lines <= 1 && !duplicates {
        return Ok(false);
    }
    let mut first = true;
    let mut push = |name: &str, out: &mut dyn std::fmt::Write| -> std::fmt::Result {
        if !first {
            out.write_str(", ")?;
        }
        first = false;
        out.write_str(name)
    };
    for (i, name) in elements().enumerate() {
        if !is_repeat(i, name) {
            push(name, out)?;
        }
    }
    for name in add.names().filter(|n| missing(n)) {
        push(name, out)?;
    }
    Ok(true)
}
