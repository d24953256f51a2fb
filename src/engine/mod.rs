//! The sans-IO media engine: every peer, the demux index, the router and the one timer index.
//!
//! # Call contract
//!
//! The engine never does IO and never reads the clock; every input carries `now`, which must
//! not go backwards. Its methods come in three groups:
//!
//! - **input**: [`handle_datagram`](Engine::handle_datagram) for each UDP datagram,
//!   [`handle_timeout`](Engine::handle_timeout) when [`poll_timeout`](Engine::poll_timeout)'s
//!   instant has passed, [`handle_command`](Engine::handle_command) for HTTP requests (its
//!   [`Outcome`] is returned at once);
//! - **output**, to poll after every input, in this order: [`poll_transmit`](Engine::poll_transmit)
//!   until `None` (send each), [`poll_event`](Engine::poll_event) until `None`, then
//!   [`poll_timeout`](Engine::poll_timeout) for the next wake-up;
//! - **observation**: [`stats`](Engine::stats).
//!
//! Work per input is bounded by the peers that input concerns: a datagram is routed through
//! [`Demux`] (no scan), a timeout touches only the peers that are due, and a publisher packet
//! touches that broadcast's viewers.

mod command;
mod consumer;
mod deadline;
mod demux;
mod key;
mod peer;
mod router;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slab::Slab;
use str0m::media::{KeyframeRequestKind, MediaKind};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Event, IceConnectionState, Input, Output};
use tracing::{debug, info, trace};

pub use self::command::{
    BroadcastInfo, BroadcastState, CloseReason, Command, CommandError, EngineEvent, IngestTrack,
    NewPeer, Outcome, Stats, ViewerTrack,
};
pub use self::demux::stun_local_ufrag;
pub use self::key::{BroadcastKey, PeerKey, SessionId};

use self::consumer::{Consumer, SourcePacket};
use self::deadline::Deadlines;
use self::demux::Demux;
use self::peer::{Ingest, Peer, Role, contained};
use self::router::{CachedPacket, Router};
use crate::config::WhenFull;

/// Limits and policies the engine enforces.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The addresses in our ICE host candidates; a datagram's destination is mapped onto one.
    pub candidates: Vec<SocketAddr>,
    pub max_live_broadcasts: usize,
    pub max_viewers: usize,
    pub when_full: WhenFull,
    /// How long viewers wait for a publisher that vanished without DELETE.
    pub resume_grace: Duration,
    /// How long a new session may take to finish ICE and DTLS.
    pub handshake_timeout: Duration,
}

