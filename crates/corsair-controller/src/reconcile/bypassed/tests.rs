//! The watch of labelled pods against a mocked API server: each call asserted in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Reporter;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

use super::{Bypassed, REASON_PROXY_MISSING, SAY_AGAIN_AFTER};
use crate::fixtures::{ApiServerVerifier, StaticIndex, event_response, mock_client};
use crate::metrics::Metrics;
use crate::reconcile::Context;
use crate::webhook::InjectConfig;

fn context() -> (Arc<Context>, ApiServerVerifier) {
    let (client, verifier) = mock_client();
    let reporter = Reporter {
        controller: crate::reconcile::REPORTER.into(),
        instance: Some("test".into()),
    };
    let inject = InjectConfig {
        excluded_namespaces: ["kube-system".to_owned()].into(),
        ..InjectConfig::default()
    };
    let ctx = Context::new(
        client,
        reporter,
        Metrics::default(),
        Arc::new(StaticIndex::default()),
    )
    .with_inject(inject);
    (Arc::new(ctx), verifier)
}

/// The metadata the watch brings of pod `name` in `ns`; `injected` adds the webhook's mark.
fn meta(ns: &str, name: &str, injected: bool) -> PartialObjectMeta<Pod> {
    let mut annotations = BTreeMap::from([("corsair.dev/policy".to_owned(), "api".to_owned())]);
    if injected {
        annotations.insert("corsair.dev/injected".to_owned(), "{}".to_owned());
    }
    PartialObjectMeta {
        types: None,
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(BTreeMap::from([(
                "corsair.dev/inject".to_owned(),
                "enabled".to_owned(),
            )])),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        _phantom: std::marker::PhantomData,
    }
}

/// The whole pod as a GET returns it: the app container, and what `extra` adds to the spec.
fn pod(name: &str, extra: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "app", "image": "app:1"}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                     "labels": {"corsair.dev/inject": "enabled"},
                     "annotations": {"corsair.dev/policy": "api"}},
        "spec": spec,
    })
}

fn finished(mut pod: Value) -> Value {
    pod["status"] = json!({"phase": "Failed", "reason": "Evicted"});
    pod
}

fn succeeded(mut pod: Value) -> Value {
    pod["status"] = json!({"phase": "Succeeded"});
    pod
}

/// Answers the GET of pod `name` with a 500.
async fn fail_get(verifier: &mut ApiServerVerifier, name: &str) {
    let call = verifier.next_call().await;
    call.expect(Method::GET, &format!("/api/v1/namespaces/shop/pods/{name}"));
    call.respond(
        StatusCode::INTERNAL_SERVER_ERROR,
        &crate::fixtures::failure(500, "InternalError", None),
    );
}

async fn answer_get(verifier: &mut ApiServerVerifier, name: &str, body: Value) {
    let call = verifier.next_call().await;
    call.expect(Method::GET, &format!("/api/v1/namespaces/shop/pods/{name}"));
    call.respond(StatusCode::OK, &body);
}

/// Asserts the Warning Event about pod `name`; returns its note.
async fn answer_event(verifier: &mut ApiServerVerifier, name: &str) -> String {
    let call = verifier.next_call().await;
    call.expect(
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/shop/events",
    );
    assert_eq!(call.body["type"], "Warning");
    assert_eq!(call.body["reason"], REASON_PROXY_MISSING);
    assert_eq!(call.body["regarding"]["kind"], "Pod");
    assert_eq!(call.body["regarding"]["name"], name);
    let note = call.body["note"].as_str().unwrap_or_default().to_owned();
    let answer = event_response(&call);
    call.respond(StatusCode::CREATED, &answer);
    note
}

/// Handles `event`, failing the test if that waits for an API call nobody answers (an Event the
/// test does not expect).
async fn on(bypassed: &Bypassed, ctx: &Context, event: Event<PartialObjectMeta<Pod>>) {
    let handled =
        tokio::time::timeout(crate::fixtures::CALL_TIMEOUT, bypassed.on_event(ctx, event));
    assert!(
        handled.await.is_ok(),
        "the event waited for an unanswered API call"
    );
}

