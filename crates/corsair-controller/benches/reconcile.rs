//! Reconcile 1,000 CorsPolicies against the in-memory mock API server and report the time
//! (total and per policy) and the process memory. Run: `bash benches/controller/run.sh`.
//!
//! Every reconcile does what it does in a cluster: compile the policy, server-side apply the
//! ConfigMap and the status, publish an Event. The mock answers at once, so the numbers are
//! the controller's own cost (engine, serialisation, HTTP client stack), without network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use corsair_controller::crd::CorsPolicy;
use corsair_controller::fixtures::{StaticIndex, mock_client};
use corsair_controller::metrics::Metrics;
use corsair_controller::reconcile::{Context, REPORTER, policy};
use futures::StreamExt;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;

const POLICIES: usize = 1_000;

fn policies() -> Vec<CorsPolicy> {
    (0..POLICIES)
        .map(|i| {
            let spec = serde_json::from_value(serde_json::json!({
                "allowOrigins": [format!("https://app{i}.example.com"), "https://*.example.org"],
                "allowMethods": ["GET", "POST", "PUT"],
                "allowHeaders": ["Content-Type", "Authorization"],
                "exposeHeaders": ["X-Request-Id"],
                "allowCredentials": true,
                "maxAge": 600,
                "routes": [{"pathPrefix": "/public", "allowOrigins": ["*"], "allowCredentials": false}],
            }));
            let spec = match spec {
                Ok(spec) => spec,
                Err(err) => panic!("benchmark policy: {err}"),
            };
            let mut p = CorsPolicy::new(&format!("policy-{i}"), spec);
            p.metadata.namespace = Some(format!("team-{}", i % 50));
            p.metadata.uid = Some(format!("00000000-0000-0000-0000-{i:012}"));
            p.metadata.generation = Some(1);
            p
        })
        .collect()
}

/// Resident set size and its peak, in KiB, from /proc/self/status.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn run(concurrency: usize) -> (Duration, usize) {
    let (client, server) = mock_client();
    let server = tokio::spawn(server.answer_everything());
    let reporter = Reporter {
        controller: REPORTER.into(),
        instance: Some("bench".into()),
    };
    let ctx = Arc::new(Context::new(
        client,
        reporter,
        Metrics::default(),
        Arc::new(StaticIndex::default()),
    ));
    let policies = policies();
    let start = Instant::now();
    let failures = futures::stream::iter(policies)
        .map(|p| policy::reconcile(Arc::new(p), ctx.clone()))
        .buffer_unordered(concurrency)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    let elapsed = start.elapsed();
    assert_eq!(failures, 0, "every reconcile succeeds against the mock");
    drop(ctx);
    let calls = server.await.unwrap_or(0);
    (elapsed, calls)
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => panic!("tokio runtime: {err}"),
    };
    let (rss_start, _) = rss_kib();
    // First, in a fresh heap: the controller's cache, a reflector store holding every policy.
    let mut writer = Writer::<CorsPolicy>::default();
    let store = writer.as_reader();
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in policies() {
        writer.apply_watcher_event(&watcher::Event::InitApply(p));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let (rss_store, _) = rss_kib();
    println!("## reconcile of {POLICIES} CorsPolicies against the mock API server");
    for concurrency in [1, 16] {
        // Median of five rounds, each with a fresh client and mock.
        let mut rounds: Vec<(Duration, usize)> =
            (0..5).map(|_| runtime.block_on(run(concurrency))).collect();
        rounds.sort();
        let (elapsed, calls) = rounds[rounds.len() / 2];
        println!(
            "concurrency {concurrency:>2} (median of 5): {:>7.1} ms total, {:>6.1} µs per policy, {:>6.0} policies/s, {calls} API calls",
            elapsed.as_secs_f64() * 1e3,
            elapsed.as_secs_f64() * 1e6 / POLICIES as f64,
            POLICIES as f64 / elapsed.as_secs_f64(),
        );
    }
    let (rss_after, hwm_after) = rss_kib();
    println!(
        "memory: RSS {rss_start} KiB at start, {rss_store} KiB with {} policies in a reflector store, \
         {rss_after} KiB after all reconcile rounds (peak {hwm_after} KiB)",
        store.len()
    );
}
