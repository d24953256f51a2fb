//! Commands from the HTTP layer: sessions start (publish, subscribe, connectivity tests),
//! end (DELETE, revocation, shutdown) and are described, and a connected viewer takes its
//! place in the audience.

use std::time::{Duration, Instant};

use str0m::media::MediaKind;
use tracing::info;

use super::audience::Admission;
use super::consumer::{Consumer, RtpStart};
use super::peer::{Ingest, Peer, Role};
use super::twcc_guard::TwccGuard;
use super::{
    BroadcastInfo, BroadcastKey, BroadcastState, CloseReason, Command, CommandError, Engine,
    EngineEvent, IngestTrack, NewPeer, Outcome, PeerKey, SessionId, ViewerTrack,
};
use crate::config::WhenFull;

impl Engine {
    /// Executes a command from the HTTP layer.
    pub fn handle_command(&mut self, now: Instant, command: Command) -> Outcome {
        self.last_now = Some(now);
        let outcome = match command {
            Command::Publish(peer, tracks) => Outcome::Published(self.publish(now, peer, tracks)),
            Command::Pull(peer, tracks, origin) => {
                Outcome::Published(self.pull(now, peer, tracks, &origin))
            }
            Command::Subscribe(peer, tracks) => {
                Outcome::Subscribed(self.subscribe(now, peer, tracks, false))
            }
            Command::Relay(peer, tracks) => {
                Outcome::Subscribed(self.subscribe(now, peer, tracks, true))
            }
            Command::Mirror(b, worker) => Outcome::Mirrored(self.mirror_to(b, worker)),
            Command::Describe(b) => Outcome::Described(self.describe(b)),
            Command::Close { session, publisher } => {
                Outcome::Closed(self.close_session(now, &session, publisher))
            }
            Command::Patch(patch) => Outcome::Patched(self.patch(now, patch)),
            Command::SetLayer { session, rid } => {
                Outcome::LayerSet(self.set_layer(now, &session, rid))
            }
            Command::DescribeLayer(session) => {
                Outcome::LayerDescribed(self.describe_layer(now, &session))
            }
            Command::Stats => Outcome::Stats(self.stats()),
            Command::Info(b) => Outcome::Info(self.info(now, b)),
            Command::Status => Outcome::Status(
                self.router
                    .holding_slots()
                    .map(|b| (b, self.info(now, b)))
                    .collect(),
            ),
            Command::RevokeViewers(b) => Outcome::Revoked(self.revoke_viewers(now, b)),
            Command::Evict(e) => Outcome::Evicted(self.evict(now, e)),
            Command::Shutdown => Outcome::ShutDown(self.shut_down(now)),
            Command::Probe(new) => {
                let key = self.insert_peer(now, new, Role::Probe);
                // A test that does not connect soon is not going to: free it early.
                if let Some(p) = self.peer_mut(key) {
                    p.expires = Some(now + PROBE_TIMEOUT);
                }
                self.reschedule(key);
                Outcome::Probing(key.index as usize)
            }
        };
        self.flush_deferred(now);
        outcome
    }

    pub(super) fn publish(
        &mut self,
        now: Instant,
        new: NewPeer,
        tracks: Vec<IngestTrack>,
    ) -> Result<(), CommandError> {
        let b = new.broadcast;
        let old = self.router.route(b).and_then(|r| r.publisher);
        let holds_slot = self
            .router
            .route(b)
            .is_some_and(|r| r.publisher.is_some() || r.lost_at.is_some());
        if !holds_slot && self.router.slots_in_use() >= self.config.max_live_broadcasts {
            return Err(CommandError::NoFreeSlot);
        }
        if let Some(old) = old {
            // OBS reconnects with a fresh POST and no DELETE that reaches us: the new
            // authenticated publisher wins at once (DESIGN.md §3 rule 7).
            info!(broadcast = %b, "publisher replaced by a new session");
            self.remove_peer(now, old, CloseReason::Replaced);
        }
        let ingest = Ingest::new(TwccGuard::new(new.transport_cc));
        let key = self.insert_peer(now, new, Role::Publisher(ingest));
        let route = self.router.entry(b);
        route.start_epoch(key, &tracks);
        // Viewers kept through a resume grace no longer expire.
        for &v in &route.viewers {
            if let Some(p) = self.peers.get_mut(v.index as usize) {
                p.expires = None;
            }
        }
        let viewers = route.viewers.clone();
        for v in viewers {
            self.reschedule(v);
        }
        self.remap_viewers(now, b);
        self.restart_mirrors(b);
        info!(broadcast = %b, peer = %key, "publisher session created");
        Ok(())
    }

