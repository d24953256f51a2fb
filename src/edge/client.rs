//! The edge's HTTP/1.1 client for its origin: one request per connection, every request
//! bounded by a timeout and every answer by a size limit. Plain HTTP only (see
//! `config::parse_origin`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    #[error("HTTP with the origin failed: {0}")]
    Http(String),
}

/// `method url` with `headers` and `body`; the answer's status, `Location` and body.
pub(crate) async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> Result<Reply, ClientError> {
    tokio::time::timeout(TIMEOUT, request_unbounded(method, url, headers, body))
        .await
        .map_err(|_| ClientError::Timeout)?
}

async fn request_unbounded(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> Result<Reply, ClientError> {
    let (authority, path) = split_url(url).ok_or_else(|| ClientError::BadUrl(url.into()))?;
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| ClientError::Connect(authority.into(), e))?;
    let _ = stream.set_nodelay(true);
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

/// `http://host:port/path?query` → (`host:port`, `/path?query`).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    Some((authority, path))
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
            Some(("127.0.0.1:8080", "/stream?id=x"))
        );
        assert_eq!(split_url("http://[::1]:80"), Some(("[::1]:80", "/")));
        assert_eq!(split_url("https://a/"), None);
        assert_eq!(split_url("http:///x"), None);
    }
}
