//! The reconcilers against a mocked API server: every call is asserted in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use corsair_policy::CorsPolicySpec;
use http::{Method, StatusCode};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, FieldsV1, ManagedFieldsEntry, ObjectMeta, Time,
};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};

use super::shared::Change;
use super::{Context, PolicyUsers, WorkloadMeta, policy, triggers, workload};
use crate::crd::{CorsPolicy, CorsPolicyStatus};
use crate::document;
use crate::fixtures::{ApiServerVerifier, StaticIndex, event_response, failure, mock_client};
use crate::metrics::Metrics;
use crate::names::{POLICY_MANAGER, WORKLOAD_MANAGER};
use crate::webhook::InjectConfig;

const NS: &str = "shop";

fn context(index: StaticIndex) -> (Arc<Context>, ApiServerVerifier) {
    context_injecting(index, InjectConfig::default())
}

fn context_injecting(
    index: StaticIndex,
    inject: InjectConfig,
) -> (Arc<Context>, ApiServerVerifier) {
    let (client, verifier) = mock_client();
    let reporter = Reporter {
        controller: super::REPORTER.into(),
        instance: Some("test".into()),
    };
    let ctx =
        Context::new(client, reporter, Metrics::default(), Arc::new(index)).with_inject(inject);
    (Arc::new(ctx), verifier)
}

fn policy(name: &str, spec: Value) -> CorsPolicy {
    let spec: CorsPolicySpec = match serde_json::from_value(spec) {
        Ok(spec) => spec,
        Err(err) => panic!("test spec does not parse: {err}"),
    };
    let mut policy = CorsPolicy::new(name, spec);
    policy.metadata.namespace = Some(NS.into());
    policy.metadata.uid = Some(format!("uid-{name}"));
    policy.metadata.generation = Some(3);
    policy
}

fn valid_policy() -> CorsPolicy {
    policy(
        "api",
        json!({
            "allowOrigins": ["https://app.example.com", "http://app.example.com"],
            "allowMethods": ["GET", "POST"],
            "allowCredentials": true,
        }),
    )
}

fn invalid_policy() -> CorsPolicy {
    policy(
        "api",
        json!({ "allowOrigins": ["https://app.example.com/"], "allowMethods": ["GET"] }),
    )
}

fn deployment(meta_annotation: Option<&str>, template: Option<PodTemplateSpec>) -> Deployment {
    let annotations = meta_annotation
        .map(|p| BTreeMap::from([(crate::names::POLICY_ANNOTATION.to_owned(), p.to_owned())]));
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some(NS.into()),
            uid: Some("uid-web".into()),
            annotations,
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            template: template.unwrap_or_default(),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// A pod template as the controller leaves it, with the managed-fields entry that says so.
fn labelled_template(policy: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(BTreeMap::from([(
                "corsair.dev/inject".to_owned(),
                "enabled".to_owned(),
            )])),
            annotations: Some(BTreeMap::from([(
                "corsair.dev/policy".to_owned(),
                policy.to_owned(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: None,
    }
}

/// A Deployment opted in for `api`: what we apply, in place, under our manager.
fn opted_in() -> Deployment {
    let mut placed = deployment(Some("api"), Some(labelled_template("api")));
    placed.metadata.managed_fields = Some(vec![ours()]);
    placed
}

/// The field entry of a user's tool (`manager`) that wrote the pod template's policy annotation.
fn template_annotation_by(manager: &str) -> ManagedFieldsEntry {
    let key = format!("f:{}", crate::names::POLICY_ANNOTATION);
    ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some("Update".into()),
        fields_v1: Some(FieldsV1(json!({
            "f:spec": {"f:template": {"f:metadata": {"f:annotations": {key: {}}}}}
        }))),
        ..ManagedFieldsEntry::default()
    }
}

fn ours() -> ManagedFieldsEntry {
    ManagedFieldsEntry {
        manager: Some(WORKLOAD_MANAGER.into()),
        operation: Some("Apply".into()),
        fields_v1: Some(FieldsV1(json!({
            "f:spec": {"f:template": {"f:metadata": {
                "f:labels": {"f:corsair.dev/inject": {}},
                "f:annotations": {"f:corsair.dev/policy": {}},
            }}}
        }))),
        ..ManagedFieldsEntry::default()
    }
}

/// The scenarios: what the reconciler is given, and therefore which calls it must make.
enum Scenario {
    /// A valid policy: ConfigMap apply, status apply (Ready=True), Normal Event.
    PolicyAccepted(CorsPolicy),
    /// An invalid policy: no ConfigMap call, status apply (Ready=False), Warning Event.
    PolicyRefused(CorsPolicy),
    /// A valid policy too large for a ConfigMap: no ConfigMap write, `Ready=False` and a
    /// Warning Event, each giving the size.
    PolicyTooLarge(CorsPolicy),
    /// An annotated workload without the label: apply of label + annotation.
    WorkloadOptIn { policy: &'static str },
    /// An annotated workload whose policy is missing: apply, then a Warning Event.
    WorkloadPolicyMissing { policy: &'static str },
    /// The annotation was removed: an empty apply releases our fields.
    WorkloadOptOut,
    /// The annotation is not a policy name: a Warning Event, and no write to the workload.
    WorkloadInvalidPolicyName { policy: &'static str },
    /// The whole workload is read, and its pods would be refused by the webhook: a Warning
    /// Event naming `cause`, and no write.
    WorkloadInjectionRefused {
        stored: Value,
        reason: &'static str,
        cause: &'static str,
    },
}

/// The whole Deployment `web` as the API server returns it, with `containers`.
fn stored_deployment(containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS, "uid": "uid-web",
                     "annotations": {"corsair.dev/policy": "api"}},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers}
            }
        }
    })
}

/// A Deployment whose pods the webhook refuses: two containers with a port named `http`.
fn shared_port_name() -> Value {
    stored_deployment(json!([
        {"name": "app", "image": "app", "ports": [{"name": "http", "containerPort": 8080}]},
        {"name": "metrics", "image": "m", "ports": [{"name": "http", "containerPort": 9090}]}
    ]))
}

/// A Deployment whose pods the webhook admits: one container with a port named `http`.
fn admissible_deployment() -> Value {
    stored_deployment(json!([{"name": "app", "image": "app",
        "ports": [{"name": "http", "containerPort": 8080}]}]))
}

impl ApiServerVerifier {
    async fn run(mut self, scenario: Scenario) {
        match scenario {
            Scenario::PolicyAccepted(policy) => {
                self.configmap_apply(&policy).await;
                let status = self.status_apply(&policy).await;
                let ready = &status["conditions"][0];
                assert_eq!(ready["type"], "Ready");
                assert_eq!(ready["status"], "True");
                assert_eq!(ready["reason"], "Accepted");
                assert_eq!(ready["observedGeneration"], 3);
                assert_eq!(status["observedGeneration"], 3);
                assert_eq!(status["workloads"], 2);
                let warnings = status["warnings"].as_array().cloned().unwrap_or_default();
                assert!(
                    warnings.iter().any(|w| w
                        .as_str()
                        .is_some_and(|w| w.contains("spec.allowOrigins[1]"))),
                    "the mixed-scheme lint names the field: {warnings:?}"
                );
                self.event("Normal", "Accepted", "corspolicies", "api")
                    .await;
            }
            Scenario::PolicyRefused(policy) => {
                let status = self.status_apply(&policy).await;
                let ready = &status["conditions"][0];
                assert_eq!(ready["status"], "False");
                assert_eq!(ready["reason"], "Invalid");
                let message = ready["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("spec.allowOrigins[0]") && message.contains("path"),
                    "message names the field and the cause: {message}"
                );
                let note = self
                    .event("Warning", "Invalid", "corspolicies", "api")
                    .await;
                assert!(note.contains("spec.allowOrigins[0]"), "event note: {note}");
            }
            Scenario::PolicyTooLarge(policy) => {
                let status = self.status_apply(&policy).await;
                let ready = &status["conditions"][0];
                assert_eq!(ready["status"], "False");
                assert_eq!(ready["reason"], "TooLarge");
                let message = ready["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("1048576") && message.contains("ConfigMap"),
                    "message gives the limit: {message}"
                );
                let note = self
                    .event("Warning", "TooLarge", "corspolicies", "api")
                    .await;
                assert!(note.contains("bytes"), "event note: {note}");
            }
            Scenario::WorkloadOptIn { policy } => {
                self.workload_get(&admissible_deployment()).await;
                let patch = self.workload_apply().await;
                assert_eq!(
                    patch,
                    workload::apply_patch::<Deployment>("web", NS, Some(policy))
                );
                let template = &patch["spec"]["template"]["metadata"];
                assert_eq!(template["labels"]["corsair.dev/inject"], "enabled");
                assert_eq!(template["annotations"]["corsair.dev/policy"], policy);
            }
            Scenario::WorkloadPolicyMissing { policy } => {
                self.workload_get(&admissible_deployment()).await;
                self.workload_apply().await;
                let note = self
                    .event("Warning", "PolicyNotFound", "deployments", "web")
                    .await;
                assert!(note.contains(policy), "note names the policy: {note}");
            }
            Scenario::WorkloadInvalidPolicyName { policy } => {
                let note = self
                    .event("Warning", "InvalidPolicyName", "deployments", "web")
                    .await;
                assert!(
                    note.contains(&format!("{policy:?}")) && note.contains("corsair.dev/policy"),
                    "the note names the annotation and its value: {note}"
                );
            }
            Scenario::WorkloadInjectionRefused {
                stored,
                reason,
                cause,
            } => {
                self.workload_get(&stored).await;
                let note = self.event("Warning", reason, "deployments", "web").await;
                assert!(
                    note.contains(cause) && note.contains("left as it is"),
                    "the note names the cause: {note}"
                );
            }
            Scenario::WorkloadOptOut => {
                let patch = self.workload_apply().await;
                assert_eq!(
                    patch,
                    json!({
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": "web", "namespace": NS},
                    }),
                    "an apply that declares nothing releases the label and the annotation"
                );
            }
        }
        self.expect_no_more_calls().await;
    }

    async fn configmap_apply(&mut self, policy: &CorsPolicy) {
        let call = self.next_call().await;
        call.expect(
            Method::PATCH,
            &format!("/api/v1/namespaces/{NS}/configmaps/corsair-policy-api"),
        )
        .expect_apply(POLICY_MANAGER);
        let body = &call.body;
        assert_eq!(body["kind"], "ConfigMap");
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "CorsPolicy");
        assert_eq!(owner["apiVersion"], "corsair.dev/v1alpha1");
        assert_eq!(owner["uid"], "uid-api");
        assert_eq!(owner["controller"], true);
        let rendered = body["data"]["policy.json"].as_str().unwrap_or_default();
        let document = corsair_policy::load_document(rendered)
            .unwrap_or_else(|err| panic!("the proxy cannot load the rendered policy: {err}"));
        assert_eq!(document.spec, policy.spec);
        assert_eq!(document.metadata.generation, Some(3));
        assert_eq!(document.metadata.namespace.as_deref(), Some(NS));
        call.echo();
    }

    async fn status_apply(&mut self, policy: &CorsPolicy) -> Value {
        let call = self.next_call().await;
        call.expect(
            Method::PATCH,
            &format!("/apis/corsair.dev/v1alpha1/namespaces/{NS}/corspolicies/api/status"),
        )
        .expect_apply(POLICY_MANAGER);
        assert_eq!(call.body["apiVersion"], "corsair.dev/v1alpha1");
        assert_eq!(call.body["kind"], "CorsPolicy");
        let status = call.body["status"].clone();
        let mut answer = match serde_json::to_value(policy) {
            Ok(v) => v,
            Err(err) => panic!("{err}"),
        };
        answer["status"] = status.clone();
        call.respond(StatusCode::OK, &answer);
        status
    }

    /// Asserts a read of the whole Deployment `web`, answered with `stored`.
    async fn workload_get(&mut self, stored: &Value) {
        self.workload_get_answered(StatusCode::OK, stored).await;
    }

    /// Asserts a read of the whole Deployment `web`, answered with `status` and `body`.
    async fn workload_get_answered(&mut self, status: StatusCode, body: &Value) {
        let call = self.next_call().await;
        call.expect(
            Method::GET,
            &format!("/apis/apps/v1/namespaces/{NS}/deployments/web"),
        );
        call.respond(status, body);
    }

    async fn workload_apply(&mut self) -> Value {
        let call = self.next_call().await;
        call.expect(
            Method::PATCH,
            &format!("/apis/apps/v1/namespaces/{NS}/deployments/web"),
        )
        .expect_apply(WORKLOAD_MANAGER);
        let body = call.body.clone();
        let answer = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
        });
        call.respond(StatusCode::OK, &answer);
        body
    }

    /// Asserts an Event create about `plural/name`; returns its note.
    async fn event(&mut self, type_: &str, reason: &str, plural: &str, name: &str) -> String {
        let call = self.next_call().await;
        call.expect(
            Method::POST,
            &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
        );
        let body = &call.body;
        assert_eq!(body["type"], type_);
        assert_eq!(body["reason"], reason);
        assert_eq!(body["regarding"]["name"], name);
        let kind = if plural == "deployments" {
            "Deployment"
        } else {
            "CorsPolicy"
        };
        assert_eq!(body["regarding"]["kind"], kind);
        let note = body["note"].as_str().unwrap_or_default().to_owned();
        let answer = event_response(&call);
        call.respond(StatusCode::CREATED, &answer);
        note
    }
}

