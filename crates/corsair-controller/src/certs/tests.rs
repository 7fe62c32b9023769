use http::{Method, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::*;
use crate::fixtures::mock_client;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn config() -> CertConfig {
    CertConfig {
        namespace: "corsair-system".into(),
        secret_name: "corsair-webhook-tls".into(),
        ca_secret_name: "corsair-webhook-ca".into(),
        service_name: "corsair-webhook".into(),
        mutating_webhook: "corsair-inject".into(),
        validating_webhook: "corsair-validate".into(),
    }
}

fn dns() -> Vec<String> {
    service_dns_names("corsair-webhook", "corsair-system")
}

fn count_certs(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// A CA and a serving certificate from it, as the leader makes them.
fn issued(at: Timestamp) -> (Authority, Bundle) {
    let ca = Authority::generate(at, None).expect("CA");
    let bundle = ca.issue(dns(), at).expect("serving certificate");
    (ca, bundle)
}

#[test]
fn generated_bundle_is_pem_and_fresh() {
    let (ca, bundle) = issued(now());
    assert_eq!(count_certs(&ca.ca_pem), 1);
    assert_eq!(bundle.ca_pem, ca.ca_pem);
    assert_eq!(count_certs(&bundle.cert_pem), 1);
    assert!(bundle.key_pem.contains("PRIVATE KEY"));
    assert!(ca.ca_key_pem.contains("PRIVATE KEY"));
    assert_ne!(bundle.key_pem, ca.ca_key_pem);
    assert_ne!(bundle.cert_pem, bundle.ca_pem);
    assert!(!bundle.needs_renewal(now()));
    assert!(!ca.needs_rotation(now()));
    assert_eq!(bundle.cert_not_after, now() + CERT_VALIDITY);
    // The CA key never shows in debug output (logs, panic messages).
    assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
}

#[test]
fn renewal_happens_well_before_expiry() {
    let (ca, bundle) = issued(now());
    let day = SignedDuration::from_secs(24 * 3600);
    let cert_due = bundle.cert_not_after - CERT_RENEW_BEFORE;
    assert!(!bundle.needs_renewal(cert_due - day));
    assert!(bundle.needs_renewal(cert_due));
    // At least 100 days of margin: a controller that is down for weeks still renews in time.
    assert!(CERT_RENEW_BEFORE >= SignedDuration::from_secs(100 * 24 * 3600));
    let ca_due = ca.ca_not_after - CA_RENEW_BEFORE;
    assert!(!ca.needs_rotation(ca_due - day));
    assert!(ca.needs_rotation(ca_due));
}

#[test]
fn reissue_keeps_the_ca() {
    let (ca, bundle) = issued(now());
    let later = now() + SignedDuration::from_secs(250 * 24 * 3600);
    let next = ca.issue(dns(), later).expect("reissues");
    assert_eq!(next.ca_pem, bundle.ca_pem);
    assert_ne!(next.cert_pem, bundle.cert_pem);
    assert_eq!(next.cert_not_after, later + CERT_VALIDITY);
    assert!(!next.needs_renewal(later));
}

#[test]
fn ca_rotation_keeps_the_old_ca_trusted() {
    let (ca, _) = issued(now());
    let rotated = Authority::generate(now(), Some(&ca.ca_pem)).expect("rotates");
    assert_eq!(count_certs(&rotated.ca_pem), 2);
    assert!(rotated.ca_pem.ends_with(&ca.ca_pem));
    assert_ne!(rotated.ca_key_pem, ca.ca_key_pem);
    // A second rotation drops the oldest: the bundle never grows without bound.
    let again = Authority::generate(now(), Some(&rotated.ca_pem)).expect("rotates");
    assert_eq!(count_certs(&again.ca_pem), 2);
}

#[test]
fn secrets_round_trip_and_bad_secrets_name_the_problem() {
    let (ca, bundle) = issued(now());
    let serving = bundle.to_secret(&config(), None);
    assert_eq!(serving.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        serving.metadata.name.as_deref(),
        Some("corsair-webhook-tls")
    );
    let keys: Vec<&str> = serving
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        keys,
        ["ca.crt", "tls.crt", "tls.key"],
        "no CA key in the serving Secret"
    );
    assert_eq!(Bundle::from_secret(&serving).expect("reads back"), bundle);

    let ca_secret = ca.to_secret(&config(), None);
    assert_eq!(ca_secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        ca_secret.metadata.name.as_deref(),
        Some("corsair-webhook-ca")
    );
    let keys: Vec<&str> = ca_secret
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(keys, ["ca.crt", "ca.key"]);
    assert_eq!(Authority::from_secret(&ca_secret).expect("reads back"), ca);

    let mut missing = serving.clone();
    if let Some(data) = missing.data.as_mut() {
        data.remove(KEY_KEY);
    }
    let err = Bundle::from_secret(&missing).expect_err("tls.key missing");
    assert!(err.to_string().contains("tls.key"), "{err}");

    let mut garbled = serving;
    if let Some(a) = garbled.metadata.annotations.as_mut() {
        a.insert(CERT_NOT_AFTER.into(), "soon".into());
    }
    let err = Bundle::from_secret(&garbled).expect_err("bad timestamp");
    assert!(err.to_string().contains("soon"), "{err}");
}

#[test]
fn ca_bundle_patch_only_when_needed() {
    let ca = ByteString(b"CA".to_vec());
    let webhooks = vec![("a.corsair.dev".to_owned(), Some(ca.clone()))];
    assert_eq!(ca_bundle_patch(&webhooks, &ca), None);
    let stale = vec![
        (
            "a.corsair.dev".to_owned(),
            Some(ByteString(b"OLD".to_vec())),
        ),
        ("b.corsair.dev".to_owned(), None),
    ];
    let patch = ca_bundle_patch(&stale, &ca).expect("needs a patch");
    assert_eq!(
        patch,
        json!({"webhooks": [
            {"name": "a.corsair.dev", "clientConfig": {"caBundle": "Q0E="}},
            {"name": "b.corsair.dev", "clientConfig": {"caBundle": "Q0E="}},
        ]})
    );
}

const SECRETS: &str = "/api/v1/namespaces/corsair-system/secrets";
const CA_SECRET: &str = "/api/v1/namespaces/corsair-system/secrets/corsair-webhook-ca";
const SERVING_SECRET: &str = "/api/v1/namespaces/corsair-system/secrets/corsair-webhook-tls";
const MUTATING: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/corsair-inject";
const VALIDATING: &str =
    "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/corsair-validate";

fn not_found() -> serde_json::Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
}

