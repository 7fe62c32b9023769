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
        if let Some(origin) = self.allow_origin {
            f("access-control-allow-origin", &origin);
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
            f("access-control-expose-headers", &expose);
        }
        if let Some(max_age) = self.max_age {
            f("access-control-max-age", &max_age);
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
            ListValue::Text(text) => f.write_str(text),
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
pub fn merge_vary<'v>(existing: impl Iterator<Item = &'v str>, add: Vary) -> Option<String> {
    let lines: Vec<&str> = existing.collect();
    let elements = || {
        lines
            .iter()
            .flat_map(|line| line.split(','))
            .map(|name| name.trim_matches([' ', '\t']))
            .filter(|name| !name.is_empty())
    };
    if elements().any(|name| name == "*") {
        // `Vary: *` already says the response varies on everything.
        let only_star = lines.len() == 1 && lines[0].trim_matches([' ', '\t']) == "*";
        return (!only_star).then(|| "*".to_owned());
    }
    let mut names: Vec<&str> = Vec::new();
    let mut duplicates = false;
    for name in elements() {
        if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            duplicates = true;
        } else {
            names.push(name);
        }
    }
    let before = names.len();
    for name in add.names() {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name);
        }
    }
    if names.len() == before && lines.len() <= 1 && !duplicates {
        return None;
    }
    Some(names.join(", "))
}
