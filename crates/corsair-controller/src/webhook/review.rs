//! AdmissionReview in, AdmissionReview out: the HTTP-free core of both webhooks.
//!
//! The wire types are the few fields the webhooks read and write (`admission.k8s.io/v1`, also
//! `v1beta1`, whose shape is the same). The object stays a `serde_json::Value` until the webhook
//! that needs it deserialises it in place, which keeps a review to one parse.

use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Pod;
use kube::core::GroupVersionKind;
use kube::core::admission::Operation;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::validate::{ValidationOutcome, validate_policy};
use super::{InjectOutcome, WebhookState, inject};

/// Which webhook a review is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Webhook {
    /// Mutating, for Pods.
    Inject,
    /// Validating, for CorsPolicies.
    Validate,
}

impl Webhook {
    fn label(self) -> &'static str {
        match self {
            Webhook::Inject => "inject",
            Webhook::Validate => "validate",
        }
    }
}

/// A body that is not an AdmissionReview with a request: the caller answers 400.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("invalid AdmissionReview: {0}")]
    Parse(String),
    #[error("invalid AdmissionReview: the request field is missing")]
    NoRequest,
    #[error("cannot encode the AdmissionReview response: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The parts of an incoming AdmissionReview the webhooks use; other fields are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IncomingReview {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    request: Option<IncomingRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IncomingRequest {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    #[serde(default)]
    object: Option<Value>,
    /// The object before an UPDATE, or the one a DELETE removes.
    #[serde(default)]
    old_object: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutgoingReview<'a> {
    api_version: &'a str,
    kind: &'static str,
    response: Outgoing,
}

/// An AdmissionResponse.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Outgoing {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    /// Base64 of the JSON patch, as the API server encodes `[]byte`.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// The `metav1.Status` of a refusal; kubectl prints `message`.
#[derive(Serialize)]
struct Status {
    status: &'static str,
    code: u16,
    reason: &'static str,
    message: String,
}

impl Outgoing {
    fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_owned(),
            allowed: true,
            status: None,
            patch: None,
            patch_type: None,
            warnings: Vec::new(),
        }
    }

    fn deny(mut self, message: impl ToString) -> Self {
        self.allowed = false;
        self.patch = None;
        self.patch_type = None;
        self.status = Some(Status {
            status: "Failure",
            code: 403,
            reason: "Forbidden",
            message: message.to_string(),
        });
        self
    }
}

/// Answers one AdmissionReview (`body`) for `webhook` with the serialised response review.
///
/// A review that parses always gets an answer (refusals are `allowed: false` with a message);
/// only a body that is not an AdmissionReview is an error.
pub fn review(state: &WebhookState, webhook: Webhook, body: &[u8]) -> Result<Vec<u8>, ReviewError> {
    let started = Instant::now();
    let result = review_inner(state, webhook, body);
    if result.is_err() {
        count(state, webhook, "error");
    }
    state
        .metrics
        .observe(webhook.label(), started.elapsed().as_secs_f64());
    result
}

fn review_inner(
    state: &WebhookState,
    webhook: Webhook,
    body: &[u8],
) -> Result<Vec<u8>, ReviewError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let review: IncomingReview = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        if path == "." {
            ReviewError::Parse(err.inner().to_string())
        } else {
            ReviewError::Parse(format!("{path}: {}", err.inner()))
        }
    })?;
    de.end()
        .map_err(|err| ReviewError::Parse(err.to_string()))?;
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    let response = match webhook {
        Webhook::Inject => inject_response(state, &request),
        Webhook::Validate => validate_response(state, &request),
    };
    let out = OutgoingReview {
        api_version: review
            .api_version
            .as_deref()
            .unwrap_or("admission.k8s.io/v1"),
        kind: "AdmissionReview",
        response,
    };
    Ok(serde_json::to_vec(&out)?)
}

fn count(state: &WebhookState, webhook: Webhook, result: &'static str) {
    match webhook {
        Webhook::Inject => state.metrics.injection(result),
        Webhook::Validate => state.metrics.validation(result),
    }
}