fn gauge(ctx: &Context) -> i64 {
    ctx.metrics.pods_without_proxy.get()
}

#[tokio::test]
async fn a_labelled_pod_without_the_proxy_is_said_once_and_forgotten_when_deleted() {
    let (ctx, mut verifier) = context();
    let bypassed = Bypassed::default();

    // Seen at the list: read, found without the proxy, said on the pod.
    let (_, note) = tokio::join!(
        on(
            &bypassed,
            &ctx,
            Event::InitApply(meta("shop", "web-1", false))
        ),
        async {
            answer_get(&mut verifier, "web-1", pod("web-1", json!({}))).await;
            answer_event(&mut verifier, "web-1").await
        }
    );
    assert!(
        note.contains("without the corsair-proxy container")
            && note.contains("kubectl delete pod -n shop web-1"),
        "{note}"
    );
    on(&bypassed, &ctx, Event::InitDone).await;
    assert_eq!(gauge(&ctx), 1);

    // Changes of the same pod say nothing again, and cost no read.
    on(&bypassed, &ctx, Event::Apply(meta("shop", "web-1", false))).await;
    // Injected pods, pods of excluded namespaces: no read either.
    on(&bypassed, &ctx, Event::Apply(meta("shop", "web-2", true))).await;
    on(
        &bypassed,
        &ctx,
        Event::Apply(meta("kube-system", "dns", false)),
    )
    .await;
    assert_eq!(gauge(&ctx), 1);

    on(&bypassed, &ctx, Event::Delete(meta("shop", "web-1", false))).await;
    assert_eq!(gauge(&ctx), 0);
    verifier.expect_no_more_calls().await;
}

#[tokio::test]
async fn pods_the_webhook_leaves_alone_on_purpose_or_that_have_the_proxy_are_not_said() {
    let (ctx, mut verifier) = context();
    let bypassed = Bypassed::default();
    let cases = [
        ("host", json!({"hostNetwork": true})),
        (
            "native",
            json!({"initContainers": [{"name": "corsair-proxy", "image": "corsair-proxy:1", "restartPolicy": "Always"}]}),
        ),
        (
            "regular",
            json!({"containers": [{"name": "app", "image": "app:1"}, {"name": "corsair-proxy", "image": "corsair-proxy:1"}]}),
        ),
    ];
    for (name, extra) in cases {
        tokio::join!(
            on(&bypassed, &ctx, Event::Apply(meta("shop", name, false))),
            answer_get(&mut verifier, name, pod(name, extra)),
        );
    }
    // Looked at once: their changes cost no read again.
    for name in ["host", "native", "regular"] {
        on(&bypassed, &ctx, Event::Apply(meta("shop", name, false))).await;
    }
    // Finished pods are not said.
    tokio::join!(
        on(&bypassed, &ctx, Event::Apply(meta("shop", "done", false))),
        answer_get(&mut verifier, "done", finished(pod("done", json!({})))),
    );
    tokio::join!(
        on(&bypassed, &ctx, Event::Apply(meta("shop", "job", false))),
        answer_get(&mut verifier, "job", succeeded(pod("job", json!({})))),
    );
    // A label without a policy named: the webhook admits it unchanged, and no read is made.
    let mut unnamed = meta("shop", "unnamed", false);
    if let Some(a) = unnamed.metadata.annotations.as_mut() {
        a.remove("corsair.dev/policy");
    }
    on(&bypassed, &ctx, Event::Apply(unnamed)).await;
    // A static pod's mirror: the webhook leaves it alone (the kubelet runs the file), so its
    // metadata is enough, and the rule agrees on the whole pod.
    let mut mirror = meta("shop", "mirror", false);
    let mirrored = ("kubernetes.io/config.mirror".to_owned(), "0f3a".to_owned());
    if let Some(a) = mirror.metadata.annotations.as_mut() {
        a.insert(mirrored.0.clone(), mirrored.1.clone());
    }
    on(&bypassed, &ctx, Event::Apply(mirror)).await;
    let mut whole = pod("mirror", json!({}));
    whole["metadata"]["annotations"][&mirrored.0] = json!(mirrored.1);
    let whole: Pod = serde_json::from_value(whole).expect("a pod");
    assert_eq!(super::bypass_note(&whole, false), None);
    // Nor a Windows pod, which the webhook leaves alone too.
    let windows: Pod =
        serde_json::from_value(pod("win", json!({"os": {"name": "windows"}}))).expect("a pod");
    assert_eq!(super::bypass_note(&windows, false), None);
    // A pod replaced under the same name between the event and the read is not this pod.
    let mut other = pod("gone", json!({}));
    other["metadata"]["uid"] = json!("uid-another");
    tokio::join!(
        on(&bypassed, &ctx, Event::Apply(meta("shop", "gone", false))),
        answer_get(&mut verifier, "gone", other),
    );
    assert_eq!(gauge(&ctx), 0);
    verifier.expect_no_more_calls().await;
}

