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
//!
//! # Layout
//!
//! `impl Engine` is split by path, as quinn-proto splits its `Connection`: this file holds the
//! state and the output side, and each path is an `impl Engine` of its own: datagrams in
//! (`receive.rs`), time (`timers.rs`), HTTP commands (`on_command.rs`, their types in
//! `command.rs`), each `Rtc`'s events (`events.rs`), media (`forward.rs`, `keyframes.rs`)
//! and endings (`teardown.rs`).

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
mod events;
mod feedback;
mod first_frame;
mod forward;
mod gop;
mod hold;
mod key;
mod keyframes;
mod layers;
mod loss;
mod on_command;
mod outbox;
mod packet;
mod peer;
mod priority;
mod probe;
mod receive;
mod record_tap;
mod report;
mod restart;
mod router;
mod slow;
mod span;
mod teardown;
mod timers;
mod track;
mod twcc_guard;
mod upstream;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slab::Slab;

pub use self::command::{
    BroadcastInfo, BroadcastState, CloseReason, Command, CommandError, EngineEvent, Eviction,
    IngestTrack, LayerError, LayerInfo, LayerIngest, LayerState, METERED_LAYERS, NewPeer, Outcome,
    Patch, PatchError, Patched, Stats, ViewerTrack,
};
pub use self::demux::stun_local_ufrag;
pub use self::key::{BroadcastKey, PROBE, PeerKey, SessionId};
pub use self::layers::LAYERS_EVERY;
pub use self::on_command::PROBE_TIMEOUT;
pub use self::outbox::{Transmit, TransmitRun};
pub use self::report::viewer_cname;
pub use self::restart::etag;
pub use self::slow::{CLEAR_AFTER, SLOW_AFTER, ViewerLayer};
pub use self::span::SpanMessage;

use self::deadline::Deadlines;
use self::demux::Demux;
use self::keyframes::Burst;
use self::outbox::Outbox;
use self::packet::CachedPacket;
use self::peer::{Peer, live};
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
    rembs_received: u64,
    transport_feedbacks: u64,
    probe_packets: u64,
    retransmissions: u64,
    evictions: u64,
    late_packets_dropped: u64,
    layer_switches: u64,
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

    pub fn stats(&self) -> Stats {
        let (demux_addrs, demux_ufrags) = self.demux.len();
        let publishers = self.peers.iter().filter(|(_, p)| p.is_publisher()).count();
        let viewers = self.peers.iter().filter(|(_, p)| p.is_viewer()).count();
        let viewers_sealed = self
            .peers
            .iter()
            .filter(|(_, p)| p.egress.is_some())
            .count();
        let (viewers_slow, simulcast_viewers) = self.viewer_layers(self.last_now);
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
            rembs_received: self.counters.rembs_received,
            transport_feedbacks: self.counters.transport_feedbacks,
            probe_packets: self.counters.probe_packets,
            retransmissions: self.counters.retransmissions,
            evictions: self.counters.evictions,
            late_packets_dropped: self.counters.late_packets_dropped,
            layer_switches: self.counters.layer_switches,
            viewers_slow,
            simulcast_viewers,
            simulcast_ingest: self.router.simulcast_ingest(self.last_now),
        }
    }

    fn peer_mut(&mut self, key: PeerKey) -> Option<&mut Peer> {
        live(&mut self.peers, key)
    }
}
