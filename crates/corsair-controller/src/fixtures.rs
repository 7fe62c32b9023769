//! Test helpers: a `kube::Client` over an in-memory mock API server that asserts every call.
//!
//! The test hands the [`ApiServerVerifier`] the calls it expects, in order; each one is checked
//! (method, path, query such as `fieldManager` and `force`, JSON body) and answered. A call that
//! does not come within the timeout, or an extra call, fails the test.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use crate::reconcile::Index;

/// How long a test waits for the next expected call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The server side of the mock: receives the client's requests.
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

/// A `kube::Client` whose every request goes to the returned verifier.
pub fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

/// One request received by the mock, parsed for assertions.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub body: Value,
    respond: mock::SendResponse<Response<Body>>,
}

impl Call {
    /// Asserts the method and the path (without the query).
    pub fn expect(&self, method: Method, path: &str) -> &Self {
        assert_eq!(
            (&self.method, self.path.as_str()),
            (&method, path),
            "unexpected call {} {}",
            self.method,
            self.path
        );
        self
    }

    /// Asserts that this is a server-side apply by `manager` with `force=true`.
    pub fn expect_apply(&self, manager: &str) -> &Self {
        assert_eq!(
            self.query.get("fieldManager").map(String::as_str),
            Some(manager),
            "fieldManager of {} {}",
            self.method,
            self.path
        );
        assert_eq!(
            self.query.get("force").map(String::as_str),
            Some("true"),
            "force of {}",
            self.path
        );
        self
    }

    /// Answers with `status` and the JSON `body`.
    pub fn respond(self, status: StatusCode, body: &Value) {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(bytes));
        match response {
            Ok(response) => self.respond.send_response(response),
            Err(err) => panic!("building the mock response: {err}"),
        }
    }

    /// Answers 200 with the request body itself, as the API server answers an apply.
    pub fn echo(self) {
        let body = self.body.clone();
        self.respond(StatusCode::OK, &body);
    }
}

impl ApiServerVerifier {
    /// Waits for the next request, failing the test after [`CALL_TIMEOUT`].
    pub async fn next_call(&mut self) -> Call {
        let next = tokio::time::timeout(CALL_TIMEOUT, self.0.next_request()).await;
        let Ok(Some((request, respond))) = next else {
            panic!("the expected API call did not come within {CALL_TIMEOUT:?}");
        };
        let (parts, body) = request.into_parts();
        let bytes = match body.collect_bytes().await {
            Ok(bytes) => bytes,
            Err(err) => panic!("reading the request body: {err}"),
        };
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(value) => value,
                Err(err) => panic!("request body is not JSON ({err}): {bytes:?}"),
            }
        };
        let query = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query,
            body,
            respond,
        }
    }

    /// Asserts that the client makes no further call for a short while.
    pub async fn expect_no_more_calls(mut self) {
        let next = tokio::time::timeout(Duration::from_millis(100), self.0.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!(
                "unexpected extra call {} {}",
                request.method(),
                request.uri()
            );
        }
    }
}

impl ApiServerVerifier {
    /// Answers every request like a permissive API server (the body echoed back, completed so
    /// that it deserialises), until the client is dropped; returns how many it answered. For
    /// benchmarks, where the calls are not asserted one by one.
    pub async fn answer_everything(mut self) -> usize {
        let mut answered = 0;
        while let Some((request, respond)) = self.0.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Some(map) = body.as_object_mut() {
                let name = parts
                    .uri
                    .path()
                    .trim_end_matches("/status")
                    .rsplit('/')
                    .next();
                let meta = map.entry("metadata").or_insert_with(|| json!({}));
                if let (Some(meta), Some(name)) = (meta.as_object_mut(), name) {
                    meta.entry("name").or_insert_with(|| json!(name));
                }
                if map.get("kind") == Some(&json!("CorsPolicy")) {
                    map.entry("spec").or_insert_with(|| json!({}));
                }
            }
            let status = if parts.method == Method::POST {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
            if let Ok(response) = response {
                respond.send_response(response);
            }
            answered += 1;
        }
        answered
    }
}

/// An Event as the API server returns it on create.
pub fn event_response(call: &Call) -> Value {
    let mut body = call.body.clone();
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!("1"));
    }
    body
}

/// A fixed [`Index`] for tests.
#[derive(Default)]
pub struct StaticIndex {
    /// `(namespace, name)` of the CorsPolicies that exist.
    pub policies: HashSet<(String, String)>,
    /// Workload count per `(namespace, policy)`.
    pub workloads: HashMap<(String, String), usize>,
    /// The rendered ConfigMaps in the cache, per `(namespace, name)`.
    pub configmaps: HashMap<(String, String), Arc<ConfigMap>>,
}

impl StaticIndex {
    /// An index in which the given policies of namespace `ns` exist.
    pub fn with_policies(ns: &str, names: &[&str]) -> Self {
        StaticIndex {
            policies: names
                .iter()
                .map(|n| (ns.to_owned(), (*n).to_owned()))
                .collect(),
            workloads: HashMap::new(),
            configmaps: HashMap::new(),
        }
    }
}

impl Index for StaticIndex {
    fn policy_exists(&self, namespace: &str, name: &str) -> bool {
        self.policies
            .contains(&(namespace.to_owned(), name.to_owned()))
    }
    fn workloads_using(&self, namespace: &str, name: &str) -> usize {
        self.workloads
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
            .unwrap_or(0)
    }
    fn policies_synced(&self) -> bool {
        true
    }
    fn configmap(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.configmaps
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }
}
