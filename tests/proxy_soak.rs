//! The soak (`make soak`, not part of `make test`): mixed load against the real `corsair proxy`
//! binary for `SOAK_SECONDS` (default 600), with the policy replaced every
//! `SOAK_RELOAD_SECONDS` (default 30) by a ConfigMap-style `..data` swap, while the proxy's
//! resident memory and open file descriptors are sampled every `SOAK_SAMPLE_SECONDS` (10).
//!
//! Verdict, after a warm-up of `SOAK_WARMUP_SECONDS` (default 120): RSS and open fds are flat,
//! meaning (1) the least-squares slope of the samples is below 64 KiB/min for RSS and below
//! 0.5 fd/min, and (2) no sample exceeds the largest warm-up sample by more than 4 MiB of RSS or
//! 16 fds. `SOAK_KINDS` (e.g. `simple,h2c`) keeps only some kinds of requests. Besides, no request goes without an answer, and no answer comes from an older policy
//! than one already seen. The series is printed and written to `target/soak/series.tsv`.

mod harness;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use corsair_runtime::testing::upstream::Upstream;
use harness::load::{Kind, Load, table};
use harness::{ALLOWED, ProxyProcess, policy};

fn env_secs(name: &str, default: f64) -> Duration {
    Duration::from_secs_f64(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// The kubelet's way of updating a ConfigMap volume: new directory, `..data` swapped.
fn kubelet_write(dir: &Path, version: usize, content: &str) {
    let name = format!("..v{version}");
    let target = dir.join(&name);
    std::fs::create_dir(&target).expect("version dir");
    std::fs::write(target.join("policy.yaml"), content).expect("write policy");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&name, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("atomic swap of ..data");
    let link = dir.join("policy.yaml");
    if !link.exists() {
        std::os::unix::fs::symlink("..data/policy.yaml", &link).expect("policy symlink");
    }
    // The kubelet removes the previous version.
    if version > 0 {
        let _ = std::fs::remove_dir_all(dir.join(format!("..v{}", version - 1)));
    }
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    sent: usize,
}

/// Least-squares slope of `y` against `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "10 minutes; run with `make soak`"]
async fn soak() {
    let duration = env_secs("SOAK_SECONDS", 600.0);
    let reload_every = env_secs("SOAK_RELOAD_SECONDS", 30.0);
    let sample_every = env_secs("SOAK_SAMPLE_SECONDS", 10.0);
    let warmup = env_secs("SOAK_WARMUP_SECONDS", 120.0);

    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tags: Vec<String> = (0..=duration.as_secs() / reload_every.as_secs().max(1) + 1)
        .map(|i| format!("x-policy-{i}"))
        .collect();
    kubelet_write(dir.path(), 0, &policy(ALLOWED, &tags[0], ""));
    let proxy = ProxyProcess::start(&dir.path().join("policy.yaml"), &upstream.uri(), &[], None);
    let mut workers = vec![
        Kind::Simple,
        Kind::Simple,
        Kind::Preflight,
        Kind::Denied,
        Kind::Stream,
        Kind::WebSocket,
        Kind::H2,
        Kind::H2,
    ];
    // SOAK_KINDS=simple,h2c,…: only these kinds (to find which one a growth comes from).
    if let Ok(kinds) = std::env::var("SOAK_KINDS") {
        workers.retain(|k| kinds.split(',').any(|name| name == k.name()));
    }
    let order: Vec<&str> = tags.iter().map(String::as_str).collect();
    let load = Load::start_with_pause(proxy.listen, &workers, &order, Duration::from_millis(20));

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut next_reload = reload_every;
    let mut version = 0;
    eprintln!("   time     RSS KiB   fds   requests");
    while started.elapsed() < duration {
        let now = started.elapsed();
        if now >= next_sample {
            let sample = Sample {
                at: now,
                rss_kib: proxy.rss_kib(),
                fds: proxy.open_fds(),
                sent: load.sent(),
            };
            eprintln!(
                "{:>6.0} s  {:>9}  {:>4}  {:>9}",
                sample.at.as_secs_f64(),
                sample.rss_kib,
                sample.fds,
                sample.sent
            );
            samples.push(sample);
            next_sample += sample_every;
        }
        if now >= next_reload {
            version += 1;
            kubelet_write(dir.path(), version, &policy(ALLOWED, &tags[version], ""));
            next_reload += reload_every;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = load.sent();
    let (counts, regressions) = load.finish().await;
    let reloads_ok = proxy.log_count("policy reloaded");

    // The series, for docs/reliability.md.
    let mut tsv = String::from("seconds\trss_kib\tfds\trequests\n");
    for s in &samples {
        let _ = writeln!(
            tsv,
            "{:.0}\t{}\t{}\t{}",
            s.at.as_secs_f64(),
            s.rss_kib,
            s.fds,
            s.sent
        );
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak");
    std::fs::create_dir_all(&out).expect("target/soak");
    std::fs::write(out.join("series.tsv"), &tsv).expect("write series");
    std::fs::write(out.join("counts.md"), table(&counts, &["soak"])).expect("write counts");

    let warm: Vec<&Sample> = samples.iter().filter(|s| s.at < warmup).collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= warmup).collect();
    assert!(
        after.len() >= 3,
        "too few samples after the warm-up: lengthen SOAK_SECONDS"
    );
    let warm_rss = warm.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let warm_fds = warm.iter().map(|s| s.fds).max().unwrap_or(0);
    let max_rss = after.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let max_fds = after.iter().map(|s| s.fds).max().unwrap_or(0);
    let minutes = |s: &Sample| s.at.as_secs_f64() / 60.0;
    let rss_slope = slope(
        &after
            .iter()
            .map(|s| (minutes(s), s.rss_kib as f64))
            .collect::<Vec<_>>(),
    );
    let fd_slope = slope(
        &after
            .iter()
            .map(|s| (minutes(s), s.fds as f64))
            .collect::<Vec<_>>(),
    );
    let errors: u64 = counts
        .iter()
        .filter(|((_, _, outcome), _)| !outcome.starts_with(['1', '2']))
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "soak: {sent} requests in {:.0} s, {version} policy swaps ({reloads_ok} reloads logged), {errors} answers other than 1xx/2xx\n\
         RSS: warm-up max {warm_rss} KiB, after max {max_rss} KiB, slope {rss_slope:.1} KiB/min\n\
         fds: warm-up max {warm_fds}, after max {max_fds}, slope {fd_slope:.2}/min\n{}",
        started.elapsed().as_secs_f64(),
        table(&counts, &["soak"])
    );
    assert!(
        regressions.is_empty(),
        "older policy after a newer one: {regressions:?}"
    );
    assert_eq!(errors, 0, "every request answered 1xx/2xx: {counts:?}");
    assert_eq!(reloads_ok, version, "every swap was reloaded");
    assert!(rss_slope < 64.0, "RSS grows by {rss_slope:.1} KiB/min");
    assert!(
        max_rss <= warm_rss + 4096,
        "RSS {max_rss} KiB vs {warm_rss} KiB in the warm-up"
    );
    assert!(fd_slope < 0.5, "open fds grow by {fd_slope:.2}/min");
    assert!(
        max_fds <= warm_fds + 16,
        "{max_fds} fds vs {warm_fds} in the warm-up"
    );
    drop(proxy);
}
