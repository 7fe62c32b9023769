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

/// The active policy document as JSON; 404 while there is none (the file is missing, or was
/// refused at start). When the file on disk was refused, [`REFUSED_HEADER`] says why.
fn policy(state: &State) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let active = state.store.current();
    let refused = state.store.refused();
    let mut answer = match (&active.document, &refused) {
        (Some(document), _) => match serde_json::to_vec_pretty(document) {
            Ok(json) => response(StatusCode::OK, "application/json", json),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the policy\n",
            ),
        },
        (None, Some(why)) => response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("the policy file does not load, so no origin is allowed: {why}\n"),
        ),
        (None, None) => text(
            StatusCode::NOT_FOUND,
            "no policy file (not there yet, or removed): no origin is allowed\n",
        ),
    };
    if let Some(value) = refused.as_deref().map(header_text) {
        answer
            .headers_mut()
            .insert(http::HeaderName::from_static(REFUSED_HEADER), value);
    }
    answer
}

/// On `/policy`, why the policy file on disk is not the active policy.
pub const REFUSED_HEADER: &str = "corsair-policy-file-refused";

const REFUSED_HEADER_MAX: usize = 1024;

/// `why` as one header line of printable ASCII, at most [`REFUSED_HEADER_MAX`] bytes: control
/// characters (an error's line breaks) become spaces, other characters `?`. The whole reason
/// is in the error log line.
fn header_text(why: &str) -> http::HeaderValue {
    let mut line: String = why
        .chars()
        .map(|c| match c {
            c if c.is_control() => ' ',
            c if c.is_ascii() => c,
            _ => '?',
        })
        .collect();
    if line.len() > REFUSED_HEADER_MAX {
        line.truncate(REFUSED_HEADER_MAX - 3);
        line.push_str("...");
    }
    http::HeaderValue::from_str(&line)
        .unwrap_or_else(|_| http::HeaderValue::from_static("the file does not load"))
}

#[cfg(test)]
mod tests {
    use super::{REFUSED_HEADER_MAX, header_text};

    #[test]
    fn a_refusal_becomes_one_short_printable_line() {
        let value = header_text("policy file /etc/café.yaml: spec.x\nline 2\tcol\u{7f}");
        assert_eq!(
            value.to_str().ok(),
            Some("policy file /etc/caf?.yaml: spec.x line 2 col ")
        );
        let long = header_text(&"é".repeat(5000));
        assert_eq!(long.len(), REFUSED_HEADER_MAX);
        assert!(long.to_str().is_ok_and(|s| s.ends_with("...")));
    }
}
