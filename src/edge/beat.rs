//! The edge's heartbeat: every [`HEARTBEAT`] it tells its origin where viewers reach it, how
//! many it has, and how long each viewer of each pulled broadcast has been connected, so the
//! origin can redirect viewers to it (http/edges.rs) and cap the viewers of a broadcast
//! across the whole cluster (http/cluster.rs). The origin's reply names the viewers to
//! evict. A viewer connecting or leaving brings the next beat forward, so the cap holds
//! within a round trip for a newcomer here. An origin that stops hearing an edge drops it
//! after three missed beats.
//!
//! In a chain of edges, an edge's own edges beat to it: their viewers are listed in its
//! beat as its own, and an eviction its origin names is shared out between its own viewers
//! and theirs by the same rule (the oldest, or with `--when-full reject` the newest), their
//! part passed down in the reply to their next beat.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::Edge;
use crate::cluster::{Beat, BeatReply, EvictOrder, HEARTBEAT, Holder, MAX_LISTED, Watching, pick};
use crate::engine::{BroadcastKey, Command, Eviction, Outcome};

impl Edge {
    /// Beats until the engine is gone; `url` is this edge's base URL for viewers and
    /// `capacity` how many viewers it takes in all.
    pub fn beat_forever(self: Arc<Self>, url: String, capacity: usize) {
        tokio::spawn(async move {
            let mut registered = false;
            loop {
                let viewers = match self.engine.call(Command::Stats).await {
                    Ok(Outcome::Stats(s)) => s.viewers,
                    Ok(_) => 0,
                    Err(_) => return, // shutting down
                };
                let beat = Beat {
                    url: url.clone(),
                    viewers,
                    capacity,
                    broadcasts: self.watching().await,
                };
                let body = serde_json::to_string(&beat).expect("a beat serialises");
                let headers = [
                    ("content-type", "application/json"),
                    (crate::cluster::EDGE_SECRET_HEADER, self.secret.as_str()),
                ];
                let target = format!("{}/api/edges", self.origin);
                match self.client.request("POST", &target, &headers, body).await {
                    Ok(r) if r.status == 200 => {
                        if !registered {
                            info!(origin = %self.origin, %url, "registered with the origin");
                            registered = true;
                        }
                        debug!(viewers, "heartbeat");
                        // An origin from before the cluster cap answers `{}`.
                        let reply: BeatReply = serde_json::from_str(&r.body).unwrap_or_default();
                        self.obey(reply).await;
                    }
                    Ok(r) => {
                        warn!(status = r.status, body = %r.body, "the origin refused our heartbeat");
                        registered = false;
                    }
                    Err(e) => {
                        warn!(error = %e, "heartbeat to the origin failed");
                        registered = false;
                    }
                }
                // A viewer connecting or leaving beats at once (but not more often than
                // every EARLIEST, so a crowd joining costs the origin a few beats).
                tokio::time::sleep(EARLIEST).await;
                let _ = tokio::time::timeout(HEARTBEAT - EARLIEST, self.wake.notified()).await;
            }
        });
    }

    /// The viewers of each broadcast pulled now, as the heartbeat lists them.
    async fn watching(&self) -> Vec<Watching> {
        let pulled: Vec<(String, crate::engine::BroadcastKey)> = {
            let pulls = self.pulls.lock().expect("pulls lock");
            pulls
                .by_view
                .iter()
                .filter(|(_, p)| p.session.is_some())
                .map(|(view, p)| (view.clone(), p.key))
                .collect()
        };
        let mut watching = Vec::with_capacity(pulled.len());
        for (view, key) in pulled {
            let Some((mut ages, _)) = self.ages(&view, key).await else {
                continue;
            };
            ages.sort_unstable_by_key(|a| std::cmp::Reverse(a.0));
            let listed = ages.len().min(MAX_LISTED);
            watching.push(Watching {
                view,
                connected_ms: ages[..listed]
                    .iter()
                    .map(|(d, _)| d.as_millis() as u64)
                    .collect(),
                more: ages.len() - listed,
            });
        }
        watching
    }

    /// How long each viewer of `view` (broadcast `key` here) has been connected, here and
    /// on this edge's own edges (`Holder::Edge` indexes the URLs returned with them).
    async fn ages(
        &self,
        view: &str,
        key: BroadcastKey,
    ) -> Option<(Vec<(Duration, Holder)>, Vec<String>)> {
        let Ok(Outcome::Info(info)) = self.engine.call(Command::Info(key)).await else {
            return None;
        };
        let mut ages: Vec<(Duration, Holder)> = (info.connected_for.into_iter())
            .map(|d| (d, Holder::Origin))
            .collect();
        let mut urls = Vec::new();
        for (i, (url, theirs)) in (self.children.viewers_of(view, crate::clock::now()))
            .into_iter()
            .enumerate()
        {
            ages.extend(theirs.iter().map(|d| (*d, Holder::Edge(i))));
            urls.push(url);
        }
        Some((ages, urls))
    }

    /// Evicts the viewers the origin named: the cluster is over its viewer cap.
    async fn obey(&self, reply: BeatReply) {
        for order in reply.evict {
            let key = {
                let pulls = self.pulls.lock().expect("pulls lock");
                pulls.by_view.get(&order.view).map(|p| p.key)
            };
            let Some(broadcast) = key else { continue };
            info!(%broadcast, count = order.count, "the origin says the cluster is full: evicting");
            let Some((mut ages, children)) = self.ages(&order.view, broadcast).await else {
                continue;
            };
            let keep = ages.len().saturating_sub(order.count);
            for (holder, count) in pick(&mut ages, keep, order.newest) {
                match holder {
                    Holder::Origin => {
                        let eviction = Eviction {
                            broadcast,
                            count,
                            newest: order.newest,
                        };
                        let _ = self.engine.call(Command::Evict(eviction)).await;
                    }
                    Holder::Edge(i) => {
                        let Some(url) = children.get(i) else {
                            continue;
                        };
                        let down = EvictOrder {
                            view: order.view.clone(),
                            count,
                            newest: order.newest,
                        };
                        self.children.order(url, down);
                    }
                }
            }
        }
    }
}

/// The least time between two beats: viewers connecting together share one.
const EARLIEST: Duration = Duration::from_millis(100);