    fn subscribe(
        &mut self,
        now: Instant,
        mut new: NewPeer,
        tracks: Vec<ViewerTrack>,
        relay: bool,
    ) -> Result<(), CommandError> {
        let b = new.broadcast;
        let refused = self.admissible(b, relay);
        if let Err(e) = refused {
            // A mirror's home counted this session when the viewer was placed here.
            self.left_mirror(b);
            return Err(e);
        }
        let mut consumers: Vec<Consumer> = Vec::with_capacity(2);
        for t in tracks {
            if consumers.iter().any(|c| c.kind == t.kind) {
                continue;
            }
            let mut api = new.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(t.mid, None) else {
                continue;
            };
            let (ssrc, rtx) = (tx.ssrc(), tx.rtx());
            // Before str0m has done anything with it: the stream goes back to str0m only if
            // it ends up sealing this viewer's media (egress::hand_to_str0m).
            api.remove_stream_tx(ssrc);
            let start = RtpStart::random(self.config.test_seq_start);
            let mut c = Consumer::new(t.mid, t.kind, ssrc, rtx, start);
            if let Some(route) = self.router.route(b) {
                c.layer = route.start_layer(t.kind, now);
            }
            consumers.push(c);
        }
        let key = self.insert_peer(now, new, Role::Viewer(consumers));
        let route = self.router.entry(b);
        route.viewers.push(key);
        let viewers = route.audience.joined();
        let audience = route.audience.clone();
        if let Some(p) = self.peer_mut(key) {
            p.relay = relay;
            p.audience = Some(audience);
        }
        self.events.push_back(EngineEvent::ViewerCountChanged {
            broadcast: b,
            viewers,
        });
        info!(broadcast = %b, peer = %key, viewers, "viewer session created");
        Ok(())
    }

    /// Whether a new viewer session of `b` may start here.
    fn admissible(&self, b: BroadcastKey, relay: bool) -> Result<(), CommandError> {
        let Some(route) = self.router.route(b).filter(|r| r.is_live()) else {
            return Err(CommandError::NotLive);
        };
        // Only connected viewers hold a place (and only a viewer that connects may evict
        // one, in `admit_connected`): sessions that never finish DTLS cost a viewer link's
        // holder nothing, so they get their own small bound instead, counted on every
        // worker holding viewers of the broadcast (audience.rs).
        if route.audience.connecting() >= self.pending_cap() {
            return Err(CommandError::TooManyPending);
        }
        if !relay
            && route.audience.seated() >= self.config.max_viewers
            && self.config.when_full == WhenFull::Reject
        {
            return Err(CommandError::ViewerLimitReached);
        }
        Ok(())
    }

    /// Viewer sessions of one broadcast that may be in their handshake at once: enough for
    /// a full audience joining together, small enough that junk offers cost little.
    fn pending_cap(&self) -> usize {
        self.config.max_viewers.max(MIN_PENDING_VIEWERS)
    }

    fn describe(&self, b: BroadcastKey) -> Option<Vec<IngestTrack>> {
        let route = self.router.route(b)?;
        route.publisher?;
        Some(route.ingest_tracks())
    }

    fn info(&self, now: Instant, b: BroadcastKey) -> BroadcastInfo {
        let route = self.router.route(b);
        let state = match route {
            Some(r) if r.publisher.is_some() => BroadcastState::Live,
            Some(r) if r.lost_at.is_some() => BroadcastState::Reconnecting,
            _ => BroadcastState::Idle,
        };
        let codec = |kind: MediaKind| {
            route?
                .tracks
                .iter()
                .find(|t| t.kind == kind)?
                .params
                .first()
                .map(|p| format!("{:?}", p.spec().codec).to_uppercase())
        };
        let video = route.and_then(|r| r.tracks.iter().find(|t| t.kind == MediaKind::Video));
        BroadcastInfo {
            state,
            viewers: route.map_or(0, |r| r.audience.sessions()),
            bitrate_bps: route.map_or(0, |r| r.ingest.bps(now)),
            video_codec: codec(MediaKind::Video),
            audio_codec: codec(MediaKind::Audio),
            sps: route.and_then(|r| r.sps),
            live_for: route
                .and_then(|r| r.live_since)
                .map(|t| now.saturating_duration_since(t)),
            ingest_loss: route.and_then(|r| r.ingest_loss),
            fps: video.and_then(|t| t.doctor.fps),
            keyframe_interval: video.and_then(|t| t.doctor.keyframe_interval),
            b_frames: video.is_some_and(|t| t.doctor.b_frames(now)),
            connected_for: self.connected_for(now, b),
            layers: route.map_or_else(Vec::new, |r| r.layer_infos(now)),
            slow_viewers: self.slow_viewers(now, b),
        }
    }