/// What the mock API server's task returned; its panic (a call it did not expect) is the test's.
async fn joined<T>(server: tokio::task::JoinHandle<T>) -> T {
    match server.await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Reconciles the Deployment `workload` as the controller does, from what its cache keeps.
fn reconcile_deployment(
    workload: &Deployment,
    ctx: Arc<Context>,
) -> impl std::future::Future<Output = crate::Result<Action>> {
    workload::reconcile(Arc::new(WorkloadMeta::from_object(workload)), ctx)
}

async fn run<F: std::future::Future<Output = crate::Result<Action>>>(
    reconcile: F,
    verifier: ApiServerVerifier,
    scenario: Scenario,
) -> Action {
    let server = tokio::spawn(verifier.run(scenario));
    let action = reconcile.await;
    joined(server).await;
    match action {
        Ok(action) => action,
        Err(err) => panic!("reconcile failed: {err}"),
    }
}

#[tokio::test]
async fn valid_policy_renders_configmap_and_becomes_ready() {
    let mut index = StaticIndex::with_policies(NS, &["api"]);
    index.workloads.insert((NS.into(), "api".into()), 2);
    let (ctx, verifier) = context(index);
    let policy = valid_policy();
    let action = run(
        policy::reconcile(Arc::new(policy.clone()), ctx.clone()),
        verifier,
        Scenario::PolicyAccepted(policy),
    )
    .await;
    assert_eq!(action, Action::requeue(policy::RESYNC));
}

#[tokio::test]
async fn invalid_policy_keeps_the_configmap_and_reports_the_field() {
    let (ctx, verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let policy = invalid_policy();
    run(
        policy::reconcile(Arc::new(policy.clone()), ctx),
        verifier,
        Scenario::PolicyRefused(policy),
    )
    .await;
}

/// The API server would refuse the ConfigMap at every retry: the policy is refused in its
/// status instead, and no write is tried.
#[tokio::test]
async fn a_policy_too_large_for_a_configmap_is_refused_in_its_status() {
    let (ctx, verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let policy = policy("api", crate::fixtures::large_spec(150));
    let action = run(
        policy::reconcile(Arc::new(policy.clone()), ctx),
        verifier,
        Scenario::PolicyTooLarge(policy),
    )
    .await;
    assert_eq!(action, Action::requeue(policy::RESYNC));
}

/// Indented for people while that fits in a ConfigMap, on one line when only that does; the
/// proxy reads both as the same policy.
#[test]
fn a_policy_is_rendered_on_one_line_when_only_that_fits() {
    let small = document::render(&valid_policy()).expect("renders");
    assert!(small.contains('\n'), "indented: {small}");

    let large = policy("api", crate::fixtures::large_spec(120));
    let pretty = serde_json::to_string_pretty(&corsair_policy::PolicyDocument {
        api_version: corsair_policy::model::API_VERSION.to_owned(),
        kind: corsair_policy::model::KIND.to_owned(),
        metadata: corsair_policy::model::DocumentMeta {
            name: large.metadata.name.clone(),
            namespace: large.metadata.namespace.clone(),
            generation: large.metadata.generation,
        },
        spec: large.spec.clone(),
    })
    .expect("renders");
    assert!(
        pretty.len() > document::MAX_CONFIGMAP_DATA,
        "{}",
        pretty.len()
    );
    let rendered = document::render(&large).expect("renders");
    assert!(
        rendered.len() <= document::MAX_CONFIGMAP_DATA,
        "{}",
        rendered.len()
    );
    assert!(!rendered.contains('\n'));
    let loaded = corsair_policy::load_document(&rendered).expect("the proxy loads it");
    assert_eq!(loaded.spec, large.spec);
    assert_eq!(loaded.metadata.generation, Some(3));
}

#[tokio::test]
async fn unchanged_policy_writes_status_but_no_event() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let mut policy = valid_policy();
    let since = Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    policy.status = Some(CorsPolicyStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Accepted".into(),
            message: String::new(),
            observed_generation: Some(3),
            last_transition_time: Time(since),
        }],
        observed_generation: Some(3),
        ..CorsPolicyStatus::default()
    });
    let reconcile = policy::reconcile(Arc::new(policy.clone()), ctx);
    let server = tokio::spawn(async move {
        verifier.configmap_apply(&policy).await;
        let status = verifier.status_apply(&policy).await;
        assert_eq!(
            status["conditions"][0]["lastTransitionTime"],
            json!(Time(since)),
            "lastTransitionTime only moves when Ready flips"
        );
        verifier.expect_no_more_calls().await;
    });
    assert!(reconcile.await.is_ok());
    joined(server).await;
}

#[tokio::test]
async fn api_error_fails_the_reconcile_with_a_metric_label() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let policy = valid_policy();
    let server = tokio::spawn({
        let policy = policy.clone();
        async move {
            let call = verifier.next_call().await;
            call.respond(
                StatusCode::FORBIDDEN,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "configmaps is forbidden", "reason": "Forbidden", "code": 403}),
            );
            // Refused for good (a quota, an admission policy, RBAC): the status says so, once.
            let status = verifier.status_apply(&policy).await;
            let ready = &status["conditions"][0];
            assert_eq!(ready["status"], "False");
            assert_eq!(ready["reason"], "NotDelivered");
            let message = ready["message"].as_str().unwrap_or_default();
            assert!(message.contains("configmaps is forbidden"), "{message}");
            verifier
                .event("Warning", "NotDelivered", "corspolicies", "api")
                .await;
            verifier.expect_no_more_calls().await;
        }
    });
    let result = policy::reconcile(Arc::new(policy.clone()), ctx.clone()).await;
    let Err(err) = result else {
        panic!("a 403 must fail the reconcile");
    };
    assert_eq!(err.metric_label(), "api_forbidden");
    let first = super::error_policy(policy::CONTROLLER, &policy, &err, &ctx);
    let second = super::error_policy(policy::CONTROLLER, &policy, &err, &ctx);
    assert_eq!(first, Action::requeue(std::time::Duration::from_secs(1)));
    assert_eq!(second, Action::requeue(std::time::Duration::from_secs(2)));
    joined(server).await;
}

