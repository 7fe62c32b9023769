//! The reconcilers: CorsPolicy → ConfigMap + status, and workloads → pod template label.
//!
//! [`Caches`] holds one pruned, shared watch per kind for the whole process. [`run`] starts one
//! kube-runtime `Controller` per reconciler over those caches, woken only by the changes that
//! matter to it ([`triggers`]), and stops them all when told to, which is how leader election
//! hands the reconcilers from one replica to another.

pub mod bypassed;
pub mod gate;
pub mod policy;
pub mod pruned;
mod recent;
pub mod shared;
pub mod triggers;
pub mod workload;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::ready;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::Error;
use crate::crd::{CorsPolicy, CorsPolicyStatus};
use crate::metrics::Metrics;
use crate::webhook::InjectConfig;
pub use pruned::WorkloadMeta;
pub use shared::Shared;
pub use triggers::PolicyUsers;
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
    /// The cached ConfigMap `namespace/name` rendered by the controller, if any.
    fn configmap(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>>;
}

/// The process-wide caches: one pruned watch per kind, shared by the reconcilers, the
/// indexes and the admission webhooks' view of the policies.
pub struct Caches {
    pub policies: Shared<CorsPolicy>,
    pub configmaps: Shared<ConfigMap>,
    pub deployments: Shared<WorkloadMeta<Deployment>>,
    pub statefulsets: Shared<WorkloadMeta<StatefulSet>>,
    pub daemonsets: Shared<WorkloadMeta<DaemonSet>>,
    pub users: Arc<PolicyUsers>,
}

impl Caches {
    /// Starts the watches; they run until the returned task set is dropped.
    pub fn start(client: &Client) -> (Arc<Caches>, JoinSet<()>) {
        let mut tasks = JoinSet::new();
        // Lists are paged (kube's 500 per page, which bounds a re-list's memory), so they are
        // read from etcd: kube sends `resourceVersion=0` (the API server's cache) only unpaged.
        let wc = watcher::Config::default();
        let users = Arc::new(PolicyUsers::default());
        let (policies, task) = shared::watch(
            Api::<CorsPolicy>::all(client.clone()),
            wc.clone(),
            pruned::prune_policy,
            |_| {},
        );
        tasks.spawn(task);
        let owned =
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
        let (configmaps, task) = shared::watch(
            Api::<ConfigMap>::all(client.clone()),
            owned,
            pruned::prune_configmap,
            |_| {},
        );
        tasks.spawn(task);
        let (deployments, task) = workload_watch::<Deployment>(client, &wc, &users);
        tasks.spawn(task);
        let (statefulsets, task) = workload_watch::<StatefulSet>(client, &wc, &users);
        tasks.spawn(task);
        let (daemonsets, task) = workload_watch::<DaemonSet>(client, &wc, &users);
        tasks.spawn(task);
        let caches = Caches {
            policies,
            configmaps,
            deployments,
            statefulsets,
            daemonsets,
            users,
        };
        (Arc::new(caches), tasks)
    }

    /// Resolves once every cache has listed its kind.
    pub async fn ready(&self) {
        let (policies, configmaps) = (self.policies.store(), self.configmaps.store());
        let (deployments, statefulsets) = (self.deployments.store(), self.statefulsets.store());
        let daemonsets = self.daemonsets.store();
        let _ = futures::join!(
            policies.wait_until_ready(),
            configmaps.wait_until_ready(),
            deployments.wait_until_ready(),
            statefulsets.wait_until_ready(),
            daemonsets.wait_until_ready(),
        );
    }
}

pub(crate) fn workload_watch<K: Workload>(
    client: &Client,
    wc: &watcher::Config,
    users: &Arc<PolicyUsers>,
) -> (
    Shared<WorkloadMeta<K>>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let users = users.clone();
    shared::watch(
        Api::<WorkloadMeta<K>>::all(client.clone()),
        wc.clone(),
        // Pruned while deserialised: see [`WorkloadMeta`].
        |_| {},
        move |change| users.observe(change),
    )
}