/// `secret` as the API server returns it: JSON, with a resourceVersion.
fn stored(mut secret: k8s_openapi::api::core::v1::Secret) -> serde_json::Value {
    secret.metadata.resource_version = Some("7".into());
    serde_json::to_value(secret).expect("secret serialises")
}

fn data_keys(body: &serde_json::Value) -> Vec<String> {
    body["data"]
        .as_object()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

/// A leader's round started at `at`, its first two calls answered: the CA Secret and the
/// serving Secret read, each answered with the Secret given (as stored) or 404.
async fn leader_round(
    at: Timestamp,
    ca: Option<k8s_openapi::api::core::v1::Secret>,
    serving: Option<k8s_openapi::api::core::v1::Secret>,
) -> (
    tokio::task::JoinHandle<crate::Result<Bundle>>,
    crate::fixtures::ApiServerVerifier,
) {
    let (client, mut server) = mock_client();
    let manager = Manager::new(client, config());
    let task = tokio::spawn(async move { manager.reconcile(at).await });
    for (path, secret) in [(CA_SECRET, ca), (SERVING_SECRET, serving)] {
        let call = server.next_call().await;
        call.expect(Method::GET, path);
        match secret {
            Some(secret) => call.respond(StatusCode::OK, &stored(secret)),
            None => call.respond(StatusCode::NOT_FOUND, &not_found()),
        }
    }
    (task, server)
}

/// The mutating configuration as the API server returns it, its webhook's `caBundle` set to
/// `ca_pem` if given.
fn mutating(ca_pem: Option<&str>) -> serde_json::Value {
    let mut client_config =
        json!({"service": {"name": "corsair-webhook", "namespace": "corsair-system"}});
    if let Some(ca_pem) = ca_pem {
        client_config["caBundle"] = json!(ByteString(ca_pem.as_bytes().to_vec()));
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": "corsair-inject"},
           "webhooks": [{"name": "inject.corsair.dev", "clientConfig": client_config,
                         "sideEffects": "None", "admissionReviewVersions": ["v1"]}]})
}

