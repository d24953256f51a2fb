//! The viewer cap across a cluster (an origin and its edges): `--max-viewers` counts every
//! viewer of a broadcast, on the origin and on every edge, and when there are too many the
//! **oldest** go wherever they watch (`--when-full reject`: the newest).
//!
//! Each edge's heartbeat lists, per broadcast it pulls, how long ago each of its viewers
//! connected (edges.rs, [`Watching`](super::edges::Watching)). The origin merges those with
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
use super::edges::{BeatReply, EvictOrder};
use crate::clock::now;
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

/// Where a viewer watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// This server (the origin, or the edge passing an eviction down its chain).
    Origin,
    /// An index into the edges of one check.
    Edge(usize),
}

/// Who gives up how many places so that `max` viewers remain: the oldest (longest
/// connected) go, or with `newest` the most recently connected.
pub(crate) fn pick(
    viewers: &mut [(Duration, Holder)],
    max: usize,
    newest: bool,
) -> Vec<(Holder, usize)> {
    let excess = viewers.len().saturating_sub(max);
    if excess == 0 {
        return Vec::new();
    }
    viewers.sort_by_key(|v| std::cmp::Reverse(v.0));
    let going = if newest {
        &viewers[viewers.len() - excess..]
    } else {
        &viewers[..excess]
    };
    let mut counts: Vec<(Holder, usize)> = Vec::new();
    for (_, holder) in going {
        match counts.iter_mut().find(|(h, _)| h == holder) {
            Some((_, n)) => *n += 1,
            None => counts.push((*holder, 1)),
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_oldest_viewers_go_wherever_they_watch() {
        let mut v = vec![
            (secs(5), Holder::Origin),
            (secs(30), Holder::Edge(0)),
            (secs(20), Holder::Edge(1)),
            (secs(1), Holder::Edge(1)),
        ];
        assert_eq!(
            pick(&mut v, 2, false),
            vec![(Holder::Edge(0), 1), (Holder::Edge(1), 1)]
        );
        assert_eq!(pick(&mut v, 3, false), vec![(Holder::Edge(0), 1)]);
        assert_eq!(pick(&mut v, 4, false), vec![]);
    }

    #[test]
    fn with_reject_the_newest_viewers_go() {
        let mut v = vec![
            (secs(30), Holder::Edge(0)),
            (secs(1), Holder::Origin),
            (secs(20), Holder::Edge(1)),
        ];
        assert_eq!(pick(&mut v, 2, true), vec![(Holder::Origin, 1)]);
        assert_eq!(pick(&mut v, 0, true).len(), 3);
    }
}
