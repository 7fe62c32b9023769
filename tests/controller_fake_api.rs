//! `corsair controller` (the real binary) against a small fake API server on loopback: it takes
//! the leader Lease, starts the reconcilers' watches, reports ready and leader on the admin
//! port, and on SIGTERM releases the Lease and exits cleanly.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Body =
    Either<Full<Bytes>, StreamBody<futures::stream::Pending<Result<Frame<Bytes>, Infallible>>>>;

/// What the fake API server knows: the one Lease, and every request it saw.
#[derive(Default)]
struct State {
    lease: Option<Value>,
    /// Secrets by name (the webhook certificate).
    secrets: BTreeMap<String, Value>,
    /// CorsPolicies returned by the list.
    policies: Vec<Value>,
    seen: Vec<String>,
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn not_found() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    )
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    state.seen.push(format!("{method} {path}?{query}"));
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "x",
                    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
        );
    }
    if path.contains("/leases") {
        return match method {
            Method::GET => match &state.lease {
                Some(lease) => json_response(StatusCode::OK, lease),
                None => not_found(),
            },
            Method::POST => {
                let mut lease = body;
                lease["metadata"]["resourceVersion"] = json!("1");
                state.lease = Some(lease.clone());
                json_response(StatusCode::CREATED, &lease)
            }
            Method::PATCH => {
                let Some(lease) = state.lease.as_mut() else {
                    return not_found();
                };
                // Merge the patch's spec fields; null removes, as both patch kinds do here.
                if let Some(patch) = body.get("spec").and_then(Value::as_object) {
                    let spec = lease["spec"].as_object().cloned().unwrap_or_default();
                    let mut spec: BTreeMap<String, Value> = spec.into_iter().collect();
                    for (k, v) in patch {
                        if v.is_null() {
                            spec.remove(k);
                        } else {
                            spec.insert(k.clone(), v.clone());
                        }
                    }
                    lease["spec"] = json!(spec);
                }
                json_response(StatusCode::OK, lease)
            }
            _ => not_found(),
        };
    }
    if path.contains("/secrets") {
        let name = path.rsplit('/').next().unwrap_or_default().to_owned();
        return match method {
            Method::GET => match state.secrets.get(&name) {
                Some(secret) => json_response(StatusCode::OK, secret),
                None => not_found(),
            },
            Method::POST => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                state.secrets.insert(name, body.clone());
                json_response(StatusCode::CREATED, &body)
            }
            _ => not_found(),
        };
    }
    if method == Method::GET && path.ends_with("/corspolicies") && !query.contains("watch=true") {
        let items = state.policies.clone();
        return json_response(
            StatusCode::OK,
            &json!({"apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicyList",
                    "metadata": {"resourceVersion": "1"}, "items": items}),
        );
    }
    if method == Method::PATCH || method == Method::POST {
        // Server-side applies and Events: answer with the object, as the API server does.
        let mut object = body;
        if object.get("kind") == Some(&json!("CorsPolicy")) {
            object["spec"] = json!({});
            object["metadata"]["name"] = json!("api");
        }
        return json_response(StatusCode::OK, &object);
    }
    if method == Method::GET && query.contains("watch=true") {
        // A watch that stays open with no events.
        return Response::new(Either::Right(StreamBody::new(futures::stream::pending())));
    }
    if method == Method::GET
        && !path.contains("/secrets/")
        && !path.contains("webhookconfigurations/")
    {
        return json_response(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}),
        );
    }
    not_found()
}

async fn fake_api_server(state: Arc<Mutex<State>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake API server");
    let addr = listener.local_addr().expect("fake API server address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(state, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text))
}

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the controller against the fake API server; `tls_files` selects cert-manager mode.
async fn start(
    state: &Arc<Mutex<State>>,
    dir: &tempfile::TempDir,
    tls_files: bool,
) -> (Controller, SocketAddr) {
    let api = fake_api_server(state.clone()).await;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\n\
             current-context: c\n"
        ),
    )
    .expect("write kubeconfig");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut command = Command::new(env!("CARGO_BIN_EXE_corsair"));
    command
        .args([
            "controller",
            "--pod-name",
            "replica-1",
            "--namespace",
            "corsair-system",
        ])
        .args(["--shutdown-delay", "0", "--sidecar-mode", "auto"])
        .arg(format!("--admin-listen={admin}"))
        .arg(format!("--webhook-listen={webhook}"))
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("CORSAIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if tls_files {
        let bundle = corsair_controller::certs::placeholder(
            vec!["localhost".into()],
            k8s_openapi::jiff::Timestamp::now(),
        )
        .expect("certificate");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &bundle.cert_pem).expect("write cert");
        std::fs::write(&key, &bundle.key_pem).expect("write key");
        command
            .arg(format!("--tls-cert={}", cert.display()))
            .arg(format!("--tls-key={}", key.display()));
    }
    let child = command.spawn().expect("start corsair controller");
    (Controller(child), admin)
}