/// A re-list (after the watch expired) forgets the pods deleted while no watch ran, and says
/// again none of those it still finds.
#[tokio::test]
async fn a_relist_forgets_pods_deleted_meanwhile_without_saying_the_others_again() {
    let (ctx, mut verifier) = context();
    let bypassed = Bypassed::default();
    for name in ["a", "b"] {
        tokio::join!(
            on(&bypassed, &ctx, Event::Apply(meta("shop", name, false))),
            async {
                answer_get(&mut verifier, name, pod(name, json!({}))).await;
                answer_event(&mut verifier, name).await
            }
        );
    }
    assert_eq!(gauge(&ctx), 2);

    on(&bypassed, &ctx, Event::Init).await;
    on(&bypassed, &ctx, Event::InitApply(meta("shop", "b", false))).await;
    on(&bypassed, &ctx, Event::InitDone).await;
    assert_eq!(gauge(&ctx), 1, "a was deleted while no watch ran");
    // b is still known: its changes cost no read. a was forgotten: were it back, it is read.
    on(&bypassed, &ctx, Event::Apply(meta("shop", "b", false))).await;
    tokio::join!(
        on(&bypassed, &ctx, Event::Apply(meta("shop", "a", false))),
        answer_get(&mut verifier, "a", finished(pod("a", json!({})))),
    );
    verifier.expect_no_more_calls().await;
}

/// Every sweep reads the pods said: a gone or finished one leaves the count, an Event that
/// failed is sent again, and one older than `SAY_AGAIN_AFTER` is said again, since Events
/// expire.
#[tokio::test]
async fn a_sweep_says_again_what_expired_or_failed_and_forgets_what_is_gone() {
    let (ctx, mut verifier) = context();
    let bypassed = Bypassed::default();
    tokio::join!(
        on(&bypassed, &ctx, Event::Apply(meta("shop", "a", false))),
        async {
            answer_get(&mut verifier, "a", pod("a", json!({}))).await;
            answer_event(&mut verifier, "a").await
        }
    );
    // The Event about b fails.
    tokio::join!(
        on(&bypassed, &ctx, Event::Apply(meta("shop", "b", false))),
        async {
            answer_get(&mut verifier, "b", pod("b", json!({}))).await;
            let call = verifier.next_call().await;
            call.expect(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/shop/events",
            );
            call.respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                &crate::fixtures::failure(500, "InternalError", None),
            );
        }
    );
    assert_eq!(gauge(&ctx), 2);

    // a was said just now; b was not said at all.
    tokio::join!(bypassed.sweep(&ctx), async {
        answer_get(&mut verifier, "a", pod("a", json!({}))).await;
        answer_get(&mut verifier, "b", pod("b", json!({}))).await;
        answer_event(&mut verifier, "b").await
    });

    // An hour later a's Event has expired; b is gone.
    let later = tokio::time::Instant::now() + SAY_AGAIN_AFTER;
    tokio::join!(bypassed.sweep_at(&ctx, later), async {
        answer_get(&mut verifier, "a", pod("a", json!({}))).await;
        answer_event(&mut verifier, "a").await;
        let call = verifier.next_call().await;
        call.expect(Method::GET, "/api/v1/namespaces/shop/pods/b");
        call.respond(
            StatusCode::NOT_FOUND,
            &crate::fixtures::failure(404, "NotFound", None),
        );
    });
    assert_eq!(gauge(&ctx), 1);

    // Said again just then: the next sweep reads a but says nothing.
    tokio::join!(
        bypassed.sweep_at(&ctx, later + std::time::Duration::from_secs(60)),
        answer_get(&mut verifier, "a", pod("a", json!({}))),
    );

    // a is evicted: it leaves the count.
    tokio::join!(
        bypassed.sweep(&ctx),
        answer_get(&mut verifier, "a", finished(pod("a", json!({})))),
    );
    assert_eq!(gauge(&ctx), 0);
    verifier.expect_no_more_calls().await;
}

