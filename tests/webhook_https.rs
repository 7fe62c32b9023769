//! The admission webhooks over real HTTPS: the `corsair webhook` binary on a loopback port with
//! a freshly generated CA, real AdmissionReview JSON (tests/fixtures/admission), and every
//! patched pod checked by applying the patch, reading it back as a `k8s_openapi` Pod, sending it
//! through the webhook again, and validating it with `kubernetes-validate` against the
//! Kubernetes 1.33 schema.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use corsair_runtime::testing::listening_here;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/admission");

/// A CA and a serving certificate for `localhost` and 127.0.0.1 signed by it.
struct Pki {
    ca_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "corsair test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
    let cert = params.signed_by(&key, &ca).expect("server cert");
    Pki {
        ca_der: ca.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A running `corsair webhook`, killed on drop.
struct Webhook {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    ca: CertificateDer<'static>,
    tls: TlsConnector,
    dir: tempfile::TempDir,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_tls(ca: &CertificateDer<'static>, alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA is a valid root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Empty: offer no ALPN at all.
    config.alpn_protocols = if alpn.is_empty() {
        Vec::new()
    } else {
        vec![alpn.to_vec()]
    };
    // Every connection does a full handshake, so each one sees the certificate served now.
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

fn start(extra: &[&str]) -> Webhook {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tls.crt"), &pki.cert_pem).expect("write cert");
    std::fs::write(dir.path().join("tls.key"), &pki.key_pem).expect("write key");
    let mut child = Command::new(env!("CARGO_BIN_EXE_corsair"))
        .arg("webhook")
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .args(extra)
        .env("CORSAIR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("corsair binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut read_addr = |prefix: &str| -> SocketAddr {
        let line = lines
            .next()
            .expect("corsair webhook exited before printing its address (see stderr)")
            .expect("stdout is UTF-8");
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
            .parse()
            .expect("printed address parses")
    };
    let admin = read_addr("admin listening on http://");
    let addr = read_addr("webhook listening on https://");
    Webhook {
        child,
        addr,
        admin,
        tls: client_tls(&pki.ca_der, b"http/1.1"),
        ca: pki.ca_der,
        dir,
    }
}

impl Webhook {
    async fn request(&self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        send(&self.tls, self.addr, method, path, body).await
    }

    /// Posts a review; a 200 answer is returned as its `response` object.
    async fn review(&self, path: &str, review: &Value) -> Value {
        let body = serde_json::to_vec(review).expect("review serialises");
        let (status, body) = self.request(Method::POST, path, body).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).expect("answer is JSON");
        assert_eq!(answer["apiVersion"], json!("admission.k8s.io/v1"));
        assert_eq!(answer["kind"], json!("AdmissionReview"));
        assert_eq!(
            answer["response"]["uid"], review["request"]["uid"],
            "uid is echoed"
        );
        answer["response"].clone()
    }

    async fn metrics(&self) -> String {
        let tcp = TcpStream::connect(self.admin)
            .await
            .expect("admin connects");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("admin handshake");
        tokio::spawn(conn);
        let req = Request::get("/metrics")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("admin answers");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(body.to_vec()).expect("metrics are UTF-8")
    }
}

async fn send(
    tls: &TlsConnector,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    let tcp = TcpStream::connect(addr).await.expect("webhook accepts");
    let name = ServerName::try_from("localhost").expect("server name");
    let stream = tls
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the test CA");
    let req = Request::builder()
        .method(method)
        .uri(format!("https://localhost:{}{path}", addr.port()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("h2 answer")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http/1.1 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("http/1.1 answer")
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

/// The review was denied, and its message says `needle`.
fn assert_denied(response: &Value, needle: &str) {
    assert_eq!(response["allowed"], json!(false), "{response}");
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "denial {message:?} lacks {needle:?}"
    );
}

fn fixture(name: &str) -> Value {
    let path = Path::new(FIXTURES).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The object of `review` with the base64 JSON patch of `response` applied.
fn patched(review: &Value, response: &Value) -> Value {
    assert_eq!(response["allowed"], json!(true), "{response}");
    assert_eq!(response["patchType"], json!("JSONPatch"), "{response}");
    let encoded = response["patch"]
        .as_str()
        .expect("patch is a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is a JSON patch");
    let mut object = review["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("patch applies to the original pod");
    object
}

/// `review` with its object replaced.
fn with_object(review: &Value, object: Value) -> Value {
    let mut review = review.clone();
    review["request"]["object"] = object;
    review
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// What a pod fixture must look like after injection.
struct Expect {
    fixture: &'static str,
    /// Name the proxy port takes (the app port's name, or `corsair-http`).
    port_name: &'static str,
    upstream: u16,
    proxy_port: i32,
    admin_port: i32,
    /// A substring of the one warning, if one is expected.
    warning: Option<&'static str>,
}

const INJECTED: &[Expect] = &[
    Expect {
        fixture: "pod-named-port",
        port_name: "http",
        upstream: 8080,
        proxy_port: 15380,
        admin_port: 15381,
        warning: None,
    },
    Expect {
        fixture: "pod-numeric-port",
        port_name: "corsair-http",
        upstream: 3000,
        proxy_port: 15380,
        admin_port: 15381,
        warning: Some("port 3000 has no name"),
    },
    Expect {
        fixture: "pod-port-annotation-name",
        port_name: "web",
        upstream: 9000,
        proxy_port: 15380,
        admin_port: 15381,
        warning: None,
    },
    Expect {
        fixture: "pod-init-containers",
        port_name: "http",
        upstream: 8000,
        proxy_port: 15380,
        admin_port: 15381,
        warning: None,
    },
    Expect {
        fixture: "pod-security-context",
        port_name: "http",
        upstream: 8443,
        proxy_port: 15380,
        admin_port: 15381,
        warning: None,
    },
    Expect {
        fixture: "pod-multi-container",
        port_name: "http",
        upstream: 8080,
        proxy_port: 15380,
        admin_port: 15381,
        warning: None,
    },
    Expect {
        fixture: "pod-first-tcp-port",
        port_name: "dns-tcp",
        upstream: 5353,
        proxy_port: 15380,
        admin_port: 15381,
        warning: None,
    },
    Expect {
        fixture: "pod-overrides",
        port_name: "http",
        upstream: 8080,
        proxy_port: 18080,
        admin_port: 18081,
        warning: None,
    },
];

fn named_ports(c: &Container) -> Vec<String> {
    c.ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect()
}

/// Structural checks that hold for every injected pod.
fn check_injected(e: &Expect, original: &Pod, pod: &Pod, mode_native: bool) {
    let what = e.fixture;
    let spec = pod.spec.as_ref().expect("spec");
    let orig_spec = original.spec.as_ref().expect("spec");
    let init = spec.init_containers.clone().unwrap_or_default();
    let all: Vec<&Container> = init.iter().chain(&spec.containers).collect();
    let sidecars: Vec<&&Container> = all.iter().filter(|c| c.name == "corsair-proxy").collect();
    assert_eq!(sidecars.len(), 1, "{what}: exactly one sidecar");
    let sidecar = *sidecars[0];

    let orig_init: Vec<&str> = orig_spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    if mode_native {
        let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [orig_init, vec!["corsair-proxy"]].concat(),
            "{what}: sidecar is the last init container"
        );
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"), "{what}");
        assert_eq!(spec.containers.len(), orig_spec.containers.len(), "{what}");
    } else {
        assert_eq!(
            spec.containers.last().map(|c| c.name.as_str()),
            Some("corsair-proxy"),
            "{what}"
        );
        assert_eq!(sidecar.restart_policy, None, "{what}");
    }

    // The slim image by default; the corsair.dev/image annotation overrides it. Either way the
    // container runs `corsair-proxy`.
    let image = original
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("corsair.dev/image").cloned())
        .unwrap_or_else(|| {
            format!(
                "ghcr.io/corsair-dev/corsair-proxy:{}",
                env!("CARGO_PKG_VERSION")
            )
        });
    assert_eq!(sidecar.image.as_ref(), Some(&image), "{what}");
    assert_eq!(
        sidecar.command.as_deref(),
        Some(&["corsair-proxy".to_owned()][..]),
        "{what}"
    );
    let args = sidecar.args.clone().expect("args");
    assert_eq!(
        args,
        [
            "--policy".to_owned(),
            "/etc/corsair/policy.json".into(),
            "--upstream".into(),
            format!("http://localhost:{}", e.upstream),
            "--listen".into(),
            format!("[::]:{}", e.proxy_port),
            "--admin".into(),
            format!("[::]:{}", e.admin_port),
            "--allow-missing-policy".into(),
        ],
        "{what}"
    );
    let ports = sidecar.ports.clone().expect("sidecar ports");
    assert_eq!(ports[0].name.as_deref(), Some(e.port_name), "{what}");
    assert_eq!(ports[0].container_port, e.proxy_port, "{what}");
    assert_eq!(
        (ports[1].name.as_deref(), ports[1].container_port),
        (Some("corsair-admin"), e.admin_port),
        "{what}"
    );

    // The Service's port name now resolves only to the sidecar; the app keeps the number.
    for c in &spec.containers {
        if c.name != "corsair-proxy" {
            assert!(
                !named_ports(c).contains(&e.port_name.to_owned()),
                "{what}: {} still has the port name",
                c.name
            );
        }
    }
    assert!(
        spec.containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .any(|p| p.container_port == i32::from(e.upstream)),
        "{what}: the app still declares port {}",
        e.upstream
    );
    // Every named probe port of every app container still names one of its own ports.
    for c in &spec.containers {
        let own = named_ports(c);
        for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
        {
            let port = probe
                .http_get
                .as_ref()
                .map(|h| &h.port)
                .or(probe.tcp_socket.as_ref().map(|t| &t.port));
            if let Some(IntOrString::String(name)) = port {
                assert!(
                    own.contains(name),
                    "{what}: {} probe refers to missing port {name:?}",
                    c.name
                );
            }
        }
    }

    let sc = sidecar.security_context.clone().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true), "{what}");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()]),
        "{what}"
    );
    assert_eq!(
        sc.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault"),
        "{what}"
    );
    let resources = sidecar.resources.clone().expect("resources");
    assert!(
        resources.requests.is_some() && resources.limits.is_some(),
        "{what}"
    );
    let readiness = sidecar
        .readiness_probe
        .clone()
        .and_then(|p| p.http_get)
        .expect("readiness probe");
    assert_eq!(
        (readiness.path.as_deref(), readiness.port),
        (Some("/readyz"), IntOrString::Int(e.admin_port)),
        "{what}"
    );

    let volumes = spec.volumes.clone().unwrap_or_default();
    let policy = volumes
        .iter()
        .find(|v| v.name == "corsair-policy")
        .expect("policy volume");
    let cm = policy.config_map.clone().expect("configMap volume");
    assert_eq!(
        (cm.name.as_str(), cm.optional),
        ("corsair-policy-api", Some(true)),
        "{what}"
    );
    assert_eq!(
        volumes.len(),
        orig_spec.volumes.iter().flatten().count() + 1,
        "{what}: other volumes kept"
    );
    let mount = sidecar.volume_mounts.clone().unwrap_or_default();
    assert_eq!(
        (mount[0].mount_path.as_str(), mount[0].read_only),
        ("/etc/corsair", Some(true)),
        "{what}"
    );

    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    for (k, v) in original.metadata.annotations.iter().flatten() {
        assert_eq!(annotations.get(k), Some(v), "{what}: annotation {k} kept");
    }
    let record: Value =
        serde_json::from_str(annotations.get("corsair.dev/injected").expect("record"))
            .expect("record is JSON");
    assert_eq!(record["upstreamPort"], json!(e.upstream), "{what}");
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.security_context.clone()),
        orig_spec.security_context,
        "{what}: pod securityContext untouched"
    );
}

