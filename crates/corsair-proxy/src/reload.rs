//! Hot reload of the policy file.
//!
//! The parent directory is watched, not the file: Kubernetes updates a ConfigMap volume by
//! writing a new timestamped directory and atomically swapping the `..data` symlink, so the
//! file's own inode never changes and a watch on it would miss the update. Filesystem events
//! only trigger a check; a poll every `interval` catches whatever notifications miss (network
//! filesystems, overlay quirks, an inotify limit). A check compares the file's content with the
//! last content seen, so repeated events cost one small read.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::policy::{ActivePolicy, PolicyStore};

/// How long a policy file must stay missing to count as removed. A read during the kubelet's
/// swap can miss it once (`..data` resolved to the old directory just as that is deleted).
const REMOVAL_CONFIRMATION: Duration = Duration::from_secs(1);

pub struct Reloader {
    store: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    /// Content of the file at the last check (`None`: absent), valid or not.
    last_seen: Option<Vec<u8>>,
    /// Why the file could not be read at the last check, if it could not (a permission
    /// denied, a directory in its place): reported once, not at every poll.
    unreadable: Option<String>,
}

impl Reloader {
    /// Sets up the watcher and returns the task to spawn; it ends when `shutdown` fires.
    /// A watcher that cannot be set up (no inotify instances left, the directory missing) is
    /// logged and the task relies on polling alone.
    pub fn start(
        store: Arc<PolicyStore>,
        metrics: Arc<Metrics>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let dir = watch_dir(store.path());
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Any change in the directory may be the swap; a full channel means a check is
            // already pending, which will see this change too.
            if event.is_ok_and(|event| may_change_content(&event.kind)) {
                let _ = tx.try_send(());
            }
        })
        .and_then(|mut watcher| {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        })
        .inspect_err(|err| {
            tracing::warn!(
                dir = %dir.display(),
                error = %err,
                poll_interval = ?interval,
                "cannot watch the policy directory; relying on polling"
            );
        })
        .ok();
        let last_seen = store.current().raw.clone();
        // A file the start could not read is already counted as refused: the same error at the
        // first poll is not news.
        let unreadable = store
            .refused()
            .and_then(|why| crate::policy::unreadable_error(&why).map(str::to_owned));
        let mut reloader = Reloader {
            store,
            metrics,
            last_seen,
            unreadable,
        };
        async move {
            // Keep the watcher alive as long as the task.
            let _watcher = watcher;
            // A zero interval (a library caller's config) would panic in `interval`. The first
            // poll comes one interval in: the file was just read.
            let interval = interval.max(Duration::from_millis(1));
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    _ = ticker.tick() => {}
                    Some(()) = rx.recv() => {}
                }
                // Nothing changes before the check's last await: a shutdown may cut it short
                // (a removal is not applied while the proxy drains).
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    () = reloader.check() => {}
                }
            }
        }
    }

    /// Reads the file and applies it if it changed and is valid. A file gone counts only once
    /// it has stayed gone for [`REMOVAL_CONFIRMATION`].
    async fn check(&mut self) {
        let path = self.store.path().to_owned();
        let Ok(mut content) = self.read(&path).await else {
            return;
        };
        if content.is_none() && self.last_seen.is_some() {
            tokio::time::sleep(REMOVAL_CONFIRMATION).await;
            let Ok(again) = self.read(&path).await else {
                return;
            };
            content = again;
        }
        if self.unreadable.take().is_some() {
            if content.is_some() {
                tracing::info!(policy = %path.display(), "the policy file can be read again");
            }
            let current = self.store.current();
            // The deny-all policy of a file refused at start keeps that file's bytes too.
            if content.is_some() && content == current.raw && current.document.is_some() {
                // Readable again, and what is enforced: nothing on disk is refused.
                self.refused(None);
            } else {
                // Forget what was seen, so that what is there now is looked at again, even
                // bytes seen before: its refusal or its removal replaces the read error.
                self.last_seen = if content.is_some() {
                    None
                } else {
                    Some(Vec::new())
                };
            }
        }
        if content == self.last_seen {
            return;
        }
        self.last_seen = content.clone();
        let Some(raw) = content else {
            self.removed(&path);
            return;
        };
        match ActivePolicy::parse(&path, raw) {
            Ok(policy) => {
                let generation = policy.generation();
                self.store.replace(policy);
                self.metrics.reload_ok(generation);
                self.refused(None);
                tracing::info!(policy = %path.display(), generation, "policy reloaded");
            }
            Err(err) => {
                self.metrics.reload_failed();
                tracing::error!(error = %err, "new policy refused; keeping the last good policy");
                self.refused(Some(err.to_string().into()));
            }
        }
    }

    /// Records why the file on disk is refused (`None`: it is not), for `/policy` and the gauge.
    fn refused(&self, why: Option<std::sync::Arc<str>>) {
        self.metrics.set_file_refused(why.is_some());
        self.store.set_refused(why);
    }

    /// The file is gone. With `--allow-missing-policy` (what the webhook sets) that is the
    /// state a proxy starting now would see, its ConfigMap deleted: allow no origin, so that
    /// old and new pods of a workload agree. Without it a missing file is an operator's
    /// mistake, and the last good policy stays.
    fn removed(&self, path: &Path) {
        // A refused file that is gone is no longer refused, whatever becomes active.
        self.refused(None);
        if !self.store.allows_missing() {
            tracing::warn!(policy = %path.display(), "policy file disappeared; keeping the last good policy");
            return;
        }
        match ActivePolicy::deny_all() {
            Ok(policy) => {
                self.store.replace(policy);
                self.metrics.set_generation(0);
                tracing::warn!(
                    policy = %path.display(),
                    "policy file removed (its ConfigMap deleted?); allowing no origin until it comes back"
                );
            }
            Err(err) => {
                self.metrics.reload_failed();
                tracing::error!(error = %err, "keeping the last good policy");
            }
        }
    }

    /// The file's content, `None` when it does not exist; `Err` when it cannot be read, which
    /// is reported once per cause.
    async fn read(&mut self, path: &Path) -> Result<Option<Vec<u8>>, ()> {
        match tokio::fs::read(path).await {
            Ok(raw) => Ok(Some(raw)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => {
                let error = err.to_string();
                if self.unreadable.as_ref() != Some(&error) {
                    self.metrics.reload_failed();
                    self.refused(Some(format!("cannot read the file: {error}").into()));
                    tracing::error!(
                        policy = %path.display(),
                        %error,
                        "cannot read the policy file; keeping the last good policy"
                    );
                    self.unreadable = Some(error);
                }
                Err(())
            }
        }
    }
}

