//! The edge's HTTP/1.1 client for its origin: one request per connection, every request
//! bounded by a timeout and every answer by a size limit. HTTP, or HTTPS when the origin's
//! URL says so (`--origin https://…`), through the connector of `crate::tls` (the platform's
//! roots plus `--origin-ca`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

/// What the origin answered.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) location: Option<String>,
    pub(crate) body: String,
}

/// Why a request to the origin got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("the origin URL {0:?} is not usable")]
    BadUrl(String),
    #[error("cannot reach the origin at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("the origin did not answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error(
        "the origin's TLS certificate is not trusted by this edge ({0}): give the edge the \
         origin's CA (or its self-signed certificate) with --origin-ca"
    )]
    Untrusted(String),
    #[error("TLS with the origin failed: {0}")]
    Tls(String),
    #[error("HTTP with the origin failed: {0}")]
    Http(String),
}

/// How this edge reaches its origin: plain HTTP, or HTTPS with the roots it trusts.
#[derive(Clone, Default)]
pub(crate) struct OriginClient {
    tls: Option<TlsConnector>,
}

impl OriginClient {
    /// `tls` is set when the origin is `https://`.
    pub(crate) fn new(tls: Option<TlsConnector>) -> Self {
        Self { tls }
    }

    /// `method url` with `headers` and `body`; the answer's status, `Location` and body.
    pub(crate) async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<Reply, ClientError> {
        let call = self.request_unbounded(method, url, headers, body);
        tokio::time::timeout(TIMEOUT, call)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn request_unbounded(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<Reply, ClientError> {
        let (https, authority, path) =
            split_url(url).ok_or_else(|| ClientError::BadUrl(url.into()))?;
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| ClientError::Connect(authority.into(), e))?;
        let _ = stream.set_nodelay(true);
        let request = (method, authority, path, headers, body);
        match (https, &self.tls) {
            (false, _) => exchange(stream, request).await,
            (true, Some(tls)) => {
                let name = server_name(authority).ok_or_else(|| ClientError::BadUrl(url.into()))?;
                let stream = tls
                    .connect(name, stream)
                    .await
                    .map_err(|e| match untrusted(&e) {
                        Some(reason) => ClientError::Untrusted(reason),
                        None => ClientError::Tls(e.to_string()),
                    })?;
                exchange(stream, request).await
            }
            // The configuration builds a connector for an https:// origin.
            (true, None) => Err(ClientError::BadUrl(url.into())),
        }
    }
}

/// One request and its answer on a connected stream.
async fn exchange<S>(
    stream: S,
    (method, authority, path, headers, body): (&str, &str, &str, &[(&str, &str)], String),
) -> Result<Reply, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    // Drives the connection until the answer is read; ends with it.
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority)
        .header(
            header::USER_AGENT,
            concat!("whipcast-edge/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    Ok(Reply {
        status,
        location,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The host of `host:port` (`[v6]:port` too) as TLS checks it against the certificate.
fn server_name(authority: &str) -> Option<ServerName<'static>> {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    ServerName::try_from(host.to_owned()).ok()
}

/// Why a handshake failed, when it is the origin's certificate that is not accepted (not
/// signed by a trusted CA, expired, for another name).
fn untrusted(e: &std::io::Error) -> Option<String> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(reason) => Some(format!("{reason:?}")),
        _ => None,
    }
}

/// `http(s)://host:port/path?query` → (whether HTTPS, `host:port`, `/path?query`).
fn split_url(url: &str) -> Option<(bool, &str, &str)> {
    let (https, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://")?),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    Some((https, authority, path))
}

/// Connect to last byte: an SDP answer takes the origin a few milliseconds.
const TIMEOUT: Duration = Duration::from_secs(10);
/// An SDP answer is a few KB; problem+json less.
const MAX_ANSWER: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/stream?id=x"),
            Some((false, "127.0.0.1:8080", "/stream?id=x"))
        );
        assert_eq!(split_url("http://[::1]:80"), Some((false, "[::1]:80", "/")));
        assert_eq!(split_url("https://a/"), Some((true, "a", "/")));
        assert_eq!(split_url("ftp://a/"), None);
        assert_eq!(split_url("http:///x"), None);
    }

    #[test]
    fn the_certificate_is_checked_against_the_host_without_its_port() {
        let name = |a: &str| server_name(a).map(|n| n.to_str().into_owned());
        assert_eq!(
            name("origin.example:8443").as_deref(),
            Some("origin.example")
        );
        assert_eq!(name("origin.example").as_deref(), Some("origin.example"));
        assert_eq!(name("127.0.0.1:8443").as_deref(), Some("127.0.0.1"));
        assert_eq!(name("[::1]:8443").as_deref(), Some("::1"));
    }
}
