//! The controller under API faults: a mock API server that fails, throttles, expires watches
//! and takes the leadership away mid-run. Each test states what must hold, and counts the
//! calls that reached the API server to prove it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::{Method, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::crd::CorsPolicy;
use crate::fixtures::{ApiCall, FakeApi, Reply, StaticIndex, failure};
use crate::metrics::{ErrorLabels, Metrics};
use crate::reconcile::{self, Context, PolicyUsers, policy};
use crate::runtime::Leader;

const NS: &str = "shop";
const POLICIES: &str = "/apis/corsair.dev/v1alpha1/corspolicies";
const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";

fn reporter() -> Reporter {
    Reporter {
        controller: reconcile::REPORTER.into(),
        instance: Some("test".into()),
    }
}

fn context(client: Client) -> Arc<Context> {
    let index = StaticIndex::with_policies(NS, &["api"]);
    Arc::new(Context::new(
        client,
        reporter(),
        Metrics::default(),
        Arc::new(index),
    ))
}

fn policy_json() -> Value {
    json!({
        "apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy",
        "metadata": {"name": "api", "namespace": NS, "uid": "uid-api", "generation": 1,
                     "resourceVersion": "1"},
        "spec": {"allowOrigins": ["https://app.example.com"], "allowMethods": ["GET"]},
    })
}

fn valid_policy() -> Arc<CorsPolicy> {
    match serde_json::from_value(policy_json()) {
        Ok(policy) => Arc::new(policy),
        Err(err) => panic!("test policy does not parse: {err}"),
    }
}

/// A Deployment `name` whose metadata asks for `policy`.
fn deployment(name: &str, policy: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                     "resourceVersion": resource_version,
                     "annotations": {"corsair.dev/policy": policy}},
        "spec": {"selector": {}, "template": {}},
    })
}

fn is_configmap_apply(call: &ApiCall) -> bool {
    call.method == Method::PATCH && call.path.contains("/configmaps/")
}

/// Polls `done` every 10 ms, failing the test after `limit`.
async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn requeue(seconds: u64) -> Action {
    Action::requeue(Duration::from_secs(seconds))
}

#[tokio::test]
async fn a_500_fails_the_reconcile_with_backoff_until_the_api_server_recovers() {
    let failing = Arc::new(AtomicBool::new(true));
    let api = FakeApi::new({
        let failing = failing.clone();
        move |call| {
            if is_configmap_apply(call) && failing.load(Ordering::SeqCst) {
                Reply::status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    failure(500, "InternalError", None),
                )
            } else {
                Reply::echo(call)
            }
        }
    });
    let ctx = context(api.client());
    let policy = valid_policy();

    let Err(err) = policy::reconcile(policy.clone(), ctx.clone()).await else {
        panic!("a 500 on the ConfigMap must fail the reconcile");
    };
    assert_eq!(err.metric_label(), "api_error");
    assert!(err.to_string().contains("ConfigMap"), "{err}");
    // Nothing after the failed write: no status saying Ready, no Event.
    let writes = api.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(
        reconcile::error_policy(policy::CONTROLLER, policy.as_ref(), &err, &ctx),
        requeue(1)
    );
    assert_eq!(
        reconcile::error_policy(policy::CONTROLLER, policy.as_ref(), &err, &ctx),
        requeue(2)
    );

    failing.store(false, Ordering::SeqCst);
    let retried = policy::reconcile(policy.clone(), ctx.clone()).await;
    assert!(retried.is_ok(), "{retried:?}");
    let writes: Vec<Method> = api.writes().into_iter().map(|c| c.method).collect();
    // ConfigMap (failed), ConfigMap, status, Event.
    assert_eq!(
        writes,
        [Method::PATCH, Method::PATCH, Method::PATCH, Method::POST]
    );
    // The success reset the backoff.
    assert_eq!(
        reconcile::error_policy(policy::CONTROLLER, policy.as_ref(), &err, &ctx),
        requeue(1)
    );
}

