//! WHIP ingest (RFC 9725): `POST /broadcast` with the broadcast ID in `?id=` or as a Bearer
//! token, answered with `201`, the SDP answer and an absolute-path `Location`.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use tracing::info;

use super::{
    ApiError, AppState, HttpResponse, call, query_param, read_offer, require_content_type,
};
use crate::clock::now;
use crate::engine::{Command, NewPeer, Outcome, SessionId};
use crate::secret;

pub(super) async fn publish(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    require_content_type(&req, "application/sdp")?;
    let broadcast_id = broadcast_id(&req)
        .ok_or(ApiError::MissingBroadcastId)?
        .to_owned();
    let (broadcast, touched) = {
        let mut registry = state.registry.lock().expect("registry lock");
        let key = registry
            .by_broadcast_id(&broadcast_id)
            .ok_or(ApiError::UnknownBroadcast)?;
        let touched = registry
            .touch(key, crate::clock::unix_now())
            .then(|| registry.generation());
        (key, touched)
    };
    if let Some(generation) = touched {
        // Logged by `persist`; publishing does not depend on it.
        let _ = super::persist(state, generation).await;
    }
    let agent = publisher_agent(&req);
    let offer = read_offer(state, req).await?;
    let offer = offer.as_str();
    let accepted = state.setup.accept_publisher(now(), offer)?;
    let session = SessionId::random();
    let etag = crate::engine::etag(&accepted.ufrag);
    let peer = NewPeer {
        broadcast,
        session: session.clone(),
        ufrag: accepted.ufrag,
        rtc: accepted.rtc,
        keys: accepted.keys,
        transport_cc: accepted.transport_cc,
    };
    match call(state, Command::Publish(peer, accepted.tracks)).await? {
        Outcome::Published(Ok(())) => {}
        Outcome::Published(Err(e)) => return Err(e.into()),
        _ => unreachable!("Publish is answered with Published"),
    }
    info!(broadcast = %secret::log_label(&broadcast_id), session = %session, agent = agent.as_deref().unwrap_or("-"), "publisher session started");
    if let Some(agent) = agent {
        state
            .agents
            .lock()
            .expect("agents lock")
            .insert(broadcast, agent);
    }
    Ok(sdp_created(
        &format!("/broadcast/session/{}", session.as_str()),
        accepted.answer,
        &etag,
    ))
}

/// `201 Created` with an SDP answer, the session URL and its `ETag` (for ICE restarts,
/// RFC 9725 §4.3.2).
pub(super) fn sdp_created(location: &str, answer: String, etag: &str) -> HttpResponse {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::CONTENT_TYPE, "application/sdp")
        // An absolute path: OBS resolves relative ones wrongly (notes/whip-whep-obs.md §B.3).
        .header(header::LOCATION, location)
        .header(header::ETAG, etag)
        .body(super::full(Bytes::from(answer)))
        .expect("valid headers")
}

/// The broadcast ID from `?id=` or, as OBS sends it, `Authorization: Bearer`.
fn broadcast_id(req: &Request<Incoming>) -> Option<&str> {
    if let Some(id) = query_param(req, "id").filter(|id| !id.is_empty()) {
        return Some(id);
    }
    super::bearer(req)
}

/// The client named in the User-Agent: OBS sends "Mozilla/5.0 (OBS-Studio/31.0.2; Windows
/// x86_64; en-US)"; other clients' agents are kept as given, shortened.
fn publisher_agent(req: &Request<Incoming>) -> Option<String> {
    let ua = req.headers().get(header::USER_AGENT)?.to_str().ok()?;
    if let Some(rest) = ua.split("OBS-Studio/").nth(1) {
        let mut parts = rest.trim_end_matches(')').split(';').map(str::trim);
        let version = parts.next()?;
        let os = parts.next().unwrap_or("");
        let agent = format!("OBS Studio {version} {os}");
        return Some(agent.trim().chars().take(MAX_AGENT_CHARS).collect());
    }
    for (marker, name) in [
        ("Firefox/", "Firefox"),
        ("Edg/", "Edge"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
    ] {
        if let Some(rest) = ua.split(marker).nth(1) {
            let major = rest.split(['.', ' ']).next().unwrap_or("");
            return Some(
                format!("{name} {major}")
                    .chars()
                    .take(MAX_AGENT_CHARS)
                    .collect(),
            );
        }
    }
    Some(ua.chars().take(MAX_AGENT_CHARS).collect())
}

/// Enough for "OBS Studio 31.0.2 Windows x86_64"; the header itself may be 16 KB.
const MAX_AGENT_CHARS: usize = 48;
