//! The origin's side of edges: `POST /api/edges` (an edge's registration and heartbeat, with
//! the edge secret), the book of live edges and their load, and `--redirect-viewers`: a
//! viewer's WHEP POST answered `307` to the least-loaded edge (RFC 9725 §4.6 allows
//! redirects; `fetch` follows a 307 with the same method and body).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState, HttpResponse, full, read_body};
use crate::edge::EDGE_SECRET_HEADER;
use crate::io::now;

/// The edges that beat lately, by their base URL.
#[derive(Default)]
pub struct EdgeBook {
    edges: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    viewers: usize,
    capacity: usize,
    seen: Instant,
}

/// One heartbeat, as an edge sends it.
#[derive(Deserialize, Serialize, Debug)]
pub struct Beat {
    /// The edge's base URL as viewers reach it (`http://edge1.example:8080`).
    pub url: String,
    /// Viewer sessions on the edge now, all broadcasts together.
    pub viewers: usize,
    /// How many viewers the edge takes in all (its slots × viewers per broadcast).
    pub capacity: usize,
}

/// An edge as `/api/status` lists it.
#[derive(Serialize, Debug)]
pub struct EdgeLoad {
    pub url: String,
    pub viewers: usize,
    pub capacity: usize,
    /// Milliseconds since its last heartbeat.
    pub seen_ms: u64,
}

impl EdgeBook {
    fn beat(&self, beat: Beat, at: Instant) -> bool {
        let mut edges = self.edges.lock().expect("edges lock");
        edges.retain(|_, e| alive(e, at));
        if edges.len() >= MAX_EDGES && !edges.contains_key(&beat.url) {
            return false;
        }
        edges.insert(
            beat.url,
            Entry {
                viewers: beat.viewers,
                capacity: beat.capacity,
                seen: at,
            },
        );
        true
    }

    /// The least-loaded live edge with room, counted as one viewer more (until its next
    /// beat says how many it really has), so a crowd arriving at once is spread.
    fn pick(&self, at: Instant) -> Option<String> {
        let mut edges = self.edges.lock().expect("edges lock");
        let (url, entry) = edges
            .iter_mut()
            .filter(|(_, e)| alive(e, at) && e.viewers < e.capacity)
            .min_by_key(|(_, e)| e.viewers)?;
        entry.viewers += 1;
        Some(url.clone())
    }

    /// Every live edge with its load, for `/api/status`.
    pub fn list(&self) -> Vec<EdgeLoad> {
        let at = now();
        let edges = self.edges.lock().expect("edges lock");
        let mut list: Vec<EdgeLoad> = edges
            .iter()
            .filter(|(_, e)| alive(e, at))
            .map(|(url, e)| EdgeLoad {
                url: url.clone(),
                viewers: e.viewers,
                capacity: e.capacity,
                seen_ms: at.saturating_duration_since(e.seen).as_millis() as u64,
            })
            .collect();
        list.sort_by(|a, b| a.url.cmp(&b.url));
        list
    }

    /// The live edges' origins (`http://host:port`), for the viewer page's CSP.
    pub fn origins(&self) -> Vec<String> {
        self.list().into_iter().map(|e| e.url).collect()
    }
}

fn alive(e: &Entry, at: Instant) -> bool {
    at.saturating_duration_since(e.seen) < DROP_AFTER
}

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
    if !usable_url(&beat.url) {
        return Err(ApiError::BadHeartbeat);
    }
    if !state.edges.beat(beat, now()) {
        return Err(ApiError::TooManyEdges);
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(Bytes::from_static(b"{}")))
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

/// An `http(s)://host[:port][/prefix]` with nothing that could split a header or a URL.
fn usable_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|r| {
        !r.is_empty()
            && url.len() <= MAX_URL
            && !r.ends_with('/')
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:[]/".contains(&b))
    })
}

/// How often edges beat.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// An edge that missed three beats is dropped: it is not sent viewers any more.
const DROP_AFTER: Duration = Duration::from_secs(3 * 2 + 1);
/// Edges one origin keeps track of.
const MAX_EDGES: usize = 256;
const MAX_URL: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(url: &str, viewers: usize, capacity: usize) -> Beat {
        Beat {
            url: url.into(),
            viewers,
            capacity,
        }
    }

    #[test]
    fn the_least_loaded_live_edge_with_room_is_picked() {
        let book = EdgeBook::default();
        let t = now();
        assert!(book.beat(beat("http://a:1", 5, 10), t));
        assert!(book.beat(beat("http://b:1", 3, 10), t));
        assert!(book.beat(beat("http://c:1", 1, 1), t)); // full
        assert_eq!(book.pick(t).as_deref(), Some("http://b:1"));
        assert_eq!(book.pick(t).as_deref(), Some("http://b:1"));
        // b now counts 5, as a; then a and b alternate.
        let next = book.pick(t).unwrap();
        assert!(next == "http://a:1" || next == "http://b:1");
        let late = t + DROP_AFTER;
        assert_eq!(
            book.pick(late),
            None,
            "edges that stopped beating are dropped"
        );
    }

    #[test]
    fn only_plain_base_urls_are_accepted() {
        assert!(usable_url("http://127.0.0.1:8081"));
        assert!(usable_url("https://edge1.example/w"));
        assert!(!usable_url("http://a/\r\nSet-Cookie: x"));
        assert!(!usable_url("javascript:alert(1)"));
        assert!(!usable_url("http://a/"));
        assert!(!usable_url("http://"));
    }
}
