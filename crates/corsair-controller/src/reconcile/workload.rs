//! Workload reconciler: one generic code path for Deployments, StatefulSets and DaemonSets.
//!
//! A workload that names a CorsPolicy in `corsair.dev/policy` (on its own metadata, as
//! `kubectl annotate deployment` writes, or on its pod template) gets the pod template label
//! `corsair.dev/inject: enabled` and the annotation, server-side applied under our own field
//! manager. When the user removes the annotation, an apply with an empty patch releases both
//! fields: server-side apply removes the fields that a manager stops declaring.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::pruned::{OUR_PREFIX, WorkloadMeta};
use super::{Context, succeeded};
use crate::crd::CorsPolicy;
use crate::names::{self, INJECT_LABEL, INJECT_LABEL_VALUE, POLICY_ANNOTATION, WORKLOAD_MANAGER};
use crate::webhook::{InjectOutcome, inject};
use crate::{Error, Result};

/// Reason of the Warning Event on a workload whose CorsPolicy does not exist.
pub const REASON_POLICY_NOT_FOUND: &str = "PolicyNotFound";
/// Reason of the Warning Event on a workload whose `corsair.dev/policy` is not a policy name.
pub const REASON_INVALID_POLICY_NAME: &str = "InvalidPolicyName";
/// Reason of the Warning Event on a workload whose pods the webhook would refuse.
pub const REASON_INJECTION_REFUSED: &str = "InjectionRefused";
/// Reason of the Warning Event on a workload whose pods the webhook would leave without the
/// proxy (host network).
pub const REASON_INJECTION_SKIPPED: &str = "InjectionSkipped";
/// Reason of the Warning Event on a workload whose pods the webhook injects with warnings, which
/// only whoever creates a pod sees (for a Deployment, the ReplicaSet controller).
pub const REASON_INJECTION_WARNING: &str = "InjectionWarning";
/// Reason of the Warning Event on a workload that carries pod annotations on its own metadata.
pub const REASON_MISPLACED_ANNOTATION: &str = "MisplacedAnnotation";
/// Reason of the Warning Event on a workload left as it is because the API server has not
/// reached the webhooks for a while.
pub const REASON_WEBHOOK_UNREACHABLE: &str = "WebhookUnreachable";
/// Reason of the Warning Event on a workload opted in whose pods its controller does not replace
/// on a template change (a paused Deployment, an `OnDelete` update strategy, a partition).
pub const REASON_ROLLOUT_HELD: &str = "RolloutHeld";
/// How long the API server may miss the webhooks before the workloads waiting for them hear of
/// it: a fresh install takes a few seconds to have a ready endpoint and a `caBundle`.
const UNREACHED_SAID_AFTER: Duration = Duration::from_secs(30);
/// When a workload waiting for the webhooks is reconciled again: soon at first (a fresh
/// install takes seconds), then less often, since each retry may make a dry run.
const UNREACHED_RETRY: Duration = Duration::from_secs(5);
const UNREACHED_RETRY_LATER: Duration = Duration::from_secs(30);
/// The template check's verdicts, published at most once per note (see
/// [`Context::publish_once`]) and forgotten once the webhook would admit the pods.
pub(crate) const VERDICT_REASONS: [&str; 2] = [REASON_INJECTION_REFUSED, REASON_INJECTION_SKIPPED];

/// A kind of workload whose pod template the controller labels.
pub trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Metric label of the controller for this kind.
    const CONTROLLER: &'static str;
    /// The pod template, if the object has a spec.
    fn pod_template(&self) -> Option<&PodTemplateSpec>;
    /// Volumes its controller adds to every pod beside the template's: a StatefulSet's claim
    /// templates.
    fn claim_names(&self) -> Vec<&str> {
        Vec::new()
    }
    /// Why a change of the pod template does not replace the running pods, if it does not.
    fn rollout_held(&self) -> Option<String>;
}