/// The leader's caBundle round: both configurations read, the missing one skipped.
async fn expect_publish(server: &mut crate::fixtures::ApiServerVerifier, ca: &str) {
    let call = server.next_call().await;
    call.expect(Method::GET, MUTATING);
    call.respond(StatusCode::OK, &mutating(None));
    let call = server.next_call().await;
    call.expect(Method::PATCH, MUTATING);
    assert_eq!(
        call.query.get("fieldManager").map(String::as_str),
        Some(CERT_MANAGER)
    );
    assert_eq!(
        call.body,
        json!({"webhooks": [{"name": "inject.corsair.dev", "clientConfig": {"caBundle": ca}}]})
    );
    call.respond(
        StatusCode::OK,
        &json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": "corsair-inject"}}),
    );
    let call = server.next_call().await;
    call.expect(Method::GET, VALIDATING);
    call.respond(StatusCode::NOT_FOUND, &not_found());
}

#[tokio::test]
async fn leader_creates_both_secrets_and_publishes_the_ca() {
    let (task, mut server) = leader_round(now(), None, None).await;

    // The CA Secret first: the CA and its key, nothing else.
    let call = server.next_call().await;
    call.expect(Method::POST, SECRETS);
    assert_eq!(call.body["metadata"]["name"], "corsair-webhook-ca");
    assert_eq!(call.body["type"], "Opaque");
    assert_eq!(data_keys(&call.body), ["ca.crt", "ca.key"]);
    let ca = call.body["data"]["ca.crt"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!ca.is_empty());
    call.echo();

    // Then the CA is published, before any certificate from it is served.
    expect_publish(&mut server, &ca).await;

    // Then the serving Secret: the certificate, its key and the public CA; no CA key.
    let call = server.next_call().await;
    call.expect(Method::POST, SECRETS);
    assert_eq!(call.body["metadata"]["name"], "corsair-webhook-tls");
    assert_eq!(call.body["type"], "kubernetes.io/tls");
    assert_eq!(data_keys(&call.body), ["ca.crt", "tls.crt", "tls.key"]);
    assert_eq!(call.body["data"]["ca.crt"], json!(ca));
    call.echo();

    let bundle = task.await.expect("task").expect("reconcile succeeds");
    assert_eq!(
        ByteString(bundle.ca_pem.into_bytes()),
        serde_json::from_value::<ByteString>(json!(ca)).expect("base64")
    );
    server.expect_no_more_calls().await;
}

/// A serving replica reads the serving Secret and nothing else: never the CA Secret.
#[tokio::test]
async fn a_serving_replica_reads_only_the_serving_secret() {
    let (ca, bundle) = issued(now());
    let _ = ca;
    let (client, mut server) = mock_client();
    let manager = Manager::new(client, config());
    let task = tokio::spawn(async move { manager.load().await });
    let call = server.next_call().await;
    call.expect(Method::GET, SERVING_SECRET);
    call.respond(StatusCode::OK, &stored(bundle.to_secret(&config(), None)));
    let loaded = task.await.expect("task").expect("loads");
    assert_eq!(loaded, Some(bundle));
    server.expect_no_more_calls().await;
}

/// With both Secrets fresh the leader reads them and writes neither.
#[tokio::test]
async fn a_fresh_pair_is_left_alone() {
    let (ca, bundle) = issued(now());
    let later = now() + SignedDuration::from_secs(24 * 3600);
    let (task, mut server) = leader_round(
        later,
        Some(ca.to_secret(&config(), None)),
        Some(bundle.to_secret(&config(), None)),
    )
    .await;
    let encoded = serde_json::to_value(ByteString(ca.ca_pem.clone().into_bytes())).expect("b64");
    expect_publish(&mut server, encoded.as_str().unwrap_or_default()).await;
    assert_eq!(task.await.expect("task").expect("reconciles"), bundle);
    server.expect_no_more_calls().await;
}