    fn shut_down(&mut self, now: Instant) -> usize {
        let n = self.peers.len();
        let publishers: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.is_publisher())
            .map(|(i, p)| PeerKey {
                index: i as u32,
                generation: p.generation,
            })
            .collect();
        for p in publishers {
            self.end_broadcast(now, p);
        }
        // Viewers waiting for a publisher to resume.
        let rest: Vec<PeerKey> = self
            .peers
            .iter()
            .map(|(i, p)| PeerKey {
                index: i as u32,
                generation: p.generation,
            })
            .collect();
        for v in rest {
            self.remove_peer(now, v, CloseReason::BroadcastEnded);
        }
        info!(sessions = n, "all sessions closed for shutdown");
        n
    }

    fn revoke_viewers(&mut self, now: Instant, b: BroadcastKey) -> usize {
        let Some(route) = self.router.route_mut(b) else {
            return 0;
        };
        let viewers = std::mem::take(&mut route.viewers);
        let n = viewers.len();
        for v in viewers {
            self.remove_peer(now, v, CloseReason::Revoked);
        }
        let viewers = self.router.route(b).map_or(0, |r| r.audience.sessions());
        self.events.push_back(EngineEvent::ViewerCountChanged {
            broadcast: b,
            viewers,
        });
        self.router.gc(b);
        n
    }

    fn close_session(&mut self, now: Instant, session: &SessionId, publisher: bool) -> bool {
        let Some(&key) = self.sessions.get(session) else {
            return self.delete_hung_up(now, session, publisher);
        };
        let Some(peer) = self.peer_mut(key) else {
            return false;
        };
        if peer.is_publisher() != publisher {
            return false;
        }
        if publisher {
            self.end_broadcast(now, key);
        } else {
            self.remove_peer(now, key, CloseReason::Deleted);
        }
        true
    }

    fn insert_peer(&mut self, now: Instant, new: NewPeer, role: Role) -> PeerKey {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let entry = self.peers.vacant_entry();
        let key = PeerKey {
            index: entry.key() as u32,
            generation,
        };
        let NewPeer {
            broadcast,
            session,
            ufrag,
            rtc,
            keys,
            transport_cc: _,
        } = new;
        self.demux.insert_ufrag(ufrag.clone(), key);
        self.sessions.insert(session.clone(), key);
        entry.insert(Peer {
            generation,
            rtc: Box::new(rtc),
            session,
            ufrag,
            remote_ufrag: None,
            ice_restarting: false,
            broadcast,
            role,
            connected: false,
            addrs: Vec::new(),
            rtc_deadline: None,
            expires: Some(now + self.config.handshake_timeout),
            deadline: None,
            silence_stamp: None,
            nacks_seen: 0,
            first_frames: 0,
            dirty: false,
            keys,
            egress: None,
            media_path: None,
            consent: Default::default(),
            relay: false,
            audience: None,
        });
        self.drain(now, key);
        key
    }

    /// A viewer just connected: it takes a place, evicting the oldest connected viewer of
    /// the broadcast (on whichever worker) when it is full, or, with `--when-full reject`,
    /// it is closed itself. Returns whether it stays.
    pub(super) fn admit_connected(&mut self, now: Instant, b: BroadcastKey, key: PeerKey) -> bool {
        let Some(peer) = self.peer_mut(key) else {
            return false;
        };
        if peer.relay {
            return true;
        }
        let Some(audience) = peer.audience.clone() else {
            return true;
        };
        let reject = self.config.when_full == WhenFull::Reject;
        let seat = (self.config.worker, key);
        match audience.admit(seat, now, self.config.max_viewers, reject) {
            Admission::Refused => {
                info!(broadcast = %b, peer = %key, "broadcast full when the viewer connected");
                self.remove_peer(now, key, CloseReason::Evicted);
                false
            }
            Admission::Seated { evict: None } => true,
            Admission::Seated {
                evict: Some(oldest),
            } => {
                info!(broadcast = %b, peer = %oldest.1, worker = oldest.0, "evicting the oldest viewer");
                self.evict_on(now, b, oldest);
                true
            }
        }
    }
}

/// How long a connectivity test may take to connect before it is freed: a working path
/// connects in well under a second, and an unconnected test costs an `Rtc` until then.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The least number of viewer sessions of one broadcast allowed in their handshake at once,
/// whatever `max_viewers` is (see `Engine::pending_cap`).
const MIN_PENDING_VIEWERS: usize = 4;
