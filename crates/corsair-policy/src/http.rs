//! Typed header values for servers built on the `http` crate (feature `http`).
//!
//! A decision becomes response headers without formatting anything: values the policy
//! configures were rendered into `HeaderValue`s when it was compiled, `*`, `true` and every
//! `Vary` combination are statics, and values that echo the request are the request's own
//! `HeaderValue`s, cloned (a reference count, not a copy).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::decision::{AllowOrigin, ListValue, ResponseHeaders, Vary};

static TRUE: HeaderValue = HeaderValue::from_static("true");
static STAR: HeaderValue = HeaderValue::from_static("*");
/// Not among `http`'s constants.
pub static ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");

/// Every `Vary` value CORS adds, indexed by [`Vary::index`]; index 0 (nothing) is never used.
static VARY: [HeaderValue; 16] = [
    HeaderValue::from_static(""),
    HeaderValue::from_static("Origin"),
    HeaderValue::from_static("Access-Control-Request-Method"),
    HeaderValue::from_static("Origin, Access-Control-Request-Method"),
    HeaderValue::from_static("Access-Control-Request-Headers"),
    HeaderValue::from_static("Origin, Access-Control-Request-Headers"),
    HeaderValue::from_static("Access-Control-Request-Method, Access-Control-Request-Headers"),
    HeaderValue::from_static(
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    ),
    HeaderValue::from_static("Access-Control-Request-Private-Network"),
    HeaderValue::from_static("Origin, Access-Control-Request-Private-Network"),
    HeaderValue::from_static(
        "Access-Control-Request-Method, Access-Control-Request-Private-Network",
    ),
    HeaderValue::from_static(
        "Origin, Access-Control-Request-Method, Access-Control-Request-Private-Network",
    ),
    HeaderValue::from_static(
        "Access-Control-Request-Headers, Access-Control-Request-Private-Network",
    ),
    HeaderValue::from_static(
        "Origin, Access-Control-Request-Headers, Access-Control-Request-Private-Network",
    ),
    HeaderValue::from_static(
        "Access-Control-Request-Method, Access-Control-Request-Headers, \
         Access-Control-Request-Private-Network",
    ),
    HeaderValue::from_static(
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, \
         Access-Control-Request-Private-Network",
    ),
];

impl Vary {
    fn index(&self) -> usize {
        usize::from(self.origin)
            | usize::from(self.request_method) << 1
            | usize::from(self.request_headers) << 2
            | usize::from(self.request_private_network) << 3
    }

    /// The value of a fresh `Vary` field, `None` when CORS adds nothing.
    pub fn header_value(&self) -> Option<&'static HeaderValue> {
        match self.index() {
            0 => None,
            i => VARY.get(i),
        }
    }
}

/// The request's own values that an answer may echo, borrowed from its header map. Only those
/// the decision echoes are cloned (a reference count each).
#[derive(Clone, Copy)]
pub struct Echo<'a> {
    /// `Origin`.
    pub origin: Option<&'a HeaderValue>,
    /// `Access-Control-Request-Method`.
    pub request_method: Option<&'a HeaderValue>,
    /// `Access-Control-Request-Headers` as one value (several field lines joined by `", "`).
    /// Called only when the answer echoes it, since joining lines costs.
    pub request_headers: &'a dyn Fn() -> Option<HeaderValue>,
}

impl std::fmt::Debug for Echo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Echo")
            .field("origin", &self.origin)
            .field("request_method", &self.request_method)
            .finish_non_exhaustive()
    }
}

/// The CORS headers of one answer as owned values, detached from the policy and the request so
/// that both can be let go before the response is written.
#[derive(Debug, Clone, Default)]
pub struct HeaderValues {
    allow_origin: Option<HeaderValue>,
    allow_credentials: bool,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_private_network: bool,
    vary: Vary,
}

impl ResponseHeaders<'_> {
    /// The values to set, with echoed ones taken from `echo`. An echo the decision needs but
    /// `echo` lacks leaves that header out; the caller fills `echo` from the same request the
    /// engine decided on, so that does not happen.
    pub fn to_values(&self, echo: Echo<'_>) -> HeaderValues {
        let list =
            |value: &Option<ListValue<'_>>, echoed: &dyn Fn() -> Option<HeaderValue>| match value {
                None => None,
                Some(ListValue::Policy(rendered)) => Some(rendered.header_value().clone()),
                Some(ListValue::Any) => Some(STAR.clone()),
                Some(ListValue::Echo(_) | ListValue::Lines(_)) => echoed(),
            };
        HeaderValues {
            allow_origin: match self.allow_origin {
                None => None,
                Some(AllowOrigin::Any) => Some(STAR.clone()),
                Some(AllowOrigin::Echo(_)) => echo.origin.cloned(),
            },
            allow_credentials: self.allow_credentials,
            allow_methods: list(&self.allow_methods, &|| echo.request_method.cloned()),
            allow_headers: list(&self.allow_headers, echo.request_headers),
            expose_headers: self.expose_headers.map(|r| r.header_value().clone()),
            max_age: self.max_age.map(|r| r.header_value().clone()),
            allow_private_network: self.allow_private_network,
            vary: self.vary,
        }
    }
}

impl HeaderValues {
    /// `Vary` names this answer adds; merge them into the response's own `Vary`.
    pub fn vary(&self) -> Vary {
        self.vary
    }

    /// Whether any `Access-Control-*` header is set (a CORS answer, not a plain forward).
    pub fn is_empty(&self) -> bool {
        self.allow_origin.is_none()
            && !self.allow_credentials
            && self.allow_methods.is_none()
            && self.allow_headers.is_none()
            && self.expose_headers.is_none()
            && self.max_age.is_none()
            && !self.allow_private_network
    }

    /// Inserts every `Access-Control-*` header into `out`, replacing what was there. `Vary` is
    /// left to the caller, who knows whether to set it or merge it with the upstream's.
    pub fn insert_into(self, out: &mut HeaderMap) {
        // One `if` per header rather than a helper taking `Option`s: most answers set two or
        // three of the seven, and this runs on every request.
        if let Some(value) = self.allow_origin {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
        if self.allow_credentials {
            out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
        }
        if let Some(value) = self.allow_methods {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, value);
        }
        if let Some(value) = self.allow_headers {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
        }
        if let Some(value) = self.expose_headers {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
        }
        if let Some(value) = self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, value);
        }
        if self.allow_private_network {
            out.insert(ACCESS_CONTROL_ALLOW_PRIVATE_NETWORK.clone(), TRUE.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The static table says what `Display` says, for every combination.
    #[test]
    fn every_vary_value_matches_its_rendering() {
        for i in 1..16usize {
            let vary = Vary {
                origin: i & 1 != 0,
                request_method: i & 2 != 0,
                request_headers: i & 4 != 0,
                request_private_network: i & 8 != 0,
            };
            let value = vary
                .header_value()
                .map(|v| v.to_str().unwrap_or("not text"));
            assert_eq!(value, Some(vary.to_string().as_str()), "{vary:?}");
        }
        assert_eq!(Vary::default().header_value(), None);
    }
}