impl Index for Caches {
    fn policy_exists(&self, namespace: &str, name: &str) -> bool {
        self.policies
            .store()
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    fn workloads_using(&self, namespace: &str, name: &str) -> usize {
        self.users.count(namespace, name)
    }

    fn policies_synced(&self) -> bool {
        self.policies
            .store()
            .wait_until_ready()
            .now_or_never()
            .is_some()
    }

    fn configmap(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.configmaps
            .store()
            .get(&ObjectRef::new(name).within(namespace))
    }
}

/// Shared state of every reconciler.
pub struct Context {
    pub client: Client,
    /// Who publishes the Events. Each Event is published through a fresh [`Recorder`]: a kept
    /// one caches every Event it sent for six minutes (for series it never forms here: an
    /// Event is published only when something changed) in a table that never shrinks, 4.4 MB
    /// after the 1,000 first acceptances of the scale benchmark.
    reporter: Reporter,
    pub metrics: Metrics,
    pub index: Arc<dyn Index>,
    backoff: Backoff,
    /// The status last written per CorsPolicy uid in this leadership term: a reconcile that
    /// runs before the watch brought that write back compares with it, not with the stale cache.
    /// Forgotten after a quarter of an hour without a write, when the watch has long caught up.
    written: Mutex<recent::Recent<CorsPolicyStatus>>,
    /// The Warning notes [`Context::publish_once`] sent lately, per object and reason.
    said: Mutex<recent::Recent<String>>,
    /// What the mutating webhook injects, to check a workload's pod template before opting it
    /// in; `None` skips the check (the webhook still refuses such pods one by one).
    inject: Option<InjectConfig>,
    /// Asks whether the API server reaches the webhooks before a write that rolls pods; `None`
    /// writes without asking.
    gate: Option<gate::WebhookGate>,
}

impl Context {
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Metrics,
        index: Arc<dyn Index>,
    ) -> Self {
        Context {
            reporter,
            client,
            metrics,
            index,
            backoff: Backoff::default(),
            written: Mutex::default(),
            said: Mutex::default(),
            inject: None,
            gate: None,
        }
    }

    /// Before a write that rolls pods, checks with a dry run in `namespace` (the controller's
    /// own) that the API server reaches the webhooks.
    pub fn with_webhook_check(mut self, namespace: String) -> Self {
        self.gate = Some(gate::WebhookGate::new(namespace));
        self
    }

    /// Whether a write that rolls pods may go ahead; always, without a check.
    /// Whether the last check found the webhooks out of reach (or one is in flight): no
    /// call is made.
    pub(crate) fn webhook_looks_unreached(&self) -> bool {
        self.gate
            .as_ref()
            .is_some_and(gate::WebhookGate::looks_unreached)
    }

    pub(crate) async fn webhook_reached(&self) -> Result<(), gate::Unreached> {
        match &self.gate {
            Some(gate) => gate.admits(&self.client).await,
            None => Ok(()),
        }
    }

    /// Checks pod templates against `config` before opting workloads in.
    pub fn with_inject(mut self, config: InjectConfig) -> Self {
        self.inject = Some(config);
        self
    }

    /// Whether the webhook is configured to leave the pods of `namespace` alone.
    pub(crate) fn excluded_namespace(&self, namespace: &str) -> bool {
        self.inject
            .as_ref()
            .is_some_and(|config| config.excludes(namespace))
    }

    /// The status this term last wrote for the policy with `uid`, if any.
    pub(crate) fn written_status(&self, uid: &str) -> Option<CorsPolicyStatus> {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.get(uid).cloned()
    }

