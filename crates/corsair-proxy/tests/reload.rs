//! Hot reload of the policy file: applied to open connections within 2 s, invalid policies
//! refused, the Kubernetes `..data` symlink swap, and a policy file that appears later.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use corsair_proxy::{Proxy, ProxyError};
use support::{
    Conn, Upstream, admin, config, empty, harness, harness_with, manifest, metric, policy_refused,
    request, values,
};

const APP: &str = "https://app.example.com";
const NEW: &str = "https://new.example.com";
const OLD_POLICY: &str = "allowOrigins: [\"https://app.example.com\"]";
const NEW_POLICY: &str = "allowOrigins: [\"https://new.example.com\"]";

/// The `Access-Control-Allow-Origin` the proxy answers `origin` with, on `conn`.
async fn allowed_origin(conn: &mut Conn, origin: &str) -> Option<String> {
    let req = request("GET", "/")
        .header("origin", origin)
        .body(empty())
        .expect("valid request");
    let response = conn.send(req).await;
    values(response.headers(), "access-control-allow-origin")
        .into_iter()
        .next()
}

/// Polls on the same keep-alive connection until `origin` is allowed; returns how long it took.
async fn wait_until_allowed(conn: &mut Conn, origin: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if allowed_origin(conn, origin).await.as_deref() == Some(origin) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{origin} not allowed within {within:?} of the policy change"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Replaces `path` atomically, as an editor or `kubectl cp` would not but a careful tool does.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write new policy");
    std::fs::rename(&tmp, path).expect("rename into place");
}