/// Through the production client stack (`kube::Config`, over HTTP): kube retries a 429 itself,
/// after the server's `Retry-After`, and the reconcile succeeds.
#[tokio::test]
async fn a_429_is_retried_after_the_servers_retry_after() {
    let arrivals: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
    let api = FakeApi::new({
        let arrivals = arrivals.clone();
        move |call| {
            if !is_configmap_apply(call) {
                return Reply::echo(call);
            }
            let mut arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
            arrivals.push((Instant::now(), call.body.clone()));
            if arrivals.len() == 1 {
                Reply::Json {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    headers: vec![("retry-after", "1".into())],
                    body: failure(429, "TooManyRequests", Some(1)),
                }
            } else {
                Reply::echo(call)
            }
        }
    });
    let addr = match api.serve_http().await {
        Ok(addr) => addr,
        Err(err) => panic!("cannot serve the mock API: {err}"),
    };
    let uri = match format!("http://{addr}").parse() {
        Ok(uri) => uri,
        Err(err) => panic!("{err}"),
    };
    let client = match Client::try_from(kube::Config::new(uri)) {
        Ok(client) => client,
        Err(err) => panic!("client: {err}"),
    };
    let result = policy::reconcile(valid_policy(), context(client)).await;
    assert!(result.is_ok(), "{result:?}");
    let arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
    assert_eq!(arrivals.len(), 2, "one 429, one retry");
    let waited = arrivals[1].0.duration_since(arrivals[0].0);
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before Retry-After"
    );
    assert_eq!(
        arrivals[0].1, arrivals[1].1,
        "the retry sends the same apply"
    );
}

/// When the throttling outlasts the client's retries, the reconcile fails and is tried again
/// no sooner than the server asked, whatever the backoff says.
#[tokio::test]
async fn throttling_that_outlasts_the_client_requeues_after_retry_after() {
    let api = FakeApi::new(|call| {
        if is_configmap_apply(call) {
            Reply::status(
                StatusCode::TOO_MANY_REQUESTS,
                failure(429, "TooManyRequests", Some(30)),
            )
        } else {
            Reply::echo(call)
        }
    });
    // The in-memory client has no retry layer: the 429 is the client's final answer.
    let ctx = context(api.client());
    let policy = valid_policy();
    let Err(err) = policy::reconcile(policy.clone(), ctx.clone()).await else {
        panic!("a 429 must fail the reconcile");
    };
    assert_eq!(err.metric_label(), "api_throttled");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(
        reconcile::error_policy(policy::CONTROLLER, policy.as_ref(), &err, &ctx),
        requeue(30)
    );
    assert_eq!(api.writes().len(), 1, "nothing written after the refusal");
}