/// A paused Deployment does not replace its pods when the template changes: the opt-in is
/// written, and a Warning says the running pods keep serving without the proxy.
#[tokio::test]
async fn opting_in_a_paused_deployment_says_its_pods_are_not_replaced() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let workload = deployment(Some("api"), None);
    let server = tokio::spawn(async move {
        let mut stored = admissible_deployment();
        stored["spec"]["paused"] = json!(true);
        verifier.workload_get(&stored).await;
        verifier.workload_apply().await;
        let note = verifier
            .event("Warning", "RolloutHeld", "deployments", "web")
            .await;
        assert!(note.contains("spec.paused is true"), "{note}");
        verifier
    });
    let action = reconcile_deployment(&workload, ctx.clone())
        .await
        .expect("reconciles");
    let mut verifier = joined(server).await;
    assert_eq!(action, Action::await_change());
    // Resumed: nothing to say, and what was said is forgotten; paused again, it is news again.
    let server = tokio::spawn(async move {
        verifier.workload_get(&admissible_deployment()).await;
        verifier.workload_apply().await;
        let mut stored = admissible_deployment();
        stored["spec"]["paused"] = json!(true);
        verifier.workload_get(&stored).await;
        verifier.workload_apply().await;
        verifier
            .event("Warning", "RolloutHeld", "deployments", "web")
            .await;
        // Still paused: said once.
        verifier.workload_get(&stored).await;
        verifier.workload_apply().await;
        verifier.expect_no_more_calls().await;
    });
    for _ in 0..3 {
        reconcile_deployment(&workload, ctx.clone())
            .await
            .expect("reconciles");
    }
    joined(server).await;
}

/// What holds each kind's rollout back, read from the object as the API server returns it.
#[test]
fn a_held_rollout_is_told_for_each_kind() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use workload::Workload as _;
    let from = |v: Value| -> StatefulSet { serde_json::from_value(v).expect("a StatefulSet") };
    let sts = |strategy: Value| {
        from(json!({"metadata": {"name": "s"}, "spec": {
            "selector": {}, "serviceName": "s", "template": {},
            "updateStrategy": strategy}}))
    };
    assert_eq!(
        sts(json!({"type": "OnDelete"})).rollout_held().as_deref(),
        Some("spec.updateStrategy.type is OnDelete")
    );
    assert!(
        sts(json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}))
            .rollout_held()
            .is_some_and(|why| why.contains("partition is 2"))
    );
    assert_eq!(
        sts(json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})).rollout_held(),
        None
    );
    let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {
        "selector": {}, "template": {}, "updateStrategy": {"type": "OnDelete"}}}))
    .expect("a DaemonSet");
    assert!(ds.rollout_held().is_some());
    let running: Deployment =
        serde_json::from_value(admissible_deployment()).expect("a Deployment");
    assert_eq!(running.rollout_held(), None);
}

/// A server error may pass: the reconcile fails for a retry, and the status is left alone.
#[tokio::test]
async fn a_passing_configmap_error_leaves_the_status_alone() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let server = tokio::spawn(async move {
        let call = verifier.next_call().await;
        call.respond(
            StatusCode::SERVICE_UNAVAILABLE,
            &crate::fixtures::failure(503, "ServiceUnavailable", None),
        );
        verifier.expect_no_more_calls().await;
    });
    let result = policy::reconcile(Arc::new(valid_policy()), ctx).await;
    assert!(result.is_err());
    joined(server).await;
}

