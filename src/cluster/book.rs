//! The book of live edges an origin keeps from their heartbeats: each one's load (for
//! `--redirect-viewers` and `/api/status`), its viewers per broadcast (for the viewer cap
//! across the cluster), and the evictions waiting for its next beat.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::wire::{Beat, EvictOrder, MAX_BROADCASTS, Watching};
use crate::clock::now;

/// The edges that beat lately, by their base URL.
#[derive(Default)]
pub struct EdgeBook {
    edges: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    viewers: usize,
    capacity: usize,
    seen: Instant,
    /// Its viewers per broadcast, for the cluster's viewer cap (cap.rs).
    watching: Vec<Watching>,
    /// Evictions for it to make, passed down from our own origin (we are the middle of a
    /// chain of edges, edge/beat.rs): they go in the reply to its next beat.
    orders: Vec<EvictOrder>,
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
    /// Takes an edge's heartbeat; `false` when the book is full of other edges.
    pub(crate) fn beat(&self, beat: Beat, at: Instant) -> bool {
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
    pub(crate) fn take_orders(&self, url: &str) -> Vec<EvictOrder> {
        let mut edges = self.edges.lock().expect("edges lock");
        edges
            .get_mut(url)
            .map(|e| std::mem::take(&mut e.orders))
            .unwrap_or_default()
    }

    /// Every view ID some live edge has viewers of.
    pub(crate) fn views(&self, at: Instant) -> Vec<String> {
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
    pub(crate) fn pick(&self, at: Instant) -> Option<String> {
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

/// An edge that missed three beats is dropped: it is not sent viewers any more.
const DROP_AFTER: Duration = Duration::from_secs(3 * 2 + 1);
/// Edges one origin keeps track of.
const MAX_EDGES: usize = 256;
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
}
