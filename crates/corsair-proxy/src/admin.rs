//! The admin port: `/healthz`, `/readyz`, `/metrics` and `/policy`, served by
//! [`corsair_runtime::Admin`].
//!
//! It keeps serving while the proxy drains, so that `/readyz` can say 503 and Kubernetes takes
//! the pod out of its Service endpoints; it stops when the drain is over.

use std::sync::Arc;

use corsair_runtime::{Admin, MetricsSource, response, text};
use http::StatusCode;

use crate::metrics::Metrics;
use crate::server::State;

/// The proxy's admin endpoints: ready while the proxy listener accepts.
pub fn admin(state: Arc<State>) -> Admin {
    let listening = state.clone();
    let metrics = state.metrics.clone();
    Admin::new(move || {
        if listening.is_listening() {
            Ok(())
        } else {
            Err("draining")
        }
    })
    .metrics(metrics)
    .route("/policy", move || policy(&state))
}

impl MetricsSource for Metrics {
    fn encode(&self, out: &mut String) -> std::fmt::Result {
        // The inherent `Metrics::encode`, which owns the registry.
        out.push_str(&Metrics::encode(self)?);
        Ok(())
    }
}

/// The active policy document as JSON; 404 while there is none (the file is missing).
fn policy(state: &State) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let active = state.store.current();
    let Some(document) = &active.document else {
        return text(
            StatusCode::NOT_FOUND,
            "no policy file (not there yet, or removed): no origin is allowed\n",
        );
    };
    match serde_json::to_vec_pretty(document) {
        Ok(json) => response(StatusCode::OK, "application/json", json),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the policy\n",
        ),
    }
}