/// The single Secret of earlier versions (CA key beside the serving certificate) is split: the
/// same CA moves to the CA Secret, so caBundle does not change, and the serving Secret is
/// rewritten without the CA key.
#[tokio::test]
async fn an_old_combined_secret_is_split() {
    let (ca, bundle) = issued(now());
    let mut combined = bundle.to_secret(&config(), None);
    if let Some(data) = combined.data.as_mut() {
        data.insert(
            CA_KEY_KEY.into(),
            ByteString(ca.ca_key_pem.clone().into_bytes()),
        );
    }
    if let Some(a) = combined.metadata.annotations.as_mut() {
        a.insert(CA_NOT_AFTER.into(), ca.ca_not_after.to_string());
    }
    let (task, mut server) = leader_round(now(), None, Some(combined)).await;

    let call = server.next_call().await;
    call.expect(Method::POST, SECRETS);
    assert_eq!(call.body["metadata"]["name"], "corsair-webhook-ca");
    let moved: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(call.body.clone()).expect("a Secret");
    assert_eq!(
        Authority::from_secret(&moved).expect("a CA"),
        ca,
        "the same CA"
    );
    call.echo();
    let encoded = serde_json::to_value(ByteString(ca.ca_pem.clone().into_bytes())).expect("b64");
    expect_publish(&mut server, encoded.as_str().unwrap_or_default()).await;

    let call = server.next_call().await;
    call.expect(Method::PUT, SERVING_SECRET);
    assert_eq!(call.body["metadata"]["resourceVersion"], "7");
    assert_eq!(data_keys(&call.body), ["ca.crt", "tls.crt", "tls.key"]);
    let rewritten: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(call.body.clone()).expect("a Secret");
    assert_eq!(
        Bundle::from_secret(&rewritten).expect("a bundle"),
        bundle,
        "same certificate"
    );
    call.echo();
    assert_eq!(task.await.expect("task").expect("reconciles"), bundle);
    server.expect_no_more_calls().await;
}

/// A CA near its end is rotated: the CA Secret is replaced (old CA kept in the bundle) and a
/// serving certificate from the new CA replaces the old one.
#[tokio::test]
async fn an_expiring_ca_is_rotated_and_the_certificate_reissued() {
    let (ca, bundle) = issued(now());
    let due = ca.ca_not_after - CA_RENEW_BEFORE;
    let (task, mut server) = leader_round(
        due,
        Some(ca.to_secret(&config(), None)),
        Some(bundle.to_secret(&config(), None)),
    )
    .await;

    let call = server.next_call().await;
    call.expect(Method::PUT, CA_SECRET);
    let rotated: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(call.body.clone()).expect("a Secret");
    let rotated = Authority::from_secret(&rotated).expect("a CA");
    assert_ne!(rotated.ca_key_pem, ca.ca_key_pem);
    assert!(
        rotated.ca_pem.ends_with(&ca.ca_pem),
        "the old CA stays trusted"
    );
    call.echo();
    // The new CA is published before a certificate from it is served.
    let encoded =
        serde_json::to_value(ByteString(rotated.ca_pem.clone().into_bytes())).expect("b64");
    expect_publish(&mut server, encoded.as_str().unwrap_or_default()).await;
    let call = server.next_call().await;
    call.expect(Method::PUT, SERVING_SECRET);
    assert_eq!(data_keys(&call.body), ["ca.crt", "tls.crt", "tls.key"]);
    call.echo();
    let next = task.await.expect("task").expect("reconciles");
    assert_eq!(next.ca_pem, rotated.ca_pem);
    assert_ne!(next.cert_pem, bundle.cert_pem);
    server.expect_no_more_calls().await;
}

