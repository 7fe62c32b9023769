//! One level of rules (the top level or a route): compiled once with inheritance and defaults
//! applied, and the CORS checks that decide a request against it.

use super::origins::OriginMatcher;
use super::tokens::{eq_lowercase, is_token, request_header_names};
use super::{CompileError, DEFAULT_ALLOW_METHODS, DEFAULT_PREFLIGHT_STATUS, RequestInfo};
use crate::decision::{
    Action, AllowOrigin, AllowReason, DenyReason, ListValue, Rendered, RequestKind,
    ResponseHeaders, Vary, Verdict,
};
use crate::model::{CorsPolicySpec, DisallowedRequests, Mode, RouteSpec, UnmatchedPreflights};
use crate::origin;

#[derive(Debug)]
pub(super) struct Rules {
    origins: OriginMatcher,
    methods: TokenList,
    headers: TokenList,
    /// `Access-Control-Expose-Headers`, rendered.
    expose: Option<Rendered>,
    credentials: bool,
    /// `Access-Control-Max-Age`, rendered.
    max_age: Option<Rendered>,
    private_network: bool,
    preflight_status: u16,
    unmatched_preflights: UnmatchedPreflights,
    disallowed_requests: DisallowedRequests,
    pub(super) mode: Mode,
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
    rendered: Option<Rendered>,
}

/// Picks the route's value, else the top level's.
macro_rules! inherit {
    ($spec:expr, $route:expr, $field:ident) => {
        $route
            .and_then(|r: &RouteSpec| r.$field.as_ref())
            .or($spec.$field.as_ref())
    };
}

/// Renders a response header value once, refusing text that no header could carry.
fn render(field: &'static str, text: String) -> Result<Rendered, CompileError> {
    Rendered::new(text).map_err(|text| CompileError {
        field,
        message: format!("{text:?} is not a valid header value"),
    })
}

