//! The admission webhooks: `POST /inject` adds the corsair proxy to Pods, `POST /validate`
//! refuses invalid CorsPolicies with the engine's findings.
//!
//! The decisions are pure functions ([`inject()`], [`validate_policy`], [`review`]); [`serve`] puts
//! them behind HTTPS (rustls, HTTP/1.1 and HTTP/2) with a certificate that can be swapped at
//! runtime ([`CertStore`]); the server, its certificates and the probe need the `runtime`
//! feature.

pub(crate) mod inject;
mod metrics;
#[cfg(feature = "runtime")]
mod probe;
mod review;
#[cfg(feature = "runtime")]
mod server;
#[cfg(feature = "runtime")]
mod tls;
mod validate;

use std::sync::Arc;

pub use inject::{
    InjectConfig, InjectError, InjectOutcome, InjectedRecord, Injection, ParseSidecarModeError,
    PolicyLookup, PolicyPresence, SidecarMode, SidecarResources, above_limit, inject,
    native_sidecars_supported, quantity_value,
};
pub use metrics::Metrics;
#[cfg(feature = "runtime")]
pub use probe::{ProbeError, ProbeTarget, probe};
pub use review::{ReviewError, Webhook, review};
#[cfg(feature = "runtime")]
pub use server::{WebhookError, serve};
#[cfg(feature = "runtime")]
pub use tls::{CertError, CertStore};
pub use validate::{PolicyValidation, ValidationOutcome, validate_policy};

/// Path of the mutating webhook (Pods).
pub const INJECT_PATH: &str = "/inject";
/// Path of the validating webhook (CorsPolicies).
pub const VALIDATE_PATH: &str = "/validate";

/// Bounds on what one client can make the webhook server hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request body (AdmissionReview) read; a larger one gets 413.
    pub max_body_bytes: usize,
    /// Time for a request body to arrive once its head has; a slower one gets 408.
    pub body_timeout: std::time::Duration,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// An HTTP/2 connection without a request in flight for this long is closed with a GOAWAY,
    /// so that idle clients cannot keep every connection slot (an idle HTTP/1.1 one is closed
    /// by hyper's header timeout).
    pub idle_timeout: std::time::Duration,
}

impl Limits {
    /// The API server refuses request bodies over 3 MiB and stores objects of at most 1.5 MiB,
    /// so an AdmissionReview of a real object fits in 3 MiB.
    pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
    pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    /// Above the 90 s after which the API server's client drops an idle connection itself, so
    /// that in the common case the client closes first.
    pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            body_timeout: Self::DEFAULT_BODY_TIMEOUT,
            max_concurrent_streams: 32,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Everything a webhook request needs; cheap to clone (one per connection).
#[derive(Clone)]
pub struct WebhookState {
    config: Arc<InjectConfig>,
    metrics: Metrics,
    policies: Option<Arc<dyn PolicyLookup>>,
    limits: Limits,
}

impl WebhookState {
    /// `config.sidecar_mode` should already be resolved ([`SidecarMode::resolve`]); an
    /// unresolved `Auto` injects a native sidecar.
    pub fn new(config: InjectConfig, metrics: Metrics) -> Self {
        Self {
            config: Arc::new(config),
            metrics,
            policies: None,
            limits: Limits::default(),
        }
    }

    /// Replaces the default [`Limits`] of the server.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Lets the webhook warn when a pod names a CorsPolicy that does not exist.
    pub fn with_policy_lookup(mut self, lookup: Arc<dyn PolicyLookup>) -> Self {
        self.policies = Some(lookup);
        self
    }

    pub fn config(&self) -> &InjectConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState")
            .field("config", &self.config)
            .field("policy_lookup", &self.policies.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