/// Handshakes with a client that trusts only `ca_pem`, asking for `server_name`.
async fn handshake(bundle: &Bundle, ca_pem: &str, server_name: &str) -> Result<(), String> {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let store = Arc::new(
        crate::webhook::CertStore::from_pem(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes())
            .map_err(|e| format!("the webhook does not load the certificate: {e}"))?,
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        store.server_config().map_err(|e| e.to_string())?,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let result = connector
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    server.abort();
    result
}

#[tokio::test]
async fn api_server_trusts_the_served_certificate_over_real_tls() {
    let (ca, bundle) = issued(Timestamp::now());
    for name in dns() {
        handshake(&bundle, &bundle.ca_pem, &name)
            .await
            .unwrap_or_else(|e| panic!("handshake as {name}: {e}"));
    }
    let err = handshake(&bundle, &bundle.ca_pem, "other.corsair-system.svc")
        .await
        .expect_err("a name the certificate does not cover");
    assert!(
        err.contains("NotValidForName") || err.contains("name"),
        "{err}"
    );

    // A reissued certificate is trusted through the same caBundle.
    let reissued = ca.issue(dns(), Timestamp::now()).expect("reissues");
    handshake(&reissued, &bundle.ca_pem, &dns()[0])
        .await
        .expect("reissued certificate verifies against the published CA");

    // After a CA rotation the bundle trusts both the new and the old serving certificate.
    let rotated = Authority::generate(Timestamp::now(), Some(&ca.ca_pem))
        .and_then(|ca| ca.issue(dns(), Timestamp::now()))
        .expect("rotates");
    handshake(&rotated, &rotated.ca_pem, &dns()[0])
        .await
        .expect("new certificate verifies against the rotated bundle");
    handshake(&bundle, &rotated.ca_pem, &dns()[0])
        .await
        .expect("old certificate still verifies during the rotation");
    let (_, stranger) = issued(Timestamp::now());
    assert!(
        handshake(&stranger, &bundle.ca_pem, &dns()[0])
            .await
            .is_err()
    );
}

/// The CA Secret gone (deleted by hand, or left out of a restore) or unusable while the serving
/// Secret remains: every replica keeps serving its certificate from the old CA until it reads
/// the serving Secret again (every 30 s), so the `caBundle` published in the same round must
/// still trust the old CA beside the new one, as a rotation does.
#[tokio::test]
async fn a_lost_ca_secret_keeps_the_served_certificates_ca_trusted() {
    let (old, bundle) = issued(now());
    let later = now() + SignedDuration::from_secs(24 * 3600);
    let (task, mut server) =
        leader_round(later, None, Some(bundle.to_secret(&config(), None))).await;
    let call = server.next_call().await;
    call.expect(Method::POST, SECRETS);
    call.echo();
    let call = server.next_call().await;
    call.expect(Method::GET, MUTATING);
    call.respond(StatusCode::OK, &mutating(Some(&old.ca_pem)));
    let call = server.next_call().await;
    call.expect(Method::PATCH, MUTATING);
    let published: ByteString =
        serde_json::from_value(call.body["webhooks"][0]["clientConfig"]["caBundle"].clone())
            .expect("base64");
    let published = String::from_utf8(published.0).expect("PEM");
    call.respond(
        StatusCode::OK,
        &json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": "corsair-inject"}}),
    );
    let call = server.next_call().await;
    call.expect(Method::GET, VALIDATING);
    call.respond(StatusCode::NOT_FOUND, &not_found());
    let call = server.next_call().await;
    call.expect(Method::PUT, SERVING_SECRET);
    call.echo();
    let _ = task.await;
    assert!(
        published.contains(old.ca_pem.trim_end()),
        "the caBundle published holds {} certificate(s), none of them the CA of the certificate \
         every replica serves until its next read of the serving Secret",
        count_certs(&published)
    );
}

/// A CA rotation whose `caBundle` patch fails (the API server refuses it, or the leader loses
/// its connection) leaves the serving Secret as it was: every replica goes on serving a
/// certificate the published bundle trusts, and the next round publishes and then reissues.
#[tokio::test]
async fn a_failed_ca_bundle_patch_leaves_the_served_certificate_alone() {
    let (ca, bundle) = issued(now());
    let due = ca.ca_not_after - CA_RENEW_BEFORE;
    let (task, mut server) = leader_round(
        due,
        Some(ca.to_secret(&config(), None)),
        Some(bundle.to_secret(&config(), None)),
    )
    .await;
    let call = server.next_call().await;
    call.expect(Method::PUT, CA_SECRET);
    call.echo();
    let call = server.next_call().await;
    call.expect(Method::GET, MUTATING);
    call.respond(StatusCode::OK, &mutating(Some(&ca.ca_pem)));
    let call = server.next_call().await;
    call.expect(Method::PATCH, MUTATING);
    call.respond(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError",
                "message": "etcdserver: request timed out", "code": 500}),
    );
    let err = task
        .await
        .expect("task")
        .expect_err("the round fails with the patch");
    assert!(err.to_string().contains("caBundle"), "{err}");
    // No write of the serving Secret: its certificate, from the CA still published, is kept.
    server.expect_no_more_calls().await;
}
