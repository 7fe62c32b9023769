//! Leader election on a `coordination.k8s.io/v1` Lease, with kube-lease-manager.
//!
//! Every replica serves the webhooks; only the holder of the Lease runs the reconcilers and
//! maintains the webhook certificate. The holder renews the Lease before it expires; when it
//! stops renewing (crash, partition) another replica takes over after `duration` seconds.

use std::time::Duration;

use http::{Method, Request};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::BoxError;

use crate::{Error, Result};

/// Parameters of the election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Name of the Lease object.
    pub name: String,
    /// Namespace of the Lease (the controller's).
    pub namespace: String,
    /// This replica's identity, usually the pod name.
    pub identity: String,
    /// Seconds the Lease is valid without renewal.
    pub duration_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_seconds: u64,
}

/// A running election: `is_leader` follows this replica's state.
pub struct Leadership {
    pub is_leader: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    guard: JoinHandle<()>,
}

impl Leadership {
    /// Joins the election; creates the Lease if it does not exist.
    pub async fn start(client: Client, config: &LeaseConfig) -> Result<Leadership> {
        let manager = LeaseManagerBuilder::new(client.clone(), &config.name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(config.duration_seconds)
            .with_grace(config.grace_seconds)
            // One per replica: a replica takes a free Lease with a server-side apply of its
            // holder, without force, and only another manager's ownership makes the second
            // replica's apply conflict. Under one shared manager both succeeded.
            .with_field_manager(format!("corsair-leader-election-{}", config.identity))
            .build()
            .await
            .map_err(Error::Lease)?;
        let (elected, task) = manager.watch().await;
        let (leading, is_leader) = watch::channel(false);
        let guard = tokio::spawn(renew_deadline(
            Api::namespaced(client, &config.namespace),
            config.clone(),
            elected,
            leading,
        ));
        Ok(Leadership {
            is_leader,
            task,
            guard,
        })
    }

    /// Leaves the election, releasing the Lease if held so that another replica takes over at
    /// once instead of after `duration` seconds.
    pub async fn release(self) -> Result<()> {
        drop(self.is_leader);
        // The guard ends with its last receiver, and drops the election's, which releases.
        let _ = self.guard.await;
        match self.task.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(Error::Lease(err)),
            Err(join) => {
                tracing::warn!(%join, "the leader election task ended abnormally");
                Ok(())
            }
        }
    }
}

