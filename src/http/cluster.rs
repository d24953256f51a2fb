//! The viewer cap across a cluster (an origin and its edges): `--max-viewers` counts every
//! viewer of a broadcast, on the origin and on every edge, and when there are too many the
//! **oldest** go wherever they watch (`--when-full reject`: the newest).
//!
//! Each edge's heartbeat lists, per broadcast it pulls, how long ago each of its viewers
//! connected ([`Watching`](crate::cluster::Watching)). The origin merges those with
//! its own connected viewers and picks who goes: its own viewers it evicts at once (engine
//! `Command::Evict`); an edge's it names in that edge's heartbeat reply, and the edge evicts
//! them exactly as a local eviction (the page shows the same message). Edges beat at once
//! when a viewer connects or leaves, so a newcomer on an edge is counted within a round
//! trip; a viewer to evict on *another* edge goes at that edge's next beat, within one
//! heartbeat interval. The origin checks the cluster on every heartbeat and whenever a
//! viewer connects to it.
//!
//! An edge's pull is not a viewer here (it relays; `Command::Relay`) and never counts.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::AppState;
use crate::clock::now;
use crate::cluster::{BeatReply, EvictOrder, Holder, pick};
use crate::config::WhenFull;
use crate::engine::{BroadcastKey, Command, EngineEvent, Eviction, Outcome};

/// Checks the cap of each broadcast in `views` (view IDs) across the cluster, evicting the
/// origin's own viewers that must go; returns the orders for the edge at `beating` (the one
/// whose heartbeat is being answered; other edges get theirs when they beat).
pub(super) async fn enforce(
    state: &AppState,
    views: &[String],
    beating: Option<&str>,
) -> BeatReply {
    let mut reply = BeatReply::default();
    let max = state.config.max_viewers;
    let newest = state.config.when_full == WhenFull::Reject;
    for view in views {
        let local = state
            .registry
            .lock()
            .expect("registry lock")
            .by_view_id(view);
        // Not ours (rotated, deleted, or an edge of an edge reporting to its own origin).
        let Some(broadcast) = local else { continue };
        let Ok(Outcome::Info(info)) = state.engine.call(Command::Info(broadcast)).await else {
            continue;
        };
        let edges = state.edges.viewers_of(view, now());
        let mut viewers: Vec<(Duration, Holder)> = info
            .connected_for
            .iter()
            .map(|age| (*age, Holder::Origin))
            .collect();
        for (i, (_, ages)) in edges.iter().enumerate() {
            viewers.extend(ages.iter().map(|age| (*age, Holder::Edge(i))));
        }
        for (holder, count) in pick(&mut viewers, max, newest) {
            match holder {
                Holder::Origin => {
                    info!(%broadcast, count, "the cluster is full: evicting viewers here");
                    let eviction = Eviction {
                        broadcast,
                        count,
                        newest,
                    };
                    let _ = state.engine.call(Command::Evict(eviction)).await;
                }
                Holder::Edge(i) => {
                    let url = &edges[i].0;
                    info!(%broadcast, count, edge = %url, "the cluster is full: an edge evicts");
                    state.edges.forget_viewers(url, view, count, newest);
                    if beating == Some(url.as_str()) {
                        reply.evict.push(EvictOrder {
                            view: view.clone(),
                            count,
                            newest,
                        });
                    }
                }
            }
        }
    }
    reply
}

/// With `--when-full reject`: whether the cluster already holds `--max-viewers` viewers of
/// this broadcast (some of them on edges), so a new viewer is refused here (`503`) before it
/// connects, or is redirected to an edge only to be turned away there.
pub(super) async fn full(state: &AppState, view: &str, broadcast: BroadcastKey) -> bool {
    if state.config.when_full != WhenFull::Reject {
        return false;
    }
    let on_edges: usize = state
        .edges
        .viewers_of(view, now())
        .iter()
        .map(|(_, ages)| ages.len())
        .sum();
    if on_edges == 0 {
        // The engine's own check covers viewers here.
        return false;
    }
    let Ok(Outcome::Info(info)) = state.engine.call(Command::Info(broadcast)).await else {
        return false;
    };
    info.connected_for.len() + on_edges >= state.config.max_viewers
}

/// Follows the origin's engine events: a viewer connecting here may fill the cluster.
pub fn on_event(state: &Arc<AppState>, event: &EngineEvent) {
    if !matches!(event, EngineEvent::ViewerConnected(_)) || state.config.edge_secret.is_none() {
        return;
    }
    let views = state.edges.views(now());
    if views.is_empty() {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        enforce(&state, &views, None).await;
    });
}
