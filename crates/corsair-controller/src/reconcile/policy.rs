//! CorsPolicy reconciler: compile with the engine, render the ConfigMap the proxies load, and
//! report the outcome in the status and in Events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corsair_policy::model::{API_VERSION, KIND};
use corsair_policy::{Engine, Report};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::{Context, MANAGED_BY_LABEL, MANAGED_BY_VALUE, succeeded, truncate};
use crate::crd::{
    CONDITION_READY, CorsPolicy, CorsPolicyStatus, REASON_ACCEPTED, REASON_INVALID,
    REASON_NOT_DELIVERED, REASON_TOO_LARGE,
};
use crate::document::{MAX_CONFIGMAP_DATA, render, too_large};
use crate::names::{
    POLICY_ANNOTATION, POLICY_CONFIGMAP_KEY, POLICY_MANAGER, policy_configmap_name,
};
use crate::{Error, Result};

/// Metric label of this controller.
pub const CONTROLLER: &str = "corspolicy";
/// How often a policy is reconciled without a change, to refresh the workload count.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Longest condition message; the API server allows 32 KiB, `kubectl describe` wants less.
const MAX_MESSAGE: usize = 4096;

/// Reconciles one CorsPolicy. Writes only what differs from what is stored: an unchanged
/// policy costs no API call, and an Event is published only when `Ready` flips or a new
/// generation is refused.
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(kind = KIND, namespace = policy.metadata.namespace.as_deref().unwrap_or_default(), name = policy.metadata.name.as_deref().unwrap_or_default())
)]
pub async fn reconcile(policy: Arc<CorsPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let namespace = policy.namespace().ok_or(Error::MissingField {
        kind: "CorsPolicy",
        field: "metadata.namespace",
    })?;
    let name = policy.name_any();
    let generation = policy.metadata.generation;

    // A ConfigMap write the API server refused for good: said in the status, then returned so
    // that the reconcile is tried again with backoff.
    let mut undelivered = None;
    let compiled = match &policy.unreadable {
        Some(finding) => Err(Report {
            findings: vec![finding.clone()],
        }),
        None => Engine::compile(&policy.spec),
    };
    let (ready, reason, message, report) = match compiled {
        Ok((_engine, report)) => 'valid: {
            let desired = desired_configmap(&policy, &namespace)?;
            let size = rendered_size(&desired);
            if size > MAX_CONFIGMAP_DATA {
                // The API server would refuse the ConfigMap at every retry: a refusal of the
                // policy, said in its status, not a reconcile error.
                let message = format!(
                    "refused: {}; running proxies keep the last accepted version, if any",
                    too_large(size)
                );
                break 'valid (false, REASON_TOO_LARGE, message, report);
            }
            let stored = ctx
                .index
                .configmap(&namespace, &policy_configmap_name(&name));
            if stored
                .as_deref()
                .is_none_or(|cm| !configmap_matches(cm, &desired))
            {
                match apply_configmap(&desired, &namespace, &ctx).await {
                    Ok(()) => {}
                    Err(err) if refused_for_good(&err) => {
                        let message = format!(
                            "not delivered: the API server refuses its ConfigMap {} ({err}); \
                             running proxies keep the last delivered version, if any",
                            policy_configmap_name(&name)
                        );
                        undelivered = Some(err);
                        break 'valid (false, REASON_NOT_DELIVERED, message, report);
                    }
                    Err(err) => return Err(err),
                }
            }
            let message = format!(
                "compiled and rendered into ConfigMap {}",
                policy_configmap_name(&name)
            );
            (true, REASON_ACCEPTED, message, report)
        }
        Err(report) => {
            // The last good ConfigMap stays: running proxies keep enforcing it.
            let errors: Vec<String> = report.errors().map(ToString::to_string).collect();
            let message = format!(
                "refused ({}); running proxies keep the last accepted version, if any",
                errors.join("; ")
            );
            (false, REASON_INVALID, message, report)
        }
    };

    // Our last write wins over the cache, which may not have seen it yet.
    let uid = policy.metadata.uid.clone().unwrap_or_default();
    let written = ctx.written_status(&uid);
    let previous = written.as_ref().or(policy.status.as_ref());
    let status = next_status(
        previous,
        ready,
        reason,
        truncate(message.clone(), MAX_MESSAGE),
        generation,
        &report,
        ctx.index.workloads_using(&namespace, &name),
        Timestamp::now(),
    );
    if previous.map(ours).as_ref() != Some(&status) {
        let api: Api<CorsPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(POLICY_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube("apply CorsPolicy status"))?;
        ctx.wrote_status(&uid, status.clone());
    }

    let flipped = previous
        .and_then(CorsPolicyStatus::ready)
        .map(|c| c.status.as_str())
        != Some(if ready { "True" } else { "False" });
    // A refused new generation is news even when the policy was already refused; an accepted
    // one is not (the status says so), so a spec edit costs the ConfigMap and the status only.
    let newly_refused = !ready && previous.and_then(|s| s.observed_generation) != generation;
    if flipped || newly_refused {
        let type_ = if ready {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.publish(policy.as_ref(), type_, reason, message).await;
    }
    if let Some(err) = undelivered {
        return Err(err);
    }
    succeeded(&ctx, policy.as_ref());
    Ok(Action::requeue(RESYNC))
}

