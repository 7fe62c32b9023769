//! One watch per kind, shared by every controller and index of the process.
//!
//! [`watch`] lists and watches one kind, prunes each object before it is stored, and tells every
//! subscriber what changed as a [`Change`]: the cached object before and after. Subscribers turn
//! changes into reconcile requests through predicates (see [`super::triggers`]), so that a
//! Deployment's status or image moving wakes nothing. A re-list (after a watch expired, say)
//! is compared with the cache it replaces, so it reports only what really differs.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// What one watch event changed in the cache.
#[derive(Debug)]
pub struct Change<K> {
    /// The cached object before the event; `None` when it is new.
    pub old: Option<Arc<K>>,
    /// The cached object after the event; `None` when it was deleted.
    pub new: Option<Arc<K>>,
}

type Subscribers<K> = Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<Change<K>>>>>>;

/// The process-wide cache of one kind, and the changes to it.
pub struct Shared<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    subscribers: Subscribers<K>,
}

impl<K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static> Shared<K> {
    /// The cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every change from now on. Dropping the stream unsubscribes.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<Change<K>>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded();
        lock(&self.subscribers).push(tx);
        rx
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Never held across an await; a panic while held leaves a usable list.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches `api` with `config`, storing each object after `prune`; `observe` sees every change
/// before the subscribers do (it keeps the indexes in step with the cache). Returns the shared
/// cache and the future that drives the watch, to be spawned; it retries failures with backoff
/// and ends only when dropped.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    prune: fn(&mut K),
    mut observe: impl FnMut(&Change<K>) + Send + 'static,
) -> (Shared<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (store, mut writer) = reflector::store::<K>();
    let subscribers: Subscribers<K> = Arc::default();
    let shared = Shared {
        store: store.clone(),
        subscribers: subscribers.clone(),
    };
    let kind = K::kind(&()).into_owned();
    let driver = async move {
        let events = watcher::watcher(api, config)
            .default_backoff()
            .modify(prune);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    tracing::warn!(kind, %err, "watch failed; retrying");
                    continue;
                }
            };
            for change in apply(&mut writer, &store, &event) {
                observe(&change);
                let change = Arc::new(change);
                lock(&subscribers).retain(|tx| tx.unbounded_send(change.clone()).is_ok());
            }
        }
    };
    (shared, driver)
}

/// Applies `event` to the cache and says what changed.
fn apply<K>(
    writer: &mut reflector::store::Writer<K>,
    store: &Store<K>,
    event: &Event<K>,
) -> Vec<Change<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    match event {
        Event::Apply(obj) | Event::Delete(obj) => {
            let key = ObjectRef::from_obj(obj);
            let old = store.get(&key);
            writer.apply_watcher_event(event);
            vec![Change {
                old,
                new: store.get(&key),
            }]
        }
        Event::Init | Event::InitApply(_) => {
            writer.apply_watcher_event(event);
            Vec::new()
        }
        Event::InitDone => {
            let mut before: HashMap<ObjectRef<K>, Arc<K>> = store
                .state()
                .into_iter()
                .map(|obj| (ObjectRef::from_obj(obj.as_ref()), obj))
                .collect();
            writer.apply_watcher_event(event);
            let mut changes: Vec<Change<K>> = store
                .state()
                .into_iter()
                .map(|new| Change {
                    old: before.remove(&ObjectRef::from_obj(new.as_ref())),
                    new: Some(new),
                })
                .collect();
            changes.extend(before.into_values().map(|old| Change {
                old: Some(old),
                new: None,
            }));
            changes
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn cm(name: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            data: Some([("k".to_owned(), value.to_owned())].into()),
            ..ConfigMap::default()
        }
    }

    fn summary(changes: &[Change<ConfigMap>]) -> Vec<(Option<String>, Option<String>)> {
        let value = |c: &Option<Arc<ConfigMap>>| {
            c.as_ref().and_then(|c| c.data.as_ref()?.get("k").cloned())
        };
        let mut out: Vec<_> = changes
            .iter()
            .map(|c| (value(&c.old), value(&c.new)))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_relist_reports_additions_deletions_and_the_objects_it_replaces() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let mut feed = |event: Event<ConfigMap>| apply(&mut writer, &store, &event);
        assert!(feed(Event::Init).is_empty());
        assert!(feed(Event::InitApply(cm("a", "1"))).is_empty());
        assert!(feed(Event::InitApply(cm("b", "1"))).is_empty());
        let first = feed(Event::InitDone);
        assert_eq!(
            summary(&first),
            vec![(None, Some("1".into())), (None, Some("1".into()))]
        );
        let update = feed(Event::Apply(cm("a", "2")));
        assert_eq!(summary(&update), vec![(Some("1".into()), Some("2".into()))]);
        // The watch expired: a re-list without b, with a unchanged and c new.
        feed(Event::Init);
        feed(Event::InitApply(cm("a", "2")));
        feed(Event::InitApply(cm("c", "1")));
        let relist = feed(Event::InitDone);
        assert_eq!(
            summary(&relist),
            vec![
                (None, Some("1".into())),
                (Some("1".into()), None),
                (Some("2".into()), Some("2".into())),
            ]
        );
        let delete = feed(Event::Delete(cm("a", "2")));
        assert_eq!(summary(&delete), vec![(Some("2".into()), None)]);
    }
}