/// A watch that ends resumes from the last resourceVersion; one that expires (`410 Gone`)
/// re-lists, and the re-list's differences (a Deployment deleted while nobody watched, another
/// added) reach the cache, the policy index and the subscribers.
#[tokio::test]
async fn a_watch_that_ends_resumes_and_a_gone_watch_relists() {
    let lists = Arc::new(Mutex::new(0u32));
    let watches = Arc::new(Mutex::new(0u32));
    let api = FakeApi::new({
        let (lists, watches) = (lists.clone(), watches.clone());
        move |call| {
            if call.path != DEPLOYMENTS {
                return Reply::status(StatusCode::NOT_FOUND, failure(404, "NotFound", None));
            }
            if call.is_read() {
                let mut n = lists.lock().unwrap_or_else(|p| p.into_inner());
                *n += 1;
                return if *n == 1 {
                    Reply::list(
                        "10",
                        vec![deployment("a", "p", "5"), deployment("b", "p", "6")],
                    )
                } else {
                    // b was deleted and c, d created while the watch was down.
                    Reply::list(
                        "20",
                        vec![
                            deployment("a", "p", "5"),
                            deployment("c", "p", "11"),
                            deployment("d", "q", "19"),
                        ],
                    )
                };
            }
            let mut n = watches.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            match *n {
                // c is created, then the server ends the watch (its timeout, a restart).
                1 => Reply::Events {
                    events: vec![json!({"type": "ADDED", "object": deployment("c", "p", "11")})],
                    open: false,
                },
                // The resumed watch is too old: the events it needs were compacted.
                2 => Reply::Events {
                    events: vec![json!({"type": "ERROR", "object": failure(410, "Expired", None)})],
                    open: false,
                },
                _ => Reply::quiet_watch(),
            }
        }
    });
    let client = api.client();
    let users = Arc::new(PolicyUsers::default());
    let (shared, driver) = reconcile::workload_watch::<Deployment>(
        &client,
        &kube::runtime::watcher::Config::default(),
        &users,
    );
    let mut changes = Box::pin(shared.subscribe());
    let driver = tokio::spawn(driver);
    eventually(
        "the watch after the re-list",
        Duration::from_secs(10),
        || *watches.lock().unwrap_or_else(|p| p.into_inner()) >= 3,
    )
    .await;

    let watch_versions: Vec<Option<String>> = api
        .calls()
        .iter()
        .filter(|c| c.is_watch())
        .map(|c| c.query.get("resourceVersion").cloned())
        .collect();
    assert_eq!(
        watch_versions[..3],
        [Some("10".into()), Some("11".into()), Some("20".into())],
        "a clean end resumes from the last event; 410 re-lists"
    );
    assert_eq!(*lists.lock().unwrap_or_else(|p| p.into_inner()), 2);

    let store = shared.store();
    let mut cached: Vec<String> = store.state().iter().map(|d| name(d.as_ref())).collect();
    cached.sort();
    assert_eq!(cached, ["a", "c", "d"]);
    assert!(store.get(&ObjectRef::new("b").within(NS)).is_none());
    assert_eq!(users.count(NS, "p"), 2, "a and c ask for p; b is gone");
    assert_eq!(users.count(NS, "q"), 1);

    // What the subscribers were told, in order: the first list (a, b), c added, then the
    // re-list: b deleted and d added (a and c unchanged, reported with old == new).
    let mut seen = Vec::new();
    while let Some(Some(change)) = futures::FutureExt::now_or_never(changes.next()) {
        seen.push((
            change.old.as_deref().map(name),
            change.new.as_deref().map(name),
        ));
    }
    assert!(seen.contains(&(Some("b".into()), None)), "{seen:?}");
    assert!(seen.contains(&(None, Some("d".into()))), "{seen:?}");
    assert!(seen.contains(&(None, Some("c".into()))), "{seen:?}");
    driver.abort();
}

fn name<K: kube::Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