#[tokio::test]
async fn annotated_deployment_gets_label_and_annotation() {
    let (ctx, verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let workload = deployment(Some("api"), None);
    let action = run(
        reconcile_deployment(&workload, ctx),
        verifier,
        Scenario::WorkloadOptIn { policy: "api" },
    )
    .await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn annotated_pod_template_counts_when_the_user_wrote_it() {
    let (ctx, verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let mut template = labelled_template("api");
    if let Some(meta) = template.metadata.as_mut() {
        meta.labels = None;
    }
    let workload = deployment(None, Some(template));
    run(
        reconcile_deployment(&workload, ctx),
        verifier,
        Scenario::WorkloadOptIn { policy: "api" },
    )
    .await;
}

#[tokio::test]
async fn missing_policy_gets_a_warning_event() {
    let (ctx, verifier) = context(StaticIndex::default());
    let workload = deployment(Some("nope"), None);
    run(
        reconcile_deployment(&workload, ctx),
        verifier,
        Scenario::WorkloadPolicyMissing { policy: "nope" },
    )
    .await;
}

#[tokio::test]
async fn an_annotation_that_is_not_a_policy_name_is_not_copied() {
    let (ctx, verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let workload = deployment(Some("My API"), None);
    let action = run(
        reconcile_deployment(&workload, ctx),
        verifier,
        Scenario::WorkloadInvalidPolicyName { policy: "My API" },
    )
    .await;
    assert_eq!(action, Action::await_change());
}

/// A workload already opted in keeps its template (and its pods) when the annotation is
/// changed to something that is not a name.
#[tokio::test]
async fn an_annotation_changed_to_a_non_name_leaves_the_template_as_it_was() {
    let (ctx, verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let mut workload = deployment(Some("api_v2"), Some(labelled_template("api")));
    workload.metadata.managed_fields = Some(vec![ours()]);
    run(
        reconcile_deployment(&workload, ctx),
        verifier,
        Scenario::WorkloadInvalidPolicyName { policy: "api_v2" },
    )
    .await;
}

/// Opting in a workload whose pods the webhook would refuse starts a rollout into refused
/// pods while the old ones are scaled down: the template is read and checked first.
#[tokio::test]
async fn a_workload_whose_pods_would_be_refused_is_not_opted_in() {
    let host_network = {
        let mut d = admissible_deployment();
        d["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        d
    };
    let windows = {
        let mut d = admissible_deployment();
        d["spec"]["template"]["spec"]["os"] = json!({"name": "windows"});
        d
    };
    for (stored, reason, cause) in [
        (
            stored_deployment(
                json!([{"name": "app", "image": "app", "ports": [{"name": "https", "containerPort": 8443}]}]),
            ),
            "InjectionRefused",
            "spec.containers[0].ports[0]",
        ),
        (
            shared_port_name(),
            "InjectionRefused",
            "spec.containers[1].ports[0].name",
        ),
        // Admitted without the proxy: an opt-in would roll the pods for nothing.
        (host_network, "InjectionSkipped", "spec.hostNetwork is true"),
        (windows, "InjectionSkipped", "Windows"),
    ] {
        let (ctx, verifier) = context(StaticIndex::with_policies(NS, &["api"]));
        let workload = deployment(Some("api"), None);
        let action = run(
            reconcile_deployment(&workload, ctx),
            verifier,
            Scenario::WorkloadInjectionRefused {
                stored,
                reason,
                cause,
            },
        )
        .await;
        assert_eq!(action, Action::await_change());
    }
}

/// The webhook never sees pods in an excluded namespace: opting a workload in there would roll
/// it out into pods without the proxy. A Warning says so instead, without reading the workload;
/// also for one opted in before its namespace was excluded, which keeps its template.
#[tokio::test]
async fn a_workload_in_an_excluded_namespace_is_not_opted_in() {
    let inject = InjectConfig {
        excluded_namespaces: [NS.to_owned()].into(),
        ..InjectConfig::default()
    };
    let placed = opted_in();
    for (workload, kept) in [
        (
            deployment(Some("api"), None),
            "the pod template is left as it is",
        ),
        (placed, "the pod template keeps corsair.dev/policy \"api\""),
    ] {
        let index = StaticIndex::with_policies(NS, &["api"]);
        let (ctx, mut verifier) = context_injecting(index, inject.clone());
        let server = tokio::spawn(async move {
            let note = verifier
                .event("Warning", "InjectionSkipped", "deployments", "web")
                .await;
            assert!(
                note.contains("does not inject pods in namespace shop") && note.contains(kept),
                "{note}"
            );
            verifier.expect_no_more_calls().await;
        });
        let action = reconcile_deployment(&workload, ctx).await;
        assert!(matches!(action, Ok(a) if a == Action::await_change()));
        joined(server).await;
    }
}

/// The webhook's warnings reach only whoever creates a pod, for a Deployment the ReplicaSet
/// controller: at opt-in the workload gets them as a Warning Event. An unnamed app port is the
/// one that matters most: a Service that targets its number goes past the proxy.
#[tokio::test]
async fn the_webhooks_warnings_reach_the_workload_at_opt_in() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let server = tokio::spawn(async move {
        let unnamed = stored_deployment(
            json!([{"name": "app", "image": "app", "ports": [{"containerPort": 8080}]}]),
        );
        verifier.workload_get(&unnamed).await;
        verifier.workload_apply().await;
        let note = verifier
            .event("Warning", "InjectionWarning", "deployments", "web")
            .await;
        assert!(
            note.contains("port 8080 has no name") && note.contains("corsair-http"),
            "{note}"
        );
        verifier.expect_no_more_calls().await;
    });
    let action = reconcile_deployment(&deployment(Some("api"), None), ctx).await;
    assert!(matches!(action, Ok(a) if a == Action::await_change()));
    joined(server).await;
}

/// `kubectl annotate deployment web corsair.dev/port=8080` puts a pod annotation where the
/// webhook never sees it: a Warning Event says so, and the opt-in goes on.
#[tokio::test]
async fn pod_annotations_on_the_workload_itself_get_a_warning() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let mut workload = deployment(Some("api"), None);
    let annotations = workload.metadata.annotations.get_or_insert_default();
    annotations.insert("corsair.dev/port".into(), "8080".into());
    annotations.insert("corsair.dev/log-level".into(), "debug".into());
    annotations.insert("team.example.com/owner".into(), "shop".into());
    let server = tokio::spawn(async move {
        let note = verifier
            .event("Warning", "MisplacedAnnotation", "deployments", "web")
            .await;
        assert!(
            note.contains("corsair.dev/log-level, corsair.dev/port")
                && note.contains("spec.template.metadata.annotations")
                && !note.contains("team.example.com")
                && !note.starts_with("corsair.dev/policy"),
            "{note}"
        );
        verifier.workload_get(&admissible_deployment()).await;
        verifier.workload_apply().await;
        verifier.expect_no_more_calls().await;
    });
    let action = reconcile_deployment(&workload, ctx).await;
    assert!(matches!(action, Ok(a) if a == Action::await_change()));
    joined(server).await;
    // The same annotation on the template too, with the same value: nothing to say.
    let (ctx, verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let mut template = PodTemplateSpec::default();
    template.metadata.get_or_insert_default().annotations = Some(BTreeMap::from([(
        "corsair.dev/port".to_owned(),
        "8080".to_owned(),
    )]));
    let mut workload = deployment(Some("api"), Some(template));
    workload
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("corsair.dev/port".into(), "8080".into());
    run(
        reconcile_deployment(&workload, ctx),
        verifier,
        Scenario::WorkloadOptIn { policy: "api" },
    )
    .await;
}

/// An opted-in workload whose template is now refused still hears that its policy is missing
/// (its running proxies allow no origin); a read that fails says nothing and forgets nothing,
/// so the next good read does not say the refusal again; a template on the host network is
/// said to lose the proxy at its rollout. Each note once, however often the workload is woken.
#[tokio::test]
async fn an_opted_in_workload_hears_each_problem_once_and_a_failed_read_forgets_nothing() {
    let (ctx, mut verifier) = context(StaticIndex::default());
    let placed = opted_in();
    let shared = shared_port_name();
    let host_network = {
        let mut d = admissible_deployment();
        d["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        d
    };
    let server = tokio::spawn(async move {
        verifier.workload_get(&shared).await;
        let note = verifier
            .event("Warning", "InjectionRefused", "deployments", "web")
            .await;
        assert!(note.contains("spec.containers[1].ports[0].name"), "{note}");
        let note = verifier
            .event("Warning", "PolicyNotFound", "deployments", "web")
            .await;
        assert!(note.contains("allows no origin"), "{note}");
        verifier
            .workload_get_answered(
                StatusCode::SERVICE_UNAVAILABLE,
                &failure(503, "ServiceUnavailable", None),
            )
            .await;
        verifier.workload_get(&shared).await;
        verifier.workload_get(&host_network).await;
        let note = verifier
            .event("Warning", "InjectionSkipped", "deployments", "web")
            .await;
        assert!(
            note.contains("hostNetwork is true")
                && note.contains("replaces the pods with ones that have no proxy"),
            "{note}"
        );
        verifier.expect_no_more_calls().await;
    });
    reconcile_in_turn(&ctx, [&placed; 4], server).await;
}

/// An invalid policy name is said once, not at every reconcile (a misplaced annotation wakes
/// one too); fixed and then broken the same way again, it is news again.
#[tokio::test]
async fn an_invalid_policy_name_is_said_once_per_occurrence() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let (placed, typo) = in_place_and_annotated("corsair.dev/policy", "My API");
    let server = tokio::spawn(async move {
        verifier
            .event("Warning", "InvalidPolicyName", "deployments", "web")
            .await;
        // The fixed name is in place: its template is checked, nothing written.
        verifier.workload_get(&admissible_deployment()).await;
        verifier
            .event("Warning", "InvalidPolicyName", "deployments", "web")
            .await;
        verifier.expect_no_more_calls().await;
    });
    reconcile_in_turn(&ctx, [&typo, &typo, &placed, &typo], server).await;
}

/// A name with blanks that a user wrote on the pod template itself is what the webhook reads from
/// the pods, and refuses: it is said, and nothing is written. Applying the trimmed name instead
/// would take the annotation from the user's field manager, and the next reconcile, finding only
/// the controller's own copy, would release it: two rollouts, ending without the proxy.
#[tokio::test]
async fn a_template_annotation_with_blanks_is_said_and_not_rewritten() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let mut d = deployment(None, Some(labelled_template(" api")));
    d.metadata.managed_fields = Some(vec![template_annotation_by("kubectl-edit")]);
    let server = tokio::spawn(async move {
        let note = verifier
            .event("Warning", "InvalidPolicyName", "deployments", "web")
            .await;
        assert!(note.contains("\" api\""), "{note}");
        verifier.expect_no_more_calls().await;
    });
    reconcile_in_turn(&ctx, [&d], server).await;
}

/// A Deployment opted in for `api` (what we apply, in place), and the same with `key: value`
/// on its own metadata.
fn in_place_and_annotated(key: &str, value: &str) -> (Deployment, Deployment) {
    let placed = opted_in();
    let mut annotated = placed.clone();
    annotated
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(key.into(), value.into());
    (placed, annotated)
}

/// Reconciles `workloads` in turn (each then waits for a change) while `server` plays the API
/// server; a failed expectation of the server fails the test.
async fn reconcile_in_turn<const N: usize>(
    ctx: &Arc<Context>,
    workloads: [&Deployment; N],
    server: tokio::task::JoinHandle<()>,
) {
    for workload in workloads {
        let action = reconcile_deployment(workload, ctx.clone()).await;
        assert!(matches!(action, Ok(a) if a == Action::await_change()));
    }
    joined(server).await;
}

/// A pod annotation put on a workload already opted in is said too, once; taken off and put
/// back, it is news again. (Each reconcile reads the workload for the template check.)
#[tokio::test]
async fn a_misplaced_annotation_on_a_workload_in_place_is_said_once() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let (placed, annotated) = in_place_and_annotated("corsair.dev/port", "8080");
    let server = tokio::spawn(async move {
        let note = verifier
            .event("Warning", "MisplacedAnnotation", "deployments", "web")
            .await;
        assert!(
            note.starts_with("corsair.dev/port on the Deployment"),
            "{note}"
        );
        for _ in 0..3 {
            verifier.workload_get(&admissible_deployment()).await;
        }
        // Said again only after the annotation went away and came back.
        verifier
            .event("Warning", "MisplacedAnnotation", "deployments", "web")
            .await;
        verifier.workload_get(&admissible_deployment()).await;
        verifier.expect_no_more_calls().await;
    });
    reconcile_in_turn(&ctx, [&annotated, &annotated, &placed, &annotated], server).await;
    // And the annotation wakes the reconciler, which a change of the workload's other
    // annotations does not.
    assert!(triggers::workload_changed(&updated(pruned(&placed), pruned(&annotated))).is_some());
    let mut unrelated = placed.clone();
    unrelated
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("team.example.com/owner".into(), "shop".into());
    assert_eq!(
        triggers::workload_changed(&updated(pruned(&placed), pruned(&unrelated))),
        None
    );
}

/// The check runs again on every new generation (a scale included) and every retry, but a
/// refusal already said is not said again; once the workload is opted in, a new refusal is.
#[tokio::test]
async fn a_refusal_already_said_is_not_said_again() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let mut workload = deployment(Some("api"), None);
    workload
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("corsair.dev/port".into(), "https".into());
    let refused = stored_deployment(
        json!([{"name": "app", "image": "app", "ports": [{"name": "https", "containerPort": 8443}]}]),
    );
    let server = tokio::spawn(async move {
        verifier
            .event("Warning", "MisplacedAnnotation", "deployments", "web")
            .await;
        verifier.workload_get(&refused).await;
        verifier
            .event("Warning", "InjectionRefused", "deployments", "web")
            .await;
        // The second reconcile (a scale): the same answers, read again but not said again
        // (an Event here would be the next call the second phase sees, and fail it).
        verifier.workload_get(&refused).await;
        verifier
    });
    let meta = Arc::new(WorkloadMeta::from_object(&workload));
    for _ in 0..2 {
        let action = workload::reconcile(meta.clone(), ctx.clone()).await;
        assert!(matches!(action, Ok(a) if a == Action::await_change()));
    }
    let mut verifier = joined(server).await;
    // Fixed and opted in; the same refusal later is news again.
    let server = tokio::spawn(async move {
        verifier.workload_get(&admissible_deployment()).await;
        verifier.workload_apply().await;
        verifier
            .workload_get(&stored_deployment(json!([{"name": "app", "image": "app",
            "ports": [{"name": "https", "containerPort": 8443}]}])))
            .await;
        verifier
            .event("Warning", "InjectionRefused", "deployments", "web")
            .await;
        verifier.expect_no_more_calls().await;
    });
    let plain = Arc::new(WorkloadMeta::from_object(&deployment(Some("api"), None)));
    for _ in 0..2 {
        assert!(
            workload::reconcile(plain.clone(), ctx.clone())
                .await
                .is_ok()
        );
    }
    joined(server).await;
}

/// A workload in place for one policy and switched to another keeps the first when the pods
/// would be refused with the second, and the Event says which it keeps; a workload deleted
/// since the watch saw it gets no write.
#[tokio::test]
async fn a_refused_switch_keeps_the_policy_in_place_and_a_deleted_workload_gets_no_write() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api", "web"]));
    let mut switched = deployment(Some("web"), Some(labelled_template("api")));
    switched.metadata.managed_fields = Some(vec![ours()]);
    let server = tokio::spawn(async move {
        verifier
            .workload_get(&stored_deployment(json!([{"name": "app", "image": "app",
                "ports": [{"name": "https", "containerPort": 8443}]}])))
            .await;
        let note = verifier
            .event("Warning", "InjectionRefused", "deployments", "web")
            .await;
        assert!(
            note.contains("keeps corsair.dev/policy \"api\"") && note.contains("\"web\""),
            "{note}"
        );
        // Deleted: 404 on the read, and nothing else.
        verifier
            .workload_get_answered(StatusCode::NOT_FOUND, &failure(404, "NotFound", None))
            .await;
        verifier.expect_no_more_calls().await;
    });
    assert!(reconcile_deployment(&switched, ctx.clone()).await.is_ok());
    let gone = Arc::new(WorkloadMeta::from_object(&deployment(Some("api"), None)));
    assert!(workload::reconcile(gone, ctx).await.is_ok());
    joined(server).await;
}

/// A StatefulSet's pods carry a volume per claim template, which its template does not show:
/// the check sees them, so a claim named like the policy volume is refused before the rollout.
#[test]
fn the_checked_pod_has_the_volumes_of_a_statefulsets_claims() {
    let set: StatefulSet = match serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "db"}},
            "serviceName": "db",
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [
                {"name": "app", "image": "app", "ports": [{"name": "http", "containerPort": 8080}]}
            ]}},
            "volumeClaimTemplates": [{"metadata": {"name": "corsair-policy"}}]
        }
    })) {
        Ok(set) => set,
        Err(err) => panic!("{err}"),
    };
    let pod = workload::template_pod(&set, NS, "api").expect("a pod spec");
    let spec = pod.spec.clone().unwrap_or_default();
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["corsair-policy"]);
    assert_eq!(
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("corsair.dev/policy"))
            .map(String::as_str),
        Some("api")
    );
    let refused = crate::webhook::inject(&pod, Some(NS), &InjectConfig::default(), None)
        .expect_err("the claim takes the policy volume's name");
    assert!(refused.to_string().contains("spec.volumes[0]"), "{refused}");
    // A Deployment's pod is its template.
    let web: Deployment = match serde_json::from_value(admissible_deployment()) {
        Ok(d) => d,
        Err(err) => panic!("{err}"),
    };
    let pod = workload::template_pod(&web, NS, "api").expect("a pod spec");
    assert!(pod.spec.and_then(|s| s.volumes).is_none());
}