    /// Remembers the status just written for the policy with `uid`.
    pub(crate) fn wrote_status(&self, uid: &str, status: CorsPolicyStatus) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.insert(uid.to_owned(), status);
    }

    /// Publishes an Event about `obj`; whether it was stored. A failed Event is logged, never
    /// fails the reconcile: the status and the metrics carry the same information.
    pub(crate) async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) -> bool {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1000)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        match recorder.publish(&event, &obj.object_ref(&())).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(%err, reason, "publishing an Event failed");
                false
            }
        }
    }

    /// Publishes a Warning Event about `obj`, unless the same note went out for the same
    /// reason in the last quarter of an hour: the checks behind these notes run again on every
    /// new generation (a scale included) and every retry, while the answer seldom changes. A
    /// standing problem found again later is said again, within the hour that Events live.
    pub(crate) async fn publish_once<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        reason: &'static str,
        note: String,
    ) {
        let key = said_key(obj, reason);
        {
            let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
            if said.get(&key) == Some(&note) {
                return;
            }
            said.insert(key, note.clone());
        }
        self.publish(obj, EventType::Warning, reason, note).await;
    }

    /// Forgets what [`Context::publish_once`] said about `obj` for `reasons`: the problem is
    /// gone, and if it comes back it is news.
    pub(crate) fn forget_said<K: Resource<DynamicType = ()>>(&self, obj: &K, reasons: &[&str]) {
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        for reason in reasons {
            said.remove(&said_key(obj, reason));
        }
    }
}

