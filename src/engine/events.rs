//! Events: what each peer's `Rtc` reports (connected, media, stats, keyframe requests,
//! hang-ups) is acted on, and what the engine reports is handed out.

use std::time::Instant;

use str0m::media::MediaKind;
use str0m::{Event, IceConnectionState};
use tracing::{debug, info};

use super::egress::{self, Egress};
use super::keyframes::Burst;
use super::peer::{Peer, Role};
use super::{CloseReason, Engine, EngineEvent, PeerKey};

impl Engine {
    #[must_use]
    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.events.pop_front()
    }

    pub(super) fn on_event(&mut self, now: Instant, key: PeerKey, event: Event) {
        match event {
            Event::Connected => self.on_connected(now, key),
            Event::RtpPacket(pkt) => self.on_rtp(now, key, pkt),
            Event::MediaIngressStats(s) => {
                let Some(peer) = self.peers.get_mut(key.index as usize) else {
                    return;
                };
                let delta = s.nacks.saturating_sub(peer.nacks_seen);
                peer.nacks_seen = peer.nacks_seen.max(s.nacks);
                self.counters.nacks_sent += delta;
                let b = peer.broadcast;
                if let (Some(loss), Some(route)) = (s.loss, self.router.route_mut(b)) {
                    route.ingest_loss = Some(loss);
                }
            }
            Event::PeerStats(s) => {
                if let Some(pair) = s.selected_candidate_pair {
                    self.follow_selected_pair(now, key, pair);
                }
            }
            Event::MediaEgressStats(s) => {
                let Some(peer) = self.peers.get_mut(key.index as usize) else {
                    return;
                };
                if peer.egress.is_some() {
                    return; // we answer its NACKs and count them ourselves
                }
                let delta = s.nacks.saturating_sub(peer.nacks_seen);
                peer.nacks_seen = peer.nacks_seen.max(s.nacks);
                self.counters.nacks_received += delta;
            }
            Event::KeyframeRequest(req) => {
                let kind = match self.peer_mut(key).map(|p| &p.role) {
                    Some(Role::Viewer(cs)) => cs.iter().find(|c| c.mid == req.mid).map(|c| c.kind),
                    _ => None,
                };
                if let Some(kind) = kind {
                    self.keyframe_requested(key, kind);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                // str0m's ICE-lite agent drops a pair after 15 s without a Binding *request*,
                // but libnice keeps pairs alive with indications and FFmpeg sends no STUN once
                // connected. str0m keeps its selected address, so the session goes on; whether
                // the peer is alive is the engine's rule (peer.rs `silent_at`).
                debug!(peer = %key, "ice pair expired without binding requests");
            }
            // DTLS close_notify: the peer hung up on purpose (teardown.rs).
            Event::Closed => self.hang_up(now, key),
            _ => {}
        }
    }

    fn on_connected(&mut self, now: Instant, key: PeerKey) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        if !peer.connected
            && let Some(audience) = &peer.audience
        {
            audience.connected();
        }
        peer.connected = true;
        peer.expires = None;
        let b = peer.broadcast;
        let publisher = peer.is_publisher();
        if matches!(peer.role, Role::Probe) {
            info!(peer = %key, "connectivity test connected");
            let session = peer.session.clone();
            self.events.push_back(EngineEvent::ProbeConnected(session));
            self.remove_peer(now, key, CloseReason::Deleted);
            return;
        }
        if publisher {
            info!(broadcast = %b, peer = %key, "publisher connected");
            // An edge's pull is silent (see `upstream::is_media`) from here until its media.
            peer.count_silence_from(now);
            if let Some(route) = self.router.route_mut(b) {
                route.live_since.get_or_insert(now);
            }
            self.events.push_back(EngineEvent::BroadcastLive(b));
        } else {
            if !self.admit_connected(now, b, key) {
                return;
            }
            let Some(peer) = self.peer_mut(key) else {
                return;
            };
            let Peer {
                rtc, role, keys, ..
            } = peer;
            if let Role::Viewer(consumers) = role {
                peer.egress = keys
                    .get()
                    .and_then(|keys| Egress::new(keys, rtc, consumers, now))
                    .map(Box::new);
                if peer.egress.is_none() {
                    egress::hand_to_str0m(rtc, consumers);
                }
            }
            let sealing = if peer.egress.is_some() {
                "whipcast"
            } else {
                "str0m"
            };
            info!(broadcast = %b, peer = %key, srtp = sealing, "viewer connected");
            let session = peer.session.clone();
            self.events.push_back(EngineEvent::ViewerConnected(session));
            self.queue_start(key, Burst::WithGop);
            // Ask for a fresh keyframe too: the cached one may be a while old.
            if let Some(route) = self.router.route(b)
                && let Some(i) = route.tracks.iter().position(|t| t.kind == MediaKind::Video)
            {
                self.pending_plis.push((b, i));
            }
        }
        self.reschedule(key);
    }

    /// A viewer asked for a keyframe on its `kind` track: the publisher of its broadcast is
    /// asked in turn (throttled, see `keyframes.rs`).
    pub(super) fn keyframe_requested(&mut self, viewer: PeerKey, kind: MediaKind) {
        self.counters.plis_received += 1;
        let Some(peer) = self.peer_mut(viewer) else {
            return;
        };
        let b = peer.broadcast;
        // The layer it is sent (simulcast: each layer's keyframes are its own).
        let layer = peer.consumer_mut(kind).map_or(0, |c| c.layer);
        if let Some(route) = self.router.route(b)
            && let Some(i) = route.layer_index(kind, layer)
        {
            self.pending_plis.push((b, i));
        }
        if kind == MediaKind::Video {
            // No picture yet: the cached keyframe did not arrive whole (first_frame.rs).
            self.resend_first_frame(viewer);
        }
    }
}
