//! Prometheus metrics of the proxy, served on the admin port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `corsair_proxy_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `preflight`, `actual`, `same_origin` or `no_origin`.
    pub kind: &'static str,
    /// `allowed`, `denied` or `not_applicable` (no CORS check needed).
    pub decision: &'static str,
    /// `enforce`, `dry_run` or `disabled`.
    pub mode: &'static str,
    /// `1xx` … `5xx`.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Histogram,
    upstream_errors: Family<CauseLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    generation: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("corsair_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests handled, by CORS request kind, decision, policy mode and status class",
            requests.clone(),
        );
        // 0.5 ms … ~16 s: preflights answered locally are sub-millisecond.
        let duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to sending its response headers",
            duration.clone(),
        );
        let upstream_errors = Family::<CauseLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests that failed to reach the upstream, by cause",
            upstream_errors.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads, by result (ok or failed)",
            reloads.clone(),
        );
        // Pre-create both results so a dashboard sees zeros rather than missing series.
        let _ = reloads.get_or_create(&ResultLabels { result: "ok" });
        let _ = reloads.get_or_create(&ResultLabels { result: "failed" });
        let generation = Gauge::default();
        registry.register(
            "policy_generation",
            "metadata.generation of the active policy (0: none loaded)",
            generation.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            upstream_errors,
            reloads,
            generation,
        }
    }

    pub fn request(&self, labels: &RequestLabels, seconds: f64) {
        self.requests.get_or_create(labels).inc();
        self.duration.observe(seconds);
    }

    pub fn upstream_error(&self, cause: &'static str) {
        self.upstream_errors
            .get_or_create(&CauseLabels { cause })
            .inc();
    }

    pub fn reload_ok(&self, generation: i64) {
        self.reloads
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        self.set_generation(generation);
    }

    pub fn reload_failed(&self) {
        self.reloads
            .get_or_create(&ResultLabels { result: "failed" })
            .inc();
    }

    pub fn set_generation(&self, generation: i64) {
        self.generation.set(generation);
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// `1xx` … `5xx` for a status code.
pub fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
