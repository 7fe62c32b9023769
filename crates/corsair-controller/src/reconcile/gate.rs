//! Whether the API server reaches the webhooks, asked before a write that rolls a workload's
//! pods. With `failurePolicy: Ignore`, a pod created while the API server cannot call the
//! injection webhook is admitted without the proxy, and nothing rolls it again: at a fresh
//! install over workloads annotated beforehand (GitOps applies both at once), the leader would
//! otherwise start their rollouts seconds before its Service has a ready endpoint and the
//! webhook configurations their `caBundle`.
//!
//! The question is put the way the API server meets the webhooks: a dry-run create of a
//! CorsPolicy that the CRD's schema admits and only the validating webhook refuses (a port out
//! of range), in the controller's own namespace. The validating and the injecting webhook share
//! the Service, the server and the `caBundle`'s source. Nothing is stored.

use std::time::Duration;

use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use tokio::time::Instant;

use crate::crd::CorsPolicy;
use crate::names::WORKLOAD_MANAGER;

/// Name of the dry-run CorsPolicy.
pub const CHECK_NAME: &str = "corsair-webhook-check";
/// Its one origin: past the CRD's pattern, refused by the webhook (`99999` is not a port).
pub const CHECK_ORIGIN: &str = "https://webhook-check.corsair.invalid:99999";
/// The validating webhook's name, as the API server quotes it in a denial.
const VALIDATING_WEBHOOK: &str = "validate.corsair.dev";

/// How long an answer holds before the next write asks again. A reached webhook is asked again
/// after a minute, so that a rollout started later does not trust an old answer for long; one
/// not reached, after a few seconds, which is about when the workloads waiting for it retry.
const REACHED_HOLDS: Duration = Duration::from_secs(60);
const NOT_REACHED_HOLDS: Duration = Duration::from_secs(5);
const UNCHECKED_HOLDS: Duration = Duration::from_secs(60);

/// What the API server did with the dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The validating webhook answered it.
    Reached,
    /// The API server did not reach the webhook, or the check failed for a reason that may
    /// pass (throttling, a server error, the connection): why, in the API server's words.
    NotReached(String),
    /// The check cannot be made (no right to create CorsPolicies: the RBAC of an older
    /// release): the write goes ahead as it did before this check existed, and the webhook
    /// still judges each pod.
    Unchecked(String),
}

/// The last answer and how long the webhook has been out of reach.
#[derive(Debug, Default)]
struct State {
    last: Option<(Instant, Verdict)>,
    unreached_since: Option<Instant>,
}

/// One check at a time for all the reconcilers, its answer shared while it holds: a thousand
/// workloads waiting at start make one dry run every few seconds, not a thousand.
#[derive(Debug)]
pub(crate) struct WebhookGate {
    namespace: String,
    state: tokio::sync::Mutex<State>,
}

/// The webhook is out of reach: why, and for how long so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unreached {
    pub why: String,
    pub since: Duration,
}

impl WebhookGate {
    /// A gate that makes its dry runs in `namespace`, the controller's own.
    pub(crate) fn new(namespace: String) -> Self {
        WebhookGate {
            namespace,
            state: tokio::sync::Mutex::default(),
        }
    }