/// The media engine. See the module docs for the call contract.
pub struct Engine {
    config: EngineConfig,
    peers: Slab<Peer>,
    next_generation: u32,
    demux: Demux,
    router: Router,
    deadlines: Deadlines,
    sessions: HashMap<SessionId, PeerKey>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<EngineEvent>,
    /// Keyframe requests gathered while draining viewers, sent to publishers afterwards
    /// (never in the middle of draining the publisher that is forwarding).
    pending_plis: Vec<(BroadcastKey, usize)>,
    /// Viewers that just connected and get the cached keyframe once their `Rtc` is drained:
    /// its final DTLS flight must leave before the first SRTP packet, or the browser cannot
    /// decrypt that packet yet.
    pending_starts: Vec<PeerKey>,
    /// Viewers with written but not yet released packets. One tick per viewer releases every
    /// packet written to it since, so a burst (a keyframe is dozens of packets, and the io
    /// loop feeds a whole receive batch before polling) costs one tick, not one per packet.
    dirty: Vec<PeerKey>,
    /// The latest `now` seen, for work deferred to `poll_transmit`.
    last_now: Option<Instant>,
    /// Reused buffers, so the per-packet path does not allocate.
    scratch_keys: Vec<PeerKey>,
    scratch_packets: Vec<CachedPacket>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    datagrams_dropped: u64,
    packets_in: u64,
    bytes_in: u64,
    packets_out: u64,
    bytes_out: u64,
    packets_forwarded: u64,
    plis_sent: u64,
    plis_received: u64,
    nacks_sent: u64,
    nacks_received: u64,
    evictions: u64,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            peers: Slab::new(),
            next_generation: 0,
            demux: Demux::default(),
            router: Router::default(),
            deadlines: Deadlines::default(),
            sessions: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            pending_plis: Vec::new(),
            pending_starts: Vec::new(),
            dirty: Vec::new(),
            last_now: None,
            scratch_keys: Vec::new(),
            scratch_packets: Vec::new(),
            counters: Counters::default(),
        }
    }

    // ---------------------------------------------------------------- input

    /// Feeds one UDP datagram received from `src` on local address `dst`.
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        self.last_now = Some(now);
        let Some(key) = self.demux.route(src, data) else {
            self.counters.datagrams_dropped += 1;
            trace!(len = data.len(), "dropping datagram from unknown source");
            return;
        };
        let destination = self.candidate_for(dst, src);
        let Some(peer) = self.peer_mut(key) else {
            self.counters.datagrams_dropped += 1;
            return;
        };
        let Ok(receive) = Receive::new(Protocol::Udp, src, destination, data) else {
            self.counters.datagrams_dropped += 1;
            return;
        };
        let input = Input::Receive(now, receive);
        if !peer.rtc.accepts(&input) {
            self.counters.datagrams_dropped += 1;
            trace!(peer = %key, "datagram not accepted by peer");
            return;
        }
        if let Err(e) = contained(|| peer.rtc.handle_input(input)) {
            debug!(peer = %key, error = %e, "peer input failed");
            self.close_peer(now, key, CloseReason::PeerFailed);
            return;
        }
        if !self.demux.is_known_addr(src) {
            // Accepted means STUN with a valid MESSAGE-INTEGRITY for this peer's ufrag (or
            // traffic from its nominated address): safe to index.
            let peer = self
                .peers
                .get_mut(key.index as usize)
                .expect("peer checked above");
            self.demux.insert_addr(src, key, &mut peer.addrs);
        }
        self.drain(now, key);
        self.flush_deferred(now);
    }

    /// Advances every peer whose deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        self.flush_writes();
        let mut due = std::mem::take(&mut self.scratch_keys);
        due.clear();
        self.deadlines.pop_due(now, &mut due);
        for &key in &due {
            let Some(peer) = self.peer_mut(key) else {
                continue;
            };
            peer.deadline = None;
            if peer.expires.is_some_and(|t| t <= now) {
                let reason = if peer.connected {
                    CloseReason::BroadcastEnded
                } else {
                    CloseReason::TimedOut
                };
                self.expire(now, key, reason);
                continue;
            }
            self.tick(now, key);
        }
        self.scratch_keys = due;
        self.flush_deferred(now);
    }

    /// Executes a command from the HTTP layer.
    pub fn handle_command(&mut self, now: Instant, command: Command) -> Outcome {
        self.last_now = Some(now);
        let outcome = match command {
            Command::Publish(peer, tracks) => Outcome::Published(self.publish(now, peer, tracks)),
            Command::Subscribe(peer, tracks) => {
                Outcome::Subscribed(self.subscribe(now, peer, tracks))
            }
            Command::Describe(b) => Outcome::Described(self.describe(b)),
            Command::Close { session, publisher } => {
                Outcome::Closed(self.close_session(now, &session, publisher))
            }
            Command::Trickle { session, publisher } => Outcome::Trickled(
                self.sessions
                    .get(&session)
                    .and_then(|k| self.peers.get(k.index as usize))
                    .is_some_and(|p| p.is_publisher() == publisher),
            ),
            Command::Stats => Outcome::Stats(self.stats()),
            Command::Info(b) => Outcome::Info(self.info(now, b)),
            Command::Status => Outcome::Status(
                self.router
                    .holding_slots()
                    .map(|b| (b, self.info(now, b)))
                    .collect(),
            ),
            Command::RevokeViewers(b) => Outcome::Revoked(self.revoke_viewers(now, b)),
            Command::Shutdown => Outcome::ShutDown(self.shut_down(now)),
        };
        self.flush_deferred(now);
        outcome
    }

    // ---------------------------------------------------------------- output

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() {
            self.flush_writes();
        }
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.last_now {
            // Written packets wait for a tick: at once.
            Some(now) if !self.dirty.is_empty() => Some(now),
            _ => self.deadlines.earliest(),
        }
    }

    pub fn stats(&self) -> Stats {
        let (demux_addrs, demux_ufrags) = self.demux.len();
        let publishers = self.peers.iter().filter(|(_, p)| p.is_publisher()).count();
        Stats {
            peers: self.peers.len(),
            publishers,
            viewers: self.peers.len() - publishers,
            live_broadcasts: self.router.live(),
            demux_addrs,
            demux_ufrags,
            deadlines: self.deadlines.len(),
            datagrams_dropped: self.counters.datagrams_dropped,
            packets_in: self.counters.packets_in,
            bytes_in: self.counters.bytes_in,
            packets_out: self.counters.packets_out,
            bytes_out: self.counters.bytes_out,
            packets_forwarded: self.counters.packets_forwarded,
            plis_sent: self.counters.plis_sent,
            plis_received: self.counters.plis_received,
            nacks_sent: self.counters.nacks_sent,
            nacks_received: self.counters.nacks_received,
            evictions: self.counters.evictions,
        }
    }

    // ---------------------------------------------------------------- commands

    fn publish(
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
        let key = self.insert_peer(now, new, Role::Publisher(Ingest::default()));
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
        info!(broadcast = %b, peer = %key, "publisher session created");
        Ok(())
    }

    fn subscribe(
        &mut self,
        now: Instant,
        new: NewPeer,
        tracks: Vec<ViewerTrack>,
    ) -> Result<(), CommandError> {
        let b = new.broadcast;
        let Some(route) = self.router.route(b).filter(|r| r.publisher.is_some()) else {
            return Err(CommandError::NotLive);
        };
        if route.viewers.len() >= self.config.max_viewers {
            if self.config.when_full == WhenFull::Reject || route.viewers.is_empty() {
                return Err(CommandError::ViewerLimitReached);
            }
            let oldest = route.viewers[0];
            info!(broadcast = %b, peer = %oldest, "evicting the oldest viewer");
            self.counters.evictions += 1;
            self.remove_peer(now, oldest, CloseReason::Evicted);
        }
        let mut consumers: Vec<Consumer> = Vec::with_capacity(2);
        for t in tracks {
            if !consumers.iter().any(|c| c.kind == t.kind) {
                consumers.push(Consumer::new(t.mid, t.kind));
            }
        }
        let key = self.insert_peer(now, new, Role::Viewer(consumers));
        let route = self.router.entry(b);
        route.viewers.push(key);
        let viewers = route.viewers.len();
        self.events.push_back(EngineEvent::ViewerCountChanged {
            broadcast: b,
            viewers,
        });
        info!(broadcast = %b, peer = %key, viewers, "viewer session created");
        Ok(())
    }

    fn describe(&self, b: BroadcastKey) -> Option<Vec<IngestTrack>> {
        let route = self.router.route(b)?;
        route.publisher?;
        Some(
            route
                .tracks
                .iter()
                .map(|t| IngestTrack {
                    mid: t.mid,
                    kind: t.kind,
                    params: t.params.clone(),
                })
                .collect(),
        )
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
            viewers: route.map_or(0, |r| r.viewers.len()),
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
        self.events.push_back(EngineEvent::ViewerCountChanged {
            broadcast: b,
            viewers: 0,
        });
        self.router.gc(b);
        n
    }

    fn close_session(&mut self, now: Instant, session: &SessionId, publisher: bool) -> bool {
        let Some(&key) = self.sessions.get(session) else {
            return false;
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

    // ---------------------------------------------------------------- peers

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
        } = new;
        self.demux.insert_ufrag(ufrag.clone(), key);
        self.sessions.insert(session.clone(), key);
        entry.insert(Peer {
            generation,
            rtc,
            session,
            ufrag,
            broadcast,
            role,
            connected: false,
            addrs: Vec::new(),
            rtc_deadline: None,
            expires: Some(now + self.config.handshake_timeout),
            deadline: None,
            nacks_seen: 0,
            dirty: false,
        });
        self.drain(now, key);
        key
    }

    fn peer_mut(&mut self, key: PeerKey) -> Option<&mut Peer> {
        self.peers
            .get_mut(key.index as usize)
            .filter(|p| p.generation == key.generation)
    }

    /// Feeds the `Rtc` the current time and drains it.
    ///
    /// A write is released in two steps (the tick schedules the send for `now`, a second tick
    /// at `now` sends it), so a tick that leaves the peer due at once is followed by one more
    /// right away: the packets leave in this turn, not the next.
    fn tick(&mut self, now: Instant, key: PeerKey) {
        for _ in 0..TICKS_PER_TURN {
            let Some(peer) = self.peer_mut(key) else {
                return;
            };
            if let Err(e) = contained(|| peer.rtc.handle_input(Input::Timeout(now))) {
                debug!(peer = %key, error = %e, "peer timeout failed");
                self.close_peer(now, key, CloseReason::PeerFailed);
                return;
            }
            self.drain(now, key);
            if self
                .peer_mut(key)
                .and_then(|p| p.rtc_deadline)
                .is_none_or(|t| t > now)
            {
                return;
            }
        }
    }

    /// Drains a peer's `Rtc` until it asks for a timeout, acting on every output.
    fn drain(&mut self, now: Instant, key: PeerKey) {
        loop {
            let Some(peer) = self.peer_mut(key) else {
                return;
            };
            match contained(|| peer.rtc.poll_output()) {
                Ok(Output::Timeout(t)) => {
                    peer.rtc_deadline = Some(t);
                    self.reschedule(key);
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    self.counters.packets_out += 1;
                    self.counters.bytes_out += t.contents.len() as u64;
                    self.transmits.push_back(t);
                }
                Ok(Output::Event(e)) => self.on_event(now, key, e),
                Err(e) => {
                    debug!(peer = %key, error = %e, "peer output failed");
                    self.close_peer(now, key, CloseReason::PeerFailed);
                    return;
                }
            }
        }
    }

    fn reschedule(&mut self, key: PeerKey) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        let next = peer.next_deadline();
        let old = peer.deadline;
        peer.deadline = next;
        self.deadlines.update(key, old, next);
    }

    fn on_event(&mut self, now: Instant, key: PeerKey, event: Event) {
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
            Event::MediaEgressStats(s) => {
                let Some(peer) = self.peers.get_mut(key.index as usize) else {
                    return;
                };
                let delta = s.nacks.saturating_sub(peer.nacks_seen);
                peer.nacks_seen = peer.nacks_seen.max(s.nacks);
                self.counters.nacks_received += delta;
            }
            Event::KeyframeRequest(req) => {
                self.counters.plis_received += 1;
                let Some(peer) = self.peer_mut(key) else {
                    return;
                };
                let b = peer.broadcast;
                let kind = match &peer.role {
                    Role::Viewer(cs) => cs.iter().find(|c| c.mid == req.mid).map(|c| c.kind),
                    Role::Publisher(_) => None,
                };
                if let (Some(kind), Some(route)) = (kind, self.router.route(b))
                    && let Some(i) = route.tracks.iter().position(|t| t.kind == kind)
                {
                    self.pending_plis.push((b, i));
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                // ICE-lite: no STUN from the peer for 15 s. Consent is gone.
                debug!(peer = %key, "ice disconnected");
                self.close_peer(now, key, CloseReason::TimedOut);
            }
            Event::Closed => self.close_peer(now, key, CloseReason::PeerFailed),
            _ => {}
        }
    }

    fn on_connected(&mut self, now: Instant, key: PeerKey) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        peer.connected = true;
        peer.expires = None;
        let b = peer.broadcast;
        let publisher = peer.is_publisher();
        if publisher {
            // Video RTX caches are sized in `http` when building; nothing to do here.
            info!(broadcast = %b, peer = %key, "publisher connected");
            if let Some(route) = self.router.route_mut(b) {
                route.live_since.get_or_insert(now);
            }
            self.events.push_back(EngineEvent::BroadcastLive(b));
        } else {
            info!(broadcast = %b, peer = %key, "viewer connected");
            self.pending_starts.push(key);
            // Ask for a fresh keyframe too: the cached one may be a while old.
            if let Some(route) = self.router.route(b)
                && let Some(i) = route.tracks.iter().position(|t| t.kind == MediaKind::Video)
            {
                self.pending_plis.push((b, i));
            }
        }
        self.reschedule(key);
    }

    // ---------------------------------------------------------------- media

    fn on_rtp(&mut self, now: Instant, key: PeerKey, pkt: RtpPacket) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        let b = peer.broadcast;
        let Role::Publisher(ingest) = &mut peer.role else {
            return;
        };
        let Some(mid) = ingest.mid_of(&mut peer.rtc, pkt.header.ssrc) else {
            return;
        };
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        if route.publisher != Some(key) {
            return;
        }
        let Some(ti) = route.track_index(mid) else {
            return;
        };
        self.counters.packets_in += 1;
        self.counters.bytes_in += pkt.payload.len() as u64;
        route
            .ingest
            .add(now, pkt.payload.len() + pkt.header.header_len);
        if route.tracks[ti].kind == MediaKind::Video
            && pkt
                .payload
                .first()
                .is_some_and(|b| matches!(b & 0x1f, 7 | 24))
            && let Some(sps) = crate::h264::sps_in_rtp_payload(&pkt.payload)
        {
            route.sps = Some(sps);
        }
        let cached = CachedPacket::from_rtp(&pkt);
        let keyframe_completed = route.tracks[ti].observe(now, &cached);
        let mut packets = std::mem::take(&mut self.scratch_packets);
        packets.clear();
        packets.push(cached);
        let exts = fresh_extensions(&pkt.header.ext_vals);
        let mut viewers = std::mem::take(&mut self.scratch_keys);
        viewers.clear();
        viewers.extend_from_slice(&route.viewers);
        let mut waiting = Vec::new();
        for &v in &viewers {
            if !self.write_to_viewer(
                now,
                v,
                b,
                ti,
                &packets,
                Start::IfSynced,
                pkt.timestamp,
                &exts,
            ) && keyframe_completed
            {
                waiting.push(v);
            }
        }
        if !waiting.is_empty() {
            // Viewers waiting for a place to start get the whole keyframe that just completed.
            packets.clear();
            if let Some(route) = self.router.route(b) {
                packets.extend_from_slice(&route.tracks[ti].keyframe);
            }
            for v in waiting {
                let _ = self.write_to_viewer(
                    now,
                    v,
                    b,
                    ti,
                    &packets,
                    Start::Here,
                    pkt.timestamp,
                    &exts,
                );
            }
        }
        self.scratch_keys = viewers;
        self.scratch_packets = packets;
    }

    /// Writes `packets` of track `ti` to viewer `v`. With [`Start::Here`] the first packet is
    /// where the viewer (re)starts; with [`Start::IfSynced`] video goes only to viewers that
    /// are synced to the current publisher. Returns false if the viewer is waiting for a
    /// keyframe.
    #[allow(clippy::too_many_arguments)] // the per-packet path; a struct would be rebuilt per viewer
    fn write_to_viewer(
        &mut self,
        now: Instant,
        v: PeerKey,
        b: BroadcastKey,
        ti: usize,
        packets: &[CachedPacket],
        start: Start,
        wallclock: Instant,
        exts: &ExtensionValues,
    ) -> bool {
        let Some(route) = self.router.route(b) else {
            return true;
        };
        let epoch = route.epoch;
        let track = &route.tracks[ti];
        let Some(peer) = self
            .peers
            .get_mut(v.index as usize)
            .filter(|p| p.generation == v.generation)
        else {
            return true;
        };
        if !peer.connected {
            return true;
        }
        let kind = track.kind;
        let Peer {
            rtc,
            role: Role::Viewer(consumers),
            ..
        } = peer
        else {
            return true;
        };
        let Some(consumer) = consumers.iter_mut().find(|c| c.kind == kind) else {
            return true;
        };
        let is_audio = kind == MediaKind::Audio;
        if start == Start::IfSynced && !is_audio && !consumer.is_synced_to(epoch) {
            return false;
        }
        let (mut wrote, mut failed) = (false, false);
        for (i, p) in packets.iter().enumerate() {
            let src = SourcePacket {
                epoch,
                seq: p.seq,
                ts: p.ts,
                sync_point: is_audio || (start == Start::Here && i == 0),
                clock_rate: track.clock_rate(p.pt),
            };
            let Some((seq, ts)) = consumer.rewrite(src, now) else {
                continue;
            };
            let Some(pt) = viewer_pt(consumer, rtc, track, p.pt) else {
                continue;
            };
            let mut api = rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(consumer.mid, None) else {
                continue;
            };
            let write = RtpWrite::new(pt, seq.into(), ts, wallclock.min(now), p.payload.clone())
                .marker(p.marker)
                .ext_vals(exts.clone())
                .nackable(!is_audio);
            if contained(|| {
                tx.write_rtp(write);
                Ok(())
            })
            .is_err()
            {
                failed = true;
                break;
            }
            wrote = true;
            self.counters.packets_forwarded += 1;
        }
        if failed {
            self.close_peer(now, v, CloseReason::PeerFailed);
            return true;
        }
        if wrote && !peer_dirty(&mut self.peers, v) {
            self.dirty.push(v);
        }
        true
    }

    /// Ticks every viewer that had packets written, releasing them as transmits.
    fn flush_writes(&mut self) {
        let Some(now) = self.last_now else { return };
        while !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            for v in &dirty {
                if let Some(p) = self.peer_mut(*v) {
                    p.dirty = false;
                    self.tick(now, *v);
                }
            }
            self.flush_deferred(now);
            if self.dirty.is_empty() {
                self.dirty = dirty;
                self.dirty.clear();
            }
        }
    }

    /// Sends the last complete keyframe to a viewer that just connected, so the first frame
    /// shows at once instead of at the publisher's next IDR; the viewer then waits for that
    /// next IDR (the live frames in between reference pictures it never got).
    fn send_keyframe_cache(&mut self, now: Instant, v: PeerKey) {
        let Some(peer) = self.peer_mut(v) else { return };
        let b = peer.broadcast;
        let Some(route) = self.router.route(b) else {
            return;
        };
        let Some(ti) = route
            .tracks
            .iter()
            .position(|t| t.kind == MediaKind::Video && !t.keyframe.is_empty())
        else {
            return;
        };
        let mut burst = std::mem::take(&mut self.scratch_packets);
        burst.clear();
        burst.extend_from_slice(&route.tracks[ti].keyframe);
        debug!(peer = %v, packets = burst.len(), "sending cached keyframe");
        let _ = self.write_to_viewer(
            now,
            v,
            b,
            ti,
            &burst,
            Start::Here,
            now,
            &ExtensionValues::default(),
        );
        if let Some(c) = self
            .peer_mut(v)
            .and_then(|p| p.consumer_mut(MediaKind::Video))
        {
            c.unsync();
        }
        self.scratch_packets = burst;
    }

    /// Work deferred until no `Rtc` is being drained: keyframe-cache bursts for viewers that
    /// just connected, then keyframe requests to publishers.
    fn flush_deferred(&mut self, now: Instant) {
        while let Some(v) = self.pending_starts.pop() {
            self.send_keyframe_cache(now, v);
        }
        while let Some((b, ti)) = self.pending_plis.pop() {
            let Some(route) = self.router.route_mut(b) else {
                continue;
            };
            let Some(publisher) = route.publisher else {
                continue;
            };
            let Some(track) = route.tracks.get_mut(ti) else {
                continue;
            };
            if !track.take_pli_slot(now) {
                continue;
            }
            let mid = track.mid;
            let Some(peer) = self.peer_mut(publisher) else {
                continue;
            };
            if !peer.connected {
                continue;
            }
            if let Some(rx) = peer.rtc.direct_api().stream_rx_by_mid(mid, None) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                self.counters.plis_sent += 1;
                trace!(broadcast = %b, "keyframe requested from publisher");
            }
            self.drain(now, publisher);
        }
    }

    // ---------------------------------------------------------------- teardown

    /// A peer failed or timed out. A publisher that vanishes keeps its viewers for the
    /// resume grace; anything else is simply removed.
    fn close_peer(&mut self, now: Instant, key: PeerKey, reason: CloseReason) {
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
    fn expire(&mut self, now: Instant, key: PeerKey, reason: CloseReason) {
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
    fn end_broadcast(&mut self, now: Instant, publisher: PeerKey) {
        let Some(peer) = self.peer_mut(publisher) else {
            return;
        };
        let b = peer.broadcast;
        self.remove_peer(now, publisher, CloseReason::Deleted);
        self.end_route(now, b);
    }

    fn end_route(&mut self, now: Instant, b: BroadcastKey) {
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
    fn remove_peer(&mut self, _now: Instant, key: PeerKey, reason: CloseReason) {
        let Some(peer) = self
            .peers
            .get_mut(key.index as usize)
            .filter(|p| p.generation == key.generation)
        else {
            return;
        };
        if contained(|| peer.rtc.close()).is_ok() {
            for _ in 0..MAX_CLOSE_OUTPUTS {
                match contained(|| peer.rtc.poll_output()) {
                    Ok(Output::Transmit(t)) => self.transmits.push_back(t),
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

    /// Maps a local (bound) address onto the advertised candidate it stands for.
    fn candidate_for(&self, dst: SocketAddr, src: SocketAddr) -> SocketAddr {
        let cands = &self.config.candidates;
        if let Some(c) = cands.iter().find(|c| **c == dst) {
            return *c;
        }
        // Behind 1:1 NAT or on a wildcard socket the local address is not what we advertised;
        // str0m needs the advertised one (notes/str0m.md §5).
        cands
            .iter()
            .find(|c| c.is_ipv4() == src.is_ipv4())
            .or(cands.first())
            .copied()
            .unwrap_or(dst)
    }
}

/// Marks a peer dirty; returns whether it already was.
fn peer_dirty(peers: &mut Slab<Peer>, key: PeerKey) -> bool {
    match peers
        .get_mut(key.index as usize)
        .filter(|p| p.generation == key.generation)
    {
        Some(p) => std::mem::replace(&mut p.dirty, true),
        None => true,
    }
}

/// Where a write may start a viewer's stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The packets begin a complete keyframe: a waiting viewer starts at the first.
    Here,
    /// Live packets: video only for viewers already synced to this publisher.
    IfSynced,
}

/// The viewer's payload type for a publisher PT, cached per consumer.
fn viewer_pt(
    consumer: &mut Consumer,
    rtc: &str0m::Rtc,
    track: &router::Track,
    pt: str0m::media::Pt,
) -> Option<str0m::media::Pt> {
    if let Some(v) = consumer.mapped_pt(pt) {
        return Some(v);
    }
    let params = track.codec(pt)?;
    let mapped = rtc.codec_config().match_params(*params)?.pt();
    consumer.remember_pt(pt, mapped);
    Some(mapped)
}

/// Fresh extension values for a viewer: only what describes the media itself. Copying the
/// publisher's values would leak its MID/RID onto the viewer's stream.
fn fresh_extensions(from: &ExtensionValues) -> ExtensionValues {
    ExtensionValues {
        audio_level: from.audio_level,
        voice_activity: from.voice_activity,
        video_orientation: from.video_orientation,
        ..Default::default()
    }
}

/// str0m releases a written packet on the second tick at the same instant; a third covers a
/// pacer step. More would mean the `Rtc` keeps asking for `now`, which the next turn handles.
const TICKS_PER_TURN: usize = 3;

/// Enough for RTCP BYE plus DTLS close_notify; a closing `Rtc` never produces more at once.
const MAX_CLOSE_OUTPUTS: usize = 16;
