//! Prometheus metrics of the reconcilers, served on the admin port's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of the reconcile metrics: which controller (`corspolicy`, `deployment`, ...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

/// Labels of the error counter: the controller and [`crate::Error::metric_label`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

/// Counters and histograms of the reconcilers. Cheap to clone: every field is an `Arc` inside.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<ControllerLabels, Histogram>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Pods with the opt-in label that run without the proxy, as the leader last saw them.
    pub pods_without_proxy: Gauge,
}

impl Metrics {
    /// Registers the metrics under the `corsair_controller` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
            }),
            leader: Gauge::default(),
            pods_without_proxy: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("corsair_controller");
        sub.register(
            "reconciles",
            "Reconciliations run",
            metrics.reconciles.clone(),
        );
        sub.register(
            "reconcile_errors",
            "Reconciliations that failed, by error kind",
            metrics.errors.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            metrics.duration.clone(),
        );
        sub.register(
            "leader",
            "1 while this replica runs the reconcilers",
            metrics.leader.clone(),
        );
        sub.register(
            "pods_without_proxy",
            "Pods with the opt-in label that run without the proxy (admitted while the injection webhook was unreachable), as the leader last saw them",
            metrics.pods_without_proxy.clone(),
        );
        metrics
    }

    /// Counts a reconciliation of `controller` and returns a guard that records its duration.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            histogram: self
                .duration
                .get_or_create(&ControllerLabels { controller })
                .clone(),
            start: std::time::Instant::now(),
        }
    }

    /// Counts a failed reconciliation.
    pub fn reconcile_failed(&self, controller: &'static str, error: &crate::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                error: error.metric_label(),
            })
            .inc();
    }
}

impl Default for Metrics {
    /// Metrics that are not registered anywhere (tests, benchmarks).
    fn default() -> Self {
        Metrics::new(&mut Registry::default())
    }
}

/// Records the time from its creation to its drop in the duration histogram.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: std::time::Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
