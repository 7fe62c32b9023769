//! Prometheus metrics of the proxy, served on the admin port.
//!
//! The request counter's label sets are few (kind × decision × mode × status class), so each
//! is resolved once, on first use, and the duration histogram is kept in atomics: a request
//! costs three atomic adds, no lock and no hash.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::upstream::Failure;

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

/// Why the proxy ended a client connection on its own, to protect itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// An HTTP/2 client reset most of its streams after they were accepted, before their answer
    /// (CVE-2023-44487). Streams reset before they are accepted are h2's to bound: it ends such a
    /// connection itself (GOAWAY `ENHANCE_YOUR_CALM`), which this does not count.
    RapidReset,
    /// A message in flight moved no byte either way for the idle timeout.
    Stalled,
}

impl Dropped {
    const ALL: [Dropped; 2] = [Dropped::RapidReset, Dropped::Stalled];

    fn label(self) -> &'static str {
        match self {
            Dropped::RapidReset => "rapid_reset",
            Dropped::Stalled => "stalled",
        }
    }
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
    duration: Durations,
    upstream_errors: Family<CauseLabels, Counter>,
    dropped: Family<CauseLabels, Counter>,
    stalled_streams: Counter,
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
        let duration = Durations::default();
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
        // Zeros from the start, so that `increase()` counts a pod's first error.
        for cause in Failure::ALL.into_iter().filter_map(Failure::metric_label) {
            let _ = upstream_errors.get_or_create(&CauseLabels { cause });
        }
        let dropped = Family::<CauseLabels, Counter>::default();
        registry.register(
            "connections_dropped",
            "Client connections the proxy ended to protect itself, by cause: rapid_reset (an HTTP/2 client reset most of its streams after they were accepted, before their answer), stalled (a request or response in flight moved no byte for the idle timeout). Connections that h2 itself ends with GOAWAY ENHANCE_YOUR_CALM (streams reset before they are accepted, and its other limits) are not counted",
            dropped.clone(),
        );
        for why in Dropped::ALL {
            let _ = dropped.get_or_create(&CauseLabels { cause: why.label() });
        }
        let stalled_streams = Counter::default();
        registry.register(
            "http2_streams_stalled",
            "HTTP/2 streams the proxy reset (CANCEL) because they made no progress for the idle timeout, though their connection moved bytes",
            stalled_streams.clone(),
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
            "metadata.generation of the active policy (0: none loaded, or a document without one)",
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
            dropped,
            stalled_streams,
            reloads,
            generation,
            file_refused,
        }
    }

    pub fn request(&self, labels: &RequestLabels, took: Duration) {
        match labels.index().and_then(|i| self.resolved.get(i)) {
            Some(slot) => slot
                .get_or_init(|| self.requests.get_or_create(labels).clone())
                .inc(),
            None => self.requests.get_or_create(labels).inc(),
        };
        self.duration.observe(took);
    }

    pub fn upstream_error(&self, cause: &'static str) {
        self.upstream_errors
            .get_or_create(&CauseLabels { cause })
            .inc();
    }

    pub fn connection_dropped(&self, why: Dropped) {
        self.dropped
            .get_or_create(&CauseLabels { cause: why.label() })
            .inc();
    }

    /// The counter of stalled HTTP/2 streams, for the executor that resets them.
    pub(crate) fn stalled_streams(&self) -> Counter {
        self.stalled_streams.clone()
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

/// Finite upper bounds of `request_duration_seconds`' buckets: 0.5 ms doubling to 16.384 s
/// (preflights answered locally are sub-millisecond); a last bucket is `+Inf`.
const DURATION_BOUNDS: usize = 16;
const FIRST_BOUND_NANOS: u64 = 500_000;

/// `request_duration_seconds`: a classic histogram in atomic counts. prometheus-client's own
/// takes a mutex on every observation, which both workers of an unpinned proxy would take in
/// turn for every request.
#[derive(Clone, Debug)]
struct Durations(Arc<DurationCounts>);

#[derive(Debug)]
struct DurationCounts {
    /// Observations per bucket, not cumulative (the encoder sums them); the last is `+Inf`'s.
    buckets: [AtomicU64; DURATION_BOUNDS + 1],
    /// The sum of all observations in nanoseconds: an integer add, where an `f64` sum would
    /// take a compare-and-swap loop.
    sum_nanos: AtomicU64,
}

impl Default for Durations {
    fn default() -> Self {
        Durations(Arc::new(DurationCounts {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }))
    }
}

impl Durations {
    /// The upper bound of bucket `i`, in seconds, as the exposition writes it.
    fn bound(i: usize) -> f64 {
        if i < DURATION_BOUNDS {
            (FIRST_BOUND_NANOS << i) as f64 / 1e9
        } else {
            f64::INFINITY
        }
    }

    /// One request: its bucket found in whole nanoseconds, the same number added to the sum.
    fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = (0..DURATION_BOUNDS)
            .find(|&i| nanos <= FIRST_BOUND_NANOS << i)
            .unwrap_or(DURATION_BOUNDS);
        self.0.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for Durations {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Durations {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Read one by one while requests go on: `_count` is the buckets' own total, so it always
        // equals the `+Inf` bucket; `_sum` may lag or lead them by the requests in between.
        let buckets: [(f64, u64); DURATION_BOUNDS + 1] =
            std::array::from_fn(|i| (Self::bound(i), self.0.buckets[i].load(Ordering::Relaxed)));
        let count = buckets.iter().map(|&(_, n)| n).sum();
        // Nanoseconds to seconds: exact below 2^53 ns (104 days of summed request time).
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
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
        metrics.request(&labels, Duration::from_millis(1));
        metrics.request(&labels, Duration::from_millis(1));
        let text = metrics.encode().expect("encode");
        assert!(
            text.contains(
                "corsair_proxy_requests_total{kind=\"preflight\",decision=\"allowed\",mode=\"enforce\",status=\"2xx\"} 2"
            ),
            "{text}"
        );
    }

    /// Every cause is exported from the start, so that `increase()` counts a pod's first drop,
    /// and each drop lands on its own cause.
    #[test]
    fn dropped_connections_are_counted_by_cause_from_zero() {
        let metrics = Metrics::new();
        let series =
            |cause: &str| format!("corsair_proxy_connections_dropped_total{{cause=\"{cause}\"}}");
        let text = metrics.encode().expect("encode");
        for cause in ["rapid_reset", "stalled"] {
            assert!(text.contains(&format!("{} 0\n", series(cause))), "{text}");
        }
        assert!(
            text.contains("corsair_proxy_http2_streams_stalled_total 0\n"),
            "{text}"
        );
        metrics.connection_dropped(Dropped::Stalled);
        metrics.connection_dropped(Dropped::Stalled);
        metrics.connection_dropped(Dropped::RapidReset);
        metrics.stalled_streams().inc();
        let text = metrics.encode().expect("encode");
        assert!(
            text.contains(&format!("{} 2\n", series("stalled"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 1\n", series("rapid_reset"))),
            "{text}"
        );
        assert!(
            text.contains("corsair_proxy_http2_streams_stalled_total 1\n"),
            "{text}"
        );
    }

    #[test]
    fn durations_land_in_the_first_bucket_whose_bound_they_do_not_pass() {
        let metrics = Metrics::new();
        let labels = RequestLabels {
            kind: "actual",
            decision: "allowed",
            mode: "enforce",
            status: "2xx",
        };
        // 0.2 ms and exactly 0.5 ms in the first bucket, 0.7 ms in the second, 3 s in the
        // one of 4.096 s, 20 s past the last finite bound (16.384 s).
        for micros in [200, 500, 700, 3_000_000, 20_000_000] {
            metrics.request(&labels, Duration::from_micros(micros));
        }
        let text = metrics.encode().expect("encode");
        let line = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
                .to_owned()
        };
        let bucket = |le: &str| {
            line(&format!(
                "corsair_proxy_request_duration_seconds_bucket{{le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.0005"), "2");
        assert_eq!(bucket("0.001"), "3");
        assert_eq!(bucket("2.048"), "3");
        assert_eq!(bucket("4.096"), "4");
        assert_eq!(bucket("16.384"), "4");
        assert_eq!(bucket("+Inf"), "5");
        assert_eq!(line("corsair_proxy_request_duration_seconds_count"), "5");
        let sum: f64 = line("corsair_proxy_request_duration_seconds_sum")
            .parse()
            .expect("a number");
        assert!((sum - 23.0014).abs() < 1e-9, "sum {sum}");
        assert!(
            text.contains("# TYPE corsair_proxy_request_duration_seconds histogram"),
            "{text}"
        );
    }
}
