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

mod audience;
mod bye;
mod capture_clock;
mod cluster;
mod command;
mod consent;
mod consumer;
mod deadline;
mod demux;
mod egress;
mod feedback;
mod first_frame;
mod forward;
mod gop;
mod hold;
mod key;
mod outbox;
mod packet;
mod peer;
mod priority;
mod record_tap;
mod report;
mod restart;
mod router;
mod span;
mod teardown;
mod upstream;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slab::Slab;
use str0m::media::MediaKind;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output};
use tracing::{debug, info, trace};

pub use self::command::{
    BroadcastInfo, BroadcastState, CloseReason, Command, CommandError, EngineEvent, Eviction,
    IngestTrack, NewPeer, Outcome, Patch, PatchError, Patched, Stats, ViewerTrack,
};
pub use self::demux::stun_local_ufrag;
pub use self::key::{BroadcastKey, PROBE, PeerKey, SessionId};
pub use self::outbox::{Transmit, TransmitRun};
pub use self::report::viewer_cname;
pub use self::restart::etag;
pub use self::span::SpanMessage;

use self::audience::Admission;
use self::consumer::{Consumer, RtpStart};
use self::deadline::Deadlines;
use self::demux::{Demux, is_rtcp, is_rtp_or_rtcp, is_stun};
use self::egress::Egress;
use self::forward::Burst;
use self::outbox::{Outbox, Path};
use self::packet::CachedPacket;
use self::peer::{Ingest, Peer, Role, contained, live};
use self::router::Router;
use self::teardown::HungUp;
use crate::config::WhenFull;

