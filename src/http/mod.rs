//! The hyper layer: routing, CORS, the pages, and the WHIP/WHEP/API handlers.
//!
//! Handlers parse and check requests, build `Rtc`s off the media loop and send the engine a
//! [`Command`](crate::engine::Command). They never hold engine state.

mod api;
mod client;
mod cluster;
mod conn;
mod edges;
mod events;
pub mod limits;
mod listen;
mod patch;
mod pending;
mod problem;
mod sse;
mod whep;
mod whip;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};

pub use self::cluster::on_event as cluster_event;
pub use self::listen::serve;
pub use self::problem::ApiError;
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
        "/metrics" => api::metrics(state).await,
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
                return session(state, req, rest, false).await;
            }
            if let Some(channel) = path.strip_prefix("/stream/events/") {
                return events::attach(state, req, channel).await;
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
    let methods = if path.ends_with("/sse") || path.starts_with("/stream/events") {
        "GET, POST, OPTIONS"
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

pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: &'static str,
) -> HttpResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(full(Bytes::from_static(body.as_bytes())))
        .expect("static headers are valid")
}

fn page(html: &'static str) -> HttpResponse {
    let mut r = text(StatusCode::OK, "text/html; charset=utf-8", html);
    let h = r.headers_mut();
    // Pages hold capabilities in their URL; never leak it to other origins.
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    // Our scripts only, from our origin; no framing (clickjacking the rotate button).
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    r
}

/// The viewer page. On an origin that redirects viewers, its WHEP requests may end at an
/// edge: the live edges join `connect-src`.
fn stream_page(state: &AppState) -> HttpResponse {
    let mut r = page(STREAM_HTML);
    if state.config.redirect_viewers {
        let edges = state.edges.origins().join(" ");
        let csp = PAGE_CSP.replacen(
            "default-src 'self';",
            &format!("default-src 'self'; connect-src 'self' {edges};"),
            1,
        );
        if let Ok(v) = header::HeaderValue::from_str(&csp) {
            r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    r
}

/// What the pages may load: scripts and everything else from this origin only; inline
/// styles (the pages carry a `<style>` block), no plugins, no framing, no `<base>`.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; media-src 'self' blob: mediastream:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../../www/index.html");
const BROADCAST_HTML: &str = include_str!("../../www/broadcast.html");
const BROADCAST_JS: &str = include_str!("../../www/broadcast.js");
const STATUS_HTML: &str = include_str!("../../www/status.html");
const STATUS_JS: &str = include_str!("../../www/status.js");
const STREAM_HTML: &str = include_str!("../../www/stream.html");
const PLAYER_JS: &str = include_str!("../../www/player.js");
const EVENTS_JS: &str = include_str!("../../www/events.js");
const EVENTS_WORKER_JS: &str = include_str!("../../www/events-worker.js");
const STYLE_CSS: &str = include_str!("../../www/style.css");
