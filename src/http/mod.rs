//! The hyper layer: routing, CORS, the pages, and the WHIP/WHEP/API handlers.
//!
//! Handlers parse and check requests, build `Rtc`s off the media loop and send the engine a
//! [`Command`](crate::engine::Command). They never hold engine state.

mod api;
mod client;
mod cluster;
mod conn;
mod download_link;
mod edges;
mod events;
mod file_body;
mod layer;
pub mod limits;
mod listen;
mod metrics;
mod pages;
mod patch;
mod pending;
mod problem;
mod recordings;
mod request;
mod sse;
mod whep;
mod whip;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};

pub use self::cluster::on_event as cluster_event;
pub use self::listen::serve;
use self::pages::{
    BROADCAST_HTML, BROADCAST_JS, EVENTS_JS, EVENTS_WORKER_JS, INDEX_HTML, LINK_JS, PLAYER_JS,
    RECORDINGS_JS, STATUS_HTML, STATUS_JS, STYLE_CSS, page, stream_page, text,
};
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use self::patch::parse_fragment;
pub use self::problem::ApiError;
pub(crate) use self::request::{
    bearer, origin, query_param, read_body, read_offer, require_content_type,
};
pub use self::sse::Hub;
use crate::config::Config;
use crate::engine::{Command, Outcome, SessionId};
use crate::handle::EngineHandle;
use crate::offer::SessionSetup;
use crate::registry::Registry;

/// What every request handler shares.
pub struct AppState {
    pub config: Config,
    /// Shared with the blocking thread that writes the state file.
    pub registry: Arc<Mutex<Registry>>,
    pub saver: Arc<crate::registry::Saver>,
    /// `--record`: the recorder's queue, for its drop count in `/metrics`.
    pub recorder: Option<crate::record::Tap>,
    /// The Record switches and recording statuses (`--record`), shared with the recorder.
    pub record_board: Arc<crate::record::Board>,
    /// Signs the recordings' download links (a key drawn at start).
    pub download_links: download_link::DownloadLinks,
    pub limits: limits::Limits,
    pub engine: EngineHandle,
    pub setup: SessionSetup,
    pub hub: Hub,
    /// Set when serving HTTPS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The publisher's client per broadcast (from its WHIP User-Agent), for the doctor.
    pub agents: Mutex<HashMap<crate::engine::BroadcastKey, String>>,
    /// Set when this server is an edge (`--origin`).
    pub edge: Option<Arc<crate::edge::Edge>>,
    /// On an origin: the edges registered with it (`crate::cluster`).
    pub edges: Arc<crate::cluster::EdgeBook>,
}

pub type HttpResponse = Response<BoxBody<Bytes, Infallible>>;

/// A complete body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    Full::new(bytes.into()).boxed()
}

