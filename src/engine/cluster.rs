//! The engine's part in a cluster-wide viewer cap (an origin and its edges, see src/edge/
//! and http/cluster.rs): it reports how long each viewer of a broadcast has been connected,
//! and evicts the viewers the origin picked, exactly as a local eviction does (the viewer
//! gets `evicted`, the session a DTLS close).
//!
//! Both read the broadcast's [`Audience`](super::audience::Audience), which holds its
//! seated viewers on every worker of this server in the order they connected: an eviction
//! picked here may close a viewer on another worker (span.rs).
//!
//! The local rule (`Engine::admit_connected`) still applies on every server: a server
//! holding more viewers than the cap alone evicts its own oldest, which the cluster rule would
//! have picked too (the newest `max` of the cluster cannot include the oldest of more than
//! `max` viewers on one server).

use std::time::{Duration, Instant};

use tracing::info;

use super::Engine;
use super::command::Eviction;
use super::key::BroadcastKey;

impl Engine {
    /// How long each viewer of `b` that holds a place (connected, not an edge's relay) has
    /// been connected, oldest first.
    pub(super) fn connected_for(&self, now: Instant, b: BroadcastKey) -> Vec<Duration> {
        let Some(route) = self.router.route(b) else {
            return Vec::new();
        };
        (route.audience.seats().into_iter())
            .map(|(_, at)| now.saturating_duration_since(at))
            .collect()
    }

    /// Closes the `count` oldest (or newest) seated viewers of the broadcast as evicted,
    /// wherever they are; returns how many were picked.
    pub(super) fn evict(&mut self, now: Instant, e: Eviction) -> usize {
        let Some(route) = self.router.route(e.broadcast) else {
            return 0;
        };
        let mut seats = route.audience.seats();
        if e.newest {
            seats.reverse();
        }
        let mut evicted = 0;
        for (seat, _) in seats.into_iter().take(e.count) {
            info!(broadcast = %e.broadcast, peer = %seat.1, worker = seat.0, "evicting a viewer: the cluster is full");
            self.evict_on(now, e.broadcast, seat);
            evicted += 1;
        }
        evicted
    }
}
