//! Pods that carry the opt-in label but run without the proxy.
//!
//! With `failurePolicy: Ignore`, a pod created while the API server cannot reach the injection
//! webhook (every controller replica down, a NetworkPolicy, a certificate gone stale) is
//! admitted unchanged. Its workload counts as opted in and is never rolled again, so such a pod
//! serves without CORS enforcement until it is replaced, and nothing else tells. The leader
//! watches the metadata of the pods that carry the opt-in label, the only ones the webhook
//! injects into, and says each pod without the proxy once: a Warning Event on the pod, and the
//! gauge `corsair_controller_pods_without_proxy`. It changes nothing itself: deleting a serving
//! pod is the owner's call.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;

use super::Context;
use crate::names::{
    INJECT_LABEL, INJECT_LABEL_VALUE, INJECTED_ANNOTATION, MIRROR_ANNOTATION, POLICY_ANNOTATION,
    SIDECAR_NAME,
};
use crate::webhook::inject::skip;

/// What the watch brings of a pod.
type Meta = PartialObjectMeta<Pod>;

/// Reason of the Warning Event on a pod that runs without the proxy.
pub const REASON_PROXY_MISSING: &str = "ProxyMissing";

/// How often the pods said are looked at again: gone or finished ones leave the gauge, and an
/// Event that failed is sent again.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// After how long a pod still without the proxy is said again: Events expire after an hour.
pub const SAY_AGAIN_AFTER: Duration = Duration::from_secs(45 * 60);

/// What the leader knows of the labelled pods, by uid.
#[derive(Debug, Default)]
pub struct Bypassed {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Pods found without the proxy, in uid order (a sweep reads them in that order).
    said: BTreeMap<String, Said>,
    /// Pods looked at that the webhook admits as they are (the host network, the proxy
    /// already there, finished): a pod's containers do not change, so they are not read again.
    cleared: HashSet<String>,
    /// Pods to look at whose read failed: the next sweep reads them again (a pod that runs on
    /// unchanged sends no event that would).
    pending: BTreeMap<String, PartialObjectMeta<Pod>>,
    /// While the watcher lists again (after a watch expired): the pods it has seen so far.
    relisted: Option<HashSet<String>>,
}

#[derive(Debug)]
struct Said {
    pod: PartialObjectMeta<Pod>,
    note: String,
    /// When the Event went out; `None` while it has not.
    at: Option<Instant>,
}

