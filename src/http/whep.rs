//! WHEP playback: `POST /stream?id=<view ID>` with the viewer's offer.

use hyper::Request;
use hyper::body::Incoming;
use tracing::info;

use super::whip::sdp_created;
use super::{
    ApiError, AppState, HttpResponse, call, query_param, read_offer, require_content_type,
};
use crate::engine::{Command, NewPeer, Outcome, SessionId};
use crate::io::now;

pub(super) async fn subscribe(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    require_content_type(&req, "application/sdp")?;
    let view_id = query_param(&req, "id").unwrap_or_default();
    let broadcast = state
        .registry
        .lock()
        .expect("registry lock")
        .by_view_id(view_id)
        .ok_or(ApiError::UnknownView)?;
    let offer = read_offer(state, req).await?;
    let offer = offer.as_str();
    let publisher = match call(state, Command::Describe(broadcast)).await? {
        Outcome::Described(Some(tracks)) => tracks,
        Outcome::Described(None) => return Err(ApiError::NotLive),
        _ => unreachable!("Describe is answered with Described"),
    };
    let accepted = state.setup.accept_viewer(now(), offer, &publisher)?;
    let session = SessionId::random();
    let etag = crate::engine::etag(&accepted.ufrag);
    let peer = NewPeer {
        broadcast,
        session: session.clone(),
        ufrag: accepted.ufrag,
        rtc: accepted.rtc,
        keys: accepted.keys,
    };
    match call(state, Command::Subscribe(peer, accepted.tracks)).await? {
        Outcome::Subscribed(Ok(())) => {}
        Outcome::Subscribed(Err(e)) => return Err(e.into()),
        _ => unreachable!("Subscribe is answered with Subscribed"),
    }
    info!(broadcast = %broadcast, session = %session, "viewer session started");
    state.hub.register(session.clone(), broadcast);
    let mut response = sdp_created(
        &format!("/stream/session/{}", session.as_str()),
        accepted.answer,
        &etag,
    );
    let link = format!(
        "</stream/session/{}/sse>; rel=\"urn:ietf:params:whep:ext:core:server-sent-events\"; events=\"{}\"",
        session.as_str(),
        super::sse::EVENTS.join(",")
    );
    response.headers_mut().insert(
        hyper::header::LINK,
        link.parse()
            .expect("a token and fixed text form a valid header"),
    );
    Ok(response)
}
