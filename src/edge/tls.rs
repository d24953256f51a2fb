//! HTTPS to the origin (`--origin https://…`): rustls trusting the platform's roots (the
//! system's CA bundle, as `rustls-native-certs` finds it) plus the certificates of
//! `--origin-ca` (a private CA, or the origin's own self-signed certificate).

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tracing::{debug, warn};

use crate::http::TlsError;

/// A connector for the origin that speaks HTTP/1.1 and trusts the platform's roots and
/// those in the PEM file `ca`.
pub(crate) fn connector(ca: Option<&Path>) -> Result<TlsConnector, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if let Some(e) = native.errors.first() {
        // A missing system bundle is not fatal when --origin-ca names the origin's CA.
        warn!(error = %e, "some of the system's CA certificates could not be read");
    }
    let (platform, _unusable) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca {
        let ca_err = |reason: String| TlsError::Cert {
            path: path.display().to_string(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no CERTIFICATE block in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
        }
    }
    debug!(
        platform,
        total = roots.len(),
        "roots trusted for the origin"
    );
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Why a handshake failed, when it is the origin's certificate that is not accepted (not
/// signed by a trusted CA, expired, for another name).
pub(crate) fn untrusted(e: &std::io::Error) -> Option<String> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(reason) => Some(format!("{reason:?}")),
        _ => None,
    }
}
