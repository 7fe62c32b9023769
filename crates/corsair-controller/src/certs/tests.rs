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

#[test]
fn generated_bundle_is_pem_and_fresh() {
    let bundle = generate(dns(), now(), None).expect("generates");
    assert_eq!(count_certs(&bundle.ca_pem), 1);
    assert_eq!(count_certs(&bundle.cert_pem), 1);
    assert!(bundle.key_pem.contains("PRIVATE KEY"));
    assert_ne!(bundle.cert_pem, bundle.ca_pem);
    assert_eq!(bundle.renewal(now()), Renewal::Fresh);
    assert_eq!(bundle.cert_not_after, now() + CERT_VALIDITY);
}

#[test]
fn renewal_happens_well_before_expiry() {
    let bundle = generate(dns(), now(), None).expect("generates");
    let day = SignedDuration::from_secs(24 * 3600);
    let cert_due = bundle.cert_not_after - CERT_RENEW_BEFORE;
    assert_eq!(bundle.renewal(cert_due - day), Renewal::Fresh);
    assert_eq!(bundle.renewal(cert_due), Renewal::Cert);
    // At least 100 days of margin: a controller that is down for weeks still renews in time.
    assert!(CERT_RENEW_BEFORE >= SignedDuration::from_secs(100 * 24 * 3600));
    let ca_due = bundle.ca_not_after - CA_RENEW_BEFORE;
    assert_eq!(bundle.renewal(ca_due), Renewal::Ca);
}

#[test]
fn reissue_keeps_the_ca() {
    let bundle = generate(dns(), now(), None).expect("generates");
    let later = now() + SignedDuration::from_secs(250 * 24 * 3600);
    let next = bundle.reissue(dns(), later).expect("reissues");
    assert_eq!(next.ca_pem, bundle.ca_pem);
    assert_eq!(next.ca_key_pem, bundle.ca_key_pem);
    assert_ne!(next.cert_pem, bundle.cert_pem);
    assert_eq!(next.cert_not_after, later + CERT_VALIDITY);
    assert_eq!(next.renewal(later), Renewal::Fresh);
}

#[test]
fn ca_rotation_keeps_the_old_ca_trusted() {
    let bundle = generate(dns(), now(), None).expect("generates");
    let rotated = generate(dns(), now(), Some(&bundle.ca_pem)).expect("rotates");
    assert_eq!(count_certs(&rotated.ca_pem), 2);
    assert!(rotated.ca_pem.ends_with(&bundle.ca_pem));
    // A second rotation drops the oldest: the bundle never grows without bound.
    let again = generate(dns(), now(), Some(&rotated.ca_pem)).expect("rotates");
    assert_eq!(count_certs(&again.ca_pem), 2);
}

#[test]
fn secret_round_trips_and_bad_secrets_name_the_problem() {
    let bundle = generate(dns(), now(), None).expect("generates");
    let secret = bundle.to_secret(&config(), None);
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(Bundle::from_secret(&secret).expect("reads back"), bundle);

    let mut missing = secret.clone();
    if let Some(data) = missing.data.as_mut() {
        data.remove(KEY_KEY);
    }
    let err = Bundle::from_secret(&missing).expect_err("tls.key missing");
    assert!(err.to_string().contains("tls.key"), "{err}");

    let mut garbled = secret;
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

#[tokio::test]
async fn leader_creates_the_secret_and_publishes_the_ca() {
    let (client, mut server) = mock_client();
    let manager = Manager::new(client, config());
    let task = tokio::spawn(async move { manager.reconcile(now()).await });

    let call = server.next_call().await;
    call.expect(
        Method::GET,
        "/api/v1/namespaces/corsair-system/secrets/corsair-webhook-tls",
    );
    call.respond(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    );
    let call = server.next_call().await;
    call.expect(Method::POST, "/api/v1/namespaces/corsair-system/secrets");
    assert_eq!(call.body["metadata"]["name"], "corsair-webhook-tls");
    let ca = call.body["data"]["ca.crt"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!ca.is_empty());
    call.echo();

    let call = server.next_call().await;
    call.expect(
        Method::GET,
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/corsair-inject",
    );
    call.respond(
        StatusCode::OK,
        &json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "corsair-inject"},
                "webhooks": [{"name": "inject.corsair.dev", "clientConfig": {"service": {"name": "corsair-webhook", "namespace": "corsair-system"}},
                              "sideEffects": "None", "admissionReviewVersions": ["v1"]}]}),
    );
    let call = server.next_call().await;
    call.expect(
        Method::PATCH,
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/corsair-inject",
    );
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
    call.expect(
        Method::GET,
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/corsair-validate",
    );
    call.respond(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    );
    let bundle = task.await.expect("task").expect("reconcile succeeds");
    assert_eq!(
        ByteString(bundle.ca_pem.into_bytes()),
        serde_json::from_value::<ByteString>(json!(ca)).expect("base64")
    );
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
    let bundle = generate(dns(), Timestamp::now(), None).expect("generates");
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
    let reissued = bundle.reissue(dns(), Timestamp::now()).expect("reissues");
    handshake(&reissued, &bundle.ca_pem, &dns()[0])
        .await
        .expect("reissued certificate verifies against the published CA");

    // After a CA rotation the bundle trusts both the new and the old serving certificate.
    let rotated = generate(dns(), Timestamp::now(), Some(&bundle.ca_pem)).expect("rotates");
    handshake(&rotated, &rotated.ca_pem, &dns()[0])
        .await
        .expect("new certificate verifies against the rotated bundle");
    handshake(&bundle, &rotated.ca_pem, &dns()[0])
        .await
        .expect("old certificate still verifies during the rotation");
    let stranger = generate(dns(), Timestamp::now(), None).expect("generates");
    assert!(
        handshake(&stranger, &bundle.ca_pem, &dns()[0])
            .await
            .is_err()
    );
}