async fn wait_for(
    what: &str,
    state: &Arc<Mutex<State>>,
    secs: u64,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; API calls: {:?}",
            state.lock().map(|s| s.seen.clone()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_certificate_and_a_policy_reconciled_through_the_binary() {
    let state = Arc::new(Mutex::new(State::default()));
    if let Ok(mut s) = state.lock() {
        s.policies.push(json!({
            "apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy",
            "metadata": {"name": "api", "namespace": "shop", "uid": "uid-api", "generation": 1, "resourceVersion": "1"},
            "spec": {"allowOrigins": ["https://app.example.com"]},
        }));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (_controller, admin) = start(&state, &dir, false).await;

    // The leader creates the certificate Secret; every replica loads it and becomes ready.
    wait_for("the webhook certificate Secret", &state, 20, async || {
        state
            .lock()
            .is_ok_and(|s| s.secrets.contains_key("corsair-webhook-tls"))
    })
    .await;
    let secret = state
        .lock()
        .ok()
        .and_then(|s| s.secrets.get("corsair-webhook-tls").cloned());
    let secret = secret.expect("secret stored");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(
            secret["data"][key].as_str().is_some_and(|v| !v.is_empty()),
            "{key}"
        );
    }
    // The CA's private key is in a Secret of its own, never in the one every replica reads.
    assert!(secret["data"].get("ca.key").is_none(), "{secret}");
    let ca = state
        .lock()
        .ok()
        .and_then(|s| s.secrets.get("corsair-webhook-ca").cloned())
        .expect("CA secret stored");
    assert_eq!(ca["type"], "Opaque");
    assert!(ca["data"]["ca.key"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(ca["data"].get("tls.key").is_none(), "{ca}");
    assert_eq!(ca["data"]["ca.crt"], secret["data"]["ca.crt"]);
    wait_for(
        "/readyz 200 once the Secret is loaded",
        &state,
        15,
        async || matches!(get(admin, "/readyz").await, Some((200, _))),
    )
    .await;

    // The policy from the list is rendered into its ConfigMap by server-side apply.
    wait_for(
        "the ConfigMap apply and the status apply",
        &state,
        15,
        async || {
            let seen = state.lock().map(|s| s.seen.clone()).unwrap_or_default();
            let configmap = seen.iter().any(|s| {
                s.starts_with("PATCH /api/v1/namespaces/shop/configmaps/corsair-policy-api?")
                    && s.contains("fieldManager=corsair-policy-controller")
                    && s.contains("force=true")
            });
            let status = seen.iter().any(|s| {
                s.starts_with(
                    "PATCH /apis/corsair.dev/v1alpha1/namespaces/shop/corspolicies/api/status?",
                )
            });
            configmap && status
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leads_serves_and_releases_the_lease_on_sigterm() {
    let state = Arc::new(Mutex::new(State::default()));
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut controller, admin) = start(&state, &dir, true).await;

    // Leader, and ready (the certificate comes from files).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, metrics)) = get(admin, "/metrics").await
            && metrics.contains("corsair_controller_leader 1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not become leader; API calls: {:?}",
            state.lock().map(|s| s.seen.clone()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = get(admin, "/readyz").await.expect("readyz answers");
    assert_eq!(status, 200);
    let holder = |state: &Arc<Mutex<State>>| {
        state.lock().ok().and_then(|s| {
            s.lease
                .as_ref()
                .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
        })
    };
    assert_eq!(holder(&state).as_deref(), Some("replica-1"));

    // The leader's reconcilers list what they watch.
    let deadline = Instant::now() + Duration::from_secs(10);
    let wanted = [
        "/apis/corsair.dev/v1alpha1/corspolicies",
        "/apis/apps/v1/deployments",
        "/apis/apps/v1/statefulsets",
        "/apis/apps/v1/daemonsets",
        "/api/v1/configmaps",
        "/api/v1/pods",
    ];
    loop {
        let seen = state.lock().map(|s| s.seen.clone()).unwrap_or_default();
        if wanted.iter().all(|w| seen.iter().any(|s| s.contains(w))) {
            assert!(
                seen.iter().any(|s| s.contains("/api/v1/configmaps")
                    && s.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dcorsair")),
                "ConfigMaps are watched by label only: {seen:?}"
            );
            assert!(
                seen.iter().any(|s| s.contains("/api/v1/pods")
                    && s.contains("labelSelector=corsair.dev%2Finject%3Denabled")),
                "pods are watched by the opt-in label only: {seen:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "watches missing: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM: clean exit, Lease released for the next replica.
    let pid = controller.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(killed.is_ok_and(|s| s.success()), "sending SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Ok(Some(status)) = controller.0.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = controller.0.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(status.success(), "exit status {status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(holder(&state), None, "the Lease is released on shutdown");
}
