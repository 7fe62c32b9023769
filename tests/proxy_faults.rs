//! Faults under steady load against the real `corsair proxy` binary: the upstream dies and
//! comes back, the upstream stalls, the policy file is replaced with an invalid one, then a
//! valid one, then its ConfigMap `..data` symlink is swapped, and SIGTERM arrives.
//!
//! A load generator counts every request and every answer. Invariants: no request written to
//! the proxy goes unanswered except when SIGTERM closes its connection, every answer carries the
//! tag of the last good policy (never the invalid one, never an older one after a newer one),
//! and the proxy exits 0. `FAULT_PHASE_SECONDS` (default 1.5) sets the length of each phase;
//! docs/reliability.md records a run with 20.

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use corsair_runtime::testing::upstream::Upstream;
use harness::load::{Counts, Kind, Load, NOT_SENT, table};
use harness::{ALLOWED, ProxyProcess, policy};
use http_body_util::BodyExt;

const PHASES: [&str; 9] = [
    "steady (policy 1)",
    "upstream killed",
    "upstream back",
    "upstream stalled",
    "upstream unstalled",
    "invalid policy written",
    "policy 2 written",
    "..data swapped to policy 3",
    "SIGTERM",
];

/// Writes `content` as the kubelet does: a new timestamped directory, `..data` swapped to it
/// atomically, `policy.yaml` a symlink through `..data`.
fn kubelet_write(dir: &Path, version: &str, content: &str) {
    let target = dir.join(version);
    std::fs::create_dir(&target).expect("version dir");
    std::fs::write(target.join("policy.yaml"), content).expect("write policy");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("atomic swap of ..data");
    let link = dir.join("policy.yaml");
    if !link.exists() {
        std::os::unix::fs::symlink("..data/policy.yaml", &link).expect("policy symlink");
    }
}

/// Replaces the file inside the current `..data` directory by a rename (an editor's save).
fn replace_in_place(dir: &Path, content: &str) {
    let real = std::fs::canonicalize(dir.join("policy.yaml")).expect("resolve policy");
    let tmp = real.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, &real).expect("rename");
}