/// Runs the task `make` builds until it ends, building and running it again when it panics
/// (after `on_panic` and a second's pause): a reloader that died would leave the proxy
/// enforcing an old policy while `/healthz` stays green.
pub async fn supervised<F, Fut>(what: &'static str, make: F, on_panic: impl Fn())
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(make()).await {
            Err(err) if err.is_panic() => {
                on_panic();
                tracing::error!(task = what, "the task panicked; starting it again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => return,
        }
    }
}

/// Whether an event can mean new content. inotify also reports opens (notify watches
/// `IN_OPEN`), and the check itself opens the file: reacting to those made each check trigger
/// the next, re-reading the policy thousands of times a second. A reader closing the file
/// changes nothing either; a writer closing it does. A write in place (an editor that does not
/// rename, `>` in a shell) is looked at when its writer closes the file, not at each write,
/// where the check read it truncated or half written. (Where the platform reports no close,
/// the poll sees such a write.)
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Data(_)) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
    }
}

/// The directory to watch: the parent of the policy file, or `.` for a bare file name.
fn watch_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};

    use super::may_change_content;

    #[test]
    fn reading_the_policy_does_not_trigger_a_check() {
        let ignored = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
            // Each write of a writer in place: its close is the event.
            EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any)),
        ];
        for kind in ignored {
            assert!(!may_change_content(&kind), "{kind:?} should be ignored");
        }
    }

    /// A reloader task that panics is started again, and counted; one that ends is not.
    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_started_again() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let runs = std::sync::Arc::new(AtomicUsize::new(0));
        let panics = AtomicUsize::new(0);
        let make = || {
            let runs = runs.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("a reloader bug");
                }
            }
        };
        super::supervised("test", make, || {
            panics.fetch_add(1, Ordering::SeqCst);
        })
        .await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "two panics, then a clean end"
        );
        assert_eq!(panics.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn writes_and_the_configmap_swap_trigger_a_check() {
        let relevant = [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            // A permission fixed on an unreadable file.
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
            EventKind::Remove(RemoveKind::Any),
            EventKind::Any,
            EventKind::Other,
        ];
        for kind in relevant {
            assert!(may_change_content(&kind), "{kind:?} should trigger a check");
        }
    }
}
