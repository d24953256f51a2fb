//! TLS with rustls, for both ends that need it: the HTTP port's acceptor
//! (`--tls-cert`/`--tls-key`, so no reverse proxy is needed) and an edge's connector to an
//! `https://` origin (`--origin-ca`). Loading the PEM files and what can go wrong with them
//! live here once.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

/// Why a certificate or key could not be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read a PEM certificate chain from {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read a PEM private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the certificate and key do not work together: {0}")]
    Config(String),
}

/// Loads the PEM files and builds an acceptor that speaks HTTP/2 (browsers: every tab on one
/// connection) and HTTP/1.1 (OBS, FFmpeg, curl without `--http2`), as the client prefers.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connector for an edge's origin that speaks HTTP/1.1 and trusts the platform's roots
/// (the system's CA bundle, as `rustls-native-certs` finds it) and those in the PEM file
/// `ca` (a private CA, or the origin's own self-signed certificate).
pub fn connector(ca: Option<&Path>) -> Result<TlsConnector, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if let Some(e) = native.errors.first() {
        // A missing system bundle is not fatal when --origin-ca names the origin's CA.
        warn!(error = %e, "some of the system's CA certificates could not be read");
    }
    let (platform, _unusable) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca {
        for cert in certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| cert_error(path, e.to_string()))?;
        }
    }
    debug!(
        platform,
        total = roots.len(),
        "roots trusted for the origin"
    );
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Every certificate in the PEM file at `path`; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| cert_error(path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error(path, "no CERTIFICATE block in it".into()));
    }
    Ok(certs)
}

fn cert_error(path: &Path, reason: String) -> TlsError {
    TlsError::Cert {
        path: path.display().to_string(),
        reason,
    }
}
