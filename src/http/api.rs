//! The JSON API: `POST /api/broadcasts` issues a broadcast.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use serde::Serialize;
use tracing::info;

use super::{ApiError, AppState, HttpResponse, origin, read_body};
use crate::secret;

#[derive(Serialize)]
struct CreatedBroadcast {
    broadcast_id: String,
    view_id: String,
    whip_url: String,
    viewer_url: String,
}

pub(super) async fn create_broadcast(state: &AppState, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    if let Some(token) = &state.config.create_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !secret::equal(&secret::digest(given), &secret::digest(token)) {
            return Err(ApiError::CreateTokenRequired);
        }
    }
    let origin = origin(&req);
    let _ = read_body(req).await?; // empty or `{}`; nothing in it is used yet
    let created = state
        .registry
        .lock()
        .expect("registry lock")
        .create(unix_now())
        .map_err(|e| {
            tracing::error!(error = %e, "cannot save the state file");
            ApiError::ShuttingDown
        })?;
    info!(broadcast = %secret::log_label(&created.broadcast_id), "broadcast created");
    let body = CreatedBroadcast {
        whip_url: format!("{origin}/broadcast?id={}", created.broadcast_id),
        viewer_url: format!("{origin}/stream?id={}", created.view_id),
        broadcast_id: created.broadcast_id,
        view_id: created.view_id,
    };
    Ok(Response::builder()
        .status(StatusCode::CREATED)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).expect("serialises"))))
        .expect("valid headers"))
}

#[allow(clippy::disallowed_methods)] // wall-clock date for the state file, not media timing
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
