//! Reading a request: its content type, its body (bounded in size and time), its SDP offer,
//! the bearer token and query parameters, and the origin the client addressed.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, header};

use super::{ApiError, AppState};

/// The request's `Content-Type` is `expected` (parameters aside), else 415.
pub(crate) fn require_content_type(
    req: &Request<Incoming>,
    expected: &'static str,
) -> Result<(), ApiError> {
    let ok = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected));
    if ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType { expected })
    }
}

/// Reads a body up to `--max-body-bytes`, within `--http-header-timeout` (a body that
/// trickles in must not hold the request, nor let it finish long after its checks).
pub(crate) async fn read_body(state: &AppState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    let read = Limited::new(req.into_body(), limit).collect();
    let Ok(collected) = tokio::time::timeout(state.config.http_header_timeout, read).await else {
        return Err(ApiError::BodyTimeout);
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(_) => Err(ApiError::BodyUnreadable),
    }
}

/// Reads an SDP offer body as text (the content type was checked by the caller, before any
/// lookup, so a wrong type is reported first).
pub(crate) async fn read_offer(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<String, ApiError> {
    let body = read_body(state, req).await?;
    String::from_utf8(body.to_vec())
        .map_err(|_| crate::offer::OfferError::Malformed("it is not UTF-8 text".into()).into())
}

/// The token of `Authorization: Bearer <token>`.
pub(crate) fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let auth = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The value of `?name=` in the query string.
pub(crate) fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// `http://host` as the client addressed us, for the URLs we hand out.
pub(crate) fn origin(state: &AppState, req: &Request<Incoming>) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let forwarded_https = req
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|h| h.as_bytes() == b"https");
    let proto = if forwarded_https || state.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{proto}://{host}")
}
