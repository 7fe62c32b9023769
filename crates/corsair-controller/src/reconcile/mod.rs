//! The reconcilers: CorsPolicy → ConfigMap + status, and workloads → pod template label.
//!
//! [`run`] starts one kube-runtime `Controller` per kind and stops them all when told to, which
//! is how leader election hands the reconcilers from one replica to another.

pub mod policy;
pub mod workload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::Error;
use crate::crd::CorsPolicy;
use crate::metrics::Metrics;
pub use workload::Workload;

/// Label on every object the controller renders, so its watches can select only those.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "corsair";
/// Name under which Events are reported.
pub const REPORTER: &str = "corsair-controller";

/// What the reconcilers need to know about the cluster beyond the object they reconcile.
/// Backed by the controllers' reflector stores in production and by fixed data in tests.
pub trait Index: Send + Sync {
    /// Whether the CorsPolicy `namespace/name` exists.
    fn policy_exists(&self, namespace: &str, name: &str) -> bool;
    /// How many Deployments, StatefulSets and DaemonSets in `namespace` name policy `name`.
    fn workloads_using(&self, namespace: &str, name: &str) -> usize;
    /// Whether the CorsPolicy list has been read once: before that, "not found" means nothing.
    fn policies_synced(&self) -> bool;
}

/// [`Index`] over the reflector stores of the running controllers.
#[derive(Clone)]
pub struct StoreIndex {
    pub policies: Store<CorsPolicy>,
    pub deployments: Store<Deployment>,
    pub statefulsets: Store<StatefulSet>,
    pub daemonsets: Store<DaemonSet>,
}

impl StoreIndex {
    fn count<K: Workload>(store: &Store<K>, namespace: &str, name: &str) -> usize {
        store
            .state()
            .iter()
            .filter(|w| w.namespace().as_deref() == Some(namespace))
            .filter(|w| workload::desired_policy(w.as_ref()).as_deref() == Some(name))
            .count()
    }
}

impl Index for StoreIndex {
    fn policy_exists(&self, namespace: &str, name: &str) -> bool {
        self.policies
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    fn workloads_using(&self, namespace: &str, name: &str) -> usize {
        Self::count(&self.deployments, namespace, name)
            + Self::count(&self.statefulsets, namespace, name)
            + Self::count(&self.daemonsets, namespace, name)
    }

    fn policies_synced(&self) -> bool {
        self.policies.wait_until_ready().now_or_never().is_some()
    }
}

/// Shared state of every reconciler.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub index: Arc<dyn Index>,
    backoff: Backoff,
}

impl Context {
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Metrics,
        index: Arc<dyn Index>,
    ) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            index,
            backoff: Backoff::default(),
        }
    }

    /// Publishes an Event about `obj`. A failed Event is logged, never fails the reconcile:
    /// the status and the metrics carry the same information.
    pub(crate) async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1000)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%err, reason, "publishing an Event failed");
        }
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max.saturating_sub(3);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// Per-object exponential backoff for failed reconciles: 1 s, 2 s, 4 s ... capped at 5 min,
/// reset by the next success.
#[derive(Default)]
struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(300);

    fn next(&self, key: String) -> Duration {
        // The lock is never held across an await: error_policy is synchronous.
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key).or_insert(0);
        let delay = Duration::from_secs(1u64 << (*n).min(9)).min(Self::MAX);
        *n = n.saturating_add(1);
        delay
    }

    fn reset(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(key);
    }
}