/// The check is best effort: a workload that cannot be read is opted in as before, and the
/// webhook still judges each pod.
#[tokio::test]
async fn a_workload_that_cannot_be_read_is_opted_in_unchecked() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let workload = deployment(Some("api"), None);
    let server = tokio::spawn(async move {
        verifier
            .workload_get_answered(StatusCode::FORBIDDEN, &failure(403, "Forbidden", None))
            .await;
        let patch = verifier.workload_apply().await;
        assert_eq!(
            patch,
            workload::apply_patch::<Deployment>("web", NS, Some("api"))
        );
        verifier.expect_no_more_calls().await;
    });
    let action = reconcile_deployment(&workload, ctx).await;
    assert!(matches!(action, Ok(a) if a == Action::await_change()));
    joined(server).await;
}

#[tokio::test]
async fn removed_annotation_releases_the_fields() {
    let (ctx, verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    // The template still carries what we applied, but only we declared it.
    let mut workload = deployment(None, Some(labelled_template("api")));
    workload.metadata.managed_fields = Some(vec![ours()]);
    run(
        reconcile_deployment(&workload, ctx),
        verifier,
        Scenario::WorkloadOptOut,
    )
    .await;
}

/// In place, with a template the webhook admits without a word: one read, no write.
#[tokio::test]
async fn a_workload_already_in_place_is_read_and_not_written() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let workload = opted_in();
    let server = tokio::spawn(async move {
        verifier.workload_get(&admissible_deployment()).await;
        verifier.expect_no_more_calls().await;
    });
    let action = reconcile_deployment(&workload, ctx).await;
    assert!(matches!(action, Ok(a) if a == Action::await_change()));
    joined(server).await;
}

/// A template changed after the opt-in is checked again (a new generation wakes the
/// workload): what the webhook would now say reaches the workload as a Warning, once, which
/// otherwise only the ReplicaSet controller would hear, in a rollout that stalls on refused
/// pods. A template fixed and broken again is news again. Nothing is written to the workload.
#[tokio::test]
async fn a_template_changed_after_the_opt_in_is_checked_again() {
    let (ctx, mut verifier) = context(StaticIndex::with_policies(NS, &["api"]));
    let placed = opted_in();
    let unnamed = stored_deployment(
        json!([{"name": "app", "image": "app", "ports": [{"containerPort": 8080}]}]),
    );
    let shared = shared_port_name();
    let server = tokio::spawn(async move {
        verifier.workload_get(&unnamed).await;
        let note = verifier
            .event("Warning", "InjectionWarning", "deployments", "web")
            .await;
        assert!(note.contains("port 8080 has no name"), "{note}");
        // The same template again (a scale): read, not said again.
        verifier.workload_get(&unnamed).await;
        verifier.workload_get(&shared).await;
        let note = verifier
            .event("Warning", "InjectionRefused", "deployments", "web")
            .await;
        assert!(
            note.contains("refuses the pods of this workload's pod template")
                && note.contains("spec.containers[1].ports[0].name")
                && note.contains("stalls, with the old pods it has already removed missing")
                && note.contains("the replacement of an evicted or lost pod"),
            "{note}"
        );
        verifier.workload_get(&shared).await;
        // Fixed, then the unnamed port again: news again.
        verifier.workload_get(&admissible_deployment()).await;
        verifier.workload_get(&unnamed).await;
        verifier
            .event("Warning", "InjectionWarning", "deployments", "web")
            .await;
        verifier.expect_no_more_calls().await;
    });
    reconcile_in_turn(&ctx, [&placed; 6], server).await;
}

#[tokio::test]
async fn unrelated_workload_makes_no_call() {
    let (ctx, verifier) = context(StaticIndex::default());
    let workload = deployment(None, None);
    assert!(reconcile_deployment(&workload, ctx).await.is_ok());
    verifier.expect_no_more_calls().await;
}

#[test]
fn same_code_path_serves_statefulsets() {
    let set = StatefulSet {
        metadata: ObjectMeta {
            name: Some("db".into()),
            namespace: Some(NS.into()),
            annotations: Some(BTreeMap::from([(
                "corsair.dev/policy".to_owned(),
                "api".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(StatefulSetSpec::default()),
        status: None,
    };
    assert_eq!(
        workload::desired_policy(&WorkloadMeta::from_object(&set)).as_deref(),
        Some("api")
    );
    let patch = workload::apply_patch::<StatefulSet>("db", NS, Some("api"));
    assert_eq!(patch["kind"], "StatefulSet");
    assert_eq!(patch["apiVersion"], "apps/v1");
}

#[test]
fn transition_time_moves_only_on_a_flip() {
    let report = corsair_policy::Report::default();
    let t0 = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let t1 = Timestamp::from_second(2_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let first = policy::next_status(None, true, "Accepted", "ok".into(), Some(1), &report, 0, t0);
    let same = policy::next_status(
        Some(&first),
        true,
        "Accepted",
        "ok".into(),
        Some(2),
        &report,
        0,
        t1,
    );
    assert_eq!(same.conditions[0].last_transition_time, Time(t0));
    assert_eq!(same.observed_generation, Some(2));
    let flipped = policy::next_status(
        Some(&same),
        false,
        "Invalid",
        "bad".into(),
        Some(3),
        &report,
        0,
        t1,
    );
    assert_eq!(flipped.conditions[0].last_transition_time, Time(t1));
    assert_eq!(flipped.conditions[0].status, "False");
}

#[test]
fn workload_maps_to_every_policy_it_mentions() {
    // The user switched from "old" (still on the template, from us) to "new".
    let mut workload = deployment(Some("new"), Some(labelled_template("old")));
    workload.metadata.managed_fields = Some(vec![ours()]);
    let refs: Vec<String> = workload::policy_refs(&WorkloadMeta::from_object(&workload))
        .into_iter()
        .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
        .collect();
    assert_eq!(refs, [format!("{NS}/new"), format!("{NS}/old")]);
    assert!(workload::policy_refs(&WorkloadMeta::from_object(&deployment(None, None))).is_empty());
}

#[test]
fn truncate_keeps_char_boundaries() {
    assert_eq!(super::truncate("short".into(), 10), "short");
    let cut = super::truncate("ééééé".into(), 7);
    assert!(cut.len() <= 7 && cut.ends_with("..."), "{cut}");
    assert!(cut.starts_with("é"));
}

#[test]
fn creating_a_policy_wakes_the_workloads_that_name_it() {
    let users = PolicyUsers::default();
    let mut other_ns = deployment(Some("api"), None);
    other_ns.metadata.namespace = Some("elsewhere".into());
    let mut unrelated = deployment(Some("other"), None);
    unrelated.metadata.name = Some("unrelated".into());
    for d in [deployment(Some("api"), None), other_ns, unrelated] {
        users.observe(&created(WorkloadMeta::from_object(&d)));
    }
    let refs = triggers::policy_presence_changed::<Deployment>(&created(valid_policy()), &users);
    let names: Vec<(Option<String>, String)> =
        refs.into_iter().map(|r| (r.namespace, r.name)).collect();
    assert_eq!(names, [(Some(NS.to_owned()), "web".to_owned())]);
    // A new generation of a policy that already existed wakes no workload.
    let mut next = valid_policy();
    next.metadata.generation = Some(4);
    let updated = updated(valid_policy(), next);
    assert!(triggers::policy_presence_changed::<Deployment>(&updated, &users).is_empty());
    // Deleted while the workload still names it: the workload is woken to report it missing.
    let refs = triggers::policy_presence_changed::<Deployment>(&deleted(valid_policy()), &users);
    assert_eq!(
        refs.into_iter().map(|r| r.name).collect::<Vec<_>>(),
        ["web"]
    );
    // No StatefulSet names it.
    assert!(
        triggers::policy_presence_changed::<StatefulSet>(&created(valid_policy()), &users)
            .is_empty()
    );
}

fn created<K>(obj: K) -> Change<K> {
    Change {
        old: None,
        new: Some(Arc::new(obj)),
    }
}

fn updated<K>(old: K, new: K) -> Change<K> {
    Change {
        old: Some(Arc::new(old)),
        new: Some(Arc::new(new)),
    }
}

fn deleted<K>(obj: K) -> Change<K> {
    Change {
        old: Some(Arc::new(obj)),
        new: None,
    }
}

/// A Deployment as the API server returns it, with a pod spec, a status, managed fields and
/// the annotation of `kubectl apply`.
fn full_deployment(image: &str, replicas: i32) -> Deployment {
    let value = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web", "namespace": NS, "uid": "uid-web", "generation": 7,
            "labels": {"app": "web"},
            "annotations": {
                "corsair.dev/policy": "api",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}",
            },
            "managedFields": [
                {"manager": "kubectl-client-side-apply", "operation": "Update",
                 "fieldsV1": {"f:metadata": {"f:annotations": {"f:corsair.dev/policy": {}}}}},
                ours(),
            ],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {
                    "labels": {"app": "web", "corsair.dev/inject": "enabled"},
                    "annotations": {"corsair.dev/policy": "api"},
                },
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
        "status": {"replicas": replicas, "readyReplicas": replicas},
    });
    match serde_json::from_value(value) {
        Ok(d) => d,
        Err(err) => panic!("test deployment does not parse: {err}"),
    }
}

fn pruned(d: &Deployment) -> WorkloadMeta<Deployment> {
    match serde_json::to_value(d).and_then(serde_json::from_value) {
        Ok(w) => w,
        Err(err) => panic!("a Deployment must deserialise as WorkloadMeta: {err}"),
    }
}

#[test]
fn workloads_are_cached_without_spec_status_managed_fields_or_last_applied() {
    let cached = pruned(&full_deployment("web:1", 3));
    assert_eq!(cached.metadata.managed_fields, None);
    let annotations = cached.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.keys().collect::<Vec<_>>(),
        ["corsair.dev/policy"],
        "last-applied-configuration is dropped"
    );
    // Only the corsair.dev/ labels and annotations are kept: nothing else is read.
    assert_eq!(cached.metadata.labels, None);
    let template = cached.template.clone().unwrap_or_default();
    assert_eq!(
        template.labels,
        Some(BTreeMap::from([(
            "corsair.dev/inject".into(),
            "enabled".into()
        )]))
    );
    assert_eq!(cached.metadata.name.as_deref(), Some("web"));
    assert_eq!(cached.metadata.uid.as_deref(), Some("uid-web"));
    assert_eq!(cached.metadata.generation, Some(7));
    // What the reconciler read from managedFields survives as two facts.
    assert!(cached.managed_by_us);
    assert!(!cached.template_policy_by_others);
    assert_eq!(
        cached,
        WorkloadMeta::from_object(&full_deployment("web:1", 3))
    );
    assert_eq!(workload::desired_policy(&cached).as_deref(), Some("api"));
}

#[test]
fn an_image_or_replica_change_wakes_no_reconciler() {
    let change = updated(
        pruned(&full_deployment("web:1", 3)),
        pruned(&full_deployment("web:2", 5)),
    );
    assert_eq!(triggers::workload_changed(&change), None);
    assert!(triggers::workload_names_changed(&change).is_empty());
}

#[test]
fn an_annotation_change_wakes_the_workload_and_both_policies() {
    let before = full_deployment("web:1", 3);
    let mut after = before.clone();
    after
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("corsair.dev/policy".into(), "other".into());
    let change = updated(pruned(&before), pruned(&after));
    assert!(triggers::workload_changed(&change).is_some());
    let names: Vec<String> = triggers::workload_names_changed(&change)
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["api", "other"]);
    // A template label removed by someone else wakes the workload, to put it back.
    let mut unlabelled = before.clone();
    if let Some(labels) = unlabelled
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut())
        .and_then(|m| m.labels.as_mut())
    {
        labels.remove("corsair.dev/inject");
    }
    let change = updated(pruned(&before), pruned(&unlabelled));
    assert!(triggers::workload_changed(&change).is_some());
    assert!(triggers::workload_names_changed(&change).is_empty());
}