/// An answer that the same write will get again until someone changes something: a quota, a
/// policy engine's denial, missing RBAC, a terminating namespace (400, 403, 422). Throttling,
/// conflicts and server errors pass.
fn refused_for_good(err: &Error) -> bool {
    matches!(
        err,
        Error::Kube {
            cause: kube::Error::Api(status),
            ..
        } if matches!(status.code, 400 | 403 | 422)
    )
}

/// Bytes of `configmap`'s data, as the API server counts them against [`MAX_CONFIGMAP_DATA`].
fn rendered_size(configmap: &ConfigMap) -> usize {
    configmap.data.iter().flatten().map(|(_, v)| v.len()).sum()
}

/// The ConfigMap `corsair-policy-NAME` as it should be: the rendered policy, owned by the
/// policy so that deleting the policy deletes it.
pub fn desired_configmap(policy: &CorsPolicy, namespace: &str) -> Result<ConfigMap> {
    let owner = policy
        .controller_owner_ref(&())
        .ok_or(Error::MissingField {
            kind: "CorsPolicy",
            field: "metadata.uid",
        })?;
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(policy_configmap_name(&policy.name_any())),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (POLICY_ANNOTATION.to_owned(), policy.name_any()),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            POLICY_CONFIGMAP_KEY.to_owned(),
            render(policy).map_err(Error::Render)?,
        )])),
        ..ConfigMap::default()
    })
}

/// Whether the stored ConfigMap already carries everything `desired` declares: the data, our
/// labels and the owner reference. Fields others added (labels, annotations, data keys) do not
/// count: an apply cannot remove them, so it would be sent again at every reconcile.
pub fn configmap_matches(stored: &ConfigMap, desired: &ConfigMap) -> bool {
    let contains = |have: Option<&BTreeMap<String, String>>,
                    want: Option<&BTreeMap<String, String>>| {
        want.into_iter()
            .flatten()
            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
    };
    contains(stored.data.as_ref(), desired.data.as_ref())
        && contains(
            stored.metadata.labels.as_ref(),
            desired.metadata.labels.as_ref(),
        )
        && desired.metadata.owner_references.iter().flatten().all(|o| {
            stored
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|s| s == o)
        })
}

/// Server-side applies the desired ConfigMap.
async fn apply_configmap(desired: &ConfigMap, namespace: &str, ctx: &Context) -> Result<()> {
    let name = desired.metadata.name.as_deref().unwrap_or_default();
    let mut patch = serde_json::to_value(desired).map_err(Error::Render)?;
    if let Some(map) = patch.as_object_mut() {
        map.insert("apiVersion".into(), json!("v1"));
        map.insert("kind".into(), json!("ConfigMap"));
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(POLICY_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("apply policy ConfigMap"))?;
    Ok(())
}

/// The part of a stored status this controller writes: a condition another controller added
/// (`conditions` is a map keyed by `type`) is left to it by the apply, so comparing with it
/// would find a difference no write can remove.
fn ours(status: &CorsPolicyStatus) -> CorsPolicyStatus {
    let mut ours = status.clone();
    ours.conditions.retain(|c| c.type_ == CONDITION_READY);
    ours
}

/// The status to write. `lastTransitionTime` moves only when `Ready` flips, as the Kubernetes
/// API conventions require, so it tells when the policy last became (in)valid.
#[allow(clippy::too_many_arguments)]
pub fn next_status(
    previous: Option<&CorsPolicyStatus>,
    ready: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    report: &Report,
    workloads: usize,
    now: Timestamp,
) -> CorsPolicyStatus {
    let status = if ready { "True" } else { "False" };
    let last_transition_time = previous
        .and_then(CorsPolicyStatus::ready)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    CorsPolicyStatus {
        conditions: vec![Condition {
            type_: CONDITION_READY.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time,
        }],
        warnings: report.warnings().map(ToString::to_string).collect(),
        workloads: Some(i32::try_from(workloads).unwrap_or(i32::MAX)),
        observed_generation: generation,
    }
}