impl Workload for Deployment {
    const CONTROLLER: &'static str = "deployment";
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn rollout_held(&self) -> Option<String> {
        let paused = self.spec.as_ref().and_then(|s| s.paused) == Some(true);
        paused.then(|| "spec.paused is true (kubectl rollout pause)".to_owned())
    }
}

impl Workload for StatefulSet {
    const CONTROLLER: &'static str = "statefulset";
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn claim_names(&self) -> Vec<&str> {
        self.spec
            .iter()
            .flat_map(|s| s.volume_claim_templates.iter().flatten())
            .filter_map(|claim| claim.metadata.name.as_deref())
            .collect()
    }
    fn rollout_held(&self) -> Option<String> {
        let strategy = self.spec.as_ref()?.update_strategy.as_ref()?;
        if strategy.type_.as_deref() == Some("OnDelete") {
            return Some("spec.updateStrategy.type is OnDelete".to_owned());
        }
        let partition = strategy.rolling_update.as_ref()?.partition?;
        (partition > 0).then(|| {
            format!(
                "spec.updateStrategy.rollingUpdate.partition is {partition}: pods with an ordinal \
                 below it are not replaced"
            )
        })
    }
}

impl Workload for DaemonSet {
    const CONTROLLER: &'static str = "daemonset";
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn rollout_held(&self) -> Option<String> {
        let strategy = self.spec.as_ref()?.update_strategy.as_ref()?;
        (strategy.type_.as_deref() == Some("OnDelete"))
            .then(|| "spec.updateStrategy.type is OnDelete".to_owned())
    }
}

/// The CorsPolicy the user asked for, if any.
///
/// The workload's own annotation wins, trimmed: the template gets the trimmed name. The pod
/// template's annotation counts only when someone other than this controller declared it (the
/// copy we put there ourselves must not keep the sidecar alive after the user removed the
/// annotation from the workload), and as it is written: the webhook reads it so from the pods,
/// and an apply of another value would take the field from its owner.
pub fn desired_policy<K: Workload>(obj: &WorkloadMeta<K>) -> Option<String> {
    if let Some(policy) = non_empty(obj.annotations().get(POLICY_ANNOTATION)) {
        return Some(policy);
    }
    let policy = obj
        .template
        .as_ref()?
        .annotations
        .as_ref()?
        .get(POLICY_ANNOTATION)
        .filter(|policy| !policy.trim().is_empty())?;
    obj.template_policy_by_others.then(|| policy.clone())
}

fn non_empty(value: Option<&String>) -> Option<String> {
    value
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// What the workload reconciler decides from: two cached versions of a workload that agree on
/// this need no reconcile.
#[derive(Debug, PartialEq, Eq)]
pub struct Facts {
    desired: Option<String>,
    label: Option<String>,
    annotation: Option<String>,
    managed_by_us: bool,
    /// The generation of a workload that asks for a policy: its pod template is checked again
    /// on a new spec. Before the opt-in a template the webhook would refuse may pass now;
    /// after it, a changed template may be refused or warned about, which otherwise only the
    /// ReplicaSet controller would hear. (A scale moves the generation too: the check is then
    /// made again, one read, and its Event not repeated.)
    generation: Option<i64>,
    /// The pod annotations on the workload's own metadata (see [`misplaced_annotations`]): one
    /// added to a workload already opted in is said too.
    misplaced: Vec<String>,
}

impl Facts {
    /// The facts of `obj`.
    pub fn of<K: Workload>(obj: &WorkloadMeta<K>) -> Self {
        let template = obj.template.as_ref();
        let mut facts = Facts {
            desired: desired_policy(obj),
            label: template
                .and_then(|t| t.labels.as_ref())
                .and_then(|l| l.get(INJECT_LABEL))
                .cloned(),
            annotation: template
                .and_then(|t| t.annotations.as_ref())
                .and_then(|a| a.get(POLICY_ANNOTATION))
                .cloned(),
            managed_by_us: obj.managed_by_us,
            generation: None,
            misplaced: misplaced_annotations(obj),
        };
        // An annotation that is not a name waits for the annotation to change, not the spec.
        if facts.desired.as_deref().is_some_and(names::is_policy_name) {
            facts.generation = obj.metadata.generation;
        }
        facts
    }

    /// Whether the reconciler has anything to do: apply for a policy, or release what we own.
    pub fn concerns_us(&self) -> bool {
        self.desired.is_some() || self.managed_by_us
    }

    /// Whether the template already carries exactly what we would apply for `policy`, under
    /// our manager.
    fn in_place(&self, policy: &str) -> bool {
        self.label.as_deref() == Some(INJECT_LABEL_VALUE)
            && self.annotation.as_deref() == Some(policy)
            && self.managed_by_us
    }
}

/// The apply configuration: only the fields we own. `None` releases everything.
pub fn apply_patch<K: Workload>(
    name: &str,
    namespace: &str,
    policy: Option<&str>,
) -> serde_json::Value {
    let mut patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name, "namespace": namespace },
    });
    if let (Some(policy), Some(map)) = (policy, patch.as_object_mut()) {
        map.insert(
            "spec".into(),
            json!({
                "template": {
                    "metadata": {
                        "labels": { INJECT_LABEL: INJECT_LABEL_VALUE },
                        "annotations": { POLICY_ANNOTATION: policy },
                    }
                }
            }),
        );
    }
    patch
}

