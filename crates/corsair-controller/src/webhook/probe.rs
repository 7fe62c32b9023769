//! A client for the validating webhook: sends it a CorsPolicy review it must accept and one it
//! must refuse, and checks both answers. `corsair probe` runs it; the chart's `helm test` hook
//! runs that through the webhook's Service, with nothing but the Corsair image.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why the webhook did not answer as it must.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the URL {0:?} is not https://HOST[:PORT]/PATH")]
    Url(String),
    #[error("the CA file holds no usable CERTIFICATE: {0}")]
    Ca(String),
    // Each cause is in its message, not a `source()`, which a chain walk would print again.
    #[error("cannot connect to {addr}: {cause}")]
    Connect { addr: String, cause: std::io::Error },
    #[error(
        "TLS handshake with {host} failed (is the CA the one that signed the webhook's certificate?): {cause}"
    )]
    Tls { host: String, cause: std::io::Error },
    #[error("HTTP exchange failed: {0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the webhook answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the answer is not an AdmissionReview response: {0}")]
    Answer(String),
    #[error("{0}")]
    Verdict(String),
}

/// Where the webhook is and how to trust it.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// `https://HOST[:PORT]/validate`.
    pub url: String,
    /// PEM of the CA that signed the webhook's serving certificate.
    pub ca_pem: Vec<u8>,
    /// Bound on each exchange (connect, handshake, answer).
    pub timeout: Duration,
}

/// Sends a valid and an invalid CorsPolicy review; returns one line per check that passed.
pub async fn probe(target: &ProbeTarget) -> Result<Vec<String>, ProbeError> {
    let mut passed = Vec::new();
    let valid = json!({"allowOrigins": ["https://app.example.com"], "allowMethods": ["GET"]});
    let response = exchange(target, "corsair-probe-valid", valid).await?;
    if response["allowed"] != json!(true) {
        return Err(ProbeError::Verdict(format!(
            "a valid CorsPolicy was refused: {}",
            response["status"]["message"]
        )));
    }
    passed.push("a valid CorsPolicy is allowed".to_owned());

    // A path in an origin: the refusal must name the field.
    let invalid = json!({"allowOrigins": ["https://app.example.com/path"]});
    let response = exchange(target, "corsair-probe-invalid", invalid).await?;
    let message = response["status"]["message"].as_str().unwrap_or_default();
    if response["allowed"] != json!(false) || !message.contains("spec.allowOrigins[0]") {
        return Err(ProbeError::Verdict(format!(
            "an invalid CorsPolicy was not refused with the field named: allowed={}, message={message:?}",
            response["allowed"]
        )));
    }
    passed.push(format!("an invalid CorsPolicy is refused: {message}"));
    Ok(passed)
}

/// One AdmissionReview out, its `response` back (with the uid checked).
async fn exchange(target: &ProbeTarget, uid: &str, spec: Value) -> Result<Value, ProbeError> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "corsair.dev", "version": "v1alpha1", "kind": "CorsPolicy"},
            "resource": {"group": "corsair.dev", "version": "v1alpha1", "resource": "corspolicies"},
            "name": "corsair-probe",
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "corsair-probe"},
            "dryRun": true,
            "object": {
                "apiVersion": "corsair.dev/v1alpha1",
                "kind": "CorsPolicy",
                "metadata": {"name": "corsair-probe", "namespace": "default"},
                "spec": spec,
            },
        },
    });
    let body = tokio::time::timeout(target.timeout, post(target, review.to_string()))
        .await
        .map_err(|_| ProbeError::Timeout(target.timeout))??;
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| ProbeError::Answer(e.to_string()))?;
    let response = answer
        .get("response")
        .cloned()
        .ok_or_else(|| ProbeError::Answer("no response field".to_owned()))?;
    if response["uid"] != json!(uid) {
        return Err(ProbeError::Answer(format!(
            "response.uid is {}, expected {uid:?}",
            response["uid"]
        )));
    }
    Ok(response)
}

async fn post(target: &ProbeTarget, body: String) -> Result<Bytes, ProbeError> {
    let uri: Uri = target
        .url
        .parse()
        .map_err(|_| ProbeError::Url(target.url.clone()))?;
    let (Some("https"), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(ProbeError::Url(target.url.clone()));
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let addr = format!("{host}:{port}");
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|cause| ProbeError::Connect {
            addr: addr.clone(),
            cause,
        })?;
    let name =
        ServerName::try_from(host.clone()).map_err(|_| ProbeError::Url(target.url.clone()))?;
    let stream = connector(&target.ca_pem)?
        .connect(name, tcp)
        .await
        .map_err(|cause| ProbeError::Tls {
            host: host.clone(),
            cause,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProbeError::Http(e.to_string()))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::post(path)
        .header(http::header::HOST, addr)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ProbeError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ProbeError::Http(e.to_string()))?;
    let status = response.status();
    // An AdmissionReview answer is small; a runaway body is not read whole.
    let body = Limited::new(response.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| ProbeError::Http(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(ProbeError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(body)
}

fn connector(ca_pem: &[u8]) -> Result<TlsConnector, ProbeError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| ProbeError::Ca(e.to_string()))?;
        roots.add(cert).map_err(|e| ProbeError::Ca(e.to_string()))?;
        added += 1;
    }
    if added == 0 {
        return Err(ProbeError::Ca("no CERTIFICATE block".to_owned()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ProbeError::Ca(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
