//! What the controller keeps of the objects it watches: only what the reconcilers read.
//!
//! A Deployment as the API server returns it weighs about 5 KB, most of it the pod spec, the
//! status and `managedFields`; the workload reconciler reads its metadata and its pod template's
//! metadata. [`WorkloadMeta`] deserialises only those (serde skips the rest without building
//! it), reduces `managedFields` to the two facts the reconciler needs, and drops the
//! `last-applied-configuration` annotation. [`prune_policy`] and [`prune_configmap`] drop the
//! same two fields from the other kinds before they are stored.

use std::borrow::Cow;
use std::collections::BTreeMap;
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
/// its identity, and the `corsair.dev/` labels and annotations of its metadata and its pod
/// template's metadata, nothing else. Other labels and annotations are never read, and kept
/// they would cost more than the rest of the cache (a label map is a 500-byte B-tree node).
pub struct WorkloadMeta<K> {
    /// The workload's metadata, without `managedFields` and `last-applied-configuration`.
    pub metadata: ObjectMeta,
    /// The `corsair.dev/` labels and annotations of `spec.template.metadata`; `None` when it has
    /// neither, as for most workloads of a cluster.
    pub template: Option<TemplateMeta>,
    /// Whether a field manager other than ours declared the pod template's policy annotation
    /// (true when the object carries no managed fields at all: then trust the annotation).
    pub template_policy_by_others: bool,
    /// Whether our field manager owns anything in this object through an apply.
    pub managed_by_us: bool,
    kind: PhantomData<fn() -> K>,
}

/// What is kept of a pod template's metadata: 48 bytes where an `ObjectMeta` takes several
/// hundred, for each of the cluster's workloads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateMeta {
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl TemplateMeta {
    /// `None` when neither map holds anything of ours.
    fn kept(
        labels: Option<BTreeMap<String, String>>,
        annotations: Option<BTreeMap<String, String>>,
    ) -> Option<TemplateMeta> {
        let (labels, annotations) = (ours(labels), ours(annotations));
        (labels.is_some() || annotations.is_some()).then_some(TemplateMeta {
            labels,
            annotations,
        })
    }
}

impl<K: Workload> WorkloadMeta<K> {
    /// Keeps what the controller reads of `obj`.
    pub fn from_object(obj: &K) -> Self {
        let meta = obj.meta();
        let managed = meta.managed_fields.as_deref().unwrap_or_default();
        let template = obj.pod_template().and_then(|t| t.metadata.as_ref());
        WorkloadMeta {
            metadata: kept(
                ObjectMeta {
                    name: meta.name.clone(),
                    namespace: meta.namespace.clone(),
                    uid: meta.uid.clone(),
                    resource_version: meta.resource_version.clone(),
                    generation: meta.generation,
                    ..ObjectMeta::default()
                },
                meta.labels.clone(),
                meta.annotations.clone(),
            ),
            template: template
                .and_then(|t| TemplateMeta::kept(t.labels.clone(), t.annotations.clone())),
            template_policy_by_others: template_policy_by_others(managed),
            managed_by_us: managed_by_us(managed),
            kind: PhantomData,
        }
    }
}

/// `meta` with the `corsair.dev/` labels and annotations.
fn kept(
    mut meta: ObjectMeta,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
) -> ObjectMeta {
    meta.labels = ours(labels);
    meta.annotations = ours(annotations);
    meta
}

/// The entries of `map` under the `corsair.dev/` prefix, or `None` when there are none.
fn ours(map: Option<BTreeMap<String, String>>) -> Option<BTreeMap<String, String>> {
    let map: BTreeMap<String, String> = map?
        .into_iter()
        .filter(|(k, _)| k.starts_with(OUR_PREFIX))
        .collect();
    (!map.is_empty()).then_some(map)
}

/// Prefix of the labels and annotations the workload reconciler reads.
pub(crate) const OUR_PREFIX: &str = "corsair.dev/";

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
        let wire = wire::Workload::deserialize(deserializer)?;
        let meta = wire.metadata;
        let managed = meta.managed_fields.unwrap_or_default();
        let by_others = managed.is_empty()
            || managed.iter().any(|e| {
                e.manager.as_deref() != Some(WORKLOAD_MANAGER) && e.fields.template_policy
            });
        let ours = managed.iter().any(|e| {
            e.manager.as_deref() == Some(WORKLOAD_MANAGER)
                && e.operation.as_deref() == Some("Apply")
                && e.fields.non_empty
        });
        let template = wire
            .spec
            .and_then(|s| s.template)
            .and_then(|t| t.metadata)
            .and_then(|t| {
                (t.labels.0.is_some() || t.annotations.0.is_some()).then_some(TemplateMeta {
                    labels: t.labels.0,
                    annotations: t.annotations.0,
                })
            });
        Ok(WorkloadMeta {
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                uid: meta.uid,
                resource_version: meta.resource_version,
                generation: meta.generation,
                labels: meta.labels.0,
                annotations: meta.annotations.0,
                ..ObjectMeta::default()
            },
            template,
            template_policy_by_others: by_others,
            managed_by_us: ours,
            kind: PhantomData,
        })
    }
}