impl Bypassed {
    /// Handles one watch event: a pod without the proxy not said yet gets its Event.
    pub async fn on_event(&self, ctx: &Context, event: watcher::Event<PartialObjectMeta<Pod>>) {
        match event {
            watcher::Event::Init => self.lock().relisted = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let mut state = self.lock();
                if let Some(seen) = state.relisted.take() {
                    // Pods deleted while no watch ran are forgotten.
                    state.said.retain(|uid, _| seen.contains(uid));
                    state.cleared.retain(|uid| seen.contains(uid));
                    state.pending.retain(|uid, _| seen.contains(uid));
                }
                state.count(ctx);
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    let mut state = self.lock();
                    state.said.remove(uid);
                    state.cleared.remove(uid);
                    state.pending.remove(uid);
                    state.count(ctx);
                }
            }
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                self.applied(ctx, pod).await;
            }
        }
    }

    async fn applied(&self, ctx: &Context, pod: PartialObjectMeta<Pod>) {
        let meta = &pod.metadata;
        let (Some(uid), Some(namespace), Some(name)) = (&meta.uid, &meta.namespace, &meta.name)
        else {
            return;
        };
        {
            let mut state = self.lock();
            if let Some(seen) = state.relisted.as_mut() {
                seen.insert(uid.clone());
            }
            if state.said.contains_key(uid) || state.cleared.contains(uid) {
                return;
            }
        }
        let annotated = |key| {
            meta.annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(key))
        };
        // The webhook injects only into pods that name a policy and mirror no static pod, and
        // marks every one.
        if annotated(INJECTED_ANNOTATION)
            || !annotated(POLICY_ANNOTATION)
            || annotated(MIRROR_ANNOTATION)
            || meta.deletion_timestamp.is_some()
            || ctx.excluded_namespace(namespace)
        {
            return;
        }
        // Rare: read the pod to tell the ones the webhook admits unchanged on purpose.
        let full = match read(ctx, namespace, name, uid).await {
            Read::Found(full) => full,
            Read::Gone => return,
            Read::Failed => {
                self.lock().pending.insert(uid.clone(), pod);
                return;
            }
        };
        self.lock().pending.remove(uid);
        let Some(note) = bypass_note(&full, ctx.excluded_namespace(namespace)) else {
            self.lock().cleared.insert(uid.clone());
            return;
        };
        tracing::warn!(
            namespace,
            pod = name,
            "a pod of an opted-in workload runs without the proxy"
        );
        {
            let mut state = self.lock();
            let said = Said {
                pod: pod.clone(),
                note: note.clone(),
                at: None,
            };
            state.said.insert(uid.clone(), said);
            state.count(ctx);
        }
        self.say(ctx, uid, &pod, note, Instant::now()).await;
    }

    /// Publishes the Warning about pod `uid`, and remembers `now` as its time if it went out.
    async fn say(&self, ctx: &Context, uid: &str, pod: &Meta, note: String, now: Instant) {
        if ctx
            .publish(pod, EventType::Warning, REASON_PROXY_MISSING, note)
            .await
            && let Some(said) = self.lock().said.get_mut(uid)
        {
            said.at = Some(now);
        }
    }

    /// Reads each pod said again: one gone or finished leaves the count, one still running
    /// is said again when its Event failed or is older than [`SAY_AGAIN_AFTER`]; one that
    /// cannot be read stays as it is. Pods whose first read failed are looked at again.
    pub async fn sweep(&self, ctx: &Context) {
        self.sweep_at(ctx, Instant::now()).await;
    }

    /// [`Bypassed::sweep`] as if it were `now`.
    async fn sweep_at(&self, ctx: &Context, now: Instant) {
        // Taken first: a pending pod said below was just read.
        let (pending, said) = {
            let state = self.lock();
            let pending: Vec<Meta> = state.pending.values().cloned().collect();
            let said: Vec<(String, Meta)> = state
                .said
                .iter()
                .map(|(uid, said)| (uid.clone(), said.pod.clone()))
                .collect();
            (pending, said)
        };
        for pod in pending {
            self.applied(ctx, pod).await;
        }
        for (uid, pod) in said {
            let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name)
            else {
                continue;
            };
            let still = match read(ctx, namespace, name, &uid).await {
                Read::Found(full) => {
                    bypass_note(&full, ctx.excluded_namespace(namespace)).is_some()
                }
                Read::Gone => false,
                // Kept, and said again when due: an API server in trouble is no news that
                // the pod got the proxy.
                Read::Failed => true,
            };
            let due = {
                let mut state = self.lock();
                if !still {
                    state.said.remove(&uid);
                    state.cleared.insert(uid.clone());
                    state.count(ctx);
                    continue;
                }
                state.said.get(&uid).and_then(|said| {
                    let due = said
                        .at
                        .is_none_or(|at| now.saturating_duration_since(at) >= SAY_AGAIN_AFTER);
                    due.then(|| said.note.clone())
                })
            };
            if let Some(note) = due {
                self.say(ctx, &uid, &pod, note, now).await;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn count(&self, ctx: &Context) {
        let n = i64::try_from(self.said.len()).unwrap_or(i64::MAX);
        ctx.metrics.pods_without_proxy.set(n);
    }
}

/// What a read of a pod found.
enum Read {
    /// The pod, still the one with the uid asked for.
    Found(Box<Pod>),
    /// Gone, or replaced under the same name.
    Gone,
    /// The API server did not answer (logged): nothing is known.
    Failed,
}

/// How long a read of one pod may take: kube's client sets no read timeout of its own.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn read(ctx: &Context, namespace: &str, name: &str, uid: &str) -> Read {
    let api = Api::<Pod>::namespaced(ctx.client.clone(), namespace);
    match tokio::time::timeout(READ_TIMEOUT, api.get_opt(name)).await {
        Ok(Ok(Some(full))) if full.metadata.uid.as_deref() == Some(uid) => {
            Read::Found(Box::new(full))
        }
        Ok(Ok(_)) => Read::Gone,
        Ok(Err(err)) => {
            tracing::warn!(%err, namespace, pod = name, "cannot read a pod that may run without the proxy; the next sweep reads it again");
            Read::Failed
        }
        Err(_) => {
            tracing::warn!(namespace, pod = name, timeout = ?READ_TIMEOUT, "reading a pod that may run without the proxy timed out; the next sweep reads it again");
            Read::Failed
        }
    }
}