/// Leads while the election says so and the Lease, read back, is this replica's and not near
/// its expiry. kube-lease-manager keeps saying "leader" while its renewals fail (it retries
/// with backoff up to 30 s), past the moment another replica may take the Lease: client-go
/// stops leading at a renew deadline instead, and so does this.
///
/// kube-lease-manager renews `grace` seconds before expiry; this steps down half a grace
/// before it, so a renewal that fails stops leading while the others, who take over at expiry
/// by their own clocks, still wait. The Lease is read every quarter of the grace period while
/// elected, and once more just after each renewal is due, so that one on time is seen before
/// the deadline. A read that fails leaves the deadline where the last renewal put it; the
/// deadline is kept at its moment, even with a read in flight. `renewTime` was written by this
/// process, so its own clock is the one to compare it with. A lost election stops leading at
/// once, whatever is in flight, and so does the end of the election.
async fn renew_deadline(
    api: Api<Lease>,
    config: LeaseConfig,
    mut elected: watch::Receiver<bool>,
    leading: watch::Sender<bool>,
) {
    let grace = Duration::from_secs(config.grace_seconds.max(1));
    let every = grace / 4;
    let margin = grace / 2;
    // `elected`: a step-down of its own, to say, rather than the election's.
    let set = |ours: bool, elected: bool| {
        let changed = leading.send_if_modified(|l| std::mem::replace(l, ours) != ours);
        if changed && !ours && elected {
            tracing::warn!(
                "the Lease could not be renewed before its deadline: leading stops until it is"
            );
        }
    };
    // When leading stops, and when the next renewal is due, unless a read shows a later one.
    let mut terms: Option<Terms> = None;
    loop {
        if !*elected.borrow_and_update() {
            terms = None;
            set(false, false);
            tokio::select! {
                () = leading.closed() => return,
                changed = elected.changed() => if changed.is_err() { break },
            }
            continue;
        }
        let now = tokio::time::Instant::now();
        if terms.is_none_or(|t| now >= t.deadline) {
            set(false, true);
        }
        // While leading, a read that takes long must not carry leading past the deadline.
        let leading_until = terms.map(|t| t.deadline).filter(|at| *at > now);
        let past_deadline = async {
            match leading_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = leading.closed() => return,
            changed = elected.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
            () = past_deadline => {}
            read = tokio::time::timeout(every, api.get(&config.name)) => match read {
                Ok(Ok(lease)) => terms = Terms::of(&lease, &config, grace, margin),
                Ok(Err(err)) => tracing::warn!(%err, "cannot read the Lease to confirm leadership"),
                Err(_) => tracing::warn!("reading the Lease to confirm leadership timed out"),
            },
        }
        let now = tokio::time::Instant::now();
        let ours = terms.is_some_and(|t| now < t.deadline);
        set(ours, true);
        let mut next = now + every;
        if let Some(t) = terms.filter(|_| ours) {
            next = next.min(t.deadline);
            // Just after the renewal is due, when it is still to come.
            let after_renewal = t.renewal + RENEWAL_SEEN_AFTER;
            if after_renewal > now {
                next = next.min(after_renewal);
            }
        }
        tokio::select! {
            () = leading.closed() => return,
            () = tokio::time::sleep_until(next) => {}
            changed = elected.changed() => if changed.is_err() { break },
        }
    }
    // The election ended: nobody leads on its word any more.
    leading.send_replace(false);
}

/// How long after a renewal is due the Lease is read to see it.
const RENEWAL_SEEN_AFTER: Duration = Duration::from_millis(100);

/// What a read of the Lease says of this replica's leadership, on this process's monotonic
/// clock.
#[derive(Debug, Clone, Copy)]
struct Terms {
    /// `margin` before the Lease expires by its last renewal: leading stops here.
    deadline: tokio::time::Instant,
    /// When kube-lease-manager renews it, `grace` before it expires.
    renewal: tokio::time::Instant,
}

impl Terms {
    /// `None` when the Lease is not this replica's, or says nothing of when it was renewed.
    fn of(lease: &Lease, config: &LeaseConfig, grace: Duration, margin: Duration) -> Option<Self> {
        let spec = lease.spec.as_ref()?;
        if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
            return None;
        }
        let seconds = spec
            .lease_duration_seconds
            .map_or(config.duration_seconds, |d| u64::try_from(d).unwrap_or(0));
        let expires = spec
            .renew_time
            .as_ref()?
            .0
            .checked_add(Duration::from_secs(seconds))
            .ok()?;
        let left = Timestamp::now().duration_until(expires);
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        let now = tokio::time::Instant::now();
        Some(Terms {
            deadline: now + left.saturating_sub(margin),
            renewal: now + left.saturating_sub(grace),
        })
    }
}

/// A write refused by [`fenced`]: this replica is no longer the leader.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path} refused: this replica is no longer the leader")]
pub struct NotLeader {
    method: Method,
    path: String,
}

/// `client`, but its writes go through only while `leading` is true. The election can take a
/// Lease away in the middle of a reconcile; from that moment every write of this replica fails
/// here, before it reaches the API server, instead of racing the new leader's. Reads (lists,
/// gets, watches) always pass.
pub fn fenced(client: Client, leading: watch::Receiver<bool>) -> Client {
    let namespace = client.default_namespace().to_owned();
    let service = tower::service_fn(move |request: Request<Body>| {
        let client = client.clone();
        let allowed = request.method() == Method::GET || *leading.borrow();
        async move {
            if !allowed {
                return Err(BoxError::from(NotLeader {
                    method: request.method().clone(),
                    path: request.uri().path().to_owned(),
                }));
            }
            client.send(request).await.map_err(BoxError::from)
        }
    });
    Client::new(service, namespace)
}