/// Routes one request. Every response, error or not, carries the CORS headers.
pub async fn handle(state: &AppState, req: Request<Incoming>) -> HttpResponse {
    let mut response = match route(state, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    };
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::HeaderValue::from_static("Location, ETag, Link, Retry-After"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

async fn route(state: &AppState, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return Ok(preflight(&path));
    }
    let not_allowed = |allow: &'static str| ApiError::MethodNotAllowed {
        method: method.to_string(),
        allow,
    };
    match path.as_str() {
        "/" => match method {
            Method::GET | Method::HEAD => Ok(page(INDEX_HTML)),
            _ => Err(not_allowed("GET")),
        },
        "/healthz" => Ok(text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")),
        "/metrics" => metrics::metrics(state).await,
        "/status" => Ok(page(STATUS_HTML)),
        "/api/status" => api::server_status(state).await,
        "/api/connectivity-test" => match method {
            Method::POST => connectivity_test(state, req).await,
            _ => Err(not_allowed("POST, OPTIONS")),
        },
        "/assets/player.js" => Ok(text(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            PLAYER_JS,
        )),
        "/assets/broadcast.js" => Ok(text(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            BROADCAST_JS,
        )),
        "/assets/recordings.js" => Ok(text(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            RECORDINGS_JS,
        )),
        "/assets/status.js" => Ok(text(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            STATUS_JS,
        )),
        "/assets/style.css" => Ok(text(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS)),
        // The broadcaster page's own calls carry the broadcast ID as a Bearer token, so it
        // stays out of URLs and access logs.
        "/api/broadcast" => match method {
            Method::GET => {
                let id = bearer(&req).ok_or(ApiError::MissingBroadcastId)?.to_owned();
                api::broadcast_panel(state, req, &id).await
            }
            _ => Err(not_allowed("GET, OPTIONS")),
        },
        "/api/broadcast/view-id" => match method {
            Method::POST => {
                let id = bearer(&req).ok_or(ApiError::MissingBroadcastId)?.to_owned();
                api::rotate_view_id(state, req, &id).await
            }
            _ => Err(not_allowed("POST, OPTIONS")),
        },
        "/api/broadcast/record" => match method {
            Method::POST => {
                let id = bearer(&req).ok_or(ApiError::MissingBroadcastId)?.to_owned();
                recordings::set_switch(state, req, &id).await
            }
            _ => Err(not_allowed("POST, OPTIONS")),
        },
        "/api/broadcast/recordings" => match method {
            Method::GET => {
                let id = bearer(&req).ok_or(ApiError::MissingBroadcastId)?;
                recordings::list(state, id).await
            }
            _ => Err(not_allowed("GET, OPTIONS")),
        },
        "/api/edges" => match method {
            Method::POST => edges::register(state, req).await,
            _ => Err(not_allowed("POST, OPTIONS")),
        },
        "/api/broadcasts" => match method {
            Method::POST => api::create_broadcast(state, req).await,
            _ => Err(not_allowed("POST, OPTIONS")),
        },
        "/broadcast" => match method {
            Method::GET | Method::HEAD => Ok(page(BROADCAST_HTML)),
            Method::POST => whip::publish(state, req).await,
            _ => Err(not_allowed("GET, POST, OPTIONS")),
        },
        "/stream/events" => match method {
            Method::GET => events::shared(state),
            _ => Err(not_allowed("GET, OPTIONS")),
        },
        "/assets/events.js" => Ok(text(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            EVENTS_JS,
        )),
        "/assets/link.js" => Ok(text(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            LINK_JS,
        )),
        "/assets/events-worker.js" => Ok(text(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            EVENTS_WORKER_JS,
        )),
        "/stream" => match method {
            Method::GET => Ok(stream_page(state)),
            // WHEP discoverability: HEAD says this URL takes SDP offers.
            Method::HEAD => Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/sdp")
                .header("Accept-Post", "application/sdp")
                .body(full(Bytes::new()))
                .expect("static headers are valid")),
            Method::POST => whep::subscribe(state, req).await,
            _ => Err(not_allowed("GET, POST, OPTIONS")),
        },
        _ => {
            if let Some(id) = path.strip_prefix("/broadcast/session/") {
                return session(state, req, id, true).await;
            }
            if let Some(rest) = path.strip_prefix("/stream/session/") {
                if let Some(id) = rest.strip_suffix("/sse") {
                    return events::session(state, req, id).await;
                }
                if let Some(id) = rest.strip_suffix("/layer") {
                    let session = SessionId::parse(id).ok_or(ApiError::UnknownSession)?;
                    return match method {
                        Method::POST => layer::select(state, req, session).await,
                        Method::GET => layer::describe(state, session).await,
                        _ => Err(not_allowed("GET, POST, OPTIONS")),
                    };
                }
                return session(state, req, rest, false).await;
            }
            if let Some(channel) = path.strip_prefix("/stream/events/") {
                return events::attach(state, req, channel).await;
            }
            if let Some(name) = path.strip_prefix("/api/broadcast/recordings/") {
                let id = bearer(&req).ok_or(ApiError::MissingBroadcastId)?.to_owned();
                return recordings::file(state, req, &id, name).await;
            }
            if let Some(rest) = path.strip_prefix("/recordings/") {
                return recordings::signed(state, req, rest).await;
            }
            if let Some(rest) = path.strip_prefix("/api/broadcasts/") {
                return match (method.clone(), rest.strip_suffix("/view-id")) {
                    (Method::GET, None) => api::broadcast_panel(state, req, rest).await,
                    (Method::POST, Some(id)) => api::rotate_view_id(state, req, id).await,
                    (_, None) => Err(not_allowed("GET")),
                    (_, Some(_)) => Err(not_allowed("POST")),
                };
            }
            Err(ApiError::NotFound)
        }
    }
}