    /// `Ok` when a write that rolls pods may go ahead: the webhook was reached, or could not be
    /// checked. While another reconcile's check is in flight (up to the webhooks' timeout, 30 s
    /// at most), the answer is "not yet", at once: reconcilers are not held waiting for it.
    pub(crate) async fn admits(&self, client: &Client) -> Result<(), Unreached> {
        let Ok(mut state) = self.state.try_lock() else {
            return Err(Unreached {
                why: "a check is in flight".to_owned(),
                since: Duration::ZERO,
            });
        };
        let fresh = state.last.as_ref().filter(|(at, verdict)| {
            let holds = match verdict {
                Verdict::Reached => REACHED_HOLDS,
                Verdict::NotReached(_) => NOT_REACHED_HOLDS,
                Verdict::Unchecked(_) => UNCHECKED_HOLDS,
            };
            at.elapsed() < holds
        });
        let verdict = match fresh {
            Some((_, verdict)) => verdict.clone(),
            None => {
                let verdict = self.check(client).await;
                match &verdict {
                    Verdict::Reached => tracing::debug!("the API server reaches the webhook"),
                    Verdict::NotReached(why) => {
                        tracing::info!(
                            why,
                            "the API server does not reach the webhook yet: rollouts wait"
                        )
                    }
                    Verdict::Unchecked(why) => tracing::warn!(
                        why,
                        "cannot check that the API server reaches the webhook; opting workloads in unchecked"
                    ),
                }
                state.last = Some((Instant::now(), verdict.clone()));
                verdict
            }
        };
        match verdict {
            Verdict::NotReached(why) => {
                let since = *state.unreached_since.get_or_insert_with(Instant::now);
                Err(Unreached {
                    why,
                    since: since.elapsed(),
                })
            }
            Verdict::Reached | Verdict::Unchecked(_) => {
                state.unreached_since = None;
                Ok(())
            }
        }
    }

    /// Whether the last check found the webhook out of reach, however long ago, or a check is
    /// in flight.
    pub(crate) fn looks_unreached(&self) -> bool {
        self.state
            .try_lock()
            .map_or(true, |state| state.unreached_since.is_some())
    }

    /// One dry run, read.
    async fn check(&self, client: &Client) -> Verdict {
        let spec = match serde_json::from_value(json!({ "allowOrigins": [CHECK_ORIGIN] })) {
            Ok(spec) => spec,
            Err(err) => return Verdict::Unchecked(format!("the check's policy: {err}")),
        };
        let api: Api<CorsPolicy> = Api::namespaced(client.clone(), &self.namespace);
        let params = PostParams {
            dry_run: true,
            field_manager: Some(WORKLOAD_MANAGER.to_owned()),
        };
        read(
            api.create(&params, &CorsPolicy::new(CHECK_NAME, spec))
                .await,
        )
    }
}

/// What the answer to the dry run says about the webhook.
fn read(answer: Result<CorsPolicy, kube::Error>) -> Verdict {
    match answer {
        Err(kube::Error::Api(status))
            if status.message.contains(VALIDATING_WEBHOOK)
                && status.message.contains("denied the request") =>
        {
            Verdict::Reached
        }
        // `failurePolicy: Fail`: the API server's own words, which name the cause (no endpoints,
        // a certificate signed by an unknown authority, a timeout).
        Err(kube::Error::Api(status)) if status.message.contains("failed calling webhook") => {
            Verdict::NotReached(status.message.clone())
        }
        // Lasting, and a matter of configuration: say it and go on as before the check.
        Err(kube::Error::Api(status)) if status.code == 403 => Verdict::Unchecked(format!(
            "no right to create CorsPolicy {CHECK_NAME} as a dry run (the Role of an older \
             release?): {}",
            status.message
        )),
        // Anything else may pass: a rollout waits for it rather than risk pods without the
        // proxy, and the workload hears the cause if it lasts.
        Err(kube::Error::Api(status)) => Verdict::NotReached(format!(
            "the dry-run create of CorsPolicy {CHECK_NAME} was answered {} {}: {}",
            status.code, status.reason, status.message
        )),
        Err(err) => Verdict::NotReached(format!(
            "the dry-run create of CorsPolicy {CHECK_NAME} failed: {err}"
        )),
        // `failurePolicy: Ignore` hides the failure: only an invalid policy let through shows it.
        Ok(_) => Verdict::NotReached(format!(
            "the API server admitted a CorsPolicy that the validating webhook refuses (origin \
             {CHECK_ORIGIN}, a dry run): it did not call the webhook, or could not and ignored \
             the failure (failurePolicy Ignore); is the webhook configuration installed, and do \
             the webhook Service's endpoints answer?"
        )),
    }
}