impl Rules {
    pub(super) fn compile(
        spec: &CorsPolicySpec,
        route: Option<&RouteSpec>,
    ) -> Result<Rules, CompileError> {
        let empty = Vec::new();
        let credentials = inherit!(spec, route, allow_credentials)
            .copied()
            .unwrap_or(false);
        let origins = OriginMatcher::compile(
            inherit!(spec, route, allow_origins).unwrap_or(&empty),
            inherit!(spec, route, allow_origin_regexes).unwrap_or(&empty),
            inherit!(spec, route, allow_null_origin)
                .copied()
                .unwrap_or(false),
        )?;
        let methods = match inherit!(spec, route, allow_methods) {
            Some(methods) => TokenList::new("allowMethods", methods, false)?,
            None => {
                let defaults: Vec<String> = DEFAULT_ALLOW_METHODS
                    .iter()
                    .map(|m| (*m).to_owned())
                    .collect();
                TokenList::new("allowMethods", &defaults, false)?
            }
        };
        let headers = TokenList::new(
            "allowHeaders",
            inherit!(spec, route, allow_headers).unwrap_or(&empty),
            true,
        )?;
        let expose = match inherit!(spec, route, expose_headers).filter(|e| !e.is_empty()) {
            Some(expose) => Some(render("exposeHeaders", expose.join(", "))?),
            None => None,
        };
        let max_age = match inherit!(spec, route, max_age) {
            Some(seconds) => Some(render("maxAge", seconds.to_string())?),
            None => None,
        };
        let wildcard_answer = origins.any && !credentials;
        Ok(Rules {
            origins,
            methods,
            headers,
            expose,
            credentials,
            max_age,
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

    /// `Vary` of an allowed actual request's answer: none under `*`, whose answer is the same for
    /// every allowed origin.
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

    pub(super) fn decide<'a>(
        &'a self,
        req: &RequestInfo<'a>,
    ) -> (RequestKind, Verdict<'a>, Action<'a>) {
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

    /// A request without an `Origin`, or from the same origin: no CORS headers, and `Vary:
    /// Origin` even under `*`, where a cross-origin request would get `Access-Control-Allow-Origin:
    /// *` and this one gets none. Without it a cache could hand this response to a cross-origin
    /// request, which the browser would then refuse for as long as it is cached.
    fn plain_forward<'a>(&self) -> Action<'a> {
        Action::Forward {
            headers: ResponseHeaders {
                vary: self.denied_vary(),
                ..ResponseHeaders::default()
            },
            strip_upstream_cors: true,
        }
    }

    /// `Vary` of every answer without `Access-Control-Allow-Origin`: `Origin`, even under `*`
    /// (a `null` or malformed origin is refused there too), so that a cache never hands it to a
    /// request the policy allows.
    fn denied_vary(&self) -> Vary {
        Vary {
            origin: true,
            ..Vary::default()
        }
    }

    fn allow_origin<'a>(&self, origin: &'a str) -> AllowOrigin<'a> {
        if self.wildcard_answer {
            AllowOrigin::Any
        } else {
            AllowOrigin::Echo(origin)
        }
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
                        allow_origin: Some(self.allow_origin(origin)),
                        allow_credentials: self.credentials,
                        expose_headers: self.expose.as_ref(),
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
                            vary: self.denied_vary(),
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
        let origin_allowed = checked.is_ok();
        match checked.and_then(|reason| self.check_preflight(req).map(|()| reason)) {
            Ok(reason) => (
                Verdict::Allowed(reason),
                self.allowed_preflight(origin, req),
            ),
            Err(reason) => {
                let action = match self.unmatched_preflights {
                    // The upstream owns the answer to an origin the policy does not list:
                    // nothing is added or removed.
                    UnmatchedPreflights::Forward if !origin_allowed => Action::Forward {
                        headers: ResponseHeaders::default(),
                        strip_upstream_cors: false,
                    },
                    // A listed origin asking for more than the policy allows is the policy's
                    // to refuse, as a gateway answers every preflight of its origins itself:
                    // the upstream's own CORS headers must not grant what the policy refused.
                    UnmatchedPreflights::Forward | UnmatchedPreflights::Reject => Action::Respond {
                        status: 403,
                        headers: ResponseHeaders {
                            vary: self.preflight_vary(),
                            ..ResponseHeaders::default()
                        },
                    },
                };
                (Verdict::Denied(reason), action)
            }
        }
    }

    /// Everything but the origin, which the caller checked.
    fn check_preflight<'a>(&'a self, req: &RequestInfo<'a>) -> Result<(), DenyReason<'a>> {
        let method = req.request_method.unwrap_or_default();
        // GET, HEAD and POST pass after any successful preflight, whatever the answer lists
        // (Fetch, CORS-preflight fetch): refusing them would refuse a page's JSON POST while its
        // form POST, never preflighted, goes through. Listed methods are tokens; only `*`
        // needs the request's checked.
        let safelisted = DEFAULT_ALLOW_METHODS.contains(&method);
        if !safelisted
            && (!self.methods.allows_method(method) || (self.methods.any && !is_token(method)))
        {
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
            req.request_method.map(ListValue::Echo)
        } else if self.methods.any {
            Some(ListValue::Any)
        } else {
            self.methods.rendered.as_ref().map(ListValue::Policy)
        };
        let allow_headers = if self.headers.any && echo {
            let requested_any = request_header_names(req.request_headers).next().is_some();
            requested_any.then_some(ListValue::Lines(req.request_headers))
        } else {
            // With `*` and no credentials this is `*` (plus any names listed beside it, which
            // matters for `Authorization`).
            self.headers.rendered.as_ref().map(ListValue::Policy)
        };
        Action::Respond {
            status: self.preflight_status,
            headers: ResponseHeaders {
                allow_origin: Some(self.allow_origin(origin)),
                allow_credentials: self.credentials,
                allow_methods,
                allow_headers,
                expose_headers: self.expose.as_ref(),
                max_age: self.max_age.as_ref(),
                allow_private_network: req.request_private_network && self.private_network,
                vary: self.preflight_vary(),
            },
        }
    }
}

impl TokenList {
    fn new(
        field: &'static str,
        items: &[String],
        lowercase: bool,
    ) -> Result<TokenList, CompileError> {
        let any = items.iter().any(|i| i == "*");
        let rendered = if items.is_empty() {
            None
        } else {
            Some(render(field, items.join(", "))?)
        };
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
        Ok(TokenList {
            any,
            items,
            rendered,
        })
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
