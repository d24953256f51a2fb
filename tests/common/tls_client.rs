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

/// A TLS connection to the server at `addr` (on 127.0.0.1) that asks for HTTP/2 by ALPN, as
/// browsers do; panics if the server does not choose it.
pub async fn h2_tls(
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = RootCertStore::empty();
    for cert in TRUSTED.lock().unwrap().iter() {
        roots.add(cert.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = ServerName::try_from(addr.ip().to_string()).expect("an IP address");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the server chose HTTP/2"
    );
    tls
}

/// An HTTP/2 client (the `h2` crate) on a fresh TLS connection to `addr`; the connection is
/// driven by a task whose result says how it ended (e.g. GOAWAY and why).
pub async fn h2_client(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tls = h2_tls(addr).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(conn))
}