/// Why `pod` runs without the proxy, or `None` when the webhook would have admitted it as it
/// is: it has the proxy, or the webhook leaves it alone on purpose (the host network, an
/// excluded namespace, no policy named, a static pod's mirror; `InjectionSkipped` on its
/// workload says so for the first two), or it has
/// finished or is going away. The webhook's own rule decides, so the two cannot disagree. A pod the webhook
/// would refuse (a malformed policy name) is said too: it can only run because the webhook was
/// not called.
pub(crate) fn bypass_note(pod: &Pod, excluded_namespace: bool) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| matches!(phase, "Succeeded" | "Failed"));
    if finished || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let excluded = excluded_namespace.then_some(namespace);
    if matches!(skip(&pod.metadata, spec, excluded), Ok(Err(_))) {
        return None;
    }
    Some(format!(
        "this pod carries {INJECT_LABEL}={INJECT_LABEL_VALUE} and names a CorsPolicy but runs without the \
         {SIDECAR_NAME} container: Corsair's injection webhook was not called when it was created \
         (webhook.failurePolicy Ignore while the webhook was unreachable), or the pod predates its \
         opt-in (its policy annotation added to the running pod, its namespace taken off the excluded \
         list). Its traffic reaches the application without CORS enforcement. Replace it once the webhook is back: `kubectl delete pod -n {namespace} {name}` \
         (a workload's controller creates a new one, with the proxy; a bare pod must be created \
         again), or `kubectl rollout restart` its workload",
        name = pod.metadata.name.as_deref().unwrap_or_default(),
    ))
}

/// Watches the metadata of labelled pods in every namespace until `stop`, saying the ones
/// without the proxy and looking at them again every [`SWEEP_INTERVAL`]. A watch that fails
/// is retried with kube's default backoff. The gauge is zeroed at the end: only the leader's
/// counts.
pub async fn watch(ctx: std::sync::Arc<Context>, stop: impl std::future::Future<Output = ()>) {
    // An `Api` of `PartialObjectMeta` asks for metadata only. The list is paged, so it is
    // read from etcd: kube leaves out `resourceVersion=0` (the API server's cache) when it
    // pages.
    let api = Api::<PartialObjectMeta<Pod>>::all(ctx.client.clone());
    let selector = format!("{INJECT_LABEL}={INJECT_LABEL_VALUE}");
    let config = watcher::Config::default().labels(&selector);
    let forbidden_said = AtomicBool::new(false);
    let mut events = watcher(api, config).default_backoff().boxed();
    let bypassed = Bypassed::default();
    let mut sweeps = tokio::time::interval_at(Instant::now() + SWEEP_INTERVAL, SWEEP_INTERVAL);
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    // Each step races the stop too: a sweep is one read per pod said, and a leader that lost
    // its Lease must not wait for it.
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = sweeps.tick() => tokio::select! {
                () = &mut stop => break,
                () = bypassed.sweep(&ctx) => {}
            },
            event = events.next() => match event {
                Some(Ok(event)) => tokio::select! {
                    () = &mut stop => break,
                    () = bypassed.on_event(&ctx, event) => {}
                },
                Some(Err(err)) if forbidden(&err) => {
                    if !forbidden_said.swap(true, Ordering::Relaxed) {
                        tracing::error!(%err, "the controller may not list pods (a ClusterRole of an older release?): pods running without the proxy are not looked for");
                    }
                }
                Some(Err(err)) => tracing::warn!(%err, "watching labelled pods"),
                None => break,
            },
        }
    }
    ctx.metrics.pods_without_proxy.set(0);
}

/// Whether the watch failed on RBAC.
fn forbidden(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.is_forbidden(),
        watcher::Error::WatchError(status) => status.is_forbidden(),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
