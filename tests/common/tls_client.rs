//! HTTPS for the tests' blocking HTTP client (`http_client::http` with an `https://` URL):
//! rustls trusting only the certificates a test handed to [`trust`], and a self-signed
//! certificate for a server on 127.0.0.1.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The certificates this test process trusts for HTTPS.
static TRUSTED: Mutex<Vec<CertificateDer<'static>>> = Mutex::new(Vec::new());

/// A self-signed certificate for `127.0.0.1` written to `dir`: (cert.pem, key.pem), and
/// trusted by this process's HTTPS client from now on.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    TRUSTED.lock().unwrap().push(cert.cert.der().clone());
    (c, k)
}

/// A TLS stream to `host` (`ip:port`) over `tcp`, checked against the trusted certificates.
pub fn stream(host: &str, tcp: TcpStream) -> StreamOwned<ClientConnection, TcpStream> {
    let mut roots = RootCertStore::empty();
    for cert in TRUSTED.lock().unwrap().iter() {
        roots.add(cert.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let ip = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let name = ServerName::try_from(ip.to_owned()).expect("an IP address");
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    StreamOwned::new(conn, tcp)
}