#[tokio::test]
async fn a_valid_policy_applies_to_an_open_connection_within_2s() {
    // Polling far too slow to matter: the filesystem watcher must see the change.
    let h = harness_with(OLD_POLICY, |c| {
        c.reload_poll_interval = Duration::from_secs(60)
    })
    .await;
    let mut conn = Conn::open(h.proxy.listen_addr()).await;
    assert_eq!(allowed_origin(&mut conn, NEW).await, None);
    assert_eq!(allowed_origin(&mut conn, APP).await.as_deref(), Some(APP));

    replace(&h.policy.path, &manifest(NEW_POLICY, 2));
    let took = wait_until_allowed(&mut conn, NEW, Duration::from_secs(2)).await;
    assert!(!conn.is_closed(), "the keep-alive connection was kept");
    assert_eq!(
        allowed_origin(&mut conn, APP).await,
        None,
        "the old policy is gone"
    );

    assert_eq!(
        metric(
            &h.proxy,
            "corsair_proxy_policy_reloads_total{result=\"ok\"}"
        )
        .await,
        1.0,
        "took {took:?}"
    );
    assert_eq!(
        metric(&h.proxy, "corsair_proxy_policy_generation").await,
        2.0
    );
    let (status, body) = admin(&h.proxy, "/policy").await;
    assert_eq!(status, 200);
    assert!(body.contains(NEW) && !body.contains(APP), "{body}");
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_in_place_write_is_seen() {
    let h = harness(OLD_POLICY).await;
    let mut conn = Conn::open(h.proxy.listen_addr()).await;
    std::fs::write(&h.policy.path, manifest(NEW_POLICY, 2)).expect("overwrite policy");
    wait_until_allowed(&mut conn, NEW, Duration::from_secs(2)).await;
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// A file rewritten in place (an editor that does not rename, `>` in a shell) is read once its
/// writer closes it, never half written: until then the old policy stays, and nothing is
/// counted as failed. The poll is a minute, so the watch alone decides when to read.
#[tokio::test]
async fn an_in_place_write_is_read_when_its_writer_closes_the_file() {
    use std::io::Write;

    let h = harness_with(OLD_POLICY, |c| {
        c.reload_poll_interval = Duration::from_secs(60)
    })
    .await;
    let mut conn = Conn::open(h.proxy.listen_addr()).await;
    let new = manifest(NEW_POLICY, 2);
    let (first, rest) = new.split_at(new.len() / 2);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&h.policy.path)
        .expect("open the policy to rewrite it");
    file.write_all(first.as_bytes()).expect("first half");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        allowed_origin(&mut conn, APP).await.as_deref(),
        Some(APP),
        "the old policy stays while the file is being written"
    );
    file.write_all(rest.as_bytes()).expect("the rest");
    drop(file);
    wait_until_allowed(&mut conn, NEW, Duration::from_secs(2)).await;
    let reloads = "corsair_proxy_policy_reloads_total";
    assert_eq!(
        (
            metric(&h.proxy, &format!("{reloads}{{result=\"ok\"}}")).await,
            metric(&h.proxy, &format!("{reloads}{{result=\"failed\"}}")).await
        ),
        (1.0, 0.0)
    );
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// A file that cannot be read (here a directory in its place; a permission denied does the
/// same, but these tests may run as root) is counted and logged once, not at every poll, and
/// the last good policy stays until the file can be read again.
#[tokio::test]
async fn an_unreadable_policy_file_is_reported_once_and_the_last_good_policy_stays() {
    let h = harness_with(OLD_POLICY, |c| {
        c.reload_poll_interval = Duration::from_millis(50);
    })
    .await;
    let mut conn = Conn::open(h.proxy.listen_addr()).await;
    let failed = "corsair_proxy_policy_reloads_total{result=\"failed\"}";
    std::fs::remove_file(&h.policy.path).expect("remove policy");
    std::fs::create_dir(&h.policy.path).expect("a directory in the policy's place");
    wait_for_metric(&h.proxy, failed, 1.0).await;
    // Twenty polls later: still one failure, and the last good policy in force.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(&h.proxy, failed).await, 1.0);
    assert_eq!(allowed_origin(&mut conn, APP).await.as_deref(), Some(APP));
    assert_eq!(allowed_origin(&mut conn, NEW).await, None);
    // What is on disk is not what is enforced, and `/policy` says why.
    let refused = "corsair_proxy_policy_file_refused";
    assert_eq!(metric(&h.proxy, refused).await, 1.0);
    let why = policy_refused(&h.proxy)
        .await
        .expect("the read error is said");
    assert!(why.contains("cannot read"), "{why}");

    // The file the proxy enforces, readable again: nothing is refused any more.
    std::fs::remove_dir(&h.policy.path).expect("remove the directory");
    replace(&h.policy.path, &manifest(OLD_POLICY, 1));
    wait_for_metric(&h.proxy, refused, 0.0).await;
    assert_eq!(policy_refused(&h.proxy).await, None);

    // Whole at once, so that no check reads it half written.
    replace(&h.policy.path, &manifest(NEW_POLICY, 2));
    wait_until_allowed(&mut conn, NEW, Duration::from_secs(4)).await;
    assert_eq!(metric(&h.proxy, failed).await, 1.0);
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// A zero poll interval (only a library caller can set one) polls as often as it can instead
/// of ending the reload task with a panic.
#[tokio::test]
async fn a_zero_poll_interval_still_reloads() {
    let h = harness_with(OLD_POLICY, |c| c.reload_poll_interval = Duration::ZERO).await;
    let mut conn = Conn::open(h.proxy.listen_addr()).await;
    replace(&h.policy.path, &manifest(NEW_POLICY, 2));
    wait_until_allowed(&mut conn, NEW, Duration::from_secs(2)).await;
    h.proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_invalid_policy_is_refused_and_the_last_good_one_stays() {
    let h = harness(OLD_POLICY).await;
    let mut conn = Conn::open(h.proxy.listen_addr()).await;
    let failed = "corsair_proxy_policy_reloads_total{result=\"failed\"}";
    assert_eq!(metric(&h.proxy, failed).await, 0.0);

    // Valid YAML, invalid policy: an origin with a path.
    replace(
        &h.policy.path,
        &manifest("allowOrigins: [\"https://new.example.com/app\"]", 2),
    );
    wait_for_metric(&h.proxy, failed, 1.0).await;
    assert_eq!(allowed_origin(&mut conn, APP).await.as_deref(), Some(APP));
    assert_eq!(allowed_origin(&mut conn, NEW).await, None);
    // `/policy` shows the policy still enforced, and says that the file on disk was refused.
    let refused = "corsair_proxy_policy_file_refused";
    assert_eq!(metric(&h.proxy, refused).await, 1.0);
    let why = policy_refused(&h.proxy).await.expect("the refusal is said");
    assert!(why.contains("allowOrigins[0]"), "{why}");

    // Not even YAML.
    replace(&h.policy.path, "spec: [unclosed");
    wait_for_metric(&h.proxy, failed, 2.0).await;
    assert_eq!(allowed_origin(&mut conn, APP).await.as_deref(), Some(APP));

    let why = policy_refused(&h.proxy).await.expect("the refusal is said");
    assert!(
        !why.contains("allowOrigins"),
        "the newer refusal replaces the older: {why}"
    );

    // The file vanishing keeps the last good policy too; nothing on disk is refused then.
    std::fs::remove_file(&h.policy.path).expect("remove policy");
    wait_for_metric(&h.proxy, refused, 0.0).await;
    assert_eq!(allowed_origin(&mut conn, APP).await.as_deref(), Some(APP));
    assert_eq!(policy_refused(&h.proxy).await, None);

    assert_eq!(
        metric(
            &h.proxy,
            "corsair_proxy_policy_reloads_total{result=\"ok\"}"
        )
        .await,
        0.0
    );
    assert_eq!(
        metric(&h.proxy, "corsair_proxy_policy_generation").await,
        1.0
    );
    let (_, body) = admin(&h.proxy, "/policy").await;
    assert!(body.contains(APP), "{body}");

    // A valid policy afterwards is taken.
    replace(&h.policy.path, &manifest(NEW_POLICY, 3));
    wait_until_allowed(&mut conn, NEW, Duration::from_secs(2)).await;
    assert_eq!(
        metric(&h.proxy, "corsair_proxy_policy_generation").await,
        3.0
    );
    h.proxy.shutdown().await.expect("clean shutdown");
}

/// Waits up to 5 s (a removal is confirmed a second after it is seen).
async fn wait_for_metric(proxy: &Proxy, series: &str, value: f64) {
    let start = Instant::now();
    while metric(proxy, series).await != value {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{series} did not reach {value} within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A proxy on `path` whose poll is a minute away, so that only the directory watch sees a
/// change within a test; `allow_missing` as the webhook's sidecar (`--allow-missing-policy`).
async fn watched_proxy(path: &Path, up: &Upstream, allow_missing: bool) -> Proxy {
    let mut cfg = config(path, up);
    cfg.allow_missing_policy = allow_missing;
    cfg.reload_poll_interval = Duration::from_secs(60);
    Proxy::start(cfg).await.expect("proxy starts")
}

/// Lays out a directory the way the kubelet does for a ConfigMap volume: the real files in a
/// timestamped directory, `..data` pointing at it, and `policy.yaml` pointing into `..data`.
/// `None` is what an optional volume gets while its ConfigMap does not exist: an empty
/// directory, and no `policy.yaml`.
fn kubelet_write(dir: &Path, version: &str, content: Option<&str>) {
    let real = dir.join(format!("..2026_11_25_{version}"));
    std::fs::create_dir(&real).expect("create timestamped dir");
    if let Some(content) = content {
        std::fs::write(real.join("policy.yaml"), content).expect("write policy");
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(real.file_name().expect("name"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("atomic swap of ..data");
    let link = dir.join("policy.yaml");
    let linked = std::fs::symlink_metadata(&link).is_ok();
    if content.is_some() && !linked {
        std::os::unix::fs::symlink("..data/policy.yaml", &link).expect("policy symlink");
    } else if content.is_none() && linked {
        std::fs::remove_file(&link).expect("remove policy symlink");
    }
}

/// The kubelet removes the previous timestamped directory once `..data` points at the new one.
fn kubelet_clean(dir: &Path, version: &str) {
    std::fs::remove_dir_all(dir.join(format!("..2026_11_25_{version}"))).expect("old dir removed");
}

/// Every kubelet update is seen, once, by the directory watch alone (the poll is a minute):
/// three swaps in a row, each followed by the removal of the old directory (which a watch on
/// the file itself would have taken for the one change it ever sees). Then the file is removed,
/// which without `--allow-missing-policy` is no policy's state: the last good one stays, with no
/// failure.
#[tokio::test]
async fn a_kubernetes_configmap_symlink_swap_is_seen() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    kubelet_write(dir.path(), "1", Some(&manifest(OLD_POLICY, 1)));
    let path = dir.path().join("policy.yaml");
    let proxy = watched_proxy(&path, &up, false).await;
    let mut conn = Conn::open(proxy.listen_addr()).await;
    assert_eq!(allowed_origin(&mut conn, APP).await.as_deref(), Some(APP));

    let generation = "corsair_proxy_policy_generation";
    for version in 2..=4_i64 {
        let policy = if version % 2 == 0 {
            NEW_POLICY
        } else {
            OLD_POLICY
        };
        kubelet_write(
            dir.path(),
            &version.to_string(),
            Some(&manifest(policy, version)),
        );
        wait_for_metric(&proxy, generation, version as f64).await;
        kubelet_clean(dir.path(), &(version - 1).to_string());
    }
    // Version 4 is the new policy.
    assert_eq!(allowed_origin(&mut conn, NEW).await.as_deref(), Some(NEW));
    assert_eq!(allowed_origin(&mut conn, APP).await, None);
    let ok = "corsair_proxy_policy_reloads_total{result=\"ok\"}";
    let failed = "corsair_proxy_policy_reloads_total{result=\"failed\"}";
    assert_eq!(metric(&proxy, ok).await, 3.0, "one reload per update");

    kubelet_write(dir.path(), "5", None);
    kubelet_clean(dir.path(), "4");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(allowed_origin(&mut conn, NEW).await.as_deref(), Some(NEW));
    assert_eq!(metric(&proxy, generation).await, 4.0);
    assert_eq!(
        (metric(&proxy, ok).await, metric(&proxy, failed).await),
        (3.0, 0.0)
    );
    proxy.shutdown().await.expect("clean shutdown");
}

/// The webhook's sidecar (`--allow-missing-policy`) whose ConfigMap is deleted (its
/// CorsPolicy was): the kubelet empties the optional volume, and the proxy allows no origin, as
/// a pod started now would, instead of keeping the old policy until it restarts. The policy
/// created again is taken again.
#[tokio::test]
async fn a_deleted_configmap_allows_no_origin_as_a_new_pod_would() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    kubelet_write(dir.path(), "1", Some(&manifest(OLD_POLICY, 7)));
    let path = dir.path().join("policy.yaml");
    let proxy = watched_proxy(&path, &up, true).await;
    let mut conn = Conn::open(proxy.listen_addr()).await;
    assert_eq!(allowed_origin(&mut conn, APP).await.as_deref(), Some(APP));
    let generation = "corsair_proxy_policy_generation";
    assert_eq!(metric(&proxy, generation).await, 7.0);

    kubelet_write(dir.path(), "2", None);
    kubelet_clean(dir.path(), "1");
    wait_for_metric(&proxy, generation, 0.0).await;
    assert_eq!(allowed_origin(&mut conn, APP).await, None);
    let preflight = request("OPTIONS", "/")
        .header("origin", APP)
        .header("access-control-request-method", "GET")
        .body(empty())
        .expect("valid request");
    assert_eq!(conn.send(preflight).await.status(), 403);
    let (status, body) = admin(&proxy, "/policy").await;
    assert_eq!(status, 404, "no policy is shown: {body}");
    let failed = "corsair_proxy_policy_reloads_total{result=\"failed\"}";
    assert_eq!(
        metric(&proxy, failed).await,
        0.0,
        "a removal is not a failure"
    );

    kubelet_write(dir.path(), "3", Some(&manifest(OLD_POLICY, 8)));
    kubelet_clean(dir.path(), "2");
    wait_until_allowed(&mut conn, APP, Duration::from_secs(2)).await;
    assert_eq!(metric(&proxy, generation).await, 8.0);
    assert!(
        !conn.is_closed(),
        "the keep-alive connection was kept throughout"
    );
    proxy.shutdown().await.expect("clean shutdown");
}

/// A read during a kubelet swap can miss the file once; a file that is back within the
/// confirmation second changes nothing: the policy is never dropped, nothing is counted.
#[tokio::test]
async fn a_file_missing_for_a_moment_changes_nothing() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    let content = manifest(OLD_POLICY, 7);
    std::fs::write(&path, &content).expect("write policy");
    let proxy = watched_proxy(&path, &up, true).await;
    let mut conn = Conn::open(proxy.listen_addr()).await;
    let generation = "corsair_proxy_policy_generation";

    std::fs::remove_file(&path).expect("remove policy");
    let back = Instant::now() + Duration::from_millis(300);
    let watch_until = Instant::now() + Duration::from_millis(1800);
    let mut put_back = false;
    while Instant::now() < watch_until {
        if !put_back && Instant::now() >= back {
            replace(&path, &content);
            put_back = true;
        }
        assert_eq!(
            metric(&proxy, generation).await,
            7.0,
            "the policy was dropped"
        );
        assert_eq!(allowed_origin(&mut conn, APP).await.as_deref(), Some(APP));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(put_back, "the file was put back");
    let reloads = "corsair_proxy_policy_reloads_total";
    assert_eq!(
        (
            metric(&proxy, &format!("{reloads}{{result=\"ok\"}}")).await,
            metric(&proxy, &format!("{reloads}{{result=\"failed\"}}")).await
        ),
        (0.0, 0.0)
    );
    // The watch works here: a removal that lasts is applied.
    std::fs::remove_file(&path).expect("remove policy again");
    wait_for_metric(&proxy, generation, 0.0).await;
    proxy.shutdown().await.expect("clean shutdown");
}

/// An optional volume whose ConfigMap is created after the pod started: an empty directory
/// first, then the kubelet's first swap, seen by the watch alone.
#[tokio::test]
async fn a_configmap_created_later_is_seen() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    kubelet_write(dir.path(), "1", None);
    let path = dir.path().join("policy.yaml");
    let proxy = watched_proxy(&path, &up, true).await;
    let mut conn = Conn::open(proxy.listen_addr()).await;
    assert_eq!(allowed_origin(&mut conn, APP).await, None);
    kubelet_write(dir.path(), "2", Some(&manifest(OLD_POLICY, 1)));
    kubelet_clean(dir.path(), "1");
    wait_until_allowed(&mut conn, APP, Duration::from_secs(2)).await;
    proxy.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_missing_policy_allows_no_origin_until_it_appears() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The directory itself is missing too (an optional volume): only polling can notice it.
    let path = dir.path().join("corsair").join("policy.json");
    let mut cfg = config(&path, &up);
    cfg.allow_missing_policy = true;
    let proxy = Proxy::start(cfg)
        .await
        .expect("starts without the policy file");
    let (status, _) = admin(&proxy, "/readyz").await;
    assert_eq!(status, 200, "ready without a policy");
    let (status, body) = admin(&proxy, "/policy").await;
    assert_eq!(status, 404, "{body}");

    let mut conn = Conn::open(proxy.listen_addr()).await;
    let preflight = request("OPTIONS", "/")
        .header("origin", APP)
        .header("access-control-request-method", "GET")
        .body(empty())
        .expect("valid request");
    let response = conn.send(preflight).await;
    assert_eq!(response.status(), 403);
    let response = conn
        .send(
            request("GET", "/cors-star")
                .header("origin", APP)
                .body(empty())
                .expect("valid"),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        support::cors_names(response.headers()).is_empty(),
        "upstream CORS headers stripped: {:?}",
        response.headers()
    );
    assert_eq!(
        up.seen().len(),
        1,
        "the preflight did not reach the upstream"
    );

    std::fs::create_dir(dir.path().join("corsair")).expect("mkdir");
    let json = r#"{"apiVersion":"corsair.dev/v1alpha1","kind":"CorsPolicy","metadata":{"name":"api","generation":7},"spec":{"allowOrigins":["https://app.example.com"]}}"#;
    std::fs::write(&path, json).expect("write policy");
    wait_until_allowed(&mut conn, APP, Duration::from_secs(2)).await;
    assert_eq!(metric(&proxy, "corsair_proxy_policy_generation").await, 7.0);
    proxy.shutdown().await.expect("clean shutdown");
}

/// With the flag a file that does not load (here: a field this proxy does not know, as a newer
/// controller may write for an older sidecar) starts the proxy allowing no origin, as a missing
/// one does, instead of stopping the pod at every start; a loadable file then takes over.
#[tokio::test]
async fn with_the_flag_a_policy_that_does_not_load_allows_no_origin_until_one_does() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.json");
    let newer = r#"{"apiVersion":"corsair.dev/v1alpha1","kind":"CorsPolicy","metadata":{"name":"api","generation":8},"spec":{"allowOrigins":["https://app.example.com"],"aFieldFromTheFuture":true}}"#;
    std::fs::write(&path, newer).expect("write policy");
    let mut cfg = config(&path, &up);
    cfg.allow_missing_policy = true;
    let proxy = Proxy::start(cfg)
        .await
        .expect("starts on a policy it cannot load");
    let (status, _) = admin(&proxy, "/readyz").await;
    assert_eq!(status, 200);
    let (status, body) = admin(&proxy, "/policy").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("does not load") && body.contains("aFieldFromTheFuture"),
        "{body}"
    );
    assert!(policy_refused(&proxy).await.is_some());
    assert_eq!(metric(&proxy, "corsair_proxy_policy_generation").await, 0.0);
    assert_eq!(
        metric(&proxy, "corsair_proxy_policy_file_refused").await,
        1.0
    );
    let mut conn = Conn::open(proxy.listen_addr()).await;
    assert_eq!(allowed_origin(&mut conn, APP).await, None);

    let json = r#"{"apiVersion":"corsair.dev/v1alpha1","kind":"CorsPolicy","metadata":{"name":"api","generation":9},"spec":{"allowOrigins":["https://app.example.com"]}}"#;
    std::fs::write(&path, json).expect("write policy");
    wait_until_allowed(&mut conn, APP, Duration::from_secs(3)).await;
    assert_eq!(metric(&proxy, "corsair_proxy_policy_generation").await, 9.0);
    assert_eq!(
        metric(&proxy, "corsair_proxy_policy_file_refused").await,
        0.0
    );
    assert_eq!(policy_refused(&proxy).await, None);
    proxy.shutdown().await.expect("clean shutdown");

    // Without the flag the same file is a startup error naming the field.
    std::fs::write(&path, newer).expect("write policy");
    let err = Proxy::start(config(&path, &up))
        .await
        .err()
        .expect("refused without the flag");
    assert!(err.to_string().contains("aFieldFromTheFuture"), "{err}");
}

/// With the flag a file that cannot be read at start (a directory in its place; a permission
/// denied does the same) starts the proxy allowing no origin and saying why, counted once: the
/// polls that read the same error add nothing. Once the file can be read it loads.
#[tokio::test]
async fn with_the_flag_an_unreadable_policy_at_start_allows_no_origin_until_it_reads() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.json");
    std::fs::create_dir(&path).expect("a directory in the policy's place");
    let mut cfg = config(&path, &up);
    cfg.allow_missing_policy = true;
    cfg.reload_poll_interval = Duration::from_millis(50);
    let proxy = Proxy::start(cfg.clone())
        .await
        .expect("starts on a policy it cannot read");
    let (status, body) = admin(&proxy, "/policy").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("cannot read"), "{body}");
    let refused = "corsair_proxy_policy_file_refused";
    assert_eq!(metric(&proxy, refused).await, 1.0);
    let mut conn = Conn::open(proxy.listen_addr()).await;
    assert_eq!(allowed_origin(&mut conn, APP).await, None);
    // Twenty polls read the same error: not a new failure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failed = "corsair_proxy_policy_reloads_total{result=\"failed\"}";
    assert_eq!(metric(&proxy, failed).await, 0.0);
    assert_eq!(metric(&proxy, refused).await, 1.0);

    std::fs::remove_dir(&path).expect("remove the directory");
    let json = r#"{"apiVersion":"corsair.dev/v1alpha1","kind":"CorsPolicy","metadata":{"name":"api","generation":3},"spec":{"allowOrigins":["https://app.example.com"]}}"#;
    std::fs::write(&path, json).expect("write policy");
    wait_until_allowed(&mut conn, APP, Duration::from_secs(3)).await;
    assert_eq!(metric(&proxy, refused).await, 0.0);
    assert_eq!(policy_refused(&proxy).await, None);
    proxy.shutdown().await.expect("clean shutdown");

    // Without the flag the same is a startup error naming the file.
    std::fs::remove_file(&path).expect("remove policy");
    std::fs::create_dir(&path).expect("a directory in the policy's place");
    cfg.allow_missing_policy = false;
    let err = Proxy::start(cfg)
        .await
        .err()
        .expect("refused without the flag");
    assert!(err.to_string().contains("cannot read policy file"), "{err}");
}

#[tokio::test]
async fn without_the_flag_a_missing_policy_is_a_startup_error() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.json");
    let err = Proxy::start(config(&path, &up))
        .await
        .err()
        .expect("a missing policy is refused");
    assert!(matches!(err, ProxyError::Policy(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("does not exist"), "{message}");
}

#[tokio::test]
async fn an_invalid_policy_is_a_startup_error_naming_the_field() {
    let up = Upstream::start().await;
    let policy = support::policy_file(
        "allowOrigins: [\"https://ok.example.com\", \"https://app.example.com/x\"]",
    );
    let err = Proxy::start(config(&policy.path, &up))
        .await
        .err()
        .expect("an invalid policy is refused");
    let message = err.to_string();
    assert!(message.contains("spec.allowOrigins[1]"), "{message}");
    assert!(
        message.contains(&policy.path.display().to_string()),
        "{message}"
    );
}

/// With the flag, a file refused at start that is briefly unreadable (a directory in
/// its place; a permission denied and fixed does the same) and then readable again with the
/// same refused bytes is still refused: it does not load, so `/policy` must keep saying why
/// and `corsair_proxy_policy_file_refused` must stay 1 (README, "hot-reloads the policy file").
#[tokio::test]
async fn a_refused_file_readable_again_is_still_refused() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.json");
    let newer = r#"{"apiVersion":"corsair.dev/v1alpha1","kind":"CorsPolicy","metadata":{"name":"api","generation":8},"spec":{"allowOrigins":["https://app.example.com"],"aFieldFromTheFuture":true}}"#;
    std::fs::write(&path, newer).expect("write policy");
    let mut cfg = config(&path, &up);
    cfg.allow_missing_policy = true;
    cfg.reload_poll_interval = Duration::from_millis(50);
    let proxy = Proxy::start(cfg)
        .await
        .expect("starts on a policy it cannot load");
    let refused = "corsair_proxy_policy_file_refused";
    let failed = "corsair_proxy_policy_reloads_total{result=\"failed\"}";
    assert_eq!(metric(&proxy, refused).await, 1.0);

    // Unreadable for a moment: counted, still refused.
    std::fs::remove_file(&path).expect("remove policy");
    std::fs::create_dir(&path).expect("a directory in the policy's place");
    wait_for_metric(&proxy, failed, 1.0).await;
    assert_eq!(metric(&proxy, refused).await, 1.0);

    // The same refused bytes, readable again (whole at once, so no check reads it half
    // written).
    std::fs::remove_dir(&path).expect("remove the directory");
    replace(&path, newer);
    // Read again and refused again, for what it is rather than for being unreadable.
    wait_for_metric(&proxy, failed, 2.0).await;
    let mut conn = Conn::open(proxy.listen_addr()).await;
    assert_eq!(
        allowed_origin(&mut conn, APP).await,
        None,
        "still no origin allowed"
    );
    assert_eq!(
        metric(&proxy, refused).await,
        1.0,
        "the file on disk does not load, yet policy_file_refused says it is not refused"
    );
    let why = policy_refused(&proxy).await;
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("aFieldFromTheFuture")),
        "/policy no longer says why the file on disk is refused: {why:?}"
    );
    proxy.shutdown().await.expect("clean shutdown");
}
