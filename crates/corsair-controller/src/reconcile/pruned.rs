//! What the controller keeps of the objects it watches: only what the reconcilers read.
//!
//! A Deployment as the API server returns it weighs about 5 KB, most of it the pod spec, the
//! status and `managedFields`; the workload reconciler reads its metadata and its pod template's
//! metadata. [`WorkloadMeta`] deserialises only those (serde skips the rest without building
//! it), reduces `managedFields` to the two facts the reconciler needs, and drops the
//! `last-applied-configuration` annotation. [`prune_policy`] and [`prune_configmap`] drop the
//! same two fields from the other kinds before they are stored.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::Resource;
use serde::{Deserialize, Deserializer};

use super::workload::Workload;
use crate::crd::CorsPolicy;
use crate::names::{POLICY_ANNOTATION, WORKLOAD_MANAGER};

/// The annotation `kubectl apply` writes: a copy of the whole object, never read here.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A workload of kind `K` (Deployment, StatefulSet, DaemonSet) as the controller caches it:
/// its metadata and its pod template's metadata, nothing else.
pub struct WorkloadMeta<K> {
    /// The workload's metadata, without `managedFields` and `last-applied-configuration`.
    pub metadata: ObjectMeta,
    /// `spec.template.metadata`, pruned the same way.
    pub template: Option<ObjectMeta>,
    /// Whether a field manager other than ours declared the pod template's policy annotation
    /// (true when the object carries no managed fields at all: then trust the annotation).
    pub template_policy_by_others: bool,
    /// Whether our field manager owns anything in this object through an apply.
    pub managed_by_us: bool,
    kind: PhantomData<fn() -> K>,
}

impl<K: Workload> WorkloadMeta<K> {
    /// Keeps what the controller reads of `obj`.
    pub fn from_object(obj: &K) -> Self {
        let template = obj.pod_template().and_then(|t| t.metadata.clone());
        Self::new(obj.meta().clone(), template)
    }

    fn new(mut metadata: ObjectMeta, template: Option<ObjectMeta>) -> Self {
        let managed = metadata.managed_fields.take().unwrap_or_default();
        prune_meta(&mut metadata);
        WorkloadMeta {
            metadata,
            template: template.map(|mut t| {
                prune_meta(&mut t);
                t
            }),
            template_policy_by_others: template_policy_by_others(&managed),
            managed_by_us: managed_by_us(&managed),
            kind: PhantomData,
        }
    }
}

/// Drops `managedFields` and `last-applied-configuration` from `meta`.
pub fn prune_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Prunes a CorsPolicy before it is stored.
pub fn prune_policy(policy: &mut CorsPolicy) {
    prune_meta(&mut policy.metadata);
}

/// Prunes a ConfigMap before it is stored.
pub fn prune_configmap(configmap: &mut ConfigMap) {
    prune_meta(&mut configmap.metadata);
}

fn template_policy_by_others(entries: &[ManagedFieldsEntry]) -> bool {
    if entries.is_empty() {
        return true;
    }
    let key = format!("f:{POLICY_ANNOTATION}");
    entries
        .iter()
        .filter(|e| e.manager.as_deref() != Some(WORKLOAD_MANAGER))
        .filter_map(|e| e.fields_v1.as_ref())
        .any(|fields| {
            fields
                .0
                .pointer("/f:spec/f:template/f:metadata/f:annotations")
                .and_then(|a| a.get(&key))
                .is_some()
        })
}

fn managed_by_us(entries: &[ManagedFieldsEntry]) -> bool {
    entries.iter().any(|e| {
        e.manager.as_deref() == Some(WORKLOAD_MANAGER)
            && e.operation.as_deref() == Some("Apply")
            && e.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.as_object().is_some_and(|o| !o.is_empty()))
    })
}

impl<'de, K: Workload> Deserialize<'de> for WorkloadMeta<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Unknown fields (the pod spec, the status, ...) are skipped, not built.
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: ObjectMeta,
            #[serde(default)]
            spec: Option<Spec>,
        }
        #[derive(Deserialize)]
        struct Spec {
            #[serde(default)]
            template: Option<Template>,
        }
        #[derive(Deserialize)]
        struct Template {
            #[serde(default)]
            metadata: Option<ObjectMeta>,
        }
        let wire = Wire::deserialize(deserializer)?;
        let template = wire.spec.and_then(|s| s.template).and_then(|t| t.metadata);
        Ok(Self::new(wire.metadata, template))
    }
}

impl<K> Clone for WorkloadMeta<K> {
    fn clone(&self) -> Self {
        WorkloadMeta {
            metadata: self.metadata.clone(),
            template: self.template.clone(),
            template_policy_by_others: self.template_policy_by_others,
            managed_by_us: self.managed_by_us,
            kind: PhantomData,
        }
    }
}

impl<K> PartialEq for WorkloadMeta<K> {
    fn eq(&self, other: &Self) -> bool {
        self.metadata == other.metadata
            && self.template == other.template
            && self.template_policy_by_others == other.template_policy_by_others
            && self.managed_by_us == other.managed_by_us
    }
}

impl<K: Workload> fmt::Debug for WorkloadMeta<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(&K::kind(&()))
            .field("metadata", &self.metadata)
            .field("template", &self.template)
            .field("template_policy_by_others", &self.template_policy_by_others)
            .field("managed_by_us", &self.managed_by_us)
            .finish()
    }
}

/// Same kind, group, version and plural as `K`: an `Api<WorkloadMeta<K>>` reads `K`'s URLs.
impl<K: Workload> Resource for WorkloadMeta<K> {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