/// The key of what was said about `obj` for `reason`: its uid, or its place when it has none.
fn said_key<K: Resource<DynamicType = ()>>(obj: &K, reason: &str) -> String {
    let meta = obj.meta();
    match &meta.uid {
        Some(uid) => format!("{uid}/{reason}"),
        None => format!(
            "{}/{}/{reason}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
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
/// reset by the next success, forgotten for an object that is no longer retried (deleted).
#[derive(Default)]
struct Backoff {
    failures: Mutex<recent::Recent<u32>>,
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(300);

    fn next(&self, key: String) -> Duration {
        // The lock is never held across an await: error_policy is synchronous.
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.touch(key, || 0);
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

/// The `error_policy` of every controller: log, count, and retry with per-object backoff, never
/// sooner than the API server asked.
pub fn error_policy<K: Resource>(
    controller: &'static str,
    obj: &K,
    error: &Error,
    ctx: &Context,
) -> Action
where
    K::DynamicType: Default,
{
    // The server's Retry-After, when it gave one, is a floor: retrying sooner only adds load
    // to an API server that is shedding it.
    let backoff = ctx.backoff.next(object_key(obj));
    let delay = error
        .retry_after()
        .map_or(backoff, |server| server.max(backoff));
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

/// Runs every reconciler over `caches` until `stop` becomes true (leadership lost, or
/// shutdown). Nothing is reconciled before every cache has listed, so that nothing is written
/// for want of knowing it is already there.
pub async fn run(
    caches: Arc<Caches>,
    client: Client,
    reporter: Reporter,
    metrics: Metrics,
    inject: InjectConfig,
    webhook_check: Option<String>,
    stop: watch::Receiver<bool>,
) -> crate::Result<()> {
    let stopped = || {
        let mut stop = stop.clone();
        async move {
            // A dropped sender means the process is going away: stop too.
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let mut ctx = Context::new(client, reporter, metrics, caches.clone()).with_inject(inject);
    if let Some(namespace) = webhook_check {
        ctx = ctx.with_webhook_check(namespace);
    }
    let ctx = Arc::new(ctx);

    // Subscribed before waiting, so that nothing between the list and the start is missed.
    let policy_triggers = futures::stream::select_all([
        caches
            .policies
            .subscribe()
            .filter_map(|c| ready(triggers::policy_changed(&c)))
            .boxed(),
        caches
            .configmaps
            .subscribe()
            .filter_map(|c| ready(triggers::configmap_changed(&c)))
            .boxed(),
        names_changed(&caches.deployments),
        names_changed(&caches.statefulsets),
        names_changed(&caches.daemonsets),
    ]);
    let deployments = workload_triggers(&caches, &caches.deployments);
    let statefulsets = workload_triggers(&caches, &caches.statefulsets);
    let daemonsets = workload_triggers(&caches, &caches.daemonsets);

    tokio::select! {
        () = caches.ready() => {}
        () = stopped() => return Ok(()),
    }

    let policies = controller(&caches.policies, policy_triggers)
        .reconcile_all_on(futures::stream::once(ready(())))
        .graceful_shutdown_on(stopped())
        .run(
            policy::reconcile,
            |obj, err, ctx| error_policy(policy::CONTROLLER, obj.as_ref(), err, &ctx),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let deployments = workloads(&caches.deployments, deployments, ctx.clone(), stopped());
    let statefulsets = workloads(&caches.statefulsets, statefulsets, ctx.clone(), stopped());
    let daemonsets = workloads(&caches.daemonsets, daemonsets, ctx.clone(), stopped());

    let bypassed = bypassed::watch(ctx.clone(), stopped());

    tracing::info!("reconcilers started");
    tokio::join!(policies, deployments, statefulsets, daemonsets, bypassed);
    tracing::info!("reconcilers stopped");
    Ok(())
}

/// Reconciles of one controller in flight at once: bounds the connections to the API server
/// (and their buffers) when thousands of objects are reconciled at the start. Measured with
/// the scale benchmark (docs/benchmarks.md): 16 took 9.0-9.2 s to the first full reconcile at
/// 36.5-38.7 MiB, 32 takes 5.2-5.5 s at 38.0-38.3 MiB, 64 takes 3.4-4.0 s at 40.6-42.9 MiB.
const CONCURRENCY: u16 = 32;

/// A controller over a shared cache that reconciles what `triggers` asks for.
fn controller<K>(
    shared: &Shared<K>,
    triggers: impl Stream<Item = ObjectRef<K>> + Send + 'static,
) -> Controller<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    Controller::for_stream(
        futures::stream::pending::<Result<K, watcher::Error>>(),
        shared.store(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
    .reconcile_on(triggers)
}

/// The reconciler of the workloads of kind `K`, until `stop`.
fn workloads<K: Workload>(
    shared: &Shared<WorkloadMeta<K>>,
    triggers: impl Stream<Item = ObjectRef<WorkloadMeta<K>>> + Send + 'static,
    ctx: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl std::future::Future<Output = ()> {
    controller(shared, concerned(shared, triggers))
        .graceful_shutdown_on(stop)
        .run(
            workload::reconcile::<K>,
            |obj, err, ctx| error_policy(K::CONTROLLER, obj.as_ref(), err, &ctx),
            ctx,
        )
        .for_each(|_| async {})
}

/// `triggers`, after the cached workloads of kind `K` that concern Corsair, once each: the
/// start-up pass skips the thousands that neither ask for a policy nor carry anything of ours.
fn concerned<K: Workload>(
    shared: &Shared<WorkloadMeta<K>>,
    triggers: impl Stream<Item = ObjectRef<WorkloadMeta<K>>> + Send + 'static,
) -> impl Stream<Item = ObjectRef<WorkloadMeta<K>>> + Send + 'static {
    let at_start: Vec<ObjectRef<WorkloadMeta<K>>> = shared
        .store()
        .state()
        .iter()
        .filter(|w| workload::Facts::of(w.as_ref()).concerns_us())
        .map(|w| ObjectRef::from_obj(w.as_ref()))
        .collect();
    futures::stream::select(futures::stream::iter(at_start), triggers)
}

/// The policies to reconcile because a workload of kind `K` changed what it names.
fn names_changed<K: Workload>(
    shared: &Shared<WorkloadMeta<K>>,
) -> futures::stream::BoxStream<'static, ObjectRef<CorsPolicy>> {
    shared
        .subscribe()
        .flat_map(|c| futures::stream::iter(triggers::workload_names_changed(&c)))
        .boxed()
}

/// The workloads of kind `K` to reconcile: their own relevant changes, and a policy they name
/// appearing or going away.
fn workload_triggers<K: Workload>(
    caches: &Caches,
    shared: &Shared<WorkloadMeta<K>>,
) -> impl Stream<Item = ObjectRef<WorkloadMeta<K>>> + Send + 'static {
    let own = shared
        .subscribe()
        .filter_map(|c| ready(triggers::workload_changed(&c)));
    let users = caches.users.clone();
    let policies = caches.policies.subscribe().flat_map(move |c| {
        futures::stream::iter(triggers::policy_presence_changed::<K>(&c, &users))
    });
    futures::stream::select(own, policies)
}

#[cfg(test)]
mod tests;