/// The shape of a workload on the wire, limited to what is kept. Everything else (the pod
/// spec, the status, `last-applied-configuration`, the bulk of `managedFields`) is skipped by
/// serde without being built, so listing 10,000 Deployments allocates little more than what
/// is kept.
mod wire {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{IgnoredAny, MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    use super::OUR_PREFIX;

    #[derive(Deserialize)]
    pub struct Workload {
        #[serde(default)]
        pub metadata: Meta,
        #[serde(default)]
        pub spec: Option<Spec>,
    }

    #[derive(Deserialize)]
    pub struct Spec {
        #[serde(default)]
        pub template: Option<Template>,
    }

    #[derive(Deserialize)]
    pub struct Template {
        #[serde(default)]
        pub metadata: Option<Meta>,
    }

    #[derive(Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Meta {
        #[serde(default)]
        pub name: Option<String>,
        #[serde(default)]
        pub namespace: Option<String>,
        #[serde(default)]
        pub uid: Option<String>,
        #[serde(default)]
        pub resource_version: Option<String>,
        #[serde(default)]
        pub generation: Option<i64>,
        #[serde(default)]
        pub labels: Ours,
        #[serde(default)]
        pub annotations: Ours,
        #[serde(default)]
        pub managed_fields: Option<Vec<Managed>>,
    }

    /// The `corsair.dev/` entries of a label or annotation map; the others (among them
    /// `last-applied-configuration`) are skipped unread.
    #[derive(Default)]
    pub struct Ours(pub Option<BTreeMap<String, String>>);

    impl<'de> Deserialize<'de> for Ours {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Ours;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a map of strings")
                }
                fn visit_unit<E>(self) -> Result<Ours, E> {
                    Ok(Ours(None))
                }
                fn visit_none<E>(self) -> Result<Ours, E> {
                    Ok(Ours(None))
                }
                fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Ours, D::Error> {
                    d.deserialize_map(V)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ours, A::Error> {
                    let mut out = BTreeMap::new();
                    while let Some(key) = map.next_key::<String>()? {
                        if key.starts_with(OUR_PREFIX) {
                            out.insert(key, map.next_value::<String>()?);
                        } else {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                    Ok(Ours((!out.is_empty()).then_some(out)))
                }
            }
            deserializer.deserialize_option(V)
        }
    }

    /// One `managedFields` entry, reduced to what the workload reconciler asks of it.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Managed {
        #[serde(default)]
        pub manager: Option<String>,
        #[serde(default)]
        pub operation: Option<String>,
        #[serde(default, rename = "fieldsV1")]
        pub fields: Fields,
    }

    /// Whether a `fieldsV1` set is non-empty, and whether it holds the pod template's policy
    /// annotation (`f:spec` / `f:template` / `f:metadata` / `f:annotations` /
    /// `f:corsair.dev/policy`).
    #[derive(Default)]
    pub struct Fields {
        pub non_empty: bool,
        pub template_policy: bool,
    }

    #[derive(Deserialize)]
    struct SpecFields {
        #[serde(default, rename = "f:template")]
        template: Option<TemplateFields>,
    }
    #[derive(Deserialize)]
    struct TemplateFields {
        #[serde(default, rename = "f:metadata")]
        metadata: Option<MetaFields>,
    }
    #[derive(Deserialize)]
    struct MetaFields {
        #[serde(default, rename = "f:annotations")]
        annotations: Option<AnnotationFields>,
    }
    #[derive(Deserialize)]
    struct AnnotationFields {
        /// `f:` + [`crate::names::POLICY_ANNOTATION`] (a test holds them equal).
        #[serde(default, rename = "f:corsair.dev/policy")]
        policy: Option<IgnoredAny>,
    }

    impl<'de> Deserialize<'de> for Fields {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Fields;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a fieldsV1 map")
                }
                fn visit_unit<E>(self) -> Result<Fields, E> {
                    Ok(Fields::default())
                }
                fn visit_none<E>(self) -> Result<Fields, E> {
                    Ok(Fields::default())
                }
                fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Fields, D::Error> {
                    d.deserialize_map(V)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                    let mut fields = Fields::default();
                    while let Some(key) = map.next_key::<String>()? {
                        fields.non_empty = true;
                        if key == "f:spec" {
                            let spec = map.next_value::<SpecFields>()?;
                            fields.template_policy = spec
                                .template
                                .and_then(|t| t.metadata)
                                .and_then(|m| m.annotations)
                                .is_some_and(|a| a.policy.is_some());
                        } else {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                    Ok(fields)
                }
            }
            deserializer.deserialize_option(V)
        }
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
