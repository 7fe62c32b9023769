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
        let query = parse_query(parts.uri.query().unwrap_or_default());
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
            let call = ApiCall {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                query: HashMap::new(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let Reply::Json { status, body, .. } = Reply::echo(&call) else {
                continue;
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

/// One request as [`FakeApi`] saw it.
#[derive(Debug, Clone)]
pub struct ApiCall {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub body: Value,
}

impl ApiCall {
    /// A GET with `watch=true`.
    pub fn is_watch(&self) -> bool {
        self.method == Method::GET && self.query.get("watch").map(String::as_str) == Some("true")
    }

    /// The `spec.holderIdentity` a Lease write sets, if it sets one.
    pub fn pointer_holder(&self) -> Option<String> {
        self.body
            .pointer("/spec/holderIdentity")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// A GET without `watch=true`: a list or a get.
    pub fn is_read(&self) -> bool {
        self.method == Method::GET && !self.is_watch()
    }
}

/// What [`FakeApi`] answers to one call.
pub enum Reply {
    /// A status, extra headers and a JSON body.
    Json {
        status: StatusCode,
        headers: Vec<(&'static str, String)>,
        body: Value,
    },
    /// A watch: these events, one JSON object per line; then the stream ends, or stays open.
    Events { events: Vec<Value>, open: bool },
    /// Waits until `gate` is open (true), then answers.
    Held(tokio::sync::watch::Receiver<bool>, Box<Reply>),
    /// Waits until `gate` is open, then works out the answer: a call whose effect on the
    /// server's state must come after others'.
    Deferred(
        tokio::sync::watch::Receiver<bool>,
        Box<dyn FnOnce() -> Reply + Send>,
    ),
}

impl Reply {
    /// `200 OK` with `body`.
    pub fn ok(body: Value) -> Reply {
        Reply::status(StatusCode::OK, body)
    }

    /// `status` with `body`.
    pub fn status(status: StatusCode, body: Value) -> Reply {
        Reply::Json {
            status,
            headers: Vec::new(),
            body,
        }
    }

    /// A list of `items` at `resource_version`.
    pub fn list(resource_version: &str, items: Vec<Value>) -> Reply {
        Reply::ok(json!({
            "apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": resource_version},
            "items": items,
        }))
    }

    /// A watch that sends nothing and never ends.
    pub fn quiet_watch() -> Reply {
        Reply::Events {
            events: Vec::new(),
            open: true,
        }
    }

    /// A cluster that holds `lists` (collection path, items) and never changes: a read lists
    /// them (an empty list for any other collection), a read of one listed object
    /// (`…/namespaces/NS/PLURAL/NAME`) gets it, a watch stays quiet. `None` for a write, which
    /// the caller answers.
    pub fn steady(call: &ApiCall, lists: &[(&str, &[Value])]) -> Option<Reply> {
        if call.is_watch() {
            return Some(Reply::quiet_watch());
        }
        let one = lists
            .iter()
            .flat_map(|(path, items)| items.iter().map(move |item| (*path, item)))
            .find(|(path, item)| {
                let (Some((group, plural)), Some(ns), Some(name)) = (
                    path.rsplit_once('/'),
                    item.pointer("/metadata/namespace").and_then(Value::as_str),
                    item.pointer("/metadata/name").and_then(Value::as_str),
                ) else {
                    return false;
                };
                call.path == format!("{group}/namespaces/{ns}/{plural}/{name}")
            });
        if let (true, Some((_, item))) = (call.is_read(), one) {
            return Some(Reply::ok(item.clone()));
        }
        call.is_read().then(|| {
            let items = lists.iter().find(|(path, _)| *path == call.path);
            Reply::list(
                "1",
                items.map_or_else(Vec::new, |(_, items)| items.to_vec()),
            )
        })
    }

    /// How a permissive API server answers a write: the body back, completed so that it
    /// deserialises (`201` for a create).
    pub fn echo(call: &ApiCall) -> Reply {
        let mut body = call.body.clone();
        if let Some(map) = body.as_object_mut() {
            let name = call.path.trim_end_matches("/status").rsplit('/').next();
            let meta = map.entry("metadata").or_insert_with(|| json!({}));
            if let (Some(meta), Some(name)) = (meta.as_object_mut(), name) {
                meta.entry("name").or_insert_with(|| json!(name));
                meta.insert("resourceVersion".into(), json!("1"));
            }
            if map.get("kind") == Some(&json!("CorsPolicy")) {
                map.entry("spec").or_insert_with(|| json!({}));
            }
        }
        let status = if call.method == Method::POST {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Reply::status(status, body)
    }
}

/// A Status as the API server sends it with a failure.
pub fn failure(code: u16, reason: &str, retry_after: Option<u32>) -> Value {
    let mut status = json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": format!("{reason} (from the mock API server)"), "reason": reason, "code": code,
    });
    if let Some(seconds) = retry_after {
        status["details"] = json!({"retryAfterSeconds": seconds});
    }
    status
}

type Route = dyn Fn(&ApiCall) -> Reply + Send + Sync;
type ReplyBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::convert::Infallible>;

/// A mock API server for scenarios where many calls run at once (the watches of every kind,
/// several reconcilers): `route` answers each call as it comes, and every call is logged.
/// Reachable in memory ([`FakeApi::client`]) or over real HTTP ([`FakeApi::serve_http`]), the
/// latter to go through the production client stack (`kube::Config`), retries included.
pub struct FakeApi {
    route: Box<Route>,
    log: std::sync::Mutex<Vec<ApiCall>>,
}

impl FakeApi {
    pub fn new(route: impl Fn(&ApiCall) -> Reply + Send + Sync + 'static) -> Arc<FakeApi> {
        Arc::new(FakeApi {
            route: Box::new(route),
            log: std::sync::Mutex::default(),
        })
    }

    /// Every call so far, in order of arrival.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The calls so far that were not reads or watches.
    pub fn writes(&self) -> Vec<ApiCall> {
        let mut calls = self.calls();
        calls.retain(|c| c.method != Method::GET);
        calls
    }

    /// A client whose requests this fake answers in memory.
    pub fn client(self: &Arc<Self>) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, std::convert::Infallible>(api.answer(request).await) }
        });
        Client::new(service, "default")
    }

    /// Serves this fake over HTTP on a loopback port until the runtime ends.
    pub async fn serve_http(self: &Arc<Self>) -> std::io::Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let api = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = api.clone();
                let service = hyper::service::service_fn(move |request| {
                    let api = api.clone();
                    async move { Ok::<_, std::convert::Infallible>(api.answer(request).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Ok(addr)
    }

    async fn answer<B>(&self, request: Request<B>) -> Response<ReplyBody>
    where
        B: http_body::Body,
        B::Error: std::fmt::Debug,
    {
        use http_body_util::BodyExt;
        let (parts, body) = request.into_parts();
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => panic!("reading the request body: {err:?}"),
        };
        let call = ApiCall {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parse_query(parts.uri.query().unwrap_or_default()),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        };
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call.clone());
        let mut reply = (self.route)(&call);
        let reply = loop {
            // A closed gate (sender dropped) opens it too: nothing may hang forever.
            reply = match reply {
                Reply::Held(mut gate, then) => {
                    let _ = gate.wait_for(|open| *open).await;
                    *then
                }
                Reply::Deferred(mut gate, then) => {
                    let _ = gate.wait_for(|open| *open).await;
                    then()
                }
                done => break done,
            };
        };
        respond(reply)
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn respond(reply: Reply) -> Response<ReplyBody> {
    use futures::StreamExt;
    use http_body_util::{BodyExt, Full, StreamBody};
    let (status, headers, body) = match reply {
        Reply::Json {
            status,
            headers,
            body,
        } => {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            (status, headers, Full::new(bytes.into()).boxed_unsync())
        }
        Reply::Events { events, open } => {
            let lines = events.into_iter().map(|event| {
                let mut line = serde_json::to_vec(&event).unwrap_or_default();
                line.push(b'\n');
                Ok(hyper::body::Frame::data(bytes::Bytes::from(line)))
            });
            let lines = futures::stream::iter(lines);
            let body = if open {
                StreamBody::new(lines.chain(futures::stream::pending())).boxed_unsync()
            } else {
                StreamBody::new(lines).boxed_unsync()
            };
            (StatusCode::OK, Vec::new(), body)
        }
        Reply::Held(..) | Reply::Deferred(..) => {
            unreachable!("held replies are waited for in answer()")
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let map = response.headers_mut();
    map.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            map.insert(name, value);
        }
    }
    response
}

/// A CorsPolicy spec of 64 routes of 128 distinct origins, each `len` bytes long: about as
/// large as the CRD's list bounds let one be, to try the 1 MiB a ConfigMap holds.
pub fn large_spec(len: usize) -> Value {
    const FIXED: usize = "https://r00o000.example.com".len();
    let routes: Vec<Value> = (0..64)
        .map(|r| {
            let origins: Vec<String> = (0..128)
                .map(|i| {
                    // Labels of 50 letters, each after a dot.
                    let mut filler = String::new();
                    while filler.len() < len.saturating_sub(FIXED) {
                        filler.push(if filler.len().is_multiple_of(51) {
                            '.'
                        } else {
                            'a'
                        });
                    }
                    if filler.ends_with('.') {
                        filler.pop();
                        filler.push('a');
                    }
                    format!("https://r{r:02}o{i:03}{filler}.example.com")
                })
                .collect();
            json!({"pathPrefix": format!("/r{r:02}"), "allowOrigins": origins})
        })
        .collect();
    json!({ "routes": routes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> ApiCall {
        ApiCall {
            method: Method::GET,
            path: path.to_owned(),
            query: HashMap::new(),
            body: Value::Null,
        }
    }

    fn body(reply: Option<Reply>) -> Value {
        match reply {
            Some(Reply::Json { body, .. }) => body,
            _ => Value::Null,
        }
    }

    /// A steady cluster lists what it holds and hands out each listed object by its path.
    #[test]
    fn a_steady_cluster_answers_lists_and_single_objects() {
        let web = json!({"kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}});
        let lists = [("/apis/apps/v1/deployments", &[web.clone()][..])];
        let listed = body(Reply::steady(&get("/apis/apps/v1/deployments"), &lists));
        assert_eq!(listed["items"], json!([web]));
        let one = body(Reply::steady(
            &get("/apis/apps/v1/namespaces/shop/deployments/web"),
            &lists,
        ));
        assert_eq!(one, web);
        // Not listed: another name, another namespace.
        for path in [
            "/apis/apps/v1/namespaces/shop/deployments/api",
            "/apis/apps/v1/namespaces/other/deployments/web",
        ] {
            assert_eq!(
                body(Reply::steady(&get(path), &lists))["kind"],
                "List",
                "{path}"
            );
        }
    }
}
