//! The HTTP side of viewer events: the WHEP SSE extension per session (`POST` the wanted
//! events to `<session>/sse`, `GET` it as `text/event-stream`), and the shared stream a
//! browser's viewer tabs use instead, so they hold one connection for their events, not one
//! each (www/events-worker.js): `GET /stream/events` opens it and names it in its first event,
//! `POST /stream/events/<name>` with a session ID as the body adds that session's events to it.
//!
//! A shared stream carries only the events of sessions whose IDs its owner sent: it tells a
//! view ID holder nothing the per-session streams would not.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};

use super::{ApiError, AppState, HttpResponse, full, read_body, sse};
use crate::engine::SessionId;

/// `POST` / `GET` on `/stream/session/<id>/sse`.
pub async fn session(
    state: &AppState,
    req: Request<Incoming>,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let session = SessionId::parse(id).ok_or(ApiError::UnknownSession)?;
    match *req.method() {
        Method::POST => {
            if !state.hub.knows(&session) {
                return Err(ApiError::UnknownSession);
            }
            let body = read_body(state, req).await?;
            let wanted: Vec<String> = if body.is_empty() {
                Vec::new()
            } else {
                serde_json::from_slice(&body).map_err(|_| ApiError::BadEventList)?
            };
            if let Some(unknown) = wanted.iter().find(|e| !sse::EVENTS.contains(&e.as_str())) {
                return Err(ApiError::UnknownEvent(unknown.clone()));
            }
            Ok(Response::builder()
                .status(StatusCode::CREATED)
                .header(header::LOCATION, format!("/stream/session/{id}/sse"))
                .body(full(Bytes::new()))
                .expect("valid headers"))
        }
        Method::GET => stream(state.hub.open(&session).ok_or(ApiError::UnknownSession)?),
        _ => Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            allow: "GET, POST, OPTIONS",
        }),
    }
}

/// `GET /stream/events`: a new shared stream.
pub fn shared(state: &AppState) -> Result<HttpResponse, ApiError> {
    stream(
        state
            .hub
            .open_channel()
            .ok_or(ApiError::TooManyEventStreams)?,
    )
}

/// `POST /stream/events/<name>` with a viewer session ID: `204`, and that session's events
/// (its current state first) go to the stream from now on; `404` if either is unknown.
pub async fn attach(
    state: &AppState,
    req: Request<Incoming>,
    channel: &str,
) -> Result<HttpResponse, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            allow: "POST, OPTIONS",
        });
    }
    let channel = channel.to_owned();
    let body = read_body(state, req).await?;
    let session = std::str::from_utf8(&body)
        .ok()
        .and_then(|s| SessionId::parse(s.trim()))
        .ok_or(ApiError::UnknownSession)?;
    if !state.hub.attach(&channel, &session) {
        return Err(ApiError::UnknownSession);
    }
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(full(Bytes::new()))
        .expect("valid headers"))
}

fn stream(body: sse::SseBody) -> Result<HttpResponse, ApiError> {
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        // nginx buffers responses unless told otherwise.
        .header("X-Accel-Buffering", "no")
        .body(BodyExt::boxed(body))
        .expect("valid headers"))
}