/// Reconciles one workload of kind `K`.
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(kind = %K::kind(&()), namespace = obj.metadata.namespace.as_deref().unwrap_or_default(), name = obj.metadata.name.as_deref().unwrap_or_default())
)]
pub async fn reconcile<K: Workload>(
    obj: Arc<WorkloadMeta<K>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(K::CONTROLLER);
    let namespace = obj.namespace().ok_or(Error::MissingField {
        kind: "workload",
        field: "metadata.namespace",
    })?;
    let name = obj.name_any();
    let facts = Facts::of(obj.as_ref());
    let api: Api<WorkloadMeta<K>> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams::apply(WORKLOAD_MANAGER).force();

    let mut action = Action::await_change();
    if facts.desired.as_deref().is_none_or(names::is_policy_name) {
        ctx.forget_said(obj.as_ref(), &[REASON_INVALID_POLICY_NAME]);
    }
    match facts.desired.as_deref() {
        // Copied to the template, it would roll the workload out into pods that the webhook
        // refuses, while the old ones are already scaled down: warn, and change nothing.
        Some(policy) if !names::is_policy_name(policy) => {
            let note = format!(
                "{POLICY_ANNOTATION} {policy:?} {}: the pod template is left as it is",
                names::POLICY_NAME_RULE
            );
            ctx.publish_once(obj.as_ref(), REASON_INVALID_POLICY_NAME, note)
                .await;
        }
        Some(policy) => {
            // `kubectl annotate deployment` puts the others where the policy goes, and where
            // the webhook never sees them.
            if facts.misplaced.is_empty() {
                ctx.forget_said(obj.as_ref(), &[REASON_MISPLACED_ANNOTATION]);
            } else {
                let kind = K::kind(&());
                let note = format!(
                    "{} on the {kind} itself take no effect: the webhook reads them from the pod \
                     template (spec.template.metadata.annotations); only {POLICY_ANNOTATION} is \
                     read from the {kind}",
                    facts.misplaced.join(", ")
                );
                ctx.publish_once(obj.as_ref(), REASON_MISPLACED_ANNOTATION, note)
                    .await;
            }
            let kept = || match facts.annotation.as_deref() {
                Some(current) if facts.managed_by_us => {
                    format!("the pod template keeps {POLICY_ANNOTATION} {current:?}")
                }
                _ => "the pod template is left as it is".to_owned(),
            };
            // Also for a workload opted in before its namespace was excluded: its pods lost
            // the proxy at their last rollout.
            if ctx.excluded_namespace(&namespace) {
                let note = format!(
                    "the corsair webhook does not inject pods in namespace {namespace} (excluded \
                     from injection: the chart's webhook.excludedNamespaces, or Corsair's own \
                     namespace), so this workload's pods run without the proxy; {}",
                    kept()
                );
                ctx.publish_once(obj.as_ref(), REASON_INJECTION_SKIPPED, note)
                    .await;
                succeeded(&ctx, obj.as_ref());
                return Ok(action);
            }
            // Before the opt-in: a rollout into pods the webhook refuses costs capacity, so
            // nothing is written. After it: the rollout of this template would stall on refused
            // pods, and only the ReplicaSet controller would hear why.
            let in_place = facts.in_place(policy);
            // While the webhooks were out of reach at the last check, the opt-in waits anyway:
            // the gate is asked first, and the workload is read only once they are reached, so
            // that workloads waiting together do not each read their whole object every retry.
            let unreached = if !in_place && ctx.webhook_looks_unreached() {
                ctx.webhook_reached().await.err()
            } else {
                None
            };
            let mut held = None;
            let previewed = match unreached {
                Some(_) => Preview::Unchecked,
                None => preview::<K>(&ctx, &namespace, &name, policy).await,
            };
            let verdict = match previewed {
                Preview::Admitted { warnings, held: h } => {
                    if h.is_none() {
                        // Resumed, or its strategy changed: a later hold is news again.
                        ctx.forget_said(obj.as_ref(), &[REASON_ROLLOUT_HELD]);
                    }
                    held = h;
                    Some(Ok(warnings))
                }
                Preview::Unchecked => None,
                // Deleted since the watch saw it: nothing to write to.
                Preview::Gone => {
                    succeeded(&ctx, obj.as_ref());
                    return Ok(action);
                }
                Preview::Refused(why) if in_place => Some(Err((
                    REASON_INJECTION_REFUSED,
                    format!(
                        "the corsair webhook refuses the pods of this workload's pod template: \
                         {why} (pod fields: under spec.template here); a rollout to it cannot \
                         create its new pods and stalls, with the old pods it has already \
                         removed missing (up to maxUnavailable; for a StatefulSet, the pod it \
                         replaces), and no other pod of it can be created either (a scale-up, \
                         the replacement of an evicted or lost pod), until the template is \
                         fixed or {POLICY_ANNOTATION} removed"
                    ),
                ))),
                Preview::Refused(why) => Some(Err((
                    REASON_INJECTION_REFUSED,
                    format!(
                        "the corsair webhook would refuse this workload's pods with \
                         {POLICY_ANNOTATION} {policy:?}: {why} (pod fields: under \
                         spec.template here); {}",
                        kept()
                    ),
                ))),
                Preview::Skipped(why) if in_place => Some(Err((
                    REASON_INJECTION_SKIPPED,
                    format!(
                        "the corsair webhook admits the pods of this workload's pod template \
                         without the proxy: {why}; a rollout to it replaces the pods with ones \
                         that have no proxy"
                    ),
                ))),
                Preview::Skipped(why) => Some(Err((
                    REASON_INJECTION_SKIPPED,
                    format!(
                        "the corsair webhook would admit this workload's pods without the \
                         proxy: {why}; {}",
                        kept()
                    ),
                ))),
            };
            // `None`: refused or skipped, or no verdict (the read failed: what was said stands,
            // and the webhook still judges each pod).
            let admitted_with = match verdict {
                Some(Ok(warnings)) => Some(warnings),
                Some(Err((reason, note))) => {
                    ctx.publish_once(obj.as_ref(), reason, note).await;
                    // Not opted in: no pods of ours, nothing more to say.
                    if !in_place {
                        succeeded(&ctx, obj.as_ref());
                        return Ok(action);
                    }
                    None
                }
                None => None,
            };
            // The write rolls the pods: not before the API server can have the webhook inject
            // them, or they would start without the proxy and stay so.
            if !in_place {
                let reached = match unreached {
                    Some(unreached) => Err(unreached),
                    None => ctx.webhook_reached().await,
                };
                match reached {
                    Ok(()) => {
                        ctx.forget_said(obj.as_ref(), &[REASON_WEBHOOK_UNREACHABLE]);
                        let patch = apply_patch::<K>(&name, &namespace, Some(policy));
                        api.patch(&name, &params, &Patch::Apply(&patch))
                            .await
                            .map_err(Error::kube("apply pod template label"))?;
                        tracing::info!(policy, "opted in");
                        if let Some(why) = held {
                            // Nothing else would tell: the ProxyMissing check looks only at
                            // labelled pods, and the running ones are not.
                            let note = format!(
                                "opted in: the pod template now carries {INJECT_LABEL}={INJECT_LABEL_VALUE}, \
                                 but {why}, so the running pods are not replaced and keep serving \
                                 without the proxy until they are (kubectl rollout resume, or \
                                 delete them)"
                            );
                            ctx.publish_once(obj.as_ref(), REASON_ROLLOUT_HELD, note)
                                .await;
                        }
                    }
                    Err(unreached) => {
                        let said = unreached.since >= UNREACHED_SAID_AFTER;
                        if said {
                            // Said once per cause: no changing figure in it.
                            let note = format!(
                                "the API server has not reached the corsair webhooks for more \
                                 than {} s ({}), and pods created now would run without the \
                                 proxy; {} until it does (checked every few seconds)",
                                UNREACHED_SAID_AFTER.as_secs(),
                                unreached.why,
                                kept()
                            );
                            ctx.publish_once(obj.as_ref(), REASON_WEBHOOK_UNREACHABLE, note)
                                .await;
                        }
                        action = Action::requeue(if said {
                            UNREACHED_RETRY_LATER
                        } else {
                            UNREACHED_RETRY
                        });
                    }
                }
            }
            if let Some(warnings) = admitted_with {
                ctx.forget_said(obj.as_ref(), &VERDICT_REASONS);
                if warnings.is_empty() {
                    ctx.forget_said(obj.as_ref(), &[REASON_INJECTION_WARNING]);
                } else {
                    let note = format!(
                        "the corsair webhook injects this workload's pods with warnings that no \
                         kubectl output shows for them (pod fields: under spec.template here): \
                         {}",
                        warnings.join("; ")
                    );
                    ctx.publish_once(obj.as_ref(), REASON_INJECTION_WARNING, note)
                        .await;
                }
            }
            if ctx.index.policy_exists(&namespace, policy) {
                ctx.forget_said(obj.as_ref(), &[REASON_POLICY_NOT_FOUND]);
            } else {
                if ctx.index.policies_synced() {
                    // Once per quarter of an hour: a new generation (a scale) wakes it too.
                    let note = format!(
                        "CorsPolicy {policy:?} not found in namespace {namespace}: pods get the \
                         proxy, which allows no origin until the policy exists"
                    );
                    ctx.publish_once(obj.as_ref(), REASON_POLICY_NOT_FOUND, note)
                        .await;
                } else {
                    // The policy watch has not listed yet: ask again instead of a false alarm.
                    action = Action::requeue(Duration::from_secs(2));
                }
            }
        }
        None if facts.managed_by_us => {
            let patch = apply_patch::<K>(&name, &namespace, None);
            api.patch(&name, &params, &Patch::Apply(&patch))
                .await
                .map_err(Error::kube("release pod template label"))?;
            tracing::info!("opted out");
            // Opted in again while still held, it is said again.
            ctx.forget_said(obj.as_ref(), &[REASON_ROLLOUT_HELD]);
        }
        None => {}
    }
    succeeded(&ctx, obj.as_ref());
    Ok(action)
}