/// Limits and policies the engine enforces.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The addresses in our ICE host candidates; a datagram's destination is mapped onto one.
    pub candidates: Vec<SocketAddr>,
    /// The addresses in our passive ICE-TCP candidates (viewers only); empty when it is off.
    pub tcp_candidates: Vec<SocketAddr>,
    pub max_live_broadcasts: usize,
    pub max_viewers: usize,
    pub when_full: WhenFull,
    /// How long viewers wait for a publisher that vanished without DELETE.
    pub resume_grace: Duration,
    /// How long a new session may take to finish ICE and DTLS.
    pub handshake_timeout: Duration,
    /// Testing only: every viewer stream's first sequence number, instead of a random one
    /// (tests start just below 65535 to cross the 16-bit wrap within seconds).
    pub test_seq_start: Option<u16>,
    /// This engine's index among the workers (`--workers`), for messages between engines.
    pub worker: usize,
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
    /// Sessions that closed cleanly a moment ago and still answer DELETE (teardown.rs).
    hung_up: HungUp,
    outbox: Outbox,
    events: VecDeque<EngineEvent>,
    /// Keyframe requests gathered while draining viewers, sent to publishers afterwards
    /// (never in the middle of draining the publisher that is forwarding).
    pending_plis: Vec<(BroadcastKey, usize)>,
    /// Keyframe requests the 1/s throttle held back, with when they may go: deferred, not
    /// dropped, so a viewer that joins just after another still gets a fresh keyframe from
    /// a publisher that sends one only when asked (browsers, GStreamer). One per track.
    deferred_plis: Vec<(Instant, BroadcastKey, usize)>,
    /// Broadcasts waiting for their publisher to resume, with when they end unless it does
    /// (route generation and epoch tell a later wait from this one): the viewers' own expiry
    /// ends them too, but a home whose viewers are all on other workers has none.
    graces: Vec<(Instant, BroadcastKey, u64, u32)>,
    /// Messages for other engines (span.rs).
    span_out: VecDeque<(usize, SpanMessage)>,
    /// Viewers that just connected and get the cached keyframe once their `Rtc` is drained:
    /// its final DTLS flight must leave before the first SRTP packet, or the browser cannot
    /// decrypt that packet yet.
    pending_starts: Vec<(PeerKey, Burst)>,
    /// Viewers with written but not yet released packets, oldest first. One release per
    /// viewer (sealing its queue, or one str0m tick) covers every packet written to it since,
    /// so a burst (a keyframe is dozens of packets, and the io loop feeds a whole receive
    /// batch before polling) costs one release, and its datagrams leave as one GSO run.
    dirty: VecDeque<PeerKey>,
    /// The latest `now` seen, for work deferred to `poll_transmit`.
    last_now: Option<Instant>,
    /// Reused buffers, so the per-packet path does not allocate.
    scratch_keys: Vec<PeerKey>,
    scratch_lost: Vec<(usize, u16)>,
    scratch_rtcp: Vec<u8>,
    scratch_packets: Vec<CachedPacket>,
    counters: Counters,
    /// `--record`: where publishers' packets go for the recorder (none when it is off).
    recorder: Option<crate::record::Tap>,
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
    retransmissions: u64,
    evictions: u64,
    late_packets_dropped: u64,
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
            hung_up: HungUp::default(),
            outbox: Outbox::default(),
            events: VecDeque::new(),
            pending_plis: Vec::new(),
            deferred_plis: Vec::new(),
            graces: Vec::new(),
            span_out: VecDeque::new(),
            pending_starts: Vec::new(),
            dirty: VecDeque::new(),
            last_now: None,
            scratch_keys: Vec::new(),
            scratch_lost: Vec::new(),
            scratch_rtcp: Vec::new(),
            scratch_packets: Vec::new(),
            counters: Counters::default(),
            recorder: None,
        }
    }

    /// Hands every publisher packet of a recorded codec to `tap` from now on (`--record`).
    pub fn set_recorder(&mut self, tap: crate::record::Tap) {
        self.recorder = Some(tap);
    }

    // ---------------------------------------------------------------- input

    /// Feeds one UDP datagram received from `src` on local address `dst`.
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        self.handle_receive(now, Protocol::Udp, src, dst, data);
    }

    /// Feeds one ICE-TCP frame (RFC 4571, length prefix removed) from the connection `src` →
    /// `dst`. Its answers come back as transmits with `Protocol::Tcp` to `src`.
    pub fn handle_tcp_frame(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) {
        self.handle_receive(now, Protocol::Tcp, src, dst, data);
    }

    fn handle_receive(
        &mut self,
        now: Instant,
        proto: Protocol,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) {
        self.last_now = Some(now);
        let remote = (proto, src);
        let Some(key) = self.demux.route(remote, data) else {
            self.counters.datagrams_dropped += 1;
            trace!(len = data.len(), "dropping datagram from unknown source");
            return;
        };
        let destination = self.candidate_for(proto, dst, src);
        let Some(peer) = live(&mut self.peers, key) else {
            self.counters.datagrams_dropped += 1;
            return;
        };
        let known = self.demux.is_known_addr(remote);
        if !known && !peer.consent.admits_new(now, peer.connected) {
            self.counters.datagrams_dropped += 1;
            trace!(peer = %key, "new address refused: too many, or too soon");
            return;
        }
        if known && demux::is_binding_indication(data) {
            // A keep-alive (RFC 8445 §11; libnice sends these, not requests): str0m ignores
            // it, but it is the peer, heard on an address it proved with a checked request.
            peer.hear(remote, now, data);
            return;
        }
        // FFmpeg 8.0's WHIP muxer sends Binding requests without PRIORITY, which str0m
        // refuses to parse: checked with our password and signed again with one (priority.rs).
        let with_priority = priority::add_if_missing(&mut peer.rtc, data);
        let data = with_priority.as_deref().unwrap_or(data);
        let Ok(receive) = Receive::new(proto, src, destination, data) else {
            self.counters.datagrams_dropped += 1;
            return;
        };
        // RTCP from a viewer we seal for is ours alone: str0m has no send streams left for it
        // to apply feedback or receiver reports to (see egress.rs).
        let feedback_to_answer = peer.egress.is_some() && is_rtcp(data);
        let input = Input::Receive(now, receive);
        if !peer.rtc.accepts(&input) {
            self.counters.datagrams_dropped += 1;
            trace!(peer = %key, "datagram not accepted by peer");
            return;
        }
        peer.hear(remote, now, data);
        if feedback_to_answer {
            self.answer_feedback(key, data);
            self.flush_deferred(now);
            return;
        }
        let moved = is_stun(data)
            && demux::binding_request(data)
                .is_some_and(|req| self.on_binding_request(key, remote, destination, &req));
        let Some(peer) = live(&mut self.peers, key) else {
            return;
        };
        if let Err(e) = contained(|| peer.rtc.handle_input(input)) {
            debug!(peer = %key, error = %e, "peer input failed");
            self.close_peer(now, key, CloseReason::PeerFailed);
            return;
        }
        if !known && !self.demux.is_known_addr(remote) {
            // Accepted means STUN with a valid MESSAGE-INTEGRITY for this peer's ufrag (or
            // traffic from its nominated address): safe to index.
            let peer = self
                .peers
                .get_mut(key.index as usize)
                .expect("peer checked above");
            peer.consent.added(now, peer.connected);
            self.demux.insert_addr(remote, key, &mut peer.addrs);
        }
        self.drain(now, key);
        if moved {
            self.path_moved(now, key);
        }
        if is_rtcp(data)
            && self.peer_mut(key).is_some_and(|p| p.is_publisher())
            && self.said_goodbye(key, data)
        {
            info!(peer = %key, "publisher sent RTCP BYE: it hung up");
            self.hang_up(now, key);
        }
        self.flush_deferred(now);
    }

    /// Advances every peer whose deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        self.flush_writes();
        let mut due = std::mem::take(&mut self.scratch_keys);
        due.clear();
        self.deadlines.pop_due(now, &mut due);
        let pending = &mut self.pending_plis;
        self.deferred_plis.retain(|&(at, b, ti)| {
            let due = at <= now;
            if due {
                pending.push((b, ti));
            }
            !due
        });
        self.end_graces(now);
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
            if peer.is_silent(now) {
                let role = if peer.is_publisher() {
                    "publisher"
                } else {
                    "viewer"
                };
                info!(peer = %key, role, "peer sent nothing for a while: gone");
                self.close_peer(now, key, CloseReason::TimedOut);
                continue;
            }
            self.tick(now, key);
            self.report(now, key);
        }
        self.scratch_keys = due;
        self.flush_deferred(now);
    }

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

    // ---------------------------------------------------------------- output

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        if self.outbox.is_empty() {
            self.outbox.clear();
            self.flush_writes();
        }
        self.outbox.pop()
    }

    /// Like [`poll_transmit`](Self::poll_transmit), but hands out the next datagrams to one
    /// UDP destination together (see [`TransmitRun`]), for one GSO send without a copy.
    #[must_use]
    pub fn poll_transmit_run(
        &mut self,
        max_segments: usize,
        max_bytes: usize,
    ) -> Option<TransmitRun<'_>> {
        if self.outbox.is_empty() {
            self.outbox.clear();
            self.flush_writes();
        }
        self.outbox.pop_run(max_segments, max_bytes)
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
            _ => {
                let deferred = (self.deferred_plis.iter().map(|(at, ..)| *at))
                    .chain(self.graces.iter().map(|(at, ..)| *at))
                    .min();
                match (self.deadlines.earliest(), deferred) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let (demux_addrs, demux_ufrags) = self.demux.len();
        let publishers = self.peers.iter().filter(|(_, p)| p.is_publisher()).count();
        let viewers = self.peers.iter().filter(|(_, p)| p.is_viewer()).count();
        let viewers_sealed = self
            .peers
            .iter()
            .filter(|(_, p)| p.egress.is_some())
            .count();
        Stats {
            peers: self.peers.len(),
            publishers,
            viewers,
            viewers_sealed,
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
            retransmissions: self.counters.retransmissions,
            evictions: self.counters.evictions,
            late_packets_dropped: self.counters.late_packets_dropped,
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
            consumers.push(Consumer::new(t.mid, t.kind, ssrc, rtx, start));
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
            keys,
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
            heard: None,
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

    fn peer_mut(&mut self, key: PeerKey) -> Option<&mut Peer> {
        live(&mut self.peers, key)
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
                    let path = Path::from(&t);
                    // Our final DTLS flight again: the peer never got it, so a viewer could
                    // not decrypt the first frame it was sent (first_frame.rs).
                    let flight_again =
                        peer.connected && first_frame::is_dtls_handshake(&t.contents);
                    if !is_stun(&t.contents) {
                        if !peer.consent.fresh((path.proto, path.destination), now) {
                            // Not heard from lately: maybe not the peer's address at all.
                            continue;
                        }
                        // DTLS and RTCP leave on the selected pair; STUN answers go wherever
                        // the check came from.
                        peer.media_path = Some(path);
                    }
                    if peer.egress.is_some() && is_rtp_or_rtcp(&t.contents) {
                        // Reports about streams str0m no longer sends (see egress.rs).
                        continue;
                    }
                    self.counters.packets_out += 1;
                    self.counters.bytes_out += t.contents.len() as u64;
                    self.outbox.push_copy(path, &t.contents);
                    if flight_again {
                        self.resend_first_frame(key);
                    }
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

    /// Sends a viewer's sender reports and first-frame repeats when they are due (viewers we
    /// seal for only).
    fn report(&mut self, now: Instant, key: PeerKey) {
        let Some(peer) = live(&mut self.peers, key) else {
            return;
        };
        if let Some(p) = peer.media_path
            && !peer.consent.fresh((p.proto, p.destination), now)
        {
            // Our own sealed media follows `media_path`: it stops with it.
            peer.media_path = None;
        }
        let path = peer.media_path;
        let Some(egress) = peer.egress.as_mut() else {
            return;
        };
        self.counters.retransmissions += egress.repair_first_frame(now, path, &mut self.outbox);
        if egress.release_due_hold(now) {
            let f = egress.flush(now, path, &mut self.outbox);
            self.counters.packets_out += f.datagrams;
            self.counters.bytes_out += f.bytes;
        }
        egress.report(now, path, &mut self.outbox);
        self.reschedule(key);
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
            peer.heard.get_or_insert(now);
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

    /// Viewer sessions of one broadcast that may be in their handshake at once: enough for
    /// a full audience joining together, small enough that junk offers cost little.
    fn pending_cap(&self) -> usize {
        self.config.max_viewers.max(MIN_PENDING_VIEWERS)
    }

    /// A viewer just connected: it takes a place, evicting the oldest connected viewer of
    /// the broadcast (on whichever worker) when it is full, or, with `--when-full reject`,
    /// it is closed itself. Returns whether it stays.
    fn admit_connected(&mut self, now: Instant, b: BroadcastKey, key: PeerKey) -> bool {
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

    /// A viewer asked for a keyframe on its `kind` track: the publisher of its broadcast is
    /// asked in turn (throttled, see `forward.rs`).
    fn keyframe_requested(&mut self, viewer: PeerKey, kind: MediaKind) {
        self.counters.plis_received += 1;
        let Some(b) = self.peer_mut(viewer).map(|p| p.broadcast) else {
            return;
        };
        if let Some(route) = self.router.route(b)
            && let Some(i) = route.tracks.iter().position(|t| t.kind == kind)
        {
            self.pending_plis.push((b, i));
        }
        if kind == MediaKind::Video {
            // No picture yet: the cached keyframe did not arrive whole (first_frame.rs).
            self.resend_first_frame(viewer);
        }
    }

    /// Maps a local (bound) address onto the advertised candidate it stands for.
    fn candidate_for(&self, proto: Protocol, dst: SocketAddr, src: SocketAddr) -> SocketAddr {
        let cands = match proto {
            Protocol::Udp => &self.config.candidates,
            _ => &self.config.tcp_candidates,
        };
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

/// str0m releases a written packet on the second tick at the same instant; a third covers a
/// pacer step. More would mean the `Rtc` keeps asking for `now`, which the next turn handles.
const TICKS_PER_TURN: usize = 3;
/// How long a connectivity test may take to connect before it is freed: a working path
/// connects in well under a second, and an unconnected test costs an `Rtc` until then.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The least number of viewer sessions of one broadcast allowed in their handshake at once,
/// whatever `max_viewers` is (see `Engine::pending_cap`).
const MIN_PENDING_VIEWERS: usize = 4;
