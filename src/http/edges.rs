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
use crate::clock::now;
use crate::edge::EDGE_SECRET_HEADER;

/// The edges that beat lately, by their base URL.
#[derive(Default)]
pub struct EdgeBook {
    edges: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    viewers: usize,
    capacity: usize,
    seen: Instant,
    /// Its viewers per broadcast, for the cluster's viewer cap (cluster.rs).
    watching: Vec<Watching>,
    /// Evictions for it to make, passed down from our own origin (we are the middle of a
    /// chain of edges, edge/beat.rs): they go in the reply to its next beat.
    orders: Vec<EvictOrder>,
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
    /// Its viewers of each broadcast it pulls, for the viewer cap across the cluster.
    #[serde(default)]
    pub broadcasts: Vec<Watching>,
}

/// An edge's viewers of one broadcast.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Watching {
    /// The view ID the edge pulls it by.
    pub view: String,
    /// Milliseconds since each viewer connected, oldest first; at most [`MAX_LISTED`].
    pub connected_ms: Vec<u64>,
    /// Viewers past the list, counted as just connected.
    #[serde(default)]
    pub more: usize,
}

/// The origin's answer to a heartbeat.
#[derive(Deserialize, Serialize, Debug, Default, PartialEq, Eq)]
pub struct BeatReply {
    /// Viewers the edge is to evict: the cluster is over its cap.
    #[serde(default)]
    pub evict: Vec<EvictOrder>,
}

/// "Evict `count` viewers of broadcast `view`, the oldest (or the newest)."
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct EvictOrder {
    pub view: String,
    pub count: usize,
    pub newest: bool,
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
        let orders = (edges.remove(&beat.url))
            .map(|e| e.orders)
            .unwrap_or_default();
        edges.insert(
            beat.url,
            Entry {
                viewers: beat.viewers,
                capacity: beat.capacity,
                seen: at,
                watching: beat.broadcasts,
                orders,
            },
        );
        true
    }

    /// Passes an eviction down to the edge at `url` (it gets it with its next beat's reply)
    /// and stops counting those viewers meanwhile.
    pub(crate) fn order(&self, url: &str, order: EvictOrder) {
        self.forget_viewers(url, &order.view, order.count, order.newest);
        let mut edges = self.edges.lock().expect("edges lock");
        if let Some(e) = edges.get_mut(url)
            && e.orders.len() < MAX_BROADCASTS
        {
            e.orders.push(order);
        }
    }

    /// The evictions passed down to the edge at `url` since its last beat.
    fn take_orders(&self, url: &str) -> Vec<EvictOrder> {
        let mut edges = self.edges.lock().expect("edges lock");
        edges
            .get_mut(url)
            .map(|e| std::mem::take(&mut e.orders))
            .unwrap_or_default()
    }

    /// Every view ID some live edge has viewers of.
    pub(super) fn views(&self, at: Instant) -> Vec<String> {
        let edges = self.edges.lock().expect("edges lock");
        let mut views: Vec<String> = edges
            .values()
            .filter(|e| alive(e, at))
            .flat_map(|e| e.watching.iter().map(|w| w.view.clone()))
            .collect();
        views.sort_unstable();
        views.dedup();
        views
    }

    /// How long each live edge's viewers of `view` have been connected, as of `at`.
    pub(crate) fn viewers_of(&self, view: &str, at: Instant) -> Vec<(String, Vec<Duration>)> {
        let edges = self.edges.lock().expect("edges lock");
        edges
            .iter()
            .filter(|(_, e)| alive(e, at))
            .filter_map(|(url, e)| {
                let w = e.watching.iter().find(|w| w.view == view)?;
                let since = at.saturating_duration_since(e.seen);
                let mut ages: Vec<Duration> = w
                    .connected_ms
                    .iter()
                    .map(|ms| Duration::from_millis(*ms) + since)
                    .collect();
                ages.extend(std::iter::repeat_n(since, w.more.min(MAX_MORE)));
                Some((url.clone(), ages))
            })
            .collect()
    }

    /// Drops `count` of an edge's listed viewers of `view` that it was told to evict, so
    /// another edge's beat before its next one does not count them again.
    pub(crate) fn forget_viewers(&self, url: &str, view: &str, count: usize, newest: bool) {
        let mut edges = self.edges.lock().expect("edges lock");
        let Some(w) = edges
            .get_mut(url)
            .and_then(|e| e.watching.iter_mut().find(|w| w.view == view))
        else {
            return;
        };
        if newest {
            // The unlisted viewers are the newest.
            let unlisted = count.min(w.more);
            w.more -= unlisted;
            let listed = (count - unlisted).min(w.connected_ms.len());
            w.connected_ms.truncate(w.connected_ms.len() - listed);
        } else {
            let listed = count.min(w.connected_ms.len());
            w.connected_ms.drain(..listed);
            w.more -= (count - listed).min(w.more);
        }
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
    if !usable_url(&beat.url) || !bounded(&beat) {
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

/// A beat lists a bounded number of broadcasts and viewers, oldest first.
fn bounded(beat: &Beat) -> bool {
    beat.broadcasts.len() <= MAX_BROADCASTS
        && beat.broadcasts.iter().all(|w| {
            w.view.len() <= MAX_URL
                && w.connected_ms.len() <= MAX_LISTED
                && w.connected_ms.is_sorted_by(|a, b| a >= b)
        })
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
/// Broadcasts one beat lists: more than any edge pulls at once.
const MAX_BROADCASTS: usize = 256;
/// Viewers of one broadcast an edge lists (the oldest; the rest count as just connected):
/// far above any sensible cap, and a beat stays well under the body limit.
pub const MAX_LISTED: usize = 1024;
/// Unlisted viewers counted per broadcast: an edge's own cap is far below.
const MAX_MORE: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(url: &str, viewers: usize, capacity: usize) -> Beat {
        Beat {
            url: url.into(),
            viewers,
            capacity,
            broadcasts: Vec::new(),
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