fn inject_response(state: &WebhookState, req: &IncomingRequest) -> Outgoing {
    let response = Outgoing::allow(&req.uid);
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
        state.metrics.injection("error");
        return response.deny(format!(
            "request.kind: the corsair injector admits Pods, not {}",
            req.kind.kind
        ));
    }
    if !matches!(req.operation, Operation::Create) {
        return response;
    }
    let Some(object) = &req.object else {
        state.metrics.injection("error");
        return response.deny("request.object: required for CREATE");
    };
    let pod: Pod = match serde_path_to_error::deserialize(object) {
        Ok(pod) => pod,
        Err(err) => {
            state.metrics.injection("error");
            let path = err.path().to_string();
            return response.deny(if path == "." {
                format!("request.object: {}", err.inner())
            } else {
                format!("request.object.{path}: {}", err.inner())
            });
        }
    };
    let lookup = state.policies.as_deref();
    match inject(&pod, req.namespace.as_deref(), &state.config, lookup) {
        Ok(injection) => {
            state.metrics.injection(injection.outcome.metric_label());
            let mut response = response;
            response.warnings = within_budget(
                injection.warnings,
                "the controller's InjectionWarning Event on the workload repeats them",
            );
            if injection.outcome == InjectOutcome::Injected {
                match serde_json::to_vec(&injection.patch) {
                    Ok(patch) => {
                        response.patch = Some(STANDARD.encode(patch));
                        response.patch_type = Some("JSONPatch");
                    }
                    Err(err) => {
                        state.metrics.injection("error");
                        return response.deny(format!("cannot encode the patch: {err}"));
                    }
                }
            }
            response
        }
        Err(err) => {
            state.metrics.injection("denied");
            response.deny(err)
        }
    }
}

fn validate_response(state: &WebhookState, req: &IncomingRequest) -> Outgoing {
    let response = Outgoing::allow(&req.uid);
    if req.kind.kind != "CorsPolicy" || req.kind.group != crate::names::GROUP {
        state.metrics.validation("error");
        return response.deny(format!(
            "request.kind: the corsair validator admits CorsPolicies, not {}",
            req.kind.kind
        ));
    }
    if matches!(req.operation, Operation::Delete) {
        let mut response = response;
        response.warnings = in_use_warning(req).into_iter().collect();
        return response;
    }
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return response;
    }
    let Some(object) = &req.object else {
        state.metrics.validation("error");
        return response.deny("request.object: required for CREATE and UPDATE");
    };
    // An UPDATE that leaves the spec as it was (labels, a finalizer removed, the deletion
    // itself) is let through: a policy stored while invalid (created while the webhook was down
    // under `failurePolicy: Ignore`, or before a stricter release) must stay labelable and
    // deletable. The controller never renders an invalid spec, whatever is stored.
    if matches!(req.operation, Operation::Update)
        && (object.pointer("/metadata/deletionTimestamp").is_some()
            || req
                .old_object
                .as_ref()
                .is_some_and(|old| old.get("spec") == object.get("spec")))
    {
        return response;
    }
    let verdict = validate_policy(object);
    state.metrics.validation(verdict.outcome.metric_label());
    let mut response = if verdict.outcome == ValidationOutcome::Denied {
        response.deny(verdict.message())
    } else {
        response
    };
    response.warnings = within_budget(
        verdict.warnings,
        "`corsair check` on the policy's manifest lists every finding",
    );
    response
}

/// Characters of warnings the API server passes on whole for one request: past 4,096 in all
/// (every webhook's and its own), it cuts each to 256 and drops those that still do not fit
/// (k8s.io/apiserver, `endpoints/filters/warning.go`). Ours leave a quarter to the others.
const WARNING_BUDGET: usize = 3072;

/// Room kept for the warning that says how many more there are.
const MORE_ROOM: usize = 256;

/// `warnings` as the API server will pass them on: whole and in order while they fit in
/// [`WARNING_BUDGET`]; then one last warning says how many more there were and where to find
/// them (`where_all`), instead of the API server's cuts, which say nothing.
fn within_budget(warnings: Vec<String>, where_all: &str) -> Vec<String> {
    let chars = |w: &String| w.chars().count();
    if warnings.iter().map(chars).sum::<usize>() <= WARNING_BUDGET {
        return warnings;
    }
    let total = warnings.len();
    let mut used = MORE_ROOM;
    let mut kept: Vec<String> = warnings
        .into_iter()
        .take_while(|w| {
            used += chars(w);
            used <= WARNING_BUDGET
        })
        .collect();
    let more = total - kept.len();
    let s = if more == 1 { "" } else { "s" };
    kept.push(format!(
        "{more} more warning{s} not shown (the API server passes on about 4 KB of warnings per request): {where_all}"
    ));
    kept
}

