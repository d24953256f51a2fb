//! `POST /stream/session/<id>/layer`: a viewer chooses its simulcast layer, the WHEP
//! "core extensions" draft's video layer selection (`urn:ietf:params:whep:ext:core:layer`);
//! `GET` on the same URL tells the viewer its layer and how its link fares (our own, for the
//! viewer page's stats and its "your connection is slower" notice).
//! The body is JSON: `{"mediaId":"0","rid":"1"}` asks for the layer with that rid (Broadcast
//! Box's players call it `encodingId`), `{"mediaId":"0"}` gives the choice back to the
//! server. A viewer has one video m-line, so `mediaId` picks nothing; it is checked for shape
//! only. `200 OK` once the move is under way: the viewer changes layer at that layer's next
//! keyframe.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, HttpResponse, call, full, read_body, require_content_type};
use crate::engine::{Command, Outcome, SessionId};

/// What the player asks for.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LayerRequest {
    #[serde(default)]
    media_id: Option<String>,
    #[serde(default, alias = "encodingId")]
    rid: Option<String>,
}

pub(super) async fn select(
    state: &AppState,
    req: Request<Incoming>,
    session: SessionId,
) -> Result<HttpResponse, ApiError> {
    require_content_type(&req, "application/json")?;
    let body = read_body(state, req).await?;
    let wanted: LayerRequest =
        serde_json::from_slice(&body).map_err(|_| ApiError::BadLayerRequest)?;
    let plausible = |s: &String| (1..=MAX_ID).contains(&s.len()) && s.bytes().all(is_token);
    if !wanted.media_id.iter().chain(&wanted.rid).all(plausible) {
        return Err(ApiError::BadLayerRequest);
    }
    let rid = wanted.rid.as_deref().map(str0m::media::Rid::from);
    match call(state, Command::SetLayer { session, rid }).await? {
        Outcome::LayerSet(Ok(())) => Ok(Response::builder()
            .status(StatusCode::OK)
            .body(full(Bytes::new()))
            .expect("valid headers")),
        Outcome::LayerSet(Err(e)) => Err(e.into()),
        _ => Err(ApiError::UnknownSession),
    }
}

/// What `GET …/layer` answers: the layer the viewer is sent now (rid and height; both null
/// without simulcast, the height too before the first SPS), the one it moves to, whether the
/// server chooses, its latest estimate (REMB, null before the first), what it is sent, and
/// whether its link has stayed slower than that (engine/slow.rs).
#[derive(Serialize)]
struct LayerReport {
    rid: Option<String>,
    height: Option<u32>,
    target: Option<String>,
    auto: bool,
    estimate_bps: Option<u64>,
    needed_bps: u64,
    slow: bool,
}

pub(super) async fn describe(
    state: &AppState,
    session: SessionId,
) -> Result<HttpResponse, ApiError> {
    let layer = match call(state, Command::DescribeLayer(session)).await? {
        Outcome::LayerDescribed(layer) => layer?,
        _ => return Err(ApiError::UnknownSession),
    };
    let report = LayerReport {
        rid: layer.rid,
        height: layer.height,
        target: layer.target,
        auto: layer.auto,
        estimate_bps: layer.estimate_bps,
        needed_bps: layer.needs_bps,
        slow: layer.slow,
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(Bytes::from(
            serde_json::to_vec(&report).expect("serialises"),
        )))
        .expect("valid headers"))
}

/// RFC 8851: a rid is alphanumeric, `-` and `_`, at most 255 characters (and a mid as short).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

const MAX_ID: usize = 255;
