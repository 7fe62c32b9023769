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

use std::collections::HashSet;
use std::sync::Mutex;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, watcher};

use super::Context;
use crate::names::{
    INJECT_LABEL, INJECT_LABEL_VALUE, INJECTED_ANNOTATION, POLICY_ANNOTATION, SIDECAR_NAME,
};
use crate::webhook::inject::skip;

/// Reason of the Warning Event on a pod that runs without the proxy.
pub const REASON_PROXY_MISSING: &str = "ProxyMissing";

/// The pods (by uid) said to run without the proxy, and those a re-list has seen so far.
#[derive(Debug, Default)]
pub struct Bypassed {
    said: Mutex<Said>,
}

#[derive(Debug, Default)]
struct Said {
    pods: HashSet<String>,
    /// While the watcher lists again (after a watch expired): the pods of `pods` it has seen.
    relisted: Option<HashSet<String>>,
}

impl Bypassed {
    /// Handles one watch event: a pod without the proxy not said yet gets its Event.
    pub async fn on_event(&self, ctx: &Context, event: watcher::Event<PartialObjectMeta<Pod>>) {
        match event {
            watcher::Event::Init => self.lock().relisted = Some(HashSet::new()),
            watcher::Event::InitDone => {
                let mut said = self.lock();
                if let Some(seen) = said.relisted.take() {
                    // Pods deleted while no watch ran are forgotten.
                    said.pods.retain(|uid| seen.contains(uid));
                }
                ctx.metrics.pods_without_proxy.set(gauge(said.pods.len()));
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    let mut said = self.lock();
                    said.pods.remove(uid);
                    ctx.metrics.pods_without_proxy.set(gauge(said.pods.len()));
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
            let mut said = self.lock();
            if said.pods.contains(uid) {
                if let Some(seen) = said.relisted.as_mut() {
                    seen.insert(uid.clone());
                }
                return;
            }
        }
        let annotated = |key| {
            meta.annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(key))
        };
        // The webhook injects only into pods that name a policy, and marks every one.
        if annotated(INJECTED_ANNOTATION)
            || !annotated(POLICY_ANNOTATION)
            || meta.deletion_timestamp.is_some()
            || ctx.excluded_namespace(namespace)
        {
            return;
        }
        // Rare: read the pod to tell the ones the webhook admits unchanged on purpose.
        let full = match Api::<Pod>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await
        {
            Ok(Some(full)) if full.metadata.uid.as_deref() == Some(uid) => full,
            Ok(_) => return,
            Err(err) => {
                tracing::warn!(%err, namespace, pod = name, "cannot read a pod that may run without the proxy; it is looked at again when it changes");
                return;
            }
        };
        let Some(note) = bypass_note(&full, ctx.excluded_namespace(namespace)) else {
            return;
        };
        {
            let mut said = self.lock();
            said.pods.insert(uid.clone());
            if let Some(seen) = said.relisted.as_mut() {
                seen.insert(uid.clone());
            }
            ctx.metrics.pods_without_proxy.set(gauge(said.pods.len()));
        }
        tracing::warn!(
            namespace,
            pod = name,
            "a pod of an opted-in workload runs without the proxy"
        );
        ctx.publish(&full, EventType::Warning, REASON_PROXY_MISSING, note)
            .await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Said> {
        self.said.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why `pod` runs without the proxy, or `None` when the webhook would have admitted it as it
/// is: it has the proxy, or the webhook leaves it alone on purpose (the host network, an
/// excluded namespace, no policy named; `InjectionSkipped` on its workload says so). The
/// webhook's own rule decides, so the two cannot disagree. A pod the webhook would refuse (a
/// malformed policy name) is said too: it can only run because the webhook was not called.
pub(crate) fn bypass_note(pod: &Pod, excluded_namespace: bool) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let policy = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POLICY_ANNOTATION))
        .map(String::as_str);
    let excluded = excluded_namespace.then_some(namespace);
    if matches!(skip(spec, excluded, policy), Ok(Err(_))) {
        return None;
    }
    Some(format!(
        "this pod carries {INJECT_LABEL}={INJECT_LABEL_VALUE} but runs without the {SIDECAR_NAME} container: \
         the API server admitted it without calling Corsair's injection webhook (webhook.failurePolicy \
         Ignore, while the webhook was unreachable). Its traffic reaches the application without CORS \
         enforcement. Replace it once the webhook is back: `kubectl delete pod -n {ns} {name}` (its \
         controller creates a new one, with the proxy), or `kubectl rollout restart` its workload",
        ns = namespace,
        name = pod.metadata.name.as_deref().unwrap_or_default(),
    ))
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Watches the metadata of labelled pods in every namespace until `stop`, saying the ones
/// without the proxy. A watch that fails is retried with kube's default backoff.
pub async fn watch(ctx: std::sync::Arc<Context>, stop: impl std::future::Future<Output = ()>) {
    // An `Api` of `PartialObjectMeta` asks for metadata only.
    let api = Api::<PartialObjectMeta<Pod>>::all(ctx.client.clone());
    let selector = format!("{INJECT_LABEL}={INJECT_LABEL_VALUE}");
    let bypassed = Bypassed::default();
    let events = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .filter_map(|event| async move {
            event
                .inspect_err(|err| tracing::warn!(%err, "watching labelled pods"))
                .ok()
        });
    let run = events.for_each(|event| bypassed.on_event(&ctx, event));
    tokio::select! {
        () = run => {}
        () = stop => {}
    }
}

#[cfg(test)]
mod tests;
