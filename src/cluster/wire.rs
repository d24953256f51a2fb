//! What an origin and its edges say to each other over HTTP: the heartbeat an edge sends
//! (`POST /api/edges` with [`EDGE_SECRET_HEADER`]), the origin's reply with the evictions it
//! orders, and the bounds a beat must keep.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The header that carries the edge secret, on an edge's pulls and heartbeats: the origin
/// never redirects a request with the right one (it is an edge pulling, not a viewer).
pub const EDGE_SECRET_HEADER: &str = "x-whipcast-edge-secret";

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

impl Beat {
    /// A plain base URL and a bounded list of broadcasts and viewers, oldest first.
    pub(crate) fn is_valid(&self) -> bool {
        usable_url(&self.url)
            && self.broadcasts.len() <= MAX_BROADCASTS
            && self.broadcasts.iter().all(|w| {
                w.view.len() <= MAX_URL
                    && w.connected_ms.len() <= MAX_LISTED
                    && w.connected_ms.is_sorted_by(|a, b| a >= b)
            })
    }
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
/// The longest base URL or view ID a beat may carry.
const MAX_URL: usize = 200;
/// Broadcasts one beat lists: more than any edge pulls at once.
pub(super) const MAX_BROADCASTS: usize = 256;
/// Viewers of one broadcast an edge lists (the oldest; the rest count as just connected):
/// far above any sensible cap, and a beat stays well under the body limit.
pub const MAX_LISTED: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

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
