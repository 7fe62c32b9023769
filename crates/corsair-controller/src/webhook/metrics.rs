//! Prometheus metrics of the webhooks.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: &'static str,
}

/// Counters and latency of both webhooks; clones share the same series.
#[derive(Debug, Clone)]
pub struct Metrics {
    injections: Family<ResultLabels, Counter>,
    validations: Family<ResultLabels, Counter>,
    latency: Family<WebhookLabels, Histogram>,
}

impl Metrics {
    /// Registers `corsair_webhook_injections_total{result}`,
    /// `corsair_webhook_validations_total{result}` and
    /// `corsair_webhook_request_duration_seconds{webhook}` in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "corsair_webhook_injections",
            "Pods seen by the injecting webhook, by result (injected, already_injected, skipped_host_network, skipped_excluded_namespace, skipped_no_policy, skipped_mirror_pod, skipped_windows, denied, error)",
            metrics.injections.clone(),
        );
        registry.register(
            "corsair_webhook_validations",
            "CorsPolicies seen by the validating webhook, by result (accepted, accepted_with_warnings, denied, error)",
            metrics.validations.clone(),
        );
        registry.register(
            "corsair_webhook_request_duration_seconds",
            "Time to answer one AdmissionReview, by webhook (inject, validate)",
            metrics.latency.clone(),
        );
        metrics
    }

    /// Metrics that are counted but exported nowhere (tests, benchmarks).
    pub fn unregistered() -> Self {
        Self {
            injections: Family::default(),
            validations: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            }),
        }
    }

    pub(crate) fn injection(&self, result: &'static str) {
        self.injections
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub(crate) fn validation(&self, result: &'static str) {
        self.validations
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub(crate) fn observe(&self, webhook: &'static str, seconds: f64) {
        self.latency
            .get_or_create(&WebhookLabels { webhook })
            .observe(seconds);
    }

    /// How many pods got `result` (a [`crate::webhook::InjectOutcome::metric_label`], `denied` or `error`).
    pub fn injections(&self, result: &'static str) -> u64 {
        self.injections
            .get_or_create(&ResultLabels { result })
            .get()
    }

    /// How many CorsPolicies got `result`.
    pub fn validations(&self, result: &'static str) -> u64 {
        self.validations
            .get_or_create(&ResultLabels { result })
            .get()
    }
}
