//! The webhook's serving certificate, swappable at runtime so a renewed certificate (written by
//! the controller into a Secret, or by cert-manager) is used without a restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate or key was not accepted. The previous certificate stays in use.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The cause is in the message, not a `source()`, which a chain walk would print again.
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the certificate PEM holds no CERTIFICATE block")]
    NoCertificate,
    #[error("the certificate PEM is malformed: {0}")]
    CertificatePem(rustls::pki_types::pem::Error),
    #[error("the key PEM holds no usable private key: {0}")]
    KeyPem(rustls::pki_types::pem::Error),
    #[error("the private key is not supported: {0}")]
    Key(rustls::Error),
    #[error("the private key does not belong to the certificate: {0}")]
    Mismatch(rustls::Error),
    #[error("cannot build the TLS configuration: {0}")]
    Config(rustls::Error),
}

/// A certificate resolver whose certificate can be replaced while the server runs; every new
/// TLS handshake uses the latest one.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// From PEM: a certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertError> {
        Ok(Self {
            current: ArcSwap::from_pointee(certified_key(cert_pem, key_pem)?),
        })
    }

    /// From PEM files, such as a mounted `kubernetes.io/tls` Secret.
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, CertError> {
        let cert = read(cert.as_ref())?;
        let key = read(key.as_ref())?;
        Self::from_pem(&cert, &key)
    }

    /// Replaces the certificate; on error the current one stays.
    pub fn set_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), CertError> {
        self.current
            .store(Arc::new(certified_key(cert_pem, key_pem)?));
        Ok(())
    }

    /// The leaf certificate currently served (DER).
    pub fn current_leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.load().cert.first().cloned()
    }

    /// Polls the two files every `interval` and loads them when their content changed. Polling
    /// (rather than inotify) also sees the symlink swap by which the kubelet updates a mounted
    /// Secret. A pair that does not load is logged and skipped; the old certificate stays.
    /// Runs until dropped.
    pub async fn watch_files(self: Arc<Self>, cert: PathBuf, key: PathBuf, interval: Duration) {
        // Nothing seen yet: the first tick loads the files again, so a change between the
        // store's creation and this watcher's start is not missed.
        let mut seen: (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
        let mut first = true;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = (
                tokio::fs::read(&cert).await.ok(),
                tokio::fs::read(&key).await.ok(),
            );
            if now == seen {
                continue;
            }
            if let (Some(c), Some(k)) = &now {
                match self.set_pem(c, k) {
                    Ok(()) if first => {}
                    Ok(()) => {
                        tracing::info!(cert = %cert.display(), "webhook certificate reloaded")
                    }
                    Err(err) => tracing::warn!(
                        cert = %cert.display(),
                        error = %err,
                        "new webhook certificate not loaded; keeping the previous one"
                    ),
                }
            }
            first = false;
            seen = now;
        }
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`) that takes
    /// its certificate from this store on every handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, CertError> {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(CertError::Config)?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("chain_len", &self.current.load().cert.len())
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|cause| CertError::Read {
        path: path.to_owned(),
        cause,
    })
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CertError::CertificatePem)?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(CertError::KeyPem)?;
    let signer = ring::sign::any_supported_type(&key).map_err(CertError::Key)?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(CertError::Mismatch)?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, in PEM.
    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn set_pem_swaps_the_served_certificate_and_keeps_it_on_error() {
        let (cert_a, key_a) = self_signed("a.example");
        let (cert_b, key_b) = self_signed("b.example");
        let store = CertStore::from_pem(cert_a.as_bytes(), key_a.as_bytes()).expect("loads");
        let first = store.current_leaf();
        store
            .set_pem(cert_b.as_bytes(), key_b.as_bytes())
            .expect("swaps");
        let second = store.current_leaf();
        assert_ne!(first, second);

        // A key that does not belong to the certificate is refused; B stays.
        let err = store
            .set_pem(cert_a.as_bytes(), key_b.as_bytes())
            .expect_err("mismatch");
        assert!(matches!(err, CertError::Mismatch(_)), "{err}");
        assert_eq!(store.current_leaf(), second);
    }

    #[test]
    fn malformed_pem_is_named() {
        let (cert, key) = self_signed("a.example");
        let no_cert = CertStore::from_pem(b"", key.as_bytes()).expect_err("no cert");
        assert!(matches!(no_cert, CertError::NoCertificate), "{no_cert}");
        let no_key = CertStore::from_pem(cert.as_bytes(), b"garbage").expect_err("no key");
        assert!(matches!(no_key, CertError::KeyPem(_)), "{no_key}");
        let missing = CertStore::from_pem_files("/nonexistent/tls.crt", "/nonexistent/tls.key")
            .expect_err("missing file");
        assert!(
            missing.to_string().contains("/nonexistent/tls.crt"),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn watch_files_reloads_changed_files() {
        let dir = std::env::temp_dir().join(format!("corsair-certstore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert_a, key_a) = self_signed("a.example");
        let (cert_b, key_b) = self_signed("b.example");
        let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert_path, &cert_a).expect("write");
        std::fs::write(&key_path, &key_a).expect("write");
        let store = Arc::new(CertStore::from_pem_files(&cert_path, &key_path).expect("loads"));
        let before = store.current_leaf();
        let watcher = tokio::spawn(store.clone().watch_files(
            cert_path.clone(),
            key_path.clone(),
            Duration::from_millis(20),
        ));
        std::fs::write(&cert_path, &cert_b).expect("write");
        std::fs::write(&key_path, &key_b).expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.current_leaf() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not reloaded within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let expected = CertStore::from_pem(cert_b.as_bytes(), key_b.as_bytes()).expect("loads");
        assert_eq!(store.current_leaf(), expected.current_leaf());
        watcher.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