/// A workload that asks for a policy is looked at again when its spec changes (a new
/// generation): one left out because its pods would be refused, since the fix is usually there,
/// and one in place, whose new template may now be refused or warned about.
#[test]
fn a_new_spec_wakes_a_workload_that_asks_for_a_policy() {
    let mut pending = deployment(Some("api"), None);
    pending.metadata.generation = Some(1);
    let mut fixed = pending.clone();
    fixed.metadata.generation = Some(2);
    assert!(triggers::workload_changed(&updated(pruned(&pending), pruned(&fixed))).is_some());
    // An annotation that is not a name waits for the annotation, which no spec can fix.
    let mut typo = deployment(Some("My API"), None);
    typo.metadata.generation = Some(1);
    let mut respecced = typo.clone();
    respecced.metadata.generation = Some(2);
    assert_eq!(
        triggers::workload_changed(&updated(pruned(&typo), pruned(&respecced))),
        None
    );
    let mut placed = opted_in();
    placed.metadata.generation = Some(1);
    let mut rolled = placed.clone();
    rolled.metadata.generation = Some(2);
    assert!(triggers::workload_changed(&updated(pruned(&placed), pruned(&rolled))).is_some());
    // A status change (same generation) wakes nothing.
    let mut status_only = placed.clone();
    status_only.metadata.resource_version = Some("2".into());
    assert_eq!(
        triggers::workload_changed(&updated(pruned(&placed), pruned(&status_only))),
        None
    );
}

/// A workload that neither asks for a policy nor carries anything of ours is never queued,
/// whether it appears or changes; one that asks, or that we must release, is.
#[test]
fn workloads_that_do_not_concern_corsair_are_never_queued() {
    let plain = pruned(&deployment(None, None));
    assert!(plain.template.is_none(), "nothing of ours on the template");
    assert_eq!(
        triggers::workload_changed(&created(pruned(&deployment(None, None)))),
        None
    );
    let mut relabelled = deployment(None, None);
    relabelled.metadata.labels = Some(BTreeMap::from([("app".into(), "web".into())]));
    assert_eq!(
        triggers::workload_changed(&updated(plain, pruned(&relabelled))),
        None
    );
    assert!(triggers::workload_changed(&created(pruned(&deployment(Some("api"), None)))).is_some());
    // Ours to release: the annotation is gone but our apply still owns the template label.
    let mut released = WorkloadMeta::from_object(&deployment(None, None));
    released.managed_by_us = true;
    assert!(triggers::workload_changed(&created(released)).is_some());
}

#[test]
fn only_a_new_generation_wakes_the_policy_reconciler() {
    let mut with_status = valid_policy();
    with_status.status = Some(CorsPolicyStatus {
        workloads: Some(4),
        ..CorsPolicyStatus::default()
    });
    assert_eq!(
        triggers::policy_changed(&updated(valid_policy(), with_status)),
        None,
        "our own status write wakes nothing"
    );
    let mut next = valid_policy();
    next.metadata.generation = Some(4);
    assert!(triggers::policy_changed(&updated(valid_policy(), next)).is_some());
    assert!(triggers::policy_changed(&created(valid_policy())).is_some());
    assert_eq!(triggers::policy_changed(&deleted(valid_policy())), None);
}

#[test]
fn a_deleted_or_edited_configmap_wakes_its_policy() {
    let cm = match policy::desired_configmap(&valid_policy(), NS) {
        Ok(cm) => cm,
        Err(err) => panic!("{err}"),
    };
    let mut annotated = cm.clone();
    annotated.metadata.annotations = Some(BTreeMap::from([("note".into(), "x".into())]));
    assert_eq!(
        triggers::configmap_changed(&updated(cm.clone(), annotated)),
        None
    );
    let mut edited = cm.clone();
    edited.data = Some(BTreeMap::from([("policy.json".into(), "{}".into())]));
    let woken = triggers::configmap_changed(&updated(cm.clone(), edited));
    assert_eq!(
        woken.map(|r| (r.namespace, r.name)),
        Some((Some(NS.into()), "api".into()))
    );
    assert!(triggers::configmap_changed(&deleted(cm)).is_some());
}

#[test]
fn workload_counts_follow_the_annotation() {
    let users = PolicyUsers::default();
    let before = full_deployment("web:1", 3);
    users.observe(&created(pruned(&before)));
    assert_eq!(users.count(NS, "api"), 1);
    // The same workload seen again (a re-list) is counted once.
    users.observe(&updated(pruned(&before), pruned(&before)));
    assert_eq!(users.count(NS, "api"), 1);
    let mut after = before.clone();
    after
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("corsair.dev/policy".into(), "other".into());
    users.observe(&updated(pruned(&before), pruned(&after)));
    assert_eq!((users.count(NS, "api"), users.count(NS, "other")), (0, 1));
    users.observe(&deleted(pruned(&after)));
    assert_eq!(users.count(NS, "other"), 0);
}

/// The status and ConfigMap a policy has after a successful reconcile, as the caches hold them.
fn in_sync(policy: &CorsPolicy, workloads: usize) -> (CorsPolicy, StaticIndex) {
    let mut index = StaticIndex::with_policies(NS, &["api"]);
    index.workloads.insert((NS.into(), "api".into()), workloads);
    let cm = match policy::desired_configmap(policy, NS) {
        Ok(cm) => cm,
        Err(err) => panic!("{err}"),
    };
    let mut stored = cm.clone();
    // The API server adds fields of its own; they do not make a difference.
    stored.metadata.resource_version = Some("12".into());
    stored
        .metadata
        .labels
        .get_or_insert_default()
        .insert("team".into(), "shop".into());
    index
        .configmaps
        .insert((NS.into(), "corsair-policy-api".into()), Arc::new(stored));
    let report = match corsair_policy::Engine::compile(&policy.spec) {
        Ok((_, report)) => report,
        Err(_) => panic!("the test policy is valid"),
    };
    let since = Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut synced = policy.clone();
    synced.status = Some(policy::next_status(
        None,
        true,
        "Accepted",
        "compiled and rendered into ConfigMap corsair-policy-api".into(),
        policy.metadata.generation,
        &report,
        workloads,
        since,
    ));
    (synced, index)
}

#[tokio::test]
async fn a_policy_in_sync_makes_no_call() {
    let (synced, index) = in_sync(&valid_policy(), 2);
    reconciled_without_a_call(synced, index).await;
}

/// Reconciles `policy` and asserts that it made no API call and waits for its resync. A call
/// it makes fails the test rather than waiting for an answer that never comes.
async fn reconciled_without_a_call(policy: CorsPolicy, index: StaticIndex) {
    let (ctx, verifier) = context(index);
    let server = tokio::spawn(verifier.expect_no_more_calls());
    let action = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        policy::reconcile(Arc::new(policy), ctx),
    )
    .await;
    joined(server).await;
    assert!(
        matches!(&action, Ok(Ok(a)) if *a == Action::requeue(policy::RESYNC)),
        "{action:?}"
    );
}