/// Runs kubernetes-validate on `files`; the tool comes from `make test` (.venv on PATH).
fn kubernetes_validate(files: &[PathBuf]) {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/kubernetes-validate");
    let tool = if venv.exists() {
        venv
    } else {
        PathBuf::from("kubernetes-validate")
    };
    let output = Command::new(&tool)
        .args(["-k", "1.33.0", "--strict"])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubernetes-validate is not installed ({e}): run `make deps-python` (pip install kubernetes-validate into .venv)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "kubernetes-validate refused a patched pod:\n{text}"
    );
    assert!(
        !text.contains("ERROR") && !text.contains("WARN"),
        "kubernetes-validate:\n{text}"
    );
}

async fn check_all_injected(webhook: &Webhook, native: bool) {
    let mut files = Vec::new();
    for e in INJECTED {
        let review = fixture(e.fixture);
        let response = webhook.review("/inject", &review).await;
        match e.warning {
            None => assert_eq!(warnings(&response), Vec::<String>::new(), "{}", e.fixture),
            Some(w) => {
                let got = warnings(&response);
                assert!(
                    got.len() == 1 && got[0].contains(w),
                    "{}: {got:?}",
                    e.fixture
                );
            }
        }
        let object = patched(&review, &response);
        let original: Pod =
            serde_json::from_value(review["request"]["object"].clone()).expect("fixture is a Pod");
        let pod: Pod = serde_json::from_value(object.clone())
            .unwrap_or_else(|err| panic!("{}: patched pod is not a Pod: {err}", e.fixture));
        check_injected(e, &original, &pod, native);

        // Admitting the patched pod again changes nothing.
        let again = webhook
            .review("/inject", &with_object(&review, object.clone()))
            .await;
        assert_eq!(again["allowed"], json!(true), "{}", e.fixture);
        assert!(
            again.get("patch").is_none(),
            "{}: second pass patched again: {again}",
            e.fixture
        );

        let mut pod_file = object;
        // kubernetes-validate needs a name; the API server gives generateName pods one.
        pod_file["metadata"]["name"] = json!(format!("{}-abcde", e.fixture));
        let path = webhook.dir.path().join(format!("{}.json", e.fixture));
        std::fs::write(&path, serde_json::to_vec_pretty(&pod_file).expect("json"))
            .expect("write pod");
        files.push(path);
    }
    kubernetes_validate(&files);
}