/// Losing the Lease mid-run: the reconciles in flight at that moment get their answers, and
/// every write after it is refused before it reaches the API server; the reconcilers stop,
/// and start again (writing again) when the Lease comes back.
#[tokio::test]
async fn losing_the_lease_stops_every_write_at_once() {
    let (leader_tx, leader_rx) = watch::channel(false);
    let (open_tx, open_rx) = watch::channel(false);
    // For each write that reached the API server: whether this replica led when it arrived.
    let arrived: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let api = FakeApi::new({
        let leading = leader_rx.clone();
        let arrived = arrived.clone();
        move |call| {
            let lists = [
                (POLICIES, &[policy_json()][..]),
                (DEPLOYMENTS, &[deployment("web", "api", "1")][..]),
            ];
            if let Some(reply) = Reply::steady(call, &lists) {
                return reply;
            }
            arrived
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((format!("{} {}", call.method, call.path), *leading.borrow()));
            // Held until the test opens the gate, so that the Lease is lost mid-reconcile.
            Reply::Held(open_rx.clone(), Box::new(Reply::echo(call)))
        }
    });
    let client = api.client();
    let (caches, watches) = reconcile::Caches::start(&client);
    let metrics = Metrics::default();
    let leader = Leader {
        caches,
        client,
        reporter: reporter(),
        metrics: metrics.clone(),
        inject: crate::webhook::InjectConfig::default(),
        webhook_check: None,
        certs: None,
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let follow = tokio::spawn(async move {
        leader
            .follow(leader_rx, async {
                let _ = shutdown_rx.await;
            })
            .await;
    });
    let writes = || arrived.lock().unwrap_or_else(|p| p.into_inner()).clone();

    // Not the leader: the caches fill, nothing is written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(writes().is_empty(), "{:?}", writes());

    // Leader: the policy's ConfigMap and the Deployment's label are applied (and held).
    leader_tx.send_replace(true);
    eventually("the first writes", Duration::from_secs(5), || {
        writes().len() >= 2
    })
    .await;
    assert_eq!(metrics.leader.get(), 1);

    // The Lease is lost while both reconciles wait for their answers.
    leader_tx.send_replace(false);
    let before = writes().len();
    open_tx.send_replace(true);
    eventually("the reconcilers to stop", Duration::from_secs(5), || {
        metrics.leader.get() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = writes();
    assert_eq!(
        after.len(),
        before,
        "written after losing the Lease: {after:?}"
    );
    assert!(after.iter().all(|(_, leading)| *leading), "{after:?}");
    // The policy reconcile went on to its status write, which the fence refused.
    let refused = metrics
        .errors
        .get_or_create(&ErrorLabels {
            controller: policy::CONTROLLER,
            error: "not_leader",
        })
        .get();
    assert!(refused >= 1, "the refused status write was not counted");

    // The Lease comes back: the reconcilers start again and write again.
    leader_tx.send_replace(true);
    eventually("writes as the leader again", Duration::from_secs(5), || {
        writes().len() > before
    })
    .await;
    assert!(
        writes().iter().all(|(_, leading)| *leading),
        "{:?}",
        writes()
    );

    let _ = shutdown_tx.send(());
    match tokio::time::timeout(Duration::from_secs(5), follow).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => std::panic::resume_unwind(err.into_panic()),
        Err(_) => panic!("the leader did not stop on shutdown"),
    }
    assert_eq!(metrics.leader.get(), 0);
    drop(watches);
}

/// A Lease as the API server keeps it, reduced to what decides who leads: the holder, and
/// which field manager owns it. An apply that names another holder than the one a different
/// manager owns is refused with 409 Conflict (server-side apply without force); a patch that
/// empties the holder frees it.
#[derive(Default)]
struct LeaseServer {
    holder: Option<(String, String)>,
    renew: Option<Value>,
    duration: Option<Value>,
    /// Renewals (writes that keep the holder) fail with 500, as from an API server in trouble.
    failing_renewals: bool,
}

impl LeaseServer {
    /// When the holder last renewed, as it wrote it.
    fn renewed(&self) -> Option<k8s_openapi::jiff::Timestamp> {
        self.renew.as_ref()?.as_str()?.parse().ok()
    }

    fn answer(&mut self, call: &ApiCall) -> Reply {
        let lease = |this: &LeaseServer| {
            json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "corsair-leader", "namespace": "corsair-system",
                             "resourceVersion": "1"},
                "spec": {
                    "holderIdentity": this.holder.as_ref().map(|(holder, _)| holder),
                    "renewTime": this.renew,
                    "acquireTime": this.renew,
                    "leaseDurationSeconds": this.duration,
                },
            })
        };
        if call.method == Method::GET {
            return Reply::ok(lease(self));
        }
        let spec = call.body.get("spec").cloned().unwrap_or(Value::Null);
        if self.failing_renewals && spec.get("holderIdentity").is_none() {
            return Reply::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                failure(500, "InternalError", None),
            );
        }
        let manager = call.query.get("fieldManager").cloned().unwrap_or_default();
        match spec.get("holderIdentity") {
            Some(Value::String(new)) => {
                if let Some((holder, owner)) = &self.holder
                    && holder != new
                    && *owner != manager
                {
                    return Reply::status(StatusCode::CONFLICT, failure(409, "Conflict", None));
                }
                self.holder = Some((new.clone(), manager));
            }
            Some(Value::Null) => self.holder = None,
            _ => {}
        }
        if let Some(renew) = spec.get("renewTime") {
            self.renew = Some(renew.clone()).filter(|r| !r.is_null());
        }
        if let Some(duration) = spec.get("leaseDurationSeconds") {
            self.duration = Some(duration.clone()).filter(|d| !d.is_null());
        }
        Reply::ok(lease(self))
    }
}