/// A condition another controller added to the status (a policy auditor's, a GitOps tool's
/// health check) is kept by the apply, which owns only `Ready`: in sync otherwise, the policy
/// makes no call, even once the status this controller wrote is forgotten (a restart, a new
/// leader, a quarter of an hour).
#[tokio::test]
async fn a_condition_of_another_controller_makes_no_status_write() {
    let (mut synced, index) = in_sync(&valid_policy(), 2);
    if let Some(status) = synced.status.as_mut() {
        let mut foreign = status.conditions[0].clone();
        foreign.type_ = "Audited".into();
        foreign.reason = "Reviewed".into();
        status.conditions.push(foreign);
    }
    reconciled_without_a_call(synced, index).await;
}

#[tokio::test]
async fn a_new_workload_count_writes_the_status_only() {
    let (synced, mut index) = in_sync(&valid_policy(), 2);
    index.workloads.insert((NS.into(), "api".into()), 3);
    let (ctx, mut verifier) = context(index);
    let reconcile = policy::reconcile(Arc::new(synced.clone()), ctx);
    let server = tokio::spawn(async move {
        let status = verifier.status_apply(&synced).await;
        assert_eq!(status["workloads"], 3);
        verifier.expect_no_more_calls().await;
    });
    assert!(reconcile.await.is_ok());
    joined(server).await;
}

#[tokio::test]
async fn a_new_generation_writes_the_configmap_and_the_status_only() {
    let (mut changed, index) = in_sync(&valid_policy(), 2);
    changed.metadata.generation = Some(4);
    changed.spec.max_age = Some(600);
    let (ctx, mut verifier) = context(index);
    let reconcile = policy::reconcile(Arc::new(changed.clone()), ctx);
    let server = tokio::spawn(async move {
        let mut expected = changed.clone();
        expected.metadata.generation = Some(3);
        let call = verifier.next_call().await;
        call.expect(
            Method::PATCH,
            &format!("/api/v1/namespaces/{NS}/configmaps/corsair-policy-api"),
        )
        .expect_apply(POLICY_MANAGER);
        let rendered = call.body["data"]["policy.json"]
            .as_str()
            .unwrap_or_default();
        let document = corsair_policy::load_document(rendered)
            .unwrap_or_else(|err| panic!("the proxy cannot load the rendered policy: {err}"));
        assert_eq!(document.metadata.generation, Some(4));
        call.echo();
        let status = verifier.status_apply(&changed).await;
        assert_eq!(status["observedGeneration"], 4);
        verifier.expect_no_more_calls().await;
    });
    assert!(reconcile.await.is_ok());
    joined(server).await;
}

#[tokio::test]
async fn a_reconcile_before_the_watch_brought_our_status_back_writes_nothing() {
    let (synced, index) = in_sync(&valid_policy(), 2);
    let mut index = index;
    index.workloads.insert((NS.into(), "api".into()), 3);
    let (ctx, mut verifier) = context(index);
    // The cache still holds the old status (count 2) when the policy is woken twice.
    let stale = Arc::new(synced.clone());
    let first = policy::reconcile(stale.clone(), ctx.clone());
    let server = tokio::spawn(async move {
        let status = verifier.status_apply(&synced).await;
        assert_eq!(status["workloads"], 3);
        verifier
    });
    assert!(first.await.is_ok());
    let verifier = joined(server).await;
    assert!(policy::reconcile(stale, ctx).await.is_ok());
    verifier.expect_no_more_calls().await;
}

#[test]
fn the_managed_fields_path_names_the_policy_annotation() {
    // The user wrote the template annotation with kubectl (not the controller): it counts.
    let mut d = deployment(None, Some(labelled_template("api")));
    d.metadata.managed_fields = Some(vec![template_annotation_by("kubectl-client-side-apply")]);
    let cached = pruned(&d);
    assert!(cached.template_policy_by_others);
    assert!(!cached.managed_by_us);
    assert_eq!(workload::desired_policy(&cached).as_deref(), Some("api"));
    // Only our own copy on the template: the user removed the workload's annotation.
    d.metadata.managed_fields = Some(vec![ours()]);
    let cached = pruned(&d);
    assert!(!cached.template_policy_by_others);
    assert!(cached.managed_by_us);
    assert_eq!(workload::desired_policy(&cached), None);
    assert_eq!(cached, WorkloadMeta::from_object(&d));
}

#[tokio::test]
async fn a_refused_status_write_is_tried_again_on_the_next_reconcile() {
    let (synced, mut index) = in_sync(&valid_policy(), 2);
    index.workloads.insert((NS.into(), "api".into()), 3);
    let (ctx, mut verifier) = context(index);
    let policy = Arc::new(synced.clone());
    let first = policy::reconcile(policy.clone(), ctx.clone());
    let server = tokio::spawn(async move {
        let call = verifier.next_call().await;
        call.expect(
            Method::PATCH,
            &format!("/apis/corsair.dev/v1alpha1/namespaces/{NS}/corspolicies/api/status"),
        );
        call.respond(
            StatusCode::CONFLICT,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Conflict", "code": 409, "message": "conflict"}),
        );
        verifier
    });
    assert!(first.await.is_err(), "a refused write fails the reconcile");
    let mut verifier = joined(server).await;
    // Nothing was remembered as written: the retry writes the status again.
    let second = policy::reconcile(policy, ctx);
    let server = tokio::spawn(async move {
        let status = verifier.status_apply(&synced).await;
        assert_eq!(status["workloads"], 3);
        verifier.expect_no_more_calls().await;
    });
    assert!(second.await.is_ok());
    joined(server).await;
}

/// The start-up pass reconciles only the workloads that concern Corsair: one that asks for a
/// policy (labelled), one whose template still carries our apply (released), never the one
/// that has nothing to do with Corsair.
#[tokio::test]
async fn the_start_pass_skips_workloads_that_do_not_concern_corsair() {
    use std::sync::Mutex;

    use crate::fixtures::{FakeApi, Reply};
    use crate::metrics::ControllerLabels;

    let ours = json!([{"manager": WORKLOAD_MANAGER, "operation": "Apply",
        "fieldsV1": {"f:spec": {"f:template": {"f:metadata": {"f:labels": {"f:corsair.dev/inject": {}}}}}}}]);
    let workload = |name: &str, annotations: Value, managed: Value| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                         "resourceVersion": "1", "annotations": annotations,
                         "managedFields": managed},
            "spec": {"selector": {}, "template": {"metadata": {"labels": {"app": name}}}},
        })
    };
    let deployments = vec![
        workload("web", json!({"corsair.dev/policy": "api"}), json!([])),
        workload("released", json!({}), ours),
        workload(
            "plain",
            json!({"team": "a"}),
            json!([{"manager": "kubectl", "operation": "Update", "fieldsV1": {}}]),
        ),
    ];
    let patched: Arc<Mutex<Vec<String>>> = Arc::default();
    let api = FakeApi::new({
        let patched = patched.clone();
        move |call| {
            if let Some(reply) = Reply::steady(call, &[("/apis/apps/v1/deployments", &deployments)])
            {
                return reply;
            }
            if call.path.contains("/deployments/") {
                let name = call.path.rsplit('/').next().unwrap_or_default().to_owned();
                patched.lock().unwrap_or_else(|p| p.into_inner()).push(name);
            }
            Reply::echo(call)
        }
    });
    let client = api.client();
    let (caches, watches) = super::Caches::start(&client);
    let metrics = Metrics::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(super::run(
        caches,
        client,
        Reporter {
            controller: super::REPORTER.into(),
            instance: None,
        },
        metrics.clone(),
        InjectConfig::default(),
        None,
        stop_rx,
    ));
    let reconciled = || {
        metrics
            .reconciles
            .get_or_create(&ControllerLabels {
                controller: "deployment",
            })
            .get()
    };
    let start = std::time::Instant::now();
    while reconciled() < 2 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "the start pass did not reconcile the two workloads"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Time for a third reconcile, if one were coming.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(reconciled(), 2);
    let mut names = patched.lock().unwrap_or_else(|p| p.into_inner()).clone();
    names.sort();
    assert_eq!(names, ["released", "web"]);
    stop_tx.send_replace(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), run).await;
    drop(watches);
}

/// The controller's namespace in the webhook-check tests.
const OWN_NS: &str = "corsair-system";

fn context_checking_the_webhook(index: StaticIndex) -> (Arc<Context>, ApiServerVerifier) {
    let (client, verifier) = mock_client();
    let reporter = Reporter {
        controller: super::REPORTER.into(),
        instance: Some("test".into()),
    };
    let ctx = Context::new(client, reporter, Metrics::default(), Arc::new(index))
        .with_inject(InjectConfig::default())
        .with_webhook_check(OWN_NS.into());
    (Arc::new(ctx), verifier)
}

/// How the mock API server answers the webhook check's dry run.
#[derive(Clone, Copy)]
enum DryRun {
    /// The validating webhook refused the policy: it was reached.
    Denied,
    /// Stored (dry): the API server did not call the webhook, and ignored that.
    Admitted,
    /// `failurePolicy: Fail` with no endpoint behind the Service.
    FailedCalling,
    /// No right to create CorsPolicies (RBAC of an older release).
    Forbidden,
    /// Throttled: an error that may pass.
    Throttled,
}