#[tokio::test]
async fn pods_get_a_native_sidecar_that_kubernetes_accepts() {
    let webhook = start(&[]);
    check_all_injected(&webhook, true).await;
    let metrics = webhook.metrics().await;
    let injected = format!(
        "corsair_webhook_injections_total{{result=\"injected\"}} {}",
        INJECTED.len()
    );
    let again = format!(
        "corsair_webhook_injections_total{{result=\"already_injected\"}} {}",
        INJECTED.len()
    );
    assert!(
        metrics.contains(&injected) && metrics.contains(&again),
        "{metrics}"
    );
}

#[tokio::test]
async fn container_mode_adds_a_regular_container() {
    let webhook = start(&["--sidecar-mode", "container"]);
    check_all_injected(&webhook, false).await;
}

/// A resource flag given empty leaves that quantity out of every injected sidecar (clusters
/// that run without CPU limits), and the pod is still one Kubernetes accepts.
#[tokio::test]
async fn an_empty_resource_flag_leaves_the_quantity_unset() {
    let webhook = start(&["--sidecar-cpu-limit=", "--sidecar-memory-request="]);
    let review = fixture("pod-named-port");
    let mut object = patched(&review, &webhook.review("/inject", &review).await);
    let pod: Pod = serde_json::from_value(object.clone()).expect("patched pod is a Pod");
    let spec = pod.spec.expect("spec");
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "corsair-proxy")
        .expect("a native sidecar");
    let resources = sidecar.resources.clone().expect("resources");
    let keys = |m: Option<std::collections::BTreeMap<String, _>>| {
        m.map(|m| m.into_keys().collect::<Vec<_>>())
    };
    assert_eq!(keys(resources.requests), Some(vec!["cpu".to_owned()]));
    assert_eq!(keys(resources.limits), Some(vec!["memory".to_owned()]));
    object["metadata"]["name"] = json!("unset-quantities-abcde");
    let path = webhook.dir.path().join("unset-quantities.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&object).expect("json")).expect("write pod");
    kubernetes_validate(&[path]);
}

