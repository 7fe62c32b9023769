//! Leader election on a `coordination.k8s.io/v1` Lease, with kube-lease-manager.
//!
//! Every replica serves the webhooks; only the holder of the Lease runs the reconcilers and
//! maintains the webhook certificate. The holder renews the Lease before it expires; when it
//! stops renewing (crash, partition) another replica takes over after `duration` seconds.

use http::{Method, Request};
use kube::Client;
use kube::client::Body;
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
}

impl Leadership {
    /// Joins the election; creates the Lease if it does not exist.
    pub async fn start(client: Client, config: &LeaseConfig) -> Result<Leadership> {
        let manager = LeaseManagerBuilder::new(client, &config.name)
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
        let (is_leader, task) = manager.watch().await;
        Ok(Leadership { is_leader, task })
    }

    /// Leaves the election, releasing the Lease if held so that another replica takes over at
    /// once instead of after `duration` seconds.
    pub async fn release(self) -> Result<()> {
        drop(self.is_leader);
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