/// DELETE and PATCH on a WHIP or WHEP session URL.
async fn session(
    state: &AppState,
    req: Request<Incoming>,
    id: &str,
    publisher: bool,
) -> Result<HttpResponse, ApiError> {
    let session = SessionId::parse(id).ok_or(ApiError::UnknownSession)?;
    match *req.method() {
        // RFC 9725 §4.2: 200 OK. OBS treats anything else, 204 included, as a failure.
        Method::DELETE => match call(state, Command::Close { session, publisher }).await? {
            Outcome::Closed(true) => Ok(text(StatusCode::OK, "text/plain; charset=utf-8", "")),
            _ => Err(ApiError::UnknownSession),
        },
        Method::PATCH => patch::patch(state, req, session, publisher).await,
        _ => Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            allow: "DELETE, PATCH, OPTIONS",
        }),
    }
}

/// `POST /api/connectivity-test` with an offer: a peer that only completes ICE and DTLS, so a
/// browser can check that UDP media reaches it from this server.
async fn connectivity_test(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    require_content_type(&req, "application/sdp")?;
    let client = client::client_of(&req);
    let now = crate::clock::now();
    let admitted = state.limits.probes.admit(client, now).and_then(|()| {
        state
            .limits
            .probes_total
            .admit(crate::client_key::EVERYONE, now)
    });
    if let Err(wait) = admitted {
        state.limits.probes_refused.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::TooManyRequests { retry_after: wait });
    }
    state.limits.probes_started.fetch_add(1, Ordering::Relaxed);
    let offer = read_offer(state, req).await?;
    let offer = offer.as_str();
    let accepted = state.setup.accept_probe(crate::clock::now(), offer)?;
    let peer = crate::engine::NewPeer {
        broadcast: crate::engine::PROBE,
        session: SessionId::random(),
        ufrag: accepted.ufrag,
        rtc: accepted.rtc,
        keys: accepted.keys,
        transport_cc: accepted.transport_cc,
    };
    call(state, Command::Probe(peer)).await?;
    Ok(Response::builder()
        .status(StatusCode::CREATED)
        .header(header::CONTENT_TYPE, "application/sdp")
        .body(full(accepted.answer))
        .expect("valid headers"))
}

/// Makes sure the state file holds the registry as of `generation`, writing it on a
/// blocking thread (fsync must not stall the async workers).
pub(crate) async fn persist(state: &AppState, generation: u64) -> Result<(), ApiError> {
    let (registry, saver) = (state.registry.clone(), state.saver.clone());
    tokio::task::spawn_blocking(move || saver.save_at_least(&registry, generation))
        .await
        .map_err(|_| ApiError::ShuttingDown)?
        .map_err(|e| {
            tracing::error!(error = %e, "cannot save the state file");
            ApiError::StateNotSaved
        })
}

pub(crate) async fn call(state: &AppState, command: Command) -> Result<Outcome, ApiError> {
    state
        .engine
        .call(command)
        .await
        .map_err(|_| ApiError::ShuttingDown)
}

/// CORS preflight for every WHIP/WHEP URL (RFC 9725 §4.1 requires it).
fn preflight(path: &str) -> HttpResponse {
    let methods =
        if path.ends_with("/sse") || path.starts_with("/stream/events") || path.ends_with("/layer")
        {
            "GET, POST, OPTIONS"
        } else if path.starts_with("/api/broadcast/recordings/") {
            "GET, HEAD, DELETE, OPTIONS"
        } else if path.contains("/session/") {
            "DELETE, PATCH, OPTIONS"
        } else {
            "GET, POST, OPTIONS"
        };
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, methods)
        .header(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Content-Type, Authorization, If-Match",
        )
        .header(header::ACCESS_CONTROL_MAX_AGE, "86400")
        .header("Accept-Post", "application/sdp")
        .body(full(Bytes::new()))
        .expect("static headers are valid")
}
