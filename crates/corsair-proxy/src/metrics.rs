//! Prometheus metrics of the proxy, served on the admin port.
//!
//! The request counter's label sets are few (kind × decision × mode × status class), so each
//! is resolved once, on first use, and a request then costs one atomic add: no lock, no hash.

use std::sync::OnceLock;

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

impl RequestLabels {
    const KINDS: [&str; 4] = ["preflight", "actual", "same_origin", "no_origin"];
    const DECISIONS: [&str; 3] = ["allowed", "denied", "not_applicable"];
    const MODES: [&str; 3] = ["enforce", "dry_run", "disabled"];
    const STATUSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    const COMBINATIONS: usize = 4 * 3 * 3 * 5;

    /// The position of this label set among all combinations; `None` for a value outside the
    /// known ones, which is then counted the slow way.
    fn index(&self) -> Option<usize> {
        let at = |values: &[&str], value: &str| values.iter().position(|v| *v == value);
        let kind = at(&Self::KINDS, self.kind)?;
        let decision = at(&Self::DECISIONS, self.decision)?;
        let mode = at(&Self::MODES, self.mode)?;
        let status = at(&Self::STATUSES, self.status)?;
        Some(((kind * 3 + decision) * 3 + mode) * 5 + status)
    }
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
    /// `requests`' series, indexed by [`RequestLabels::index`].
    resolved: Box<[OnceLock<Counter>]>,
    duration: Histogram,
    upstream_errors: Family<CauseLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    generation: Gauge,
    file_refused: Gauge,
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
        let file_refused = Gauge::default();
        registry.register(
            "policy_file_refused",
            "1 while the policy file on disk is one this proxy refused (the active policy is an older one, or allows no origin), else 0",
            file_refused.clone(),
        );
        Metrics {
            registry,
            requests,
            resolved: (0..RequestLabels::COMBINATIONS)
                .map(|_| OnceLock::new())
                .collect(),
            duration,
            upstream_errors,
            reloads,
            generation,
            file_refused,
        }
    }

    pub fn request(&self, labels: &RequestLabels, seconds: f64) {
        match labels.index().and_then(|i| self.resolved.get(i)) {
            Some(slot) => slot
                .get_or_init(|| self.requests.get_or_create(labels).clone())
                .inc(),
            None => self.requests.get_or_create(labels).inc(),
        };
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

    pub fn set_file_refused(&self, refused: bool) {
        self.file_refused.set(i64::from(refused));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_combination_has_its_own_slot() {
        let mut seen = std::collections::HashSet::new();
        for kind in RequestLabels::KINDS {
            for decision in RequestLabels::DECISIONS {
                for mode in RequestLabels::MODES {
                    for status in RequestLabels::STATUSES {
                        let labels = RequestLabels {
                            kind,
                            decision,
                            mode,
                            status,
                        };
                        let index = labels.index().expect("known labels");
                        assert!(index < RequestLabels::COMBINATIONS);
                        assert!(seen.insert(index), "{labels:?} shares slot {index}");
                    }
                }
            }
        }
    }

    #[test]
    fn resolved_counters_are_the_exported_series() {
        let metrics = Metrics::new();
        let labels = RequestLabels {
            kind: "preflight",
            decision: "allowed",
            mode: "enforce",
            status: "2xx",
        };
        metrics.request(&labels, 0.001);
        metrics.request(&labels, 0.001);
        let text = metrics.encode().expect("encode");
        assert!(
            text.contains(
                "corsair_proxy_requests_total{kind=\"preflight\",decision=\"allowed\",mode=\"enforce\",status=\"2xx\"} 2"
            ),
            "{text}"
        );
    }
}
