//! The hyper layer: routing, CORS, the pages, and the WHIP/WHEP/API handlers.
//!
//! Handlers parse and check requests, build `Rtc`s off the media loop and send the engine a
//! [`Command`](crate::engine::Command). They never hold engine state.

mod api;
mod patch;
mod problem;
mod sse;
mod tls;
mod whep;
mod whip;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

pub use self::problem::ApiError;
pub use self::sse::Hub;
pub use self::tls::{TlsError, acceptor as tls_acceptor};
use crate::config::Config;
use crate::engine::{Command, Outcome, SessionId};
use crate::io::EngineHandle;
use crate::offer::SessionSetup;
use crate::registry::Registry;

/// What every request handler shares.
pub struct AppState {
    pub config: Config,
    pub registry: Mutex<Registry>,
    pub engine: EngineHandle,
    pub setup: SessionSetup,
    pub hub: Hub,
    /// Set when serving HTTPS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The publisher's client per broadcast (from its WHIP User-Agent), for the doctor.
    pub agents: Mutex<HashMap<crate::engine::BroadcastKey, String>>,
}

pub type HttpResponse = Response<BoxBody<Bytes, Infallible>>;

/// A complete body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    Full::new(bytes.into()).boxed()
}

/// Accepts connections until `shutdown` changes, at most `--max-connections-per-ip` at once
/// from one address.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let ip = peer.ip();
        {
            let mut counts = per_ip.lock().expect("connection count lock");
            let n = counts.entry(ip).or_default();
            if *n >= state.config.max_connections_per_ip {
                drop(counts);
                debug!(%ip, "too many connections from one address");
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt as _;
                    let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
                    let _ = stream.shutdown().await;
                });
                continue;
            }
            *n += 1;
        }
        let state = state.clone();
        let per_ip = per_ip.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service_state = state.clone();
            let service = service_fn(move |req| {
                let state = service_state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .max_buf_size(MAX_HEADER_BYTES)
                .header_read_timeout(state.config.http_header_timeout)
                .timer(hyper_util::rt::TokioTimer::new());
            match &state.tls {
                None => {
                    serve_one(
                        &builder,
                        TokioIo::new(stream),
                        service,
                        &mut conn_shutdown,
                        peer,
                    )
                    .await
                }
                Some(tls) => {
                    // The handshake gets the same deadline as the headers (slowloris).
                    match tokio::time::timeout(state.config.http_header_timeout, tls.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            serve_one(
                                &builder,
                                TokioIo::new(stream),
                                service,
                                &mut conn_shutdown,
                                peer,
                            )
                            .await
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "tls handshake failed"),
                        Err(_) => debug!(%peer, "tls handshake timed out"),
                    }
                }
            }
            let mut counts = per_ip.lock().expect("connection count lock");
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        });
    }
    info!("http server stopped");
}

/// Serves one connection until it ends or the server shuts down.
async fn serve_one<I, S>(
    builder: &http1::Builder,
    io: I,
    service: S,
    shutdown: &mut watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = BoxBody<Bytes, Infallible>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(%peer, error = %e, "http connection ended");
            }
        }
        _ = shutdown.changed() => conn.as_mut().graceful_shutdown(),
    }
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
        "/api/broadcasts" => match method {
            Method::POST => api::create_broadcast(state, req).await,
            _ => Err(not_allowed("POST, OPTIONS")),
        },
        "/broadcast" => match method {
            Method::GET | Method::HEAD => Ok(page(BROADCAST_HTML)),
            Method::POST => whip::publish(state, req).await,
            _ => Err(not_allowed("GET, POST, OPTIONS")),
        },
        "/stream" => match method {
            Method::GET => Ok(page(STREAM_HTML)),
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
                    return events(state, req, id).await;
                }
                return session(state, req, rest, false).await;
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

/// The WHEP SSE extension: `POST` the wanted events (a JSON list) to get the stream URL,
/// `GET` it as `text/event-stream`.
async fn events(
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
        Method::GET => {
            let body = state.hub.open(&session).ok_or(ApiError::UnknownSession)?;
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                // nginx buffers responses unless told otherwise.
                .header("X-Accel-Buffering", "no")
                .body(BodyExt::boxed(body))
                .expect("valid headers"))
        }
        _ => Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            allow: "GET, POST, OPTIONS",
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
    let offer = read_offer(state, req).await?;
    let offer = offer.as_str();
    let accepted = state.setup.accept_probe(crate::io::now(), offer)?;
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

pub(crate) async fn call(state: &AppState, command: Command) -> Result<Outcome, ApiError> {
    state
        .engine
        .call(command)
        .await
        .map_err(|_| ApiError::ShuttingDown)
}

/// CORS preflight for every WHIP/WHEP URL (RFC 9725 §4.1 requires it).
fn preflight(path: &str) -> HttpResponse {
    let methods = if path.ends_with("/sse") {
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

/// Reads a body up to `--max-body-bytes`.
pub(crate) async fn read_body(state: &AppState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    match Limited::new(req.into_body(), limit).collect().await {
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
    // Pages hold capabilities in their URL; never leak it to other origins.
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    r
}

/// Total header bytes per request (hyper's read buffer); larger requests get 431.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The answer to one connection too many from an address (written raw: hyper never sees it).
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/problem+json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 118\r\n\r\n{\"type\":\"about:blank\",\"title\":\"Too Many Requests\",\"status\":429,\"detail\":\"too many open connections from your address\"}";

const INDEX_HTML: &str = include_str!("../../www/index.html");
const BROADCAST_HTML: &str = include_str!("../../www/broadcast.html");
const BROADCAST_JS: &str = include_str!("../../www/broadcast.js");
const STATUS_HTML: &str = include_str!("../../www/status.html");
const STATUS_JS: &str = include_str!("../../www/status.js");
const STREAM_HTML: &str = include_str!("../../www/stream.html");
const PLAYER_JS: &str = include_str!("../../www/player.js");
const STYLE_CSS: &str = include_str!("../../www/style.css");
