//! WHEP playback: `POST /stream?id=<view ID>` with the viewer's offer.

use hyper::Request;
use hyper::body::Incoming;
use tracing::info;

use super::whip::sdp_created;
use super::{
    ApiError, AppState, HttpResponse, call, query_param, read_offer, require_content_type,
};
use crate::clock::now;
use crate::engine::{Command, NewPeer, Outcome, SessionId};

pub(super) async fn subscribe(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    require_content_type(&req, "application/sdp")?;
    let view_id = query_param(&req, "id").unwrap_or_default().to_owned();
    let local = state
        .registry
        .lock()
        .expect("registry lock")
        .by_view_id(&view_id);
    if local.is_none() && state.edge.is_none() {
        return Err(ApiError::UnknownView);
    }
    // With --when-full reject, a cluster full with viewers on edges turns newcomers away
    // here, before a redirect (the engine checks the viewers it holds itself).
    if let Some(broadcast) = local
        && !super::edges::from_edge(state, &req)
        && super::cluster::full(state, &view_id, broadcast).await
    {
        return Err(ApiError::ViewerLimitReached);
    }
    if local.is_some()
        && let Some(redirect) = super::edges::redirect(state, &req, &view_id)
    {
        return Ok(redirect);
    }
    // Sessions still connecting from one client are bounded: a viewer link must not let
    // its holder pile up sessions (pending.rs; a place comes back when the session connects).
    let client = super::client::client_of(&req);
    let place = state
        .limits
        .pending_viewers
        .reserve(client, now())
        .map_err(|wait| ApiError::TooManyRequests { retry_after: wait })?;
    let from_edge = super::edges::from_edge(state, &req);
    let offer = read_offer(state, req).await?;
    let offer = offer.as_str();
    // The body may have taken a while: a view ID rotated meanwhile no longer admits anyone.
    let broadcast = match (local, &state.edge) {
        (Some(broadcast), _) => {
            let still_valid = state
                .registry
                .lock()
                .expect("registry lock")
                .by_view_id(&view_id)
                == Some(broadcast);
            if !still_valid {
                return Err(ApiError::UnknownView);
            }
            broadcast
        }
        // An edge: the origin knows the view ID (and is asked once per broadcast).
        (None, Some(edge)) => edge.resolve(&view_id).await?,
        (None, None) => unreachable!("checked before the body was read"),
    };
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
        transport_cc: accepted.transport_cc,
    };
    // Registered before the engine has the session: its `SessionClosed` can only come
    // later, so it always finds (and removes) the watcher.
    state.hub.register(session.clone(), broadcast);
    // Kept before the engine has the session too, so its connecting always finds the place.
    place.keep(session.clone());
    // An edge's pull relays to the edge's own viewers: it takes no viewer's place here.
    let command = if from_edge {
        Command::Relay(peer, accepted.tracks)
    } else {
        Command::Subscribe(peer, accepted.tracks)
    };
    let subscribed = match call(state, command).await {
        Ok(Outcome::Subscribed(Ok(()))) => Ok(()),
        Ok(Outcome::Subscribed(Err(e))) => Err(e.into()),
        Ok(_) => unreachable!("Subscribe is answered with Subscribed"),
        Err(e) => Err(e),
    };
    if let Err(e) = subscribed {
        state.hub.forget(&session);
        state.limits.pending_viewers.settled(&session);
        return Err(e);
    }
    info!(broadcast = %broadcast, session = %session, "viewer session started");
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
    let layer = format!(
        "</stream/session/{}/layer>; rel=\"urn:ietf:params:whep:ext:core:layer\"",
        session.as_str()
    );
    for link in [link, layer] {
        response.headers_mut().append(
            hyper::header::LINK,
            link.parse()
                .expect("a token and fixed text form a valid header"),
        );
    }
    Ok(response)
}
