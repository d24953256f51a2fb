//! Ending sessions: a peer that failed or timed out, a publisher that vanished (viewers wait
//! for it to resume), a broadcast that ended, and the final removal from every index.

use std::time::Instant;

use str0m::Output;
use tracing::{debug, info};

use super::outbox::Path;
use super::peer::{contained, live};
use super::{BroadcastKey, CloseReason, Engine, EngineEvent, PeerKey};

impl Engine {
    /// A peer failed or timed out. A publisher that vanishes keeps its viewers for the
    /// resume grace; anything else is simply removed.
    pub(super) fn close_peer(&mut self, now: Instant, key: PeerKey, reason: CloseReason) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        let b = peer.broadcast;
        if !peer.is_publisher() {
            self.remove_peer(now, key, reason);
            return;
        }
        self.remove_peer(now, key, reason);
        let grace = now + self.config.resume_grace;
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        if route.viewers.is_empty() {
            self.events.push_back(EngineEvent::BroadcastEnded(b));
            self.router.gc(b);
            return;
        }
        info!(broadcast = %b, "publisher lost; viewers wait for it to resume");
        route.lost_at = Some(now);
        let viewers = route.viewers.clone();
        for v in viewers {
            if let Some(p) = self.peer_mut(v) {
                p.expires = Some(grace);
            }
            self.reschedule(v);
        }
        self.events.push_back(EngineEvent::BroadcastReconnecting(b));
    }

    /// An engine-level expiry: a handshake that never finished, or a resume grace that ran out.
    pub(super) fn expire(&mut self, now: Instant, key: PeerKey, reason: CloseReason) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        let b = peer.broadcast;
        let waiting_for_resume =
            !peer.is_publisher() && self.router.route(b).is_some_and(|r| r.lost_at.is_some());
        if waiting_for_resume {
            info!(broadcast = %b, "publisher did not resume in time");
            self.end_route(now, b);
        } else {
            self.close_peer(now, key, reason);
        }
    }

    /// The publisher stopped (DELETE): free it and its slot, close every viewer.
    pub(super) fn end_broadcast(&mut self, now: Instant, publisher: PeerKey) {
        let Some(peer) = self.peer_mut(publisher) else {
            return;
        };
        let b = peer.broadcast;
        self.remove_peer(now, publisher, CloseReason::Deleted);
        self.end_route(now, b);
    }

    pub(super) fn end_route(&mut self, now: Instant, b: BroadcastKey) {
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        route.lost_at = None;
        let viewers = std::mem::take(&mut route.viewers);
        for v in viewers {
            self.remove_peer(now, v, CloseReason::BroadcastEnded);
        }
        self.events.push_back(EngineEvent::BroadcastEnded(b));
        self.router.gc(b);
    }

    /// Closes a peer's `Rtc` (DTLS close_notify goes out), then forgets it everywhere.
    pub(super) fn remove_peer(&mut self, _now: Instant, key: PeerKey, reason: CloseReason) {
        let Some(peer) = live(&mut self.peers, key) else {
            return;
        };
        if contained(|| peer.rtc.close()).is_ok() {
            for _ in 0..MAX_CLOSE_OUTPUTS {
                match contained(|| peer.rtc.poll_output()) {
                    Ok(Output::Transmit(t)) => {
                        let path = Path::from(&t);
                        self.outbox.push_copy(path, &t.contents);
                    }
                    Ok(Output::Event(_)) => {}
                    Ok(Output::Timeout(_)) | Err(_) => break,
                }
            }
        }
        let peer = self.peers.remove(key.index as usize);
        self.demux.remove(key, &peer.ufrag, &peer.addrs);
        self.deadlines.update(key, peer.deadline, None);
        self.sessions.remove(&peer.session);
        let b = peer.broadcast;
        if let Some(route) = self.router.route_mut(b) {
            if route.publisher == Some(key) {
                route.publisher = None;
            }
            let before = route.viewers.len();
            route.viewers.retain(|v| *v != key);
            if route.viewers.len() != before {
                let viewers = route.viewers.len();
                self.events.push_back(EngineEvent::ViewerCountChanged {
                    broadcast: b,
                    viewers,
                });
            }
            // The resume grace exists to keep viewers; with the last one gone there is
            // nothing left to keep, so the broadcast ends and frees its slot now.
            if route.lost_at.is_some() && route.publisher.is_none() && route.viewers.is_empty() {
                info!(broadcast = %b, "last viewer left while the publisher was away");
                route.lost_at = None;
                self.events.push_back(EngineEvent::BroadcastEnded(b));
            }
        }
        if reason != CloseReason::Deleted {
            debug!(peer = %key, ?reason, "session closed");
        }
        info!(broadcast = %b, peer = %key, ?reason, "session removed");
        self.events.push_back(EngineEvent::SessionClosed {
            session: peer.session,
            reason,
        });
        self.router.gc(b);
    }
}

/// Enough for RTCP BYE plus DTLS close_notify; a closing `Rtc` never produces more at once.
const MAX_CLOSE_OUTPUTS: usize = 16;