fn object_key<K: Resource>(obj: &K) -> String
where
    K::DynamicType: Default,
{
    format!(
        "{}/{}/{}",
        K::kind(&Default::default()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// Records a successful reconcile: resets the object's backoff.
pub(crate) fn succeeded<K: Resource>(ctx: &Context, obj: &K)
where
    K::DynamicType: Default,
{
    ctx.backoff.reset(&object_key(obj));
}

/// The `error_policy` of every controller: log, count, and retry with per-object backoff.
pub fn error_policy<K: Resource>(
    controller: &'static str,
    obj: &K,
    error: &Error,
    ctx: &Context,
) -> Action
where
    K::DynamicType: Default,
{
    let delay = ctx.backoff.next(object_key(obj));
    tracing::warn!(
        controller,
        name = obj.meta().name.as_deref().unwrap_or_default(),
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        %error,
        retry_in = ?delay,
        "reconcile failed"
    );
    ctx.metrics.reconcile_failed(controller, error);
    Action::requeue(delay)
}

/// Runs every reconciler until `stop` becomes true (leadership lost, or shutdown).
pub async fn run(
    client: Client,
    reporter: Reporter,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> crate::Result<()> {
    let stopped = || {
        let mut stop = stop.clone();
        async move {
            // A dropped sender means the process is going away: stop too.
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let wc = watcher::Config::default().any_semantic();

    let policies = Controller::new(Api::<CorsPolicy>::all(client.clone()), wc.clone());
    let deployments = Controller::new(Api::<Deployment>::all(client.clone()), wc.clone());
    let statefulsets = Controller::new(Api::<StatefulSet>::all(client.clone()), wc.clone());
    let daemonsets = Controller::new(Api::<DaemonSet>::all(client.clone()), wc.clone());
    let index = StoreIndex {
        policies: policies.store(),
        deployments: deployments.store(),
        statefulsets: statefulsets.store(),
        daemonsets: daemonsets.store(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        reporter,
        metrics,
        Arc::new(index.clone()),
    ));

    let configmaps = watcher::Config::default()
        .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"))
        .any_semantic();
    let policies = policies
        .owns(Api::<ConfigMap>::all(client.clone()), configmaps)
        .watches(
            Api::<Deployment>::all(client.clone()),
            wc.clone(),
            workload::policy_refs,
        )
        .watches(
            Api::<StatefulSet>::all(client.clone()),
            wc.clone(),
            workload::policy_refs,
        )
        .watches(
            Api::<DaemonSet>::all(client.clone()),
            wc.clone(),
            workload::policy_refs,
        )
        .graceful_shutdown_on(stopped())
        .run(
            policy::reconcile,
            |obj, err, ctx| error_policy(policy::CONTROLLER, obj.as_ref(), err, &ctx),
            ctx.clone(),
        )
        .for_each(|_| async {});

    let deployments = workload_controller(deployments, &index.deployments, &client, &wc)
        .graceful_shutdown_on(stopped())
        .run(
            workload::reconcile::<Deployment>,
            |obj, err, ctx| error_policy(Deployment::CONTROLLER, obj.as_ref(), err, &ctx),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let statefulsets = workload_controller(statefulsets, &index.statefulsets, &client, &wc)
        .graceful_shutdown_on(stopped())
        .run(
            workload::reconcile::<StatefulSet>,
            |obj, err, ctx| error_policy(StatefulSet::CONTROLLER, obj.as_ref(), err, &ctx),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let daemonsets = workload_controller(daemonsets, &index.daemonsets, &client, &wc)
        .graceful_shutdown_on(stopped())
        .run(
            workload::reconcile::<DaemonSet>,
            |obj, err, ctx| error_policy(DaemonSet::CONTROLLER, obj.as_ref(), err, &ctx),
            ctx.clone(),
        )
        .for_each(|_| async {});

    tracing::info!("reconcilers started");
    tokio::join!(policies, deployments, statefulsets, daemonsets);
    tracing::info!("reconcilers stopped");
    Ok(())
}

/// Adds to a workload controller the watch that re-reconciles the workloads naming a
/// CorsPolicy when that policy appears, changes or goes away.
fn workload_controller<K: Workload>(
    controller: Controller<K>,
    store: &Store<K>,
    client: &Client,
    wc: &watcher::Config,
) -> Controller<K> {
    let store = store.clone();
    controller.watches(
        Api::<CorsPolicy>::all(client.clone()),
        wc.clone(),
        move |policy| workloads_naming(&store, &policy),
    )
}

/// The workloads in `store` that ask for `policy`.
pub fn workloads_naming<K: Workload>(store: &Store<K>, policy: &CorsPolicy) -> Vec<ObjectRef<K>> {
    let namespace = policy.namespace();
    let name = policy.name_any();
    store
        .state()
        .into_iter()
        .filter(|w| w.namespace() == namespace)
        .filter(|w| workload::desired_policy(w.as_ref()).as_deref() == Some(name.as_str()))
        .map(|w| ObjectRef::from_obj(w.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests;
