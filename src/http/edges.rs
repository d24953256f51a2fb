//! The origin's side of edges over HTTP: `POST /api/edges` (an edge's registration and
//! heartbeat, with the edge secret, kept in the cluster's book), and `--redirect-viewers`: a
//! viewer's WHEP POST answered `307` to the least-loaded edge (RFC 9725 §4.6 allows
//! redirects; `fetch` follows a 307 with the same method and body).

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState, HttpResponse, full, read_body};
use crate::clock::now;
use crate::cluster::{Beat, EDGE_SECRET_HEADER};

/// Whether the request carries this server's edge secret.
pub(crate) fn from_edge(state: &AppState, req: &Request<Incoming>) -> bool {
    let Some(secret) = &state.config.edge_secret else {
        return false;
    };
    req.headers()
        .get(EDGE_SECRET_HEADER)
        .is_some_and(|v| bool::from(v.as_bytes().ct_eq(secret.as_bytes())))
}

/// `POST /api/edges`: an edge's heartbeat.
pub(super) async fn register(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    if !from_edge(state, &req) {
        return Err(ApiError::EdgeSecretRequired);
    }
    let body = read_body(state, req).await?;
    let beat: Beat = serde_json::from_slice(&body).map_err(|_| ApiError::BadHeartbeat)?;
    if !beat.is_valid() {
        return Err(ApiError::BadHeartbeat);
    }
    let url = beat.url.clone();
    let views: Vec<String> = beat.broadcasts.iter().map(|w| w.view.clone()).collect();
    if !state.edges.beat(beat, now()) {
        return Err(ApiError::TooManyEdges);
    }
    let mut reply = super::cluster::enforce(state, &views, Some(&url)).await;
    reply.evict.extend(state.edges.take_orders(&url));
    let body = serde_json::to_vec(&reply).expect("a reply serialises");
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("static headers are valid"))
}

/// With `--redirect-viewers`, a `307` to the least-loaded edge's WHEP URL for `view_id`;
/// `None` serves the viewer here (no edge alive or all full, or the request is an edge's).
pub(super) fn redirect(
    state: &AppState,
    req: &Request<Incoming>,
    view_id: &str,
) -> Option<HttpResponse> {
    if !state.config.redirect_viewers || from_edge(state, req) {
        return None;
    }
    let edge = state.edges.pick(now())?;
    Some(
        Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, format!("{edge}/stream?id={view_id}"))
            .body(full(Bytes::new()))
            .expect("a checked URL makes a valid header"),
    )
}