/// Two replicas that both find the Lease free and apply themselves as its holder: the first
/// apply is answered only once the second has arrived (both read the Lease free), and the
/// second only once the first replica leads. Each applies under a field manager of its own,
/// so the second apply conflicts and one replica leads. Under one shared manager it took the
/// Lease over silently, and both led until the first one's next renewal.
#[tokio::test]
async fn two_replicas_never_lead_at_once() {
    let server = Arc::new(Mutex::new(LeaseServer::default()));
    let (second_arrived, first_gate) = watch::channel(false);
    let (first_leads, second_gate) = watch::channel(false);
    let api = FakeApi::new({
        let server = server.clone();
        move |call| {
            let holder = call.pointer_holder();
            let answer = {
                let server = server.clone();
                let call = call.clone();
                move || {
                    server
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .answer(&call)
                }
            };
            match holder.as_deref() {
                Some("pod-a") => Reply::Deferred(first_gate.clone(), Box::new(answer)),
                Some("pod-b") => {
                    let _ = second_arrived.send(true);
                    Reply::Deferred(second_gate.clone(), Box::new(answer))
                }
                _ => answer(),
            }
        }
    });
    let config = |identity: &str| crate::lease::LeaseConfig {
        name: "corsair-leader".into(),
        namespace: "corsair-system".into(),
        identity: identity.into(),
        duration_seconds: 10,
        grace_seconds: 2,
    };
    let (config_a, config_b) = (config("pod-a"), config("pod-b"));
    let (a, b) = tokio::join!(
        crate::lease::Leadership::start(api.client(), &config_a),
        crate::lease::Leadership::start(api.client(), &config_b),
    );
    let (mut a, b) = (a.expect("a joins"), b.expect("b joins"));
    tokio::time::timeout(Duration::from_secs(5), a.is_leader.wait_for(|leads| *leads))
        .await
        .expect("the first applier leads")
        .expect("the election runs");
    let _ = first_leads.send(true);
    // Long enough for the second apply and the reads after it; short of any renewal.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        assert!(
            !(*a.is_leader.borrow() && *b.is_leader.borrow()),
            "both replicas lead; managers: {:?}",
            api.writes()
                .iter()
                .map(|c| c.query.get("fieldManager").cloned())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(*a.is_leader.borrow());
    let tries = api
        .writes()
        .iter()
        .filter(|c| c.pointer_holder().as_deref() == Some("pod-b"))
        .count();
    assert!(tries >= 1, "the second replica tried");
}

/// `pod-a` joins an election on a Lease of 3 s that it renews 1 s before expiry, and leads.
async fn lead_alone(api: &Arc<FakeApi>) -> crate::lease::Leadership {
    let config = crate::lease::LeaseConfig {
        name: "corsair-leader".into(),
        namespace: "corsair-system".into(),
        identity: "pod-a".into(),
        duration_seconds: 3,
        grace_seconds: 1,
    };
    let mut leadership = crate::lease::Leadership::start(api.client(), &config)
        .await
        .expect("joins");
    tokio::time::timeout(
        Duration::from_secs(5),
        leadership.is_leader.wait_for(|l| *l),
    )
    .await
    .expect("leads")
    .expect("the election runs");
    leadership
}