/// A deletion is never refused, but deleting a policy that workloads still name leaves their
/// proxies, running and new alike, allowing no origin. The count is the one the controller last
/// wrote into the policy's status.
fn in_use_warning(req: &IncomingRequest) -> Option<String> {
    let old = req.old_object.as_ref()?;
    let workloads = old
        .pointer("/status/workloads")
        .and_then(Value::as_i64)
        .filter(|n| *n > 0)?;
    let name = old
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let namespace = req.namespace.as_deref().unwrap_or_default();
    let (them, s) = if workloads == 1 {
        ("it", "")
    } else {
        ("them", "s")
    };
    Some(format!(
        "status.workloads: CorsPolicy {namespace}/{name} is named by {workloads} workload{s} in \
         annotation {annotation}: their proxies will allow no origin (new pods at once, \
         running ones when the kubelet next syncs their policy volume, within about a minute) \
         until a CorsPolicy of this name exists again; to stop enforcing CORS there, remove the \
         annotation from {them} instead",
        annotation = crate::names::POLICY_ANNOTATION,
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::webhook::{InjectConfig, Metrics};

    fn state() -> WebhookState {
        WebhookState::new(InjectConfig::default(), Metrics::unregistered())
    }

    fn pod_review(operation: &str) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": operation,
                "userInfo": {"username": "admin"},
                "object": {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "web", "annotations": {"corsair.dev/policy": "api"}},
                    "spec": {"containers": [{"name": "app", "image": "nginx",
                        "ports": [{"name": "http", "containerPort": 8080}]}]}
                }
            }
        })
    }

    fn policy_review(operation: &str, object: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-2",
                "kind": {"group": "corsair.dev", "version": "v1alpha1", "kind": "CorsPolicy"},
                "resource": {"group": "corsair.dev", "version": "v1alpha1", "resource": "corspolicies"},
                "namespace": "shop",
                "operation": operation,
                "userInfo": {"username": "admin"},
                "object": object
            }
        })
    }

    fn answer(state: &WebhookState, webhook: Webhook, review: &Value) -> Value {
        let body = serde_json::to_vec(review).expect("json");
        let out = super::review(state, webhook, &body).expect("answered");
        serde_json::from_slice::<Value>(&out).expect("json")["response"].clone()
    }

    #[test]
    fn patch_is_base64_json_patch() {
        let state = state();
        let response = answer(&state, Webhook::Inject, &pod_review("CREATE"));
        assert_eq!(response["allowed"], json!(true));
        assert_eq!(response["uid"], json!("u-1"));
        assert_eq!(response["patchType"], json!("JSONPatch"));
        let bytes = STANDARD
            .decode(response["patch"].as_str().expect("base64 string"))
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("JSON patch");
        assert!(!patch.0.is_empty());
        assert_eq!(state.metrics().injections("injected"), 1);
    }

    #[test]
    fn only_pod_creation_is_mutated() {
        let state = state();
        let response = answer(&state, Webhook::Inject, &pod_review("UPDATE"));
        assert_eq!(response["allowed"], json!(true));
        assert!(response.get("patch").is_none(), "{response}");
    }

    #[test]
    fn unparseable_reviews_name_the_problem() {
        let state = state();
        let err = super::review(&state, Webhook::Inject, b"[1, 2").expect_err("garbage");
        assert!(
            matches!(err, ReviewError::Parse(ref m) if m.contains("line 1")),
            "{err}"
        );
        let err = super::review(&state, Webhook::Inject, b"{} {}").expect_err("trailing");
        assert!(matches!(err, ReviewError::Parse(_)), "{err}");
        let mut review = pod_review("CREATE");
        review["request"]["operation"] = json!("EXPLODE");
        let err = super::review(&state, Webhook::Inject, review.to_string().as_bytes())
            .expect_err("bad operation");
        assert!(err.to_string().contains("request.operation"), "{err}");
        assert_eq!(state.metrics().injections("error"), 3);
    }

    /// From the `admission_review` fuzz target: a lone surrogate escape in a field the webhook
    /// ignores is skipped unread, so the review is still answered, with its uid.
    #[test]
    fn invalid_escapes_in_ignored_fields_do_not_stop_the_answer() {
        let state = state();
        let mut review = pod_review("CREATE").to_string();
        review = review.replacen("\"userInfo\"", "\"ignored\":\"\\ud800\",\"userInfo\"", 1);
        assert!(
            serde_json::from_str::<Value>(&review).is_err(),
            "not a JSON value"
        );
        let out = super::review(&state, Webhook::Inject, review.as_bytes()).expect("answered");
        let answer: Value = serde_json::from_slice(&out).expect("the answer is JSON");
        assert_eq!(answer["response"]["uid"], json!("u-1"));
        assert_eq!(answer["response"]["allowed"], json!(true));
    }

    /// A policy with more warnings than the API server passes on whole gets the first ones whole
    /// and a last one that counts the rest and says where to read them, within the budget.
    #[test]
    fn warnings_past_the_api_servers_budget_are_counted_not_cut() {
        let state = state();
        // Each entry is warned about on its own: a wildcard over an IPv4 address.
        let origins: Vec<String> = (0..60).map(|i| format!("https://*.10.0.0.{i}")).collect();
        let object = json!({"apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"allowOrigins": origins}});
        let all = validate_policy(&object).warnings;
        assert_eq!(all.len(), 60, "{all:?}");
        let response = answer(&state, Webhook::Validate, &policy_review("CREATE", object));
        assert_eq!(response["allowed"], json!(true), "{response}");
        let sent: Vec<String> = response["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .map(|w| w.as_str().expect("string").to_owned())
            .collect();
        let (last, whole) = sent.split_last().expect("at least one");
        assert!(!whole.is_empty(), "{sent:?}");
        assert_eq!(
            whole,
            &all[..whole.len()],
            "the first ones, whole and in order"
        );
        let more = all.len() - whole.len();
        assert!(
            last.starts_with(&format!("{more} more warnings not shown"))
                && last.contains("corsair check"),
            "{last}"
        );
        let chars: usize = sent.iter().map(|w| w.chars().count()).sum();
        assert!(chars <= WARNING_BUDGET, "{chars} characters");
        // Warnings that fit are passed on as they are.
        let fit = vec!["a".repeat(WARNING_BUDGET - 1), "b".to_owned()];
        assert_eq!(within_budget(fit.clone(), "-"), fit);
    }

    /// Deleting is never refused; deleting a policy that the controller counted workloads for
    /// is answered with a warning that says what happens to them.
    #[test]
    fn deleting_a_policy_in_use_is_allowed_with_a_warning() {
        let state = state();
        let delete = |status: Option<Value>| {
            let mut review = policy_review("DELETE", Value::Null);
            let mut old = json!({"apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy",
                "metadata": {"name": "api"}, "spec": {"allowOrigins": ["https://a.example.com"]}});
            if let Some(status) = status {
                old["status"] = status;
            }
            review["request"]["oldObject"] = old;
            answer(&state, Webhook::Validate, &review)
        };
        let warned = |response: &Value| -> Vec<String> {
            assert_eq!(response["allowed"], json!(true), "{response}");
            response["warnings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_str().map(str::to_owned))
                .collect()
        };
        let three = warned(&delete(Some(json!({"workloads": 3}))));
        assert_eq!(three.len(), 1, "{three:?}");
        for part in [
            "status.workloads",
            "CorsPolicy shop/api",
            "3 workloads",
            "corsair.dev/policy",
            "allow no origin",
            "running ones when the kubelet next syncs",
            "from them",
        ] {
            assert!(three[0].contains(part), "{part}: {three:?}");
        }
        let one = warned(&delete(Some(json!({"workloads": 1}))));
        assert!(
            one[0].contains("1 workload in") && one[0].contains("from it"),
            "{one:?}"
        );
        assert!(warned(&delete(Some(json!({"workloads": 0})))).is_empty());
        assert!(warned(&delete(None)).is_empty(), "no status yet");
        let mut bare = policy_review("DELETE", Value::Null);
        bare["request"]["object"] = Value::Null;
        assert!(warned(&answer(&state, Webhook::Validate, &bare)).is_empty());
    }

    #[test]
    fn an_update_that_keeps_an_invalid_spec_is_let_through_and_one_that_breaks_it_is_not() {
        let state = state();
        let invalid = json!({"allowOrigins": ["*"], "allowCredentials": true});
        let policy = |labels: Value, spec: &Value, deleting: bool| {
            let mut object = json!({"apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy",
                "metadata": {"name": "p", "labels": labels}, "spec": spec});
            if deleting {
                object["metadata"]["deletionTimestamp"] = json!("2026-11-30T00:00:00Z");
            }
            object
        };
        let update = |old: Value, new: Value| {
            let mut review = policy_review("UPDATE", new);
            review["request"]["oldObject"] = old;
            answer(&state, Webhook::Validate, &review)
        };
        // Stored while invalid (the webhook was down): a label, and the finalizer's removal on
        // deletion, still go through.
        let labelled = update(
            policy(json!({}), &invalid, false),
            policy(json!({"team": "a"}), &invalid, false),
        );
        assert_eq!(labelled["allowed"], json!(true), "{labelled}");
        let deleting = update(
            policy(json!({}), &invalid, true),
            policy(json!({}), &json!({"allowOrigins": "not a list"}), true),
        );
        assert_eq!(deleting["allowed"], json!(true), "{deleting}");
        // A change of the spec is checked as a CREATE is.
        let broken = update(
            policy(
                json!({}),
                &json!({"allowOrigins": ["https://a.test"]}),
                false,
            ),
            policy(json!({}), &invalid, false),
        );
        assert_eq!(broken["allowed"], json!(false), "{broken}");
        assert!(
            broken["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("allowCredentials")),
            "{broken}"
        );
    }

    #[test]
    fn policy_without_spec_is_denied_and_deletion_is_allowed() {
        let state = state();
        let object = json!({"apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy", "metadata": {"name": "p"}});
        let response = answer(&state, Webhook::Validate, &policy_review("CREATE", object));
        assert_eq!(response["allowed"], json!(false));
        assert_eq!(
            response["status"]["message"],
            json!("spec: required field is missing")
        );

        let deleted = answer(
            &state,
            Webhook::Validate,
            &policy_review("DELETE", Value::Null),
        );
        assert_eq!(deleted["allowed"], json!(true));
        assert_eq!(state.metrics().validations("denied"), 1);
    }

    #[test]
    fn policy_type_errors_name_the_field() {
        let object = json!({
            "apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy", "metadata": {"name": "p"},
            "spec": {"allowOrigins": ["https://a.example"], "maxAge": "forever"}
        });
        let response = answer(
            &state(),
            Webhook::Validate,
            &policy_review("UPDATE", object),
        );
        assert_eq!(response["allowed"], json!(false));
        let message = response["status"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("spec.maxAge: "), "{message}");
    }

    #[test]
    fn every_problem_is_in_one_answer_as_corsair_check_reports_it() {
        let object = json!({
            "apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy", "metadata": {"name": "p"},
            "spec": {"allowMethod": ["GET"], "allowOrigins": ["https://a.example/"]}
        });
        let response = answer(
            &state(),
            Webhook::Validate,
            &policy_review("CREATE", object),
        );
        assert_eq!(response["allowed"], json!(false));
        let message = response["status"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("spec.allowMethod: ") && message.contains("\"allowMethods\""),
            "{message}"
        );
        assert!(message.contains("spec.allowOrigins[0]: "), "{message}");
    }

    #[test]
    fn long_policy_names_are_refused() {
        let object = json!({
            "apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy",
            "metadata": {"name": "a".repeat(240)},
            "spec": {"allowOrigins": ["https://a.example"]}
        });
        let response = answer(
            &state(),
            Webhook::Validate,
            &policy_review("CREATE", object),
        );
        assert_eq!(response["allowed"], json!(false));
        assert!(
            response["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("metadata.name")
        );
    }
}
