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
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
        let mut seen = (
            tokio::fs::read(&cert).await.ok(),
            tokio::fs::read(&key).await.ok(),
        );
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
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
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
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
