//! The `CorsPolicy` model: what a user writes in YAML and what the controller renders as JSON.
//!
//! Field names follow the Gateway API's `HTTPCORSFilter` (GEP-1767). Every field of the rules is
//! optional in the model so that a route can tell "left out" (inherit the top level) from "set".
//! Defaults are applied when the policy is compiled, not here, so a rendered policy stays what the
//! user wrote.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `apiVersion` of a `CorsPolicy` manifest.
pub const API_VERSION: &str = "corsair.dev/v1alpha1";
/// `kind` of a `CorsPolicy` manifest.
pub const KIND: &str = "CorsPolicy";

/// Most items in a list of the CRD's schema. The API server holds every `CorsPolicy` to these
/// bounds before any webhook sees it (they bound the cost of its CEL rules), so `corsair check`
/// reports them too.
pub const MAX_LIST_ITEMS: usize = 128;
/// Most routes in the CRD's schema.
pub const MAX_ROUTES: usize = 64;
/// Longest string in the CRD's schema, in characters.
pub const MAX_STRING_LEN: usize = 512;
/// Longest `CorsPolicy` name (the CRD's rule): the name is also the value of a label on the
/// rendered ConfigMap, and label values hold at most 63 characters.
pub const MAX_NAME_LEN: usize = 63;

/// A `CorsPolicy` name: a lowercase DNS subdomain of at most [`MAX_NAME_LEN`] characters.
pub fn is_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// What to do with a preflight that the policy does not allow: `Reject` (default) or `Forward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum UnmatchedPreflights {
    /// Answer 403 without CORS headers; the upstream is not called.
    #[default]
    Reject,
    /// Pass a preflight from an origin the policy does not allow to the upstream, untouched; one
    /// from an allowed origin that asks for a method or header the policy refuses is still
    /// answered 403, so the upstream never grants what the policy refused.
    Forward,
}

/// What to do with a cross-origin, non-preflight request from an origin that is not allowed:
/// `Forward` (default) or `Reject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum DisallowedRequests {
    /// Forward it without CORS headers: the browser hides the response from the page.
    #[default]
    Forward,
    /// Answer 403 without calling the upstream.
    Reject,
}

/// Whether the policy is enforced: `Enforce` (default), `DryRun` or `Disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Mode {
    /// Decide and act on the decision.
    #[default]
    Enforce,
    /// Decide and record the decision, but forward everything unchanged.
    DryRun,
    /// Pass everything through untouched. (Not `Off`: kubectl reads YAML 1.1, where an unquoted
    /// `Off` is the boolean false.)
    Disabled,
}

/// Declares a struct carrying every CORS rule field, plus the given extra fields, so that the
/// top-level spec and the routes cannot drift apart.
macro_rules! with_cors_rules {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { $($extra:tt)* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            $($extra)*
            /// Exact origins (`https://app.example.com`), `*`, or host wildcards
            /// (`https://*.example.com`, where `*` stands for one or more whole DNS labels).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_origins: Option<Vec<String>>,
            /// Regular expressions (Rust `regex` syntax) matched against the whole origin.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_origin_regexes: Option<Vec<String>>,
            /// Whether `Origin: null` (sandboxed iframes, `file:` pages) may be allowed. Default false.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_null_origin: Option<bool>,
            /// Method tokens, matched case-sensitively, or `*`. GET, HEAD and POST pass a preflight
            /// whatever the list says, as browsers allow them after any successful preflight.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_methods: Option<Vec<String>>,
            /// Header names, matched case-insensitively, or `*` (which never covers `Authorization`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_headers: Option<Vec<String>>,
            /// Response headers the page may read, or `*`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub expose_headers: Option<Vec<String>>,
            /// Whether credentialed requests (cookies, HTTP auth) are allowed. Default false.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_credentials: Option<bool>,
            /// Seconds a browser may cache a preflight answer. Left out: no `Access-Control-Max-Age`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            // The maximum is the schema's own: the API server drops `format: uint32`, and a
            // larger value it stored would fail every list of CorsPolicies the controller reads.
            #[schemars(range(min = 0, max = 4_294_967_295u32))]
            pub max_age: Option<u32>,
            /// Answer `Access-Control-Request-Private-Network: true` with
            /// `Access-Control-Allow-Private-Network: true`. Default false.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_private_network: Option<bool>,
            /// Status of an allowed preflight: 200 (default) or 204.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub preflight_status: Option<u16>,
            /// What to do with a preflight the policy does not allow. Default `Reject`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub unmatched_preflights: Option<UnmatchedPreflights>,
            /// What to do with a request from an origin that is not allowed. Default `Forward`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub disallowed_requests: Option<DisallowedRequests>,
            /// `Enforce` (default), `DryRun` or `Disabled`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub mode: Option<Mode>,
        }
    };
}

with_cors_rules! {
    /// The spec of a `CorsPolicy`: rules for every path, and per-path-prefix routes that override them.
    pub struct CorsPolicySpec {
        /// Per-path rules. The longest matching `pathPrefix` wins, matched on whole path segments;
        /// fields a route leaves out are inherited from the top level.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub routes: Vec<RouteSpec>,
    }
}

with_cors_rules! {
    /// Rules for the requests whose path starts with `pathPrefix` (on whole segments).
    pub struct RouteSpec {
        /// Path prefix such as `/api`; matches `/api` and `/api/x`, never `/apix`.
        pub path_prefix: String,
    }
}

/// The part of `metadata` that the policy tools use; everything else is ignored.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.generation` of the CorsPolicy the document was rendered from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// A whole `CorsPolicy` manifest, as applied with kubectl or rendered by the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDocument {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: DocumentMeta,
    pub spec: CorsPolicySpec,
}