/// Waits up to 4 s (longer than the test Lease of 3 s) for `leadership` to stop leading.
async fn stops_leading(leadership: &mut crate::lease::Leadership, why: &str) {
    tokio::time::timeout(
        Duration::from_secs(4),
        leadership.is_leader.wait_for(|l| !*l),
    )
    .await
    .expect(why)
    .expect("the election runs");
}

/// A leader whose renewals fail stops leading before its Lease expires, so that the replica
/// that takes it over at expiry never writes beside it; kube-lease-manager alone goes on
/// saying "leader" while it retries. Once a renewal goes through, it leads again.
#[tokio::test]
async fn a_leader_that_cannot_renew_stops_before_the_lease_expires() {
    let server = Arc::new(Mutex::new(LeaseServer::default()));
    let api = FakeApi::new({
        let server = server.clone();
        move |call| {
            server
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .answer(call)
        }
    });
    let mut leadership = lead_alone(&api).await;
    // Renewals that go through (one every 2 s for a Lease of 3 s) never interrupt leading.
    assert!(
        tokio::time::timeout(
            Duration::from_millis(4500),
            leadership.is_leader.wait_for(|l| !*l),
        )
        .await
        .is_err(),
        "leading stopped while the Lease was renewed on time"
    );
    let failing_since = Instant::now();
    server
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .failing_renewals = true;
    stops_leading(&mut leadership, "stops leading before the Lease expires").await;
    let stopped_at = k8s_openapi::jiff::Timestamp::now();
    let stopped_after = failing_since.elapsed();
    assert!(
        stopped_after < Duration::from_secs(3),
        "a Lease of 3 s renewed at most 2 s before the failures began: stopped after \
         {stopped_after:?}, where the others take it over at 3 s"
    );
    // At its deadline, half a grace period (0.5 s) before the Lease expires by its last
    // renewal, not at the next read after it.
    let renewed = server
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .renewed()
        .expect("the last renewal's time");
    let early = renewed.duration_until(stopped_at).as_secs_f64() - 2.5;
    assert!(
        (-0.1..0.25).contains(&early),
        "stopped {early:.3} s after the deadline (renewed at {renewed}, stopped at {stopped_at})"
    );
    assert_eq!(
        server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .holder
            .as_ref()
            .map(|(h, _)| h.as_str()),
        Some("pod-a"),
        "nobody took the Lease: only the renewals failed"
    );
    server
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .failing_renewals = false;
    tokio::time::timeout(
        Duration::from_secs(20),
        leadership.is_leader.wait_for(|l| *l),
    )
    .await
    .expect("leads again once a renewal goes through")
    .expect("the election runs");
    leadership.release().await.expect("releases");
}