impl ApiServerVerifier {
    /// Asserts the webhook check's dry-run create, and answers it as `answer`.
    async fn webhook_check(&mut self, answer: DryRun) {
        let call = self.next_call().await;
        call.expect(
            Method::POST,
            &format!("/apis/corsair.dev/v1alpha1/namespaces/{OWN_NS}/corspolicies"),
        );
        assert_eq!(
            call.query.get("dryRun").map(String::as_str),
            Some("All"),
            "the check stores nothing"
        );
        assert_eq!(call.body["metadata"]["name"], super::gate::CHECK_NAME);
        assert_eq!(
            call.body["spec"]["allowOrigins"],
            json!([super::gate::CHECK_ORIGIN])
        );
        // The CRD's own rules (the API server's, evaluated here with kube's CEL) admit it, and
        // the validating webhook refuses it: only a webhook that was called says no.
        let origin = super::gate::CHECK_ORIGIN;
        let policy: CorsPolicy = serde_json::from_value(call.body.clone()).expect("a CorsPolicy");
        assert!(
            kube::core::cel::validate_cel(&policy).is_ok(),
            "the CRD's CEL rules admit the check's policy"
        );
        let verdict = crate::webhook::validate_policy(&call.body);
        assert_eq!(verdict.outcome, crate::webhook::ValidationOutcome::Denied);
        assert!(
            verdict
                .errors
                .iter()
                .any(|e| e.contains("spec.allowOrigins[0]")),
            "the webhook refuses the check's policy: {:?}",
            verdict.errors
        );
        match answer {
            DryRun::Denied => call.respond(
                StatusCode::BAD_REQUEST,
                &json!({
                    "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 400,
                    "reason": "BadRequest",
                    "message": format!("admission webhook \"validate.corsair.dev\" denied the request: spec.allowOrigins[0]: {origin:?} is not an origin"),
                }),
            ),
            DryRun::Admitted => {
                let body = call.body.clone();
                call.respond(StatusCode::CREATED, &body)
            }
            DryRun::FailedCalling => call.respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({
                    "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 500,
                    "reason": "InternalError",
                    "message": "Internal error occurred: failed calling webhook \"validate.corsair.dev\": failed to call webhook: Post \"https://corsair-webhook.corsair-system.svc:443/validate?timeout=5s\": no endpoints available for service \"corsair-webhook\"",
                }),
            ),
            DryRun::Forbidden => call.respond(
                StatusCode::FORBIDDEN,
                &failure(403, "Forbidden", None),
            ),
            DryRun::Throttled => call.respond(
                StatusCode::TOO_MANY_REQUESTS,
                &failure(429, "TooManyRequests", None),
            ),
        }
    }
}

/// A reconcile of `workload` that calls the mock API server as `calls` expects.
async fn reconcile_against<F>(
    workload: &Deployment,
    ctx: &Arc<Context>,
    verifier: ApiServerVerifier,
    calls: impl FnOnce(ApiServerVerifier) -> F,
) -> (Action, ApiServerVerifier)
where
    F: std::future::Future<Output = ApiServerVerifier> + Send + 'static,
{
    let server = tokio::spawn(calls(verifier));
    let action = reconcile_deployment(workload, ctx.clone()).await;
    let verifier = joined(server).await;
    match action {
        Ok(action) => (action, verifier),
        Err(err) => panic!("reconcile failed: {err}"),
    }
}

/// At a fresh install the leader lists annotated workloads seconds before the API server can
/// call its webhooks; a rollout then would start pods without the proxy, for good. The opt-in
/// waits, asking with one dry run that several workloads share, and says so on the workload
/// when the wait lasts.
#[tokio::test(start_paused = true)]
async fn a_workload_is_rolled_only_once_the_api_server_reaches_the_webhooks() {
    let (ctx, verifier) = context_checking_the_webhook(StaticIndex::with_policies(NS, &["api"]));
    let workload = deployment(Some("api"), None);
    let waiting = Action::requeue(std::time::Duration::from_secs(5));
    // Once said, less often: each retry may make a dry run.
    let waiting_long = Action::requeue(std::time::Duration::from_secs(30));

    // Not reached: the invalid policy was let through. No write, a retry in a few seconds.
    let (action, verifier) = reconcile_against(&workload, &ctx, verifier, |mut v| async move {
        v.workload_get(&admissible_deployment()).await;
        v.webhook_check(DryRun::Admitted).await;
        v
    })
    .await;
    assert_eq!(action, waiting);
    // The answer holds a few seconds for every workload: no second dry run, and while the
    // webhook is out of reach no read of the workload either (the opt-in waits anyway).
    let (action, verifier) =
        reconcile_against(&workload, &ctx, verifier, |v| async move { v }).await;
    assert_eq!(action, waiting);
    // A workload already in place waits for nothing: its template is checked, and no dry run.
    let (action, verifier) = reconcile_against(&opted_in(), &ctx, verifier, |mut v| async move {
        v.workload_get(&admissible_deployment()).await;
        v
    })
    .await;
    assert_eq!(action, Action::await_change());
    // Half a minute on, still out of reach: the workload hears why, once.
    tokio::time::advance(std::time::Duration::from_secs(31)).await;
    let (action, verifier) = reconcile_against(&workload, &ctx, verifier, |mut v| async move {
        v.webhook_check(DryRun::FailedCalling).await;
        let note = v
            .event("Warning", "WebhookUnreachable", "deployments", "web")
            .await;
        assert!(
            note.contains("no endpoints available for service")
                && note.contains("without the proxy")
                && note.contains("left as it is"),
            "the note gives the API server's cause and what waits: {note}"
        );
        v
    })
    .await;
    assert_eq!(action, waiting_long);
    tokio::time::advance(std::time::Duration::from_secs(6)).await;
    let (action, verifier) = reconcile_against(&workload, &ctx, verifier, |mut v| async move {
        v.webhook_check(DryRun::FailedCalling).await;
        v
    })
    .await;
    assert_eq!(action, waiting_long, "said once: no second Event");
    // Reached: the template is read and checked, the opt-in goes ahead, and the next workload
    // trusts the answer for a while.
    tokio::time::advance(std::time::Duration::from_secs(6)).await;
    let (action, verifier) = reconcile_against(&workload, &ctx, verifier, |mut v| async move {
        v.webhook_check(DryRun::Denied).await;
        v.workload_get(&admissible_deployment()).await;
        let patch = v.workload_apply().await;
        assert_eq!(
            patch,
            workload::apply_patch::<Deployment>("web", NS, Some("api"))
        );
        v
    })
    .await;
    assert_eq!(action, Action::await_change());
    let (action, verifier) = reconcile_against(&workload, &ctx, verifier, |mut v| async move {
        v.workload_get(&admissible_deployment()).await;
        v.workload_apply().await;
        v
    })
    .await;
    assert_eq!(action, Action::await_change());
    verifier.expect_no_more_calls().await;
}

/// An error that may pass (throttling) holds the rollout like an unreached webhook; a
/// reconcile that finds a check in flight does not wait for it.
#[tokio::test]
async fn a_passing_error_holds_the_rollout_and_a_check_in_flight_is_not_waited_for() {
    let (ctx, verifier) = context_checking_the_webhook(StaticIndex::with_policies(NS, &["api"]));
    let workload = deployment(Some("api"), None);
    let waiting = Action::requeue(std::time::Duration::from_secs(5));
    let (action, verifier) = reconcile_against(&workload, &ctx, verifier, |mut v| async move {
        v.workload_get(&admissible_deployment()).await;
        v.webhook_check(DryRun::Throttled).await;
        v
    })
    .await;
    assert_eq!(action, waiting, "a 429 is no licence to roll");
    verifier.expect_no_more_calls().await;

    // A check held in flight by the API server: another workload's reconcile does not wait.
    let (ctx, mut held) = context_checking_the_webhook(StaticIndex::with_policies(NS, &["api"]));
    let meta = Arc::new(WorkloadMeta::from_object(&workload));
    let first = tokio::spawn(workload::reconcile(meta.clone(), ctx.clone()));
    held.workload_get(&admissible_deployment()).await;
    let check = held.next_call().await;
    check.expect(
        Method::POST,
        &format!("/apis/corsair.dev/v1alpha1/namespaces/{OWN_NS}/corspolicies"),
    );
    let second = tokio::spawn(workload::reconcile(meta, ctx.clone()));
    let second = second.await.expect("joined").expect("reconciled");
    assert_eq!(
        second, waiting,
        "no second dry run, no read of the workload, no write: later"
    );
    check.respond(
        StatusCode::BAD_REQUEST,
        &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 400,
                "message": "admission webhook \"validate.corsair.dev\" denied the request: spec.allowOrigins[0]"}),
    );
    held.workload_apply().await;
    let first = first.await.expect("joined").expect("reconciled");
    assert_eq!(first, Action::await_change());
    held.expect_no_more_calls().await;
}

/// A check that cannot be made (RBAC of an older release) does not hold workloads back: they
/// are rolled as before the check existed, and the webhook still judges each pod. A workload
/// already in place is never checked: nothing of it is rolled.
#[tokio::test]
async fn a_webhook_check_that_cannot_be_made_holds_nothing_back() {
    let (ctx, verifier) = context_checking_the_webhook(StaticIndex::with_policies(NS, &["api"]));
    let (action, verifier) = reconcile_against(
        &deployment(Some("api"), None),
        &ctx,
        verifier,
        |mut v| async move {
            v.workload_get(&admissible_deployment()).await;
            v.webhook_check(DryRun::Forbidden).await;
            v.workload_apply().await;
            v
        },
    )
    .await;
    assert_eq!(action, Action::await_change());
    let (action, verifier) = reconcile_against(&opted_in(), &ctx, verifier, |mut v| async move {
        v.workload_get(&admissible_deployment()).await;
        v
    })
    .await;
    assert_eq!(action, Action::await_change());
    verifier.expect_no_more_calls().await;
}

/// Another field manager added a key of its own to the rendered ConfigMap (an annotation-driven
/// tool, a user's `kubectl patch`): server-side apply never removes it, since it is not ours, so
/// re-applying cannot change anything. The policy in sync must make no call, as it does when
/// others add labels.
#[tokio::test]
async fn a_key_another_manager_added_to_the_configmap_makes_no_write() {
    let (synced, mut index) = in_sync(&valid_policy(), 2);
    let key = (NS.to_owned(), "corsair-policy-api".to_owned());
    let mut stored = index.configmaps[&key].as_ref().clone();
    stored
        .data
        .get_or_insert_default()
        .insert("notes.txt".into(), "owned by someone else".into());
    index.configmaps.insert(key, Arc::new(stored));
    reconciled_without_a_call(synced, index).await;
}
