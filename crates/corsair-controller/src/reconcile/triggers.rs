//! Which changes wake which reconciler: the predicates, and the index of workloads per policy.
//!
//! Each function maps one [`Change`] to the objects to reconcile, and maps to nothing when
//! what changed does not matter to that reconciler: a CorsPolicy's status (our own write), a
//! workload's status, or its labels and annotations other than ours. A workload that asks for
//! a policy is looked at again on a new generation, to check its pod template: see [`Facts`].

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::pruned::WorkloadMeta;
use super::shared::Change;
use super::workload::{self, Facts, Workload};
use crate::crd::{CorsPolicy, KIND};

/// A CorsPolicy needs reconciling when it appears or its generation (its spec) moves; a
/// change of its status, labels or annotations does not count.
pub fn policy_changed(change: &Change<CorsPolicy>) -> Option<ObjectRef<CorsPolicy>> {
    let new = change.new.as_deref()?;
    let moved = change.old.as_deref().is_none_or(|old| {
        old.metadata.generation != new.metadata.generation || old.metadata.uid != new.metadata.uid
    });
    moved.then(|| ObjectRef::from_obj(new))
}

/// A rendered ConfigMap wakes its policy when it was deleted or someone changed what we
/// declare in it, so that the reconciler puts it back.
pub fn configmap_changed(change: &Change<ConfigMap>) -> Option<ObjectRef<CorsPolicy>> {
    let declared = |cm: &ConfigMap| {
        (
            cm.data.clone(),
            cm.metadata.labels.clone(),
            cm.metadata.owner_references.clone(),
        )
    };
    if change.old.as_deref().map(declared) == change.new.as_deref().map(declared) {
        return None;
    }
    let cm = change.new.as_deref().or(change.old.as_deref())?;
    let owner = cm
        .owner_references()
        .iter()
        .find(|o| o.kind == KIND && o.controller == Some(true))?;
    Some(ObjectRef::new(&owner.name).within(&cm.namespace()?))
}

/// A workload wakes the policies it names (before and after) when what it names changed,
/// since their workload counts moved. Its image, replicas or status do not count.
pub fn workload_names_changed<K: Workload>(
    change: &Change<WorkloadMeta<K>>,
) -> Vec<ObjectRef<CorsPolicy>> {
    let named = |w: &WorkloadMeta<K>| (workload::desired_policy(w), workload::policy_refs(w));
    let old = change.old.as_deref().map(named);
    let new = change.new.as_deref().map(named);
    if old == new {
        return Vec::new();
    }
    let mut refs: Vec<ObjectRef<CorsPolicy>> = old
        .into_iter()
        .chain(new)
        .flat_map(|(_, refs)| refs)
        .collect();
    refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    refs.dedup();
    refs
}

/// A workload needs reconciling when it appears or its [`Facts`] (the policy it asks for,
/// the template's label and annotation, our ownership, pod annotations put on the workload
/// itself, and its generation while it asks for a policy) change, and only when the reconciler
/// has something to do: it asks for a policy, or we own something in it to release. The
/// thousands of workloads that have nothing to do with Corsair never enter the queue.
pub fn workload_changed<K: Workload>(
    change: &Change<WorkloadMeta<K>>,
) -> Option<ObjectRef<WorkloadMeta<K>>> {
    let new = change.new.as_deref()?;
    let facts = Facts::of(new);
    let moved = change
        .old
        .as_deref()
        .is_none_or(|old| Facts::of(old) != facts);
    (moved && facts.concerns_us()).then(|| ObjectRef::from_obj(new))
}

/// The workloads of kind `K` that name a policy which appeared or went away, so that they
/// report (or stop reporting) it missing. A new generation of the policy changes nothing
/// for them.
pub fn policy_presence_changed<K: Workload>(
    change: &Change<CorsPolicy>,
    users: &PolicyUsers,
) -> Vec<ObjectRef<WorkloadMeta<K>>> {
    if change.old.is_some() == change.new.is_some() {
        return Vec::new();
    }
    let Some(policy) = change.new.as_deref().or(change.old.as_deref()) else {
        return Vec::new();
    };
    let Some(namespace) = policy.namespace() else {
        return Vec::new();
    };
    users.workloads::<K>(&namespace, &policy.name_any())
}

type Key = (String, String);

/// For each `(namespace, policy)`, the workloads that ask for it: kept up to date from the
/// workload watches, so that counting them is a lookup, not a scan of every workload.
#[derive(Default)]
pub struct PolicyUsers {
    by_policy: RwLock<HashMap<Key, BTreeSet<(&'static str, String)>>>,
}

impl PolicyUsers {
    /// Follows one change of a workload of kind `K`.
    pub fn observe<K: Workload>(&self, change: &Change<WorkloadMeta<K>>) {
        let entry = |w: &WorkloadMeta<K>| {
            let policy = workload::desired_policy(w)?;
            Some(((w.namespace()?, policy), (K::CONTROLLER, w.name_any())))
        };
        let old = change.old.as_deref().and_then(entry);
        let new = change.new.as_deref().and_then(entry);
        if old == new {
            return;
        }
        let mut map = self.by_policy.write().unwrap_or_else(|p| p.into_inner());
        if let Some((key, workload)) = old
            && let Some(set) = map.get_mut(&key)
        {
            set.remove(&workload);
            if set.is_empty() {
                map.remove(&key);
            }
        }
        if let Some((key, workload)) = new {
            map.entry(key).or_default().insert(workload);
        }
    }

    /// How many workloads of every kind in `namespace` ask for `policy`.
    pub fn count(&self, namespace: &str, policy: &str) -> usize {
        let map = self.by_policy.read().unwrap_or_else(|p| p.into_inner());
        map.get(&(namespace.to_owned(), policy.to_owned()))
            .map_or(0, BTreeSet::len)
    }

    /// The workloads of kind `K` in `namespace` that ask for `policy`.
    pub fn workloads<K: Workload>(
        &self,
        namespace: &str,
        policy: &str,
    ) -> Vec<ObjectRef<WorkloadMeta<K>>> {
        let map = self.by_policy.read().unwrap_or_else(|p| p.into_inner());
        map.get(&(namespace.to_owned(), policy.to_owned()))
            .into_iter()
            .flatten()
            .filter(|(kind, _)| *kind == K::CONTROLLER)
            .map(|(_, name)| ObjectRef::new(name).within(namespace))
            .collect()
    }
}