/// A leader whose API server stops answering (a partition: every call hangs, the reads that
/// confirm the Lease included) stops leading at its deadline all the same, not at a read's
/// answer that never comes; once the API server answers again, it leads again.
#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_before_the_lease_expires() {
    let server = Arc::new(Mutex::new(LeaseServer::default()));
    let partitioned = Arc::new(AtomicBool::new(false));
    let (heal, healed) = watch::channel(false);
    let api = FakeApi::new({
        let (server, partitioned) = (server.clone(), partitioned.clone());
        move |call| {
            let answer = {
                let (server, call) = (server.clone(), call.clone());
                move || {
                    server
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .answer(&call)
                }
            };
            if partitioned.load(Ordering::SeqCst) {
                Reply::Deferred(healed.clone(), Box::new(answer))
            } else {
                answer()
            }
        }
    });
    let mut leadership = lead_alone(&api).await;
    // Past the first renewal, so that the deadline is a renewal's, not the acquisition's.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(*leadership.is_leader.borrow(), "leads while renewing");
    let cut_at = Instant::now();
    let calls_before = api.calls().len();
    partitioned.store(true, Ordering::SeqCst);
    let renewed = server
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .renewed()
        .expect("the last renewal's time");
    stops_leading(&mut leadership, "stops leading while no call is answered").await;
    let stopped_at = k8s_openapi::jiff::Timestamp::now();
    // No renewal was answered since the cut: the one read then is still the last.
    let last = server.lock().unwrap_or_else(|p| p.into_inner()).renewed();
    assert_eq!(last, Some(renewed), "a renewal got through the partition");
    // Half a grace period (0.5 s) before the Lease expires by that renewal.
    let late = renewed.duration_until(stopped_at).as_secs_f64() - 2.5;
    assert!(
        (-0.1..0.25).contains(&late),
        "stopped {late:.3} s after the deadline (renewed at {renewed}, stopped at {stopped_at}, \
         cut {:?} before)",
        cut_at.elapsed()
    );
    let hanging = api.calls()[calls_before..]
        .iter()
        .filter(|c| c.method == Method::GET && c.path.ends_with("/leases/corsair-leader"))
        .count();
    assert!(hanging >= 1, "the Lease was read while cut off");
    partitioned.store(false, Ordering::SeqCst);
    let _ = heal.send(true);
    tokio::time::timeout(
        Duration::from_secs(20),
        leadership.is_leader.wait_for(|l| *l),
    )
    .await
    .expect("leads again once the API server answers")
    .expect("the election runs");
    leadership.release().await.expect("releases");
}

/// A stored CorsPolicy that the controller's type cannot read (`maxAge` above `u32::MAX`, stored
/// before the schema had a maximum while the validating webhook was not called; a field of a
/// newer Corsair after a rollback) does not keep the controller from reconciling every other
/// CorsPolicy in the cluster, and is refused in its own status, naming the field.
#[tokio::test]
async fn one_unreadable_policy_does_not_stop_the_reconciliation_of_the_others() {
    let unreadable = json!({
        "apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy",
        "metadata": {"name": "cached", "namespace": "other", "uid": "uid-cached",
                     "generation": 1, "resourceVersion": "2"},
        "spec": {"allowOrigins": ["https://app.example.com"], "maxAge": 4_294_967_296_u64},
    });
    let api = FakeApi::new(move |call| {
        let policies = [policy_json(), unreadable.clone()];
        if let Some(reply) = Reply::steady(call, &[(POLICIES, &policies[..])]) {
            return reply;
        }
        Reply::echo(call)
    });
    let client = api.client();
    let (caches, watches) = reconcile::Caches::start(&client);
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(reconcile::run(
        caches,
        client,
        reporter(),
        Metrics::default(),
        crate::webhook::InjectConfig::default(),
        None,
        stop_rx,
    ));
    let delivered = || {
        api.writes()
            .iter()
            .any(|c| c.path == format!("/api/v1/namespaces/{NS}/configmaps/corsair-policy-api"))
    };
    // The unreadable one is refused in its own status, naming the field.
    let refused = || {
        api.writes().iter().any(|c| {
            c.path == "/apis/corsair.dev/v1alpha1/namespaces/other/corspolicies/cached/status"
                && c.body.to_string().contains("spec.maxAge: invalid value")
        })
    };
    let start = Instant::now();
    while !(delivered() && refused()) && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let policy_lists = api
        .calls()
        .iter()
        .filter(|c| c.path == POLICIES && c.is_read())
        .count();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), run).await;
    drop(watches);
    assert!(
        delivered(),
        "policy {NS}/api was never rendered into its ConfigMap: the CorsPolicy list was read \
         {policy_lists} times in 10 s and no reconciler started; writes: {:?}",
        api.writes()
    );
    assert!(
        refused(),
        "no status names the unreadable field: {:?}",
        api.writes()
    );
}
