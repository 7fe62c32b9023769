//! Errors of the reconcilers, certificate management and leader election.

/// Everything that can go wrong while reconciling or running the operator.
///
/// Each message carries its cause, since logs print errors with `%err`; so no variant also
/// links it as its `source()`, which would print it twice under `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed (network, conflict, forbidden, ...).
    #[error("Kubernetes API call {action} failed: {cause}")]
    Kube {
        action: &'static str,
        cause: kube::Error,
    },
    /// An object from the API server lacks a field the controller needs.
    #[error("{kind} has no {field}")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    /// Rendering the policy document failed.
    #[error("rendering the policy document: {0}")]
    Render(serde_json::Error),
    /// Generating or parsing webhook certificates failed.
    #[error("webhook certificate: {0}")]
    Cert(rcgen::Error),
    /// The webhook certificate Secret is malformed.
    #[error("Secret {secret}: {reason}")]
    BadSecret { secret: String, reason: String },
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(kube_lease_manager::LeaseManagerError),
}

impl Error {
    /// Wraps a kube error with the action that failed, e.g. `"apply ConfigMap"`.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |cause| Error::Kube { action, cause }
    }

    /// How long the API server asked us to wait (`details.retryAfterSeconds` of its Status,
    /// sent with 429 and some 5xx answers), if it did. The client already waits that long
    /// and retries 429/503/504 itself; this is for the answer it finally gave up on.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Kube {
                cause: kube::Error::Api(status),
                ..
            } => status
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| std::time::Duration::from_secs(u64::from(s))),
            _ => None,
        }
    }

    /// A short, bounded label for the `corsair_controller_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { cause, .. } => match cause {
                kube::Error::Api(status) if status.is_not_found() => "api_not_found",
                kube::Error::Api(status) if status.code == 409 => "api_conflict",
                kube::Error::Api(status) if status.code == 403 => "api_forbidden",
                kube::Error::Api(status) if status.code == 429 => "api_throttled",
                kube::Error::Api(_) => "api_error",
                kube::Error::Service(err) if err.is::<crate::lease::NotLeader>() => "not_leader",
                _ => "api_unreachable",
            },
            Error::MissingField { .. } => "missing_field",
            Error::Render(_) => "render",
            Error::Cert(_) => "cert",
            Error::BadSecret { .. } => "bad_secret",
            Error::Lease(_) => "lease",
        }
    }
}

/// Result with the controller's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The cause is said once: in the message, and not again by a walk of `source()` (what
    /// `anyhow`'s `{:#}` prints at the binary's edge).
    #[test]
    fn an_api_error_names_its_cause_once() {
        let status = kube::core::Status::failure("configmaps \"x\" is forbidden", "Forbidden")
            .with_code(403);
        let cause = kube::Error::Api(Box::new(status));
        let said = cause.to_string();
        let err = Error::kube("apply ConfigMap")(cause);
        let mut chain = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            chain.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        assert_eq!(chain.matches(said.as_str()).count(), 1, "{chain}");
        assert!(
            chain.starts_with("Kubernetes API call apply ConfigMap failed: "),
            "{chain}"
        );
        assert_eq!(err.metric_label(), "api_forbidden");
    }
}
