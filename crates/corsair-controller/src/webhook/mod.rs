//! The admission webhooks: `POST /inject` adds the corsair proxy to Pods, `POST /validate`
//! refuses invalid CorsPolicies with the engine's findings.
//!
//! The decisions are pure functions ([`inject()`], [`validate_policy`], [`review`]); [`serve`] puts
//! them behind HTTPS (rustls, HTTP/1.1 and HTTP/2) with a certificate that can be swapped at
//! runtime ([`CertStore`]).

pub(crate) mod inject;
mod metrics;
mod probe;
mod review;
mod server;
mod tls;
mod validate;

use std::sync::Arc;

pub use inject::{
    InjectConfig, InjectError, InjectOutcome, InjectedRecord, Injection, ParseSidecarModeError,
    PolicyLookup, PolicyPresence, SidecarMode, SidecarResources, inject, native_sidecars_supported,
};
pub use metrics::Metrics;
pub use probe::{ProbeError, ProbeTarget, probe};
pub use review::{ReviewError, Webhook, review};
pub use server::{WebhookError, serve};
pub use tls::{CertError, CertStore};
pub use validate::{PolicyValidation, ValidationOutcome, validate_policy};

/// Path of the mutating webhook (Pods).
pub const INJECT_PATH: &str = "/inject";
/// Path of the validating webhook (CorsPolicies).
pub const VALIDATE_PATH: &str = "/validate";

/// Everything a webhook request needs; cheap to clone (one per connection).
#[derive(Clone)]
pub struct WebhookState {
    config: Arc<InjectConfig>,
    metrics: Metrics,
    policies: Option<Arc<dyn PolicyLookup>>,
}

impl WebhookState {
    /// `config.sidecar_mode` should already be resolved ([`SidecarMode::resolve`]); an
    /// unresolved `Auto` injects a native sidecar.
    pub fn new(config: InjectConfig, metrics: Metrics) -> Self {
        Self {
            config: Arc::new(config),
            metrics,
            policies: None,
        }
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
            .finish_non_exhaustive()
    }
}