fn phase_counts(counts: &Counts, phase: usize) -> Vec<(&'static str, String, u64)> {
    counts
        .iter()
        .filter(|((p, _, _), _)| *p == phase)
        .map(|((_, kind, outcome), n)| (*kind, outcome.clone(), *n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_load_lose_nothing_and_keep_the_last_good_policy() {
    let phase_len = Duration::from_secs_f64(
        std::env::var("FAULT_PHASE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.5),
    );
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    kubelet_write(dir.path(), "..v1", &policy(ALLOWED, "x-policy-1", ""));
    let mut proxy = ProxyProcess::start(
        &dir.path().join("policy.yaml"),
        &upstream.uri(),
        &[
            "--upstream-timeout",
            "1",
            "--connect-timeout",
            "1",
            "--drain-timeout",
            "5",
        ],
        None,
    );
    let workers = [
        Kind::Simple,
        Kind::Simple,
        Kind::Simple,
        Kind::Simple,
        Kind::H2,
        Kind::H2,
        Kind::Preflight,
        Kind::Denied,
        Kind::Stream,
        Kind::WebSocket,
    ];
    let load = Load::start(
        proxy.listen,
        &workers,
        &["x-policy-1", "x-policy-2", "x-policy-3"],
    );
    let started = Instant::now();
    let step = |load: &Load, phase: usize| {
        load.phase(phase);
        eprintln!(
            "{:>6.1} s  phase {phase}: {}  ({} sent so far)",
            started.elapsed().as_secs_f64(),
            PHASES[phase],
            load.sent()
        );
    };

    step(&load, 0);
    tokio::time::sleep(phase_len).await;

    step(&load, 1);
    upstream.kill();
    tokio::time::sleep(phase_len).await;

    step(&load, 2);
    let upstream = upstream.restart().await;
    tokio::time::sleep(phase_len).await;

    step(&load, 3);
    upstream.stall(true);
    // Longer than the 1 s upstream timeout, so stalled requests end in 504s.
    tokio::time::sleep(phase_len.max(Duration::from_millis(1500))).await;

    step(&load, 4);
    upstream.stall(false);
    tokio::time::sleep(phase_len).await;

    step(&load, 5);
    // Invalid: an origin with a path. Tagged, so an answer under it would show.
    replace_in_place(
        dir.path(),
        &policy("https://app.example.com/path", "x-policy-bad", ""),
    );
    tokio::time::sleep(phase_len.max(Duration::from_millis(1500))).await;

    step(&load, 6);
    replace_in_place(dir.path(), &policy(ALLOWED, "x-policy-2", ""));
    tokio::time::sleep(phase_len.max(Duration::from_millis(1500))).await;

    step(&load, 7);
    kubelet_write(dir.path(), "..v3", &policy(ALLOWED, "x-policy-3", ""));
    tokio::time::sleep(phase_len.max(Duration::from_millis(1500))).await;

    step(&load, 8);
    // One response is surely in flight at SIGTERM: a 400 KiB stream (2 ms between chunks) whose
    // head has arrived. The load's own requests may all finish before the signal lands.
    let mut slow = harness::H1::open(proxy.listen)
        .await
        .expect("a connection before SIGTERM");
    let in_flight = slow
        .send_raw(harness::get("/stream?chunks=100"))
        .await
        .expect("the stream's head");
    proxy.sigterm();
    let drained = tokio::spawn(async move {
        let status = in_flight.status();
        let body = in_flight
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len());
        (status, body.map_err(|e| e.to_string()))
    });
    let status = tokio::task::spawn_blocking(move || {
        let status = proxy.wait_exit(Duration::from_secs(10));
        (proxy, status)
    })
    .await
    .expect("waiter");
    let (proxy, status) = status;
    // Keep the load on a little after the exit, to see connections refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = load.sent();
    let (counts, regressions) = load.finish().await;
    eprintln!(
        "fault run: {sent} requests sent in {:.1} s\n{}",
        started.elapsed().as_secs_f64(),
        table(&counts, &PHASES)
    );

    let status = status.expect("the proxy exits within 10 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        regressions.is_empty(),
        "older policy after a newer one: {regressions:?}"
    );

    for ((phase, kind, outcome), n) in &counts {
        let phase = *phase;
        let bad = outcome.contains("x-policy-bad")
            || outcome.contains("WITH CORS HEADERS")
            || outcome.contains("SHORT BODY")
            || outcome == "timeout"
            || outcome.contains("garbled");
        assert!(!bad, "{}: {kind}: {outcome} ×{n}", PHASES[phase]);
        // A streamed body can only be cut off (the head is already out) when the upstream dies
        // in the middle of it; the client sees the error.
        let outcome = &match outcome.strip_suffix(" body cut off") {
            Some(head) => {
                assert!(
                    phase == 1 && *kind == "stream",
                    "{}: {kind}: {outcome} ×{n}",
                    PHASES[phase]
                );
                head.to_owned()
            }
            None => outcome.clone(),
        };
        let status: Option<u16> = outcome.get(..3).and_then(|s| s.parse().ok());
        // Before SIGTERM, every request written got an HTTP answer.
        if phase < 8 {
            assert!(
                status.is_some(),
                "{}: {kind}: {outcome} ×{n}: a request without an answer",
                PHASES[phase]
            );
        }
        // Answers name the policy in force: 1 until policy 2 was written, then 2, then 3.
        if let Some(status) = status {
            let tag_ok = match (phase, *kind) {
                // Denied requests carry no CORS headers.
                (_, "denied") => outcome.ends_with(" -"),
                (0..=5, _) => outcome.ends_with("x-policy-1"),
                (6, _) => outcome.ends_with("x-policy-1") || outcome.ends_with("x-policy-2"),
                (7, _) => outcome.ends_with("x-policy-2") || outcome.ends_with("x-policy-3"),
                _ => outcome.ends_with("x-policy-3"),
            };
            assert!(tag_ok, "{}: {kind}: {outcome} ×{n}", PHASES[phase]);
            let status_ok = match phase {
                // The upstream's connections die mid-request: 502, or 200 for those done before.
                1 => [200, 204, 101, 502].contains(&status),
                // Stalled requests time out with a 504 (preflights never reach the upstream).
                3 | 4 => [200, 204, 101, 504].contains(&status),
                // Right after the restart a request may still meet the dead upstream.
                2 => [200, 204, 101, 502, 504].contains(&status),
                _ => [200, 204, 101].contains(&status),
            };
            assert!(status_ok, "{}: {kind}: {outcome} ×{n}", PHASES[phase]);
        } else {
            // Under SIGTERM: connections refused after the listener closed, or a keep-alive
            // connection closed between two requests.
            assert!(
                outcome == "no connection"
                    || outcome == NOT_SENT
                    || outcome.starts_with("no answer"),
                "SIGTERM: {kind}: {outcome} ×{n}"
            );
        }
    }
    // Each fault was actually exercised.
    let has = |phase: usize, needle: &str| {
        phase_counts(&counts, phase)
            .iter()
            .any(|(_, outcome, _)| outcome.starts_with(needle))
    };
    assert!(has(1, "502"), "no 502 while the upstream was down");
    assert!(has(3, "504"), "no 504 while the upstream stalled");
    assert!(
        has(5, "200 x-policy-1"),
        "policy 1 stayed after the invalid write"
    );
    assert!(has(6, "200 x-policy-2"), "policy 2 was applied");
    assert!(has(7, "200 x-policy-3"), "the ..data swap was applied");
    // Answered during the drain: the response in flight at SIGTERM, in full.
    let (status, body) = drained.await.expect("the drained stream's task");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        Ok(100 * 4096),
        "the response in flight at SIGTERM was cut off"
    );
    // Requests written before SIGTERM and still in flight were answered; a request lost at
    // the SIGTERM is one written on a keep-alive connection as the proxy closed it.
    let lost: u64 = phase_counts(&counts, 8)
        .iter()
        .filter(|(_, outcome, _)| outcome.starts_with("no answer"))
        .map(|(_, _, n)| n)
        .sum();
    eprintln!("lost at SIGTERM (written as the connection closed): {lost}");
    // The invalid policy was refused, the two valid ones loaded.
    assert!(
        proxy.log_count("new policy refused") >= 1,
        "the invalid policy was not refused"
    );
    assert_eq!(
        proxy.log_count("policy reloaded"),
        2,
        "policies 2 and 3 were loaded"
    );
    drop(proxy);
}
