//! The engine's part in a cluster-wide viewer cap (an origin and its edges, see src/edge/
//! and http/cluster.rs): it reports how long each viewer of a broadcast has been connected,
//! and evicts the viewers the origin picked, exactly as a local eviction does (the viewer
//! gets `evicted`, the session a DTLS close).
//!
//! The local rule (`Engine::admit_connected`) still applies on every server: a server
//! holding more viewers than the cap alone evicts its own oldest, which the cluster rule would
//! have picked too (the newest `max` of the cluster cannot include the oldest of more than
//! `max` viewers on one server).

use std::time::{Duration, Instant};

use tracing::info;

use super::Engine;
use super::command::{CloseReason, Eviction};
use super::key::{BroadcastKey, PeerKey};

impl Engine {
    /// How long each viewer of `b` that holds a place (connected, not an edge's relay) has
    /// been connected, oldest first.
    pub(super) fn connected_for(&self, now: Instant, b: BroadcastKey) -> Vec<Duration> {
        let mut ages: Vec<Duration> = self
            .placed_viewers(b)
            .into_iter()
            .map(|(at, _)| now.saturating_duration_since(at))
            .collect();
        ages.sort_unstable_by(|a, b| b.cmp(a));
        ages
    }

    /// Closes the `count` oldest (or newest) placed viewers of the broadcast as evicted;
    /// returns how many went.
    pub(super) fn evict(&mut self, now: Instant, e: Eviction) -> usize {
        let mut placed = self.placed_viewers(e.broadcast);
        // Ties (same instant) fall back on join order, as the local rule does.
        placed.sort_by_key(|(at, _)| *at);
        if e.newest {
            placed.reverse();
        }
        let mut evicted = 0;
        for (_, key) in placed.into_iter().take(e.count) {
            info!(broadcast = %e.broadcast, peer = %key, "evicting a viewer: the cluster is full");
            self.counters.evictions += 1;
            self.remove_peer(now, key, CloseReason::Evicted);
            evicted += 1;
        }
        evicted
    }

    /// Viewers of `b` holding a place, with when they connected, in join order.
    fn placed_viewers(&self, b: BroadcastKey) -> Vec<(Instant, PeerKey)> {
        let Some(route) = self.router.route(b) else {
            return Vec::new();
        };
        route
            .viewers
            .iter()
            .filter_map(|v| {
                let p = self.peers.get(v.index as usize)?;
                let at = p.connected_at.filter(|_| p.connected && !p.relay)?;
                (p.generation == v.generation).then_some((at, *v))
            })
            .collect()
    }
}