#[tokio::test]
async fn skipped_pods_are_admitted_unchanged() {
    let webhook = start(&[]);
    for (name, warning) in [
        ("pod-host-network", Some("spec.hostNetwork")),
        ("pod-no-annotation", Some("corsair.dev/policy")),
        ("pod-already-injected", None),
    ] {
        let response = webhook.review("/inject", &fixture(name)).await;
        assert_eq!(response["allowed"], json!(true), "{name}");
        assert!(response.get("patch").is_none(), "{name}: {response}");
        let got = warnings(&response);
        match warning {
            Some(w) => assert!(got.len() == 1 && got[0].contains(w), "{name}: {got:?}"),
            None => assert!(got.is_empty(), "{name}: {got:?}"),
        }
    }
}

#[tokio::test]
async fn unfit_pods_are_refused_with_the_cause() {
    let webhook = start(&[]);
    for (name, cause) in [
        ("pod-no-ports", "corsair.dev/port"),
        ("pod-port-conflict", "spec.containers[0].ports[1]"),
        ("pod-broken-containers", "request.object.spec.containers"),
    ] {
        let response = webhook.review("/inject", &fixture(name)).await;
        assert_denied(&response, cause);
    }
}

#[tokio::test]
async fn policies_are_validated_with_every_finding() {
    let webhook = start(&[]);
    let valid = webhook.review("/validate", &fixture("policy-valid")).await;
    assert_eq!(valid["allowed"], json!(true), "{valid}");
    assert!(warnings(&valid).is_empty(), "{valid}");

    let invalid = webhook
        .review("/validate", &fixture("policy-invalid"))
        .await;
    assert_eq!(invalid["allowed"], json!(false));
    let message = invalid["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.allowOrigins[2]") && message.contains("has a path"),
        "{message}"
    );
    assert!(
        message.contains("spec.allowOrigins[1]") && message.contains("allowCredentials"),
        "{message}"
    );

    let typo = webhook
        .review("/validate", &fixture("policy-unknown-field"))
        .await;
    assert_denied(&typo, "spec.routes[0].allowOrigns");

    let linted = webhook
        .review("/validate", &fixture("policy-warnings"))
        .await;
    assert_eq!(linted["allowed"], json!(true));
    let got = warnings(&linted);
    assert_eq!(got.len(), 3, "{got:?}");
    for field in [
        "spec.maxAge",
        "spec.allowNullOrigin",
        "spec.allowOrigins[1]",
    ] {
        assert!(got.iter().any(|w| w.starts_with(field)), "{field}: {got:?}");
    }
    // A DELETE as the API server sends it: no object, the stored one (with the status the
    // controller wrote) as oldObject. Allowed, with a warning about the workloads that name it.
    let deleted = webhook
        .review("/validate", &fixture("policy-delete-in-use"))
        .await;
    assert_eq!(deleted["allowed"], json!(true), "{deleted}");
    let got = warnings(&deleted);
    assert!(
        got.len() == 1 && got[0].contains("shop/api") && got[0].contains("2 workloads"),
        "{got:?}"
    );
    let metrics = webhook.metrics().await;
    assert!(
        metrics.contains("corsair_webhook_validations_total{result=\"denied\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn garbage_gets_400_with_the_parse_error() {
    let webhook = start(&[]);
    let (status, body) = webhook
        .request(Method::POST, "/inject", b"{not json".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.starts_with("invalid AdmissionReview:") && body.contains("line 1"),
        "{body}"
    );

    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let (status, body) = webhook
        .request(
            Method::POST,
            "/validate",
            no_request.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("request field is missing"));

    let mut bad_uid = fixture("pod-named-port");
    bad_uid["request"]["uid"] = json!(42);
    let (status, body) = webhook
        .request(Method::POST, "/inject", bad_uid.to_string().into_bytes())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("request.uid"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // A CorsPolicy sent to the Pod webhook is refused, not patched.
    let response = webhook.review("/inject", &fixture("policy-valid")).await;
    assert_denied(&response, "request.kind");
}

#[tokio::test]
async fn oversized_reviews_are_refused() {
    let webhook = start(&[]);
    let mut review = fixture("pod-named-port");
    review["request"]["object"]["metadata"]["annotations"]["padding"] = json!("x".repeat(4 << 20));
    let (status, body) = webhook
        .request(Method::POST, "/inject", review.to_string().into_bytes())
        .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn only_post_to_a_webhook_path_is_served() {
    let webhook = start(&[]);
    let body = fixture("pod-named-port").to_string().into_bytes();
    for (method, path) in [
        (Method::GET, "/inject"),
        (Method::PUT, "/validate"),
        (Method::POST, "/"),
        (Method::POST, "/inject/extra"),
        (Method::GET, "/healthz"),
    ] {
        let (status, _) = webhook.request(method.clone(), path, body.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
    }
}

#[tokio::test]
async fn http2_is_negotiated_and_served() {
    let webhook = start(&[]);
    let h2 = client_tls(&webhook.ca, b"h2");
    let tcp = TcpStream::connect(webhook.addr).await.expect("connect");
    let stream = h2
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(stream);
    let review = fixture("pod-named-port");
    let (status, body) = send(
        &h2,
        webhook.addr,
        Method::POST,
        "/inject",
        review.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).expect("json");
    assert!(answer["response"]["patch"].is_string(), "{answer}");
}

#[tokio::test]
async fn sigterm_finishes_and_exits_cleanly() {
    let mut webhook = start(&[]);
    let (status, _) = webhook
        .request(
            Method::POST,
            "/inject",
            fixture("pod-named-port").to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let pid = webhook.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = webhook.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "webhook did not exit within 10 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `webhook::serve` in process: a certificate swapped into the store is served on the next
/// handshake without a restart, and shutdown stops the server cleanly.
#[tokio::test]
async fn swapped_certificate_is_served_without_restart() {
    use corsair_controller::webhook::{self, CertStore, InjectConfig, Metrics, WebhookState};

    let first = pki();
    let second = pki();
    let store = Arc::new(
        CertStore::from_pem(first.cert_pem.as_bytes(), first.key_pem.as_bytes()).expect("loads"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = WebhookState::new(InjectConfig::default(), Metrics::unregistered());
    let server = tokio::spawn(webhook::serve(listener, store.clone(), state, async {
        let _ = stopped.await;
    }));
    let body = || fixture("pod-named-port").to_string().into_bytes();

    let trusts_first = client_tls(&first.ca_der, b"http/1.1");
    let trusts_second = client_tls(&second.ca_der, b"http/1.1");
    let (status, _) = send(&trusts_first, addr, Method::POST, "/inject", body()).await;
    assert_eq!(status, StatusCode::OK);

    store
        .set_pem(second.cert_pem.as_bytes(), second.key_pem.as_bytes())
        .expect("swaps");
    let (status, _) = send(&trusts_second, addr, Method::POST, "/inject", body()).await;
    assert_eq!(status, StatusCode::OK);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let refused = trusts_first
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await;
    assert!(
        refused.is_err(),
        "the old CA must no longer verify the served certificate"
    );

    stop.send(()).expect("server is running");
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns after shutdown")
        .expect("serve task");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        !listening_here(addr),
        "still listening on {addr} after shutdown"
    );
}

/// A plain HTTP/1.1 GET on the admin port: status and body.
async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = TcpStream::connect(admin).await.expect("admin connects");
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("admin request");
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .await
        .expect("admin response");
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `/readyz` means ready: 200 once the listener is bound and the certificate loaded, 503 from
/// SIGTERM on, while a request still in flight is finished.
#[tokio::test]
async fn readyz_is_200_while_serving_and_503_while_draining() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut webhook = start(&[]);
    assert_eq!(
        admin_get(webhook.admin, "/readyz").await,
        (200, "ready\n".to_owned())
    );

    // A request in flight: its headers and the start of its body.
    let body = fixture("pod-named-port").to_string().into_bytes();
    let tcp = TcpStream::connect(webhook.addr).await.expect("connect");
    let mut tls = webhook
        .tls
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    let head = format!(
        "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.expect("send headers");
    tls.write_all(&body[..16])
        .await
        .expect("send part of the body");
    tls.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed = Command::new("kill")
        .args(["-TERM", &webhook.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = admin_get(webhook.admin, "/readyz").await;
        if status == 503 {
            assert_eq!(text, "not ready: shutting down\n");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz still {status} 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(admin_get(webhook.admin, "/healthz").await.0, 200);

    // The request in flight is still answered, then the process exits 0.
    tls.write_all(&body[16..]).await.expect("send the rest");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response))
        .await
        .expect("answered within 10 s")
        .expect("read the answer");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"patch\""), "{response}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = webhook.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "webhook did not exit within 10 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pem(der: &CertificateDer<'static>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// `corsair probe`, what the chart's `helm test` hook runs, against the real webhook over HTTPS:
/// it passes with the right CA, and fails, saying why, with another CA or a wrong path.
#[tokio::test]
async fn corsair_probe_checks_the_validating_webhook() {
    let webhook = start(&[]);
    let ca = webhook.dir.path().join("ca.crt");
    std::fs::write(&ca, pem(&webhook.ca)).expect("write CA");
    let probe = |url: String, ca: &Path| {
        Command::new(env!("CARGO_BIN_EXE_corsair"))
            .args(["probe", "--timeout", "5", "--url", &url, "--ca-file"])
            .arg(ca)
            .output()
            .expect("corsair probe runs")
    };
    let url = format!("https://localhost:{}/validate", webhook.addr.port());
    let out = probe(url.clone(), &ca);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok: a valid CorsPolicy is allowed"), "{text}");
    assert!(
        text.contains("ok: an invalid CorsPolicy is refused: spec.allowOrigins[0]"),
        "{text}"
    );
    let metrics = webhook.metrics().await;
    assert!(
        metrics.contains("corsair_webhook_validations_total{result=\"accepted\"} 1")
            && metrics.contains("corsair_webhook_validations_total{result=\"denied\"} 1"),
        "the webhook saw both reviews:\n{metrics}"
    );

    let other = webhook.dir.path().join("other-ca.crt");
    std::fs::write(&other, pem(&pki().ca_der)).expect("write other CA");
    let out = probe(url, &other);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED: TLS handshake"), "{text}");

    let out = probe(
        format!("https://localhost:{}/inject", webhook.addr.port()),
        &ca,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED"), "{text}");
}

/// A serving certificate that is its own root in `ca.crt` (what cert-manager's self-signed
/// Issuer writes, as an `issuerRef` may name): the probe trusts it as its own root.
#[tokio::test]
async fn corsair_probe_trusts_a_self_signed_serving_certificate() {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed cert");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).expect("write key");
    let mut child = Command::new(env!("CARGO_BIN_EXE_corsair"))
        .args(["webhook", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .env("CORSAIR_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("corsair webhook starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .expect("an address line")
        .expect("UTF-8");
    let addr: Option<SocketAddr> = line
        .strip_prefix("webhook listening on https://")
        .and_then(|a| a.parse().ok());
    let out = addr.map(|addr| {
        Command::new(env!("CARGO_BIN_EXE_corsair"))
            .args(["probe", "--timeout", "5", "--url"])
            .arg(format!("https://localhost:{}/validate", addr.port()))
            .arg("--ca-file")
            .arg(dir.path().join("tls.crt"))
            .output()
            .expect("corsair probe runs")
    });
    let _ = child.kill();
    let _ = child.wait();
    let out = out.unwrap_or_else(|| panic!("no address in {line:?}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
}

/// `fut`'s output, or a panic naming `what` when it takes more than 10 s.
async fn timed<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"))
}

/// Hostile AdmissionReviews: each gets a clear denial or a 4xx naming the cause, promptly.
#[tokio::test]
async fn hostile_reviews_get_a_denial_or_a_4xx() {
    let webhook = start(&[]);

    // A 3 MiB pod: more than the API server itself would send (--max-request-bytes, 3 MiB).
    let mut big = fixture("pod-named-port");
    big["request"]["object"]["metadata"]["annotations"]["padding"] = json!("x".repeat(3 << 20));
    let (status, body) = timed(
        "3 MiB pod",
        webhook.request(Method::POST, "/inject", big.to_string().into_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("--max-request-bytes"));

    // JSON nested 10,000 deep: refused by the parser's depth limit, not by the stack.
    let nested = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"","version":"v1","kind":"Pod"}},"operation":"CREATE","object":{}{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    for path in ["/inject", "/validate"] {
        let (status, body) = timed(
            "deep JSON",
            webhook.request(Method::POST, path, nested.clone().into_bytes()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            String::from_utf8_lossy(&body).contains("recursion limit"),
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    // Wrong kinds: each webhook admits only its own.
    let mut deployment = fixture("pod-named-port");
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let response = timed("Deployment", webhook.review("/inject", &deployment)).await;
    assert_denied(&response, "not Deployment");
    let response = timed(
        "Pod to /validate",
        webhook.review("/validate", &fixture("pod-named-port")),
    )
    .await;
    assert_denied(&response, "request.kind");

    // Missing fields: no uid or kind is a 400 naming it; no object on CREATE is a denial.
    for field in ["uid", "kind", "operation"] {
        let mut review = fixture("pod-named-port");
        if let Some(request) = review["request"].as_object_mut() {
            request.remove(field);
        }
        let (status, body) = timed(
            "missing field",
            webhook.request(Method::POST, "/inject", review.to_string().into_bytes()),
        )
        .await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert!(body.contains(field), "{field}: {body}");
    }
    let mut no_object = fixture("pod-named-port");
    if let Some(request) = no_object["request"].as_object_mut() {
        request.remove("object");
    }
    let response = timed("no object", webhook.review("/inject", &no_object)).await;
    assert_denied(&response, "request.object");
    let mut no_spec = fixture("policy-valid");
    if let Some(object) = no_spec["request"]["object"].as_object_mut() {
        object.remove("spec");
    }
    let response = timed("policy without spec", webhook.review("/validate", &no_spec)).await;
    assert_denied(&response, "spec");
}

/// A pod with 1,000 containers is injected like any other: one proxy added, the 1,000 kept.
#[tokio::test]
async fn a_pod_with_a_thousand_containers_is_injected() {
    let webhook = start(&[]);
    let mut review = fixture("pod-named-port");
    let first = review["request"]["object"]["spec"]["containers"][0].clone();
    let mut containers = vec![first];
    for i in 1..1000 {
        containers.push(json!({"name": format!("worker-{i}"), "image": "busybox"}));
    }
    review["request"]["object"]["spec"]["containers"] = json!(containers);
    let response =
        tokio::time::timeout(Duration::from_secs(10), webhook.review("/inject", &review))
            .await
            .expect("answered within 10 s");
    let pod: Pod = serde_json::from_value(patched(&review, &response)).expect("a Pod");
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.containers.len(), 1000);
    let proxies = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.name.contains("corsair"))
        .count();
    assert_eq!(proxies, 1, "one native sidecar");
}

/// A body that never arrives is answered 408 after --request-timeout; a body over
/// --max-request-bytes is refused with 413 once that many bytes have been read.
#[tokio::test]
async fn slow_and_oversized_bodies_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let webhook = start(&["--request-timeout", "1", "--max-request-bytes", "1000"]);
    let raw = |head: String| {
        let tls = webhook.tls.clone();
        let addr = webhook.addr;
        async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            let mut stream = tls.connect(name, tcp).await.expect("TLS");
            stream.write_all(head.as_bytes()).await.expect("write head");
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        raw("POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-length: 500\r\nconnection: close\r\n\r\n{".into()),
    )
    .await
    .expect("answered, not hung");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        raw(format!(
            "POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2000\r\nconnection: close\r\n\r\n{}",
            "x".repeat(2000)
        )),
    )
    .await
    .expect("answered at once");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 1000 bytes"), "{answer}");
}

/// A connection that finishes its TLS handshake and sends nothing, or only the start of the
/// HTTP/2 preface, gives its slot back after the 10 s handshake timeout: with --max-connections 1
/// a request on another connection waits for that, not for ever.
#[tokio::test]
async fn a_silent_connection_gives_its_slot_back() {
    use tokio::io::AsyncWriteExt;
    let webhook = start(&["--max-connections", "1"]);
    for (alpn, sent) in [(&b"http/1.1"[..], &b""[..]), (b"h2", b"PRI * HTTP/2.0\r\n")] {
        let tcp = TcpStream::connect(webhook.addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut silent = client_tls(&webhook.ca, alpn)
            .connect(name, tcp)
            .await
            .expect("TLS");
        silent.write_all(sent).await.expect("write");
        silent.flush().await.expect("flush");
        let body = fixture("pod-named-port").to_string().into_bytes();
        let started = std::time::Instant::now();
        let (status, _) = tokio::time::timeout(
            Duration::from_secs(25),
            send(&webhook.tls, webhook.addr, Method::POST, "/inject", body),
        )
        .await
        .expect("served once the silent connection was dropped");
        assert_eq!(status, StatusCode::OK);
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "served beside the silent connection, above --max-connections: {:?}",
            started.elapsed()
        );
        drop(silent);
    }
}

/// A connection that made its requests and then stays open without one gives its slot back:
/// over HTTP/2 after --idle-timeout (with GOAWAY), over HTTP/1.1 after hyper's 10 s header
/// timeout, which also runs between requests. With --max-connections 1 an idle client would
/// otherwise keep every other one waiting.
#[tokio::test]
async fn an_idle_connection_gives_its_slot_back() {
    let webhook = start(&["--max-connections", "1", "--idle-timeout", "2"]);
    let body = fixture("pod-named-port").to_string().into_bytes();
    let request = |body: Vec<u8>| {
        Request::builder()
            .method(Method::POST)
            .uri(format!("https://localhost:{}/inject", webhook.addr.port()))
            .body(Full::new(Bytes::from(body)))
            .expect("request")
    };
    // Over HTTP/2 under the 10 s the HTTP/1.1 case takes, so that only --idle-timeout can pass it.
    for (alpn, within) in [(&b"h2"[..], 8), (b"http/1.1", 16)] {
        let tcp = TcpStream::connect(webhook.addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let stream = client_tls(&webhook.ca, alpn)
            .connect(name, tcp)
            .await
            .expect("TLS");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
        let io = TokioIo::new(stream);
        // The idle connection: one request answered, its sender kept, its task watched.
        let (idle_status, _sender, closed) = if alpn == b"h2" {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("h2 handshake");
            let closed = tokio::spawn(conn);
            let status = sender
                .send_request(request(body.clone()))
                .await
                .expect("answer")
                .status();
            (
                status,
                Box::new(sender) as Box<dyn std::any::Any + Send>,
                closed,
            )
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("http/1.1 handshake");
            let closed = tokio::spawn(conn);
            let status = sender
                .send_request(request(body.clone()))
                .await
                .expect("answer")
                .status();
            (
                status,
                Box::new(sender) as Box<dyn std::any::Any + Send>,
                closed,
            )
        };
        assert_eq!(idle_status, StatusCode::OK);
        let started = std::time::Instant::now();
        let (status, _) = tokio::time::timeout(
            Duration::from_secs(within),
            send(
                &webhook.tls,
                webhook.addr,
                Method::POST,
                "/inject",
                body.clone(),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{alpn:?}: the idle connection kept the only slot"));
        assert_eq!(status, StatusCode::OK);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{alpn:?}: served beside the idle connection, above --max-connections"
        );
        // Ended, with or without an error: what counts is that the server closed it.
        let _ended = tokio::time::timeout(Duration::from_secs(2), closed)
            .await
            .unwrap_or_else(|_| panic!("{alpn:?}: the server did not close the idle connection"))
            .expect("connection task");
    }
}

/// The protocol is the one ALPN agreed, not a guess from the first bytes: without ALPN a client
/// is served HTTP/1.1, and one that speaks HTTP/2 there is not served (an HTTP/2 connection
/// served without ALPN would escape the HTTP/2 idle check).
#[tokio::test]
async fn the_protocol_is_the_one_alpn_agreed() {
    let webhook = start(&[]);
    let no_alpn = client_tls(&webhook.ca, b"");
    let body = fixture("pod-named-port").to_string().into_bytes();
    let (status, _) = send(
        &no_alpn,
        webhook.addr,
        Method::POST,
        "/inject",
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let tcp = TcpStream::connect(webhook.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let stream = no_alpn.connect(name, tcp).await.expect("TLS");
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let answered = tokio::time::timeout(Duration::from_secs(5), async move {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        let request = Request::post(format!("https://localhost:{}/inject", webhook.addr.port()))
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        sender.send_request(request).await
    })
    .await
    .expect("the HTTP/2 attempt ends within 5 s");
    assert!(
        answered.is_err(),
        "HTTP/2 without ALPN was served: {answered:?}"
    );
}

/// Reads one answer of the webhook's 404, whose body is "not found\n".
async fn read_not_found(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> String {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::new();
    let mut buf = [0u8; 1024];
    while !read.ends_with(b"not found\n") {
        let n = tls.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&read));
        read.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(read).expect("text")
}

/// Over HTTP/1.1 nothing of ours closes a connection between requests (hyper's 10 s header
/// timeout does): a next request whose head arrives slowly, after --idle-timeout, is served.
#[tokio::test]
async fn a_slow_next_request_head_is_served_over_http1() {
    use tokio::io::AsyncWriteExt;
    let webhook = start(&["--idle-timeout", "1"]);
    let tcp = TcpStream::connect(webhook.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = webhook.tls.connect(name, tcp).await.expect("TLS");
    tls.write_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    assert!(read_not_found(&mut tls).await.starts_with("HTTP/1.1 404"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    tls.write_all(b"GET /b HTTP/1.1\r\n").await.expect("write");
    tls.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tls.write_all(b"Host: localhost\r\n\r\n")
        .await
        .expect("write");
    assert!(read_not_found(&mut tls).await.starts_with("HTTP/1.1 404"));
}

/// With --max-connections 2, a third connection is not served while two are open, and is
/// served as soon as one closes.
#[tokio::test]
async fn connections_beyond_the_cap_wait() {
    let webhook = start(&["--max-connections", "2"]);
    let hold = || async {
        let tcp = TcpStream::connect(webhook.addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        webhook.tls.connect(name, tcp).await.expect("TLS")
    };
    let first = hold().await;
    let second = hold().await;
    let body = fixture("pod-named-port").to_string().into_bytes();
    let (tls, addr) = (webhook.tls.clone(), webhook.addr);
    let third = tokio::spawn(async move { send(&tls, addr, Method::POST, "/inject", body).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beside two open ones"
    );
    drop(first);
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a connection closed")
        .expect("task");
    assert_eq!(status, StatusCode::OK);
    drop(second);
}

/// An HTTP/1.1 client that sends one review and never reads the answer gives its connection
/// permit (and the answer's memory) back within 30 s: an answer nobody reads is given up.
#[tokio::test]
async fn a_client_that_never_reads_its_answer_gives_its_slot_back() {
    use tokio::io::AsyncWriteExt;
    let webhook = start(&["--max-connections", "1"]);
    // An invalid policy with many origins: one denial message per origin, about 10x the body.
    let origins: Vec<String> = (0..200_000).map(|i| format!("h{i}")).collect();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "operation": "CREATE", "namespace": "default",
            "kind": {"group": "corsair.dev", "version": "v1alpha1", "kind": "CorsPolicy"},
            "object": {"apiVersion": "corsair.dev/v1alpha1", "kind": "CorsPolicy",
                "metadata": {"name": "p", "namespace": "default"},
                "spec": {"allowOrigins": origins}}}
    });
    let body = serde_json::to_vec(&review).expect("json");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket.connect(webhook.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut stalled = webhook.tls.connect(name, tcp).await.expect("TLS");
    let head = format!(
        "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stalled.write_all(head.as_bytes()).await.expect("head");
    stalled.write_all(&body).await.expect("body");
    stalled.flush().await.expect("flush");
    // Never read from `stalled` again: 20 s without a request in flight, then 10 s for the
    // graceful close, which cannot write the answer either.
    let small = fixture("pod-named-port").to_string().into_bytes();
    let served = tokio::time::timeout(
        Duration::from_secs(40),
        send(&webhook.tls, webhook.addr, Method::POST, "/inject", small),
    )
    .await;
    assert!(
        served.is_ok(),
        "a client that stopped reading still holds the only connection slot after 40 s"
    );
    drop(stalled);
}