/// The `corsair.dev/` annotations on the workload's own metadata, other than the policy, that
/// its pod template does not carry with the same value.
fn misplaced_annotations<K: Workload>(obj: &WorkloadMeta<K>) -> Vec<String> {
    let template = obj.template.as_ref().and_then(|t| t.annotations.as_ref());
    obj.annotations()
        .iter()
        .filter(|(key, value)| {
            key.starts_with(OUR_PREFIX)
                && key.as_str() != POLICY_ANNOTATION
                && template.and_then(|t| t.get(key.as_str())) != Some(value)
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// What the webhook would do with a workload's pods.
enum Preview {
    /// Inject them, with these warnings; `held`: why a template change does not replace the
    /// running pods, if it does not.
    Admitted {
        warnings: Vec<String>,
        held: Option<String>,
    },
    /// No check could be made (no configuration, the read failed, no pod spec): the webhook
    /// still judges each pod, and what was said before stands.
    Unchecked,
    /// Refuse them, for this reason.
    Refused(String),
    /// Admit them without the proxy, for this reason (the host network, Windows).
    Skipped(&'static str),
    /// The workload is gone.
    Gone,
}

/// What the webhook would answer for the pods of workload `name` once they name `policy`, from
/// the whole object: the caches keep only metadata, so it is read here, once per check.
async fn preview<K: Workload>(ctx: &Context, namespace: &str, name: &str, policy: &str) -> Preview {
    let Some(config) = ctx.inject.as_ref() else {
        return Preview::Unchecked;
    };
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let obj = match api.get_opt(name).await {
        Ok(Some(obj)) => obj,
        Ok(None) => return Preview::Gone,
        Err(err) => {
            tracing::warn!(%err, "cannot read the workload to check its pod template");
            return Preview::Unchecked;
        }
    };
    let Some(pod) = template_pod(&obj, namespace, policy) else {
        return Preview::Unchecked;
    };
    match inject(&pod, Some(namespace), config, None) {
        Err(err) => Preview::Refused(err.to_string()),
        Ok(injection) if injection.outcome == InjectOutcome::SkippedHostNetwork => {
            Preview::Skipped(
                "spec.template.spec.hostNetwork is true, and the proxy's ports would be taken on \
                 the node",
            )
        }
        Ok(injection) if injection.outcome == InjectOutcome::SkippedWindows => Preview::Skipped(
            "the pod template is for Windows nodes (spec.template.spec.os.name, or its \
             kubernetes.io/os node selector), and the proxy is a Linux container",
        ),
        Ok(injection) => Preview::Admitted {
            warnings: injection.warnings,
            held: obj.rollout_held(),
        },
    }
}

/// The pod the workload's controller would create once its template names `policy`, as far as
/// the webhook looks: the template's metadata and spec in `namespace`, and the volumes the
/// controller adds (a StatefulSet's claims). `None` without a pod spec.
pub(crate) fn template_pod<K: Workload>(obj: &K, namespace: &str, policy: &str) -> Option<Pod> {
    let template = obj.pod_template()?;
    let mut spec = template.spec.clone().filter(|s| !s.containers.is_empty())?;
    for claim in obj.claim_names() {
        let volumes = spec.volumes.get_or_insert_default();
        if !volumes.iter().any(|v| v.name == claim) {
            volumes.push(Volume {
                name: claim.to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.to_owned(),
                    read_only: None,
                }),
                ..Volume::default()
            });
        }
    }
    let mut metadata = template.metadata.clone().unwrap_or_default();
    metadata.namespace = Some(namespace.to_owned());
    metadata
        .annotations
        .get_or_insert_default()
        .insert(POLICY_ANNOTATION.to_owned(), policy.to_owned());
    Some(Pod {
        metadata,
        spec: Some(spec),
        status: None,
    })
}

/// Every CorsPolicy `obj` mentions (on its metadata or its pod template, ours or the user's),
/// so that the policies' workload counts follow: when the user removes the annotation, the
/// copy still on the template points at the policy whose count just dropped.
pub fn policy_refs<K: Workload>(obj: &WorkloadMeta<K>) -> Vec<ObjectRef<CorsPolicy>> {
    let Some(namespace) = obj.namespace() else {
        return Vec::new();
    };
    let on_meta = non_empty(obj.annotations().get(POLICY_ANNOTATION));
    let on_template = obj
        .template
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| non_empty(a.get(POLICY_ANNOTATION)));
    let mut names: Vec<String> = on_meta.into_iter().chain(on_template).collect();
    names.dedup();
    names
        .iter()
        .map(|p| ObjectRef::new(p).within(&namespace))
        .collect()
}