/// The gauge counts for the leader alone: it is zeroed when the watch stops.
#[tokio::test]
async fn the_gauge_is_zeroed_when_the_watch_stops() {
    let (ctx, _verifier) = context();
    ctx.metrics.pods_without_proxy.set(3);
    let stopped = tokio::time::timeout(
        crate::fixtures::CALL_TIMEOUT,
        super::watch(ctx.clone(), std::future::ready(())),
    );
    assert!(stopped.await.is_ok(), "the watch did not stop");
    assert_eq!(gauge(&ctx), 0);
}

/// A read that fails is no verdict: a pod met for the first time is read again by the next
/// sweep, and a pod already said stays counted.
#[tokio::test]
async fn a_failed_read_keeps_a_pod_in_view() {
    let (ctx, mut verifier) = context();
    let bypassed = Bypassed::default();
    tokio::join!(
        on(&bypassed, &ctx, Event::Apply(meta("shop", "a", false))),
        fail_get(&mut verifier, "a"),
    );
    assert_eq!(gauge(&ctx), 0);
    // The next sweep reads it again, and says it.
    tokio::join!(bypassed.sweep(&ctx), async {
        answer_get(&mut verifier, "a", pod("a", json!({}))).await;
        answer_event(&mut verifier, "a").await
    });
    assert_eq!(gauge(&ctx), 1);
    // A sweep whose read fails keeps it counted, and says nothing.
    tokio::join!(bypassed.sweep(&ctx), fail_get(&mut verifier, "a"));
    assert_eq!(gauge(&ctx), 1);
    // A pod going away is not said.
    let mut leaving = pod("a", json!({}));
    leaving["metadata"]["deletionTimestamp"] = json!("2026-11-30T21:00:00Z");
    tokio::join!(
        bypassed.sweep(&ctx),
        answer_get(&mut verifier, "a", leaving)
    );
    assert_eq!(gauge(&ctx), 0);
    verifier.expect_no_more_calls().await;
}

/// Only RBAC's refusal is said as missing RBAC; other failures are ordinary watch errors.
#[test]
fn a_refused_list_is_told_from_other_failures() {
    use kube::runtime::watcher::Error;
    let status = |code: u16, reason: &str| {
        let status: kube::core::Status = serde_json::from_value(json!({
            "status": "Failure", "code": code, "reason": reason, "message": "pods",
        }))
        .expect("status");
        kube::Error::Api(Box::new(status))
    };
    assert!(super::forbidden(&Error::InitialListFailed(status(
        403,
        "Forbidden"
    ))));
    assert!(super::forbidden(&Error::WatchStartFailed(status(
        403,
        "Forbidden"
    ))));
    assert!(!super::forbidden(&Error::InitialListFailed(status(
        500,
        "InternalError"
    ))));
    assert!(!super::forbidden(&Error::NoResourceVersion));
}
