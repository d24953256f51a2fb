//! What crosses the boundary between the HTTP layer and the engine: commands in, outcomes and
//! events out. Commands are imperative, events are in the past tense.

use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid};
use str0m::{IceCreds, Rtc};

use super::key::{BroadcastKey, SessionId};
use crate::srtp::KeySlot;

/// A request to the engine. Each one gets exactly one [`Outcome`] from
/// [`Engine::handle_command`](super::Engine::handle_command).
pub enum Command {
    /// Put a publisher on a broadcast, replacing a live or lost one (an OBS reconnect).
    Publish(NewPeer, Vec<IngestTrack>),
    /// Add a viewer to a live broadcast.
    Subscribe(NewPeer, Vec<ViewerTrack>),
    /// Add an edge's pull (a WHEP session with the edge secret) to a live broadcast: it
    /// relays to the edge's own viewers, so it takes no viewer's place, is never evicted and
    /// evicts no one. Answered with [`Outcome::Subscribed`].
    Relay(NewPeer, Vec<ViewerTrack>),
    /// An edge's pull from its origin: a WHEP session we offered (full ICE, DTLS client)
    /// that publishes into a local broadcast like a WHIP publisher would. The origin's UDP
    /// candidates are indexed up front: its STUN answers carry no USERNAME to route by.
    /// Answered with [`Outcome::Published`]. See `upstream.rs`.
    Pull(NewPeer, Vec<IngestTrack>, Vec<std::net::SocketAddr>),
    /// A viewer of the broadcast is about to start on the worker given (another one than
    /// its publisher's): the publisher's engine relays to that worker (span.rs).
    Mirror(BroadcastKey, usize),
    /// The publisher's tracks, if the broadcast is live (to build a viewer's answer).
    Describe(BroadcastKey),
    /// End a session (HTTP DELETE). `publisher` says which URL space the ID came from, so a
    /// viewer session URL cannot be used to stop the publisher and vice versa.
    Close { session: SessionId, publisher: bool },
    /// A PATCH on a session URL (RFC 9725 §4.3): trickled candidates, or an ICE restart when
    /// the fragment carries new remote credentials (see `restart.rs`).
    Patch(Patch),
    /// Send a viewer the simulcast layer `rid`, or with `None` the one the server chooses:
    /// it moves at that layer's next keyframe, and is sent its current layer until then
    /// (`layers.rs`).
    SetLayer {
        session: SessionId,
        rid: Option<str0m::media::Rid>,
    },
    /// Tell a viewer its layer, where it is moving and how its link fares (`slow.rs`).
    DescribeLayer(SessionId),
    /// Counters for `/healthz`, `/metrics` and tests.
    Stats,
    /// State of one broadcast, for the broadcaster's live panel.
    Info(BroadcastKey),
    /// Every broadcast holding a slot, for the status page.
    Status,
    /// Close every viewer session of a broadcast (the view ID was rotated).
    RevokeViewers(BroadcastKey),
    /// Close some connected viewers of a broadcast as evicted: the viewer cap across a
    /// cluster of servers (an origin and its edges) decided they go (`cluster.rs`).
    Evict(Eviction),
    /// The server is stopping: end every broadcast and close every session.
    Shutdown,
    /// A connectivity test: a peer that only completes ICE and DTLS (no broadcast, no slot),
    /// then is removed; [`EngineEvent::ProbeConnected`] says it worked.
    Probe(NewPeer),
}

/// A peer built off the media loop (building an `Rtc` costs about 1 ms).
pub struct NewPeer {
    pub broadcast: BroadcastKey,
    pub session: SessionId,
    /// Our ICE ufrag for this peer; STUN with it in USERNAME is routed to this peer.
    pub ufrag: String,
    pub rtc: Rtc,
    /// The session's SRTP keys, once DTLS exports them: viewers' media is sealed with them.
    pub keys: KeySlot,
    /// The header extension id its `Rtc` reads transport-wide sequence numbers from, if any
    /// (`offer::Accepted::transport_cc`): a publisher's are checked before str0m sees them
    /// (twcc_guard.rs).
    pub transport_cc: Option<u8>,
}

/// Which viewers of one broadcast a [`Command::Evict`] closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eviction {
    pub broadcast: BroadcastKey,
    pub count: usize,
    /// The most recently connected instead of the oldest (`--when-full reject`: the newest
    /// viewers are the ones refused).
    pub newest: bool,
}

/// A parsed PATCH (`application/trickle-ice-sdpfrag`).
pub struct Patch {
    pub session: SessionId,
    /// Which URL space the ID came from, as for [`Command::Close`].
    pub publisher: bool,
    /// The `If-Match` header as sent (`*` or a list of entity tags), if any.
    pub if_match: Option<String>,
    /// The fragment's `a=ice-ufrag` and `a=ice-pwd`, if it has them.
    pub remote: Option<IceCreds>,
    /// Our credentials should this be an ICE restart (drawn by the HTTP layer, which owns
    /// the randomness).
    pub local: IceCreds,
}

/// What a PATCH did.
#[derive(Debug, PartialEq, Eq)]
pub enum Patched {
    /// Trickle: nothing to do for an ICE-lite server (`204`).
    Trickled,
    /// ICE restarted with our new credentials (`200` + sdpfrag + the new `ETag`).
    Restarted { local: IceCreds, etag: String },
}

/// Why a PATCH was refused (RFC 9725 §4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("there is no such session")]
    UnknownSession,
    #[error("If-Match does not name the session's current ETag")]
    StaleEtag,
    #[error("an ICE restart needs If-Match: \"*\" or the session's ETag")]
    IfMatchRequired,
}

/// One track the publisher sends, as negotiated in its offer/answer.
#[derive(Clone, Debug)]
pub struct IngestTrack {
    pub mid: Mid,
    pub kind: MediaKind,
    /// The codec(s) accepted for this m-line, with the publisher's payload types.
    pub params: Vec<PayloadParams>,
    /// With simulcast (OBS 32.1+ sends rids "0", "1", "2"), the layer this track is: a
    /// simulcast m-line is one track per layer, the full-size layer first.
    pub layer: Option<str0m::media::Rid>,
}

/// One m-line of a viewer that will carry a publisher track of the same kind.
#[derive(Clone, Copy, Debug)]
pub struct ViewerTrack {
    pub mid: Mid,
    pub kind: MediaKind,
}

/// The answer to a [`Command`].
#[derive(Debug)]
pub enum Outcome {
    Published(Result<(), CommandError>),
    Subscribed(Result<(), CommandError>),
    /// `Mirror`: whether the broadcast is live on this engine.
    Mirrored(bool),
    Described(Option<Vec<IngestTrack>>),
    Closed(bool),
    Patched(Result<Patched, PatchError>),
    LayerSet(Result<(), LayerError>),
    LayerDescribed(Result<super::ViewerLayer, LayerError>),
    Stats(Stats),
    Info(BroadcastInfo),
    Status(Vec<(BroadcastKey, BroadcastInfo)>),
    Revoked(usize),
    Evicted(usize),
    ShutDown(usize),
    /// The probe is in place (its slab index, for logs).
    Probing(usize),
}

/// Why the engine refused a command. Each variant names the condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("every live-broadcast slot is taken")]
    NoFreeSlot,
    #[error("the broadcast has no publisher")]
    NotLive,
    #[error("the broadcast has as many viewers as it allows")]
    ViewerLimitReached,
    #[error("too many viewer sessions of the broadcast are still connecting")]
    TooManyPending,
}

/// Why a viewer could not be given the layer it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    #[error("there is no such viewer session")]
    UnknownSession,
    #[error("the broadcast has no such layer")]
    NoSuchLayer,
}

/// Engine counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub peers: usize,
    pub publishers: usize,
    pub viewers: usize,
    /// Viewers whose media whipcast seals itself (AES-GCM); the rest go through str0m.
    pub viewers_sealed: usize,
    pub live_broadcasts: usize,
    pub demux_addrs: usize,
    pub demux_ufrags: usize,
    pub deadlines: usize,
    pub datagrams_dropped: u64,
    /// RTP packets and payload bytes received from publishers.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Datagrams and bytes handed to the socket.
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_forwarded: u64,
    /// Keyframe requests sent to publishers, and received from viewers.
    pub plis_sent: u64,
    pub plis_received: u64,
    /// NACKs sent to publishers (from str0m's periodic stats), and received from viewers.
    pub nacks_sent: u64,
    pub nacks_received: u64,
    /// Viewers' estimates of their links (REMB) received.
    pub rembs_received: u64,
    /// Viewers' transport-wide feedback read into our estimates of their links.
    pub transport_feedbacks: u64,
    /// Probes' RTX copies sent to viewers whose links were probed for a larger layer.
    pub probe_packets: u64,
    /// Packets resent to viewers that NACKed them.
    pub retransmissions: u64,
    pub evictions: u64,
    /// Packets not forwarded because they were from before a viewer's sync point (a late
    /// packet after a keyframe burst or a publisher splice): their number was already used.
    pub late_packets_dropped: u64,
    /// Viewers moved from one simulcast layer to another.
    pub layer_switches: u64,
    /// Viewers whose estimate stayed below what they are sent, with no smaller layer left.
    pub viewers_slow: usize,
    /// Viewers of simulcast broadcasts by the layer they are sent, the full size first.
    pub simulcast_viewers: [usize; METERED_LAYERS],
    /// What publishers of simulcast broadcasts send, by layer, the full size first.
    pub simulcast_ingest: [LayerIngest; METERED_LAYERS],
}

/// Layers counted per rank in `/metrics`: OBS sends at most four (the offer keeps four).
pub const METERED_LAYERS: usize = 4;

/// One simulcast layer rank over every simulcast broadcast a server's publishers send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerIngest {
    /// The layers' bitrates added up.
    pub bits_per_second: u64,
    /// The largest picture height among them (H.264: from its SPS), 0 if none is known.
    pub height: u32,
}

impl std::ops::AddAssign for Stats {
    /// Adds another engine's counters: the whole server's, with several workers. Spelled out
    /// field by field so a new counter cannot be forgotten here.
    fn add_assign(&mut self, other: Self) {
        let Self {
            peers,
            publishers,
            viewers,
            viewers_sealed,
            live_broadcasts,
            demux_addrs,
            demux_ufrags,
            deadlines,
            datagrams_dropped,
            packets_in,
            bytes_in,
            packets_out,
            bytes_out,
            packets_forwarded,
            plis_sent,
            plis_received,
            nacks_sent,
            nacks_received,
            rembs_received,
            transport_feedbacks,
            probe_packets,
            retransmissions,
            evictions,
            late_packets_dropped,
            layer_switches,
            viewers_slow,
            simulcast_viewers,
            simulcast_ingest,
        } = other;
        self.peers += peers;
        self.publishers += publishers;
        self.viewers += viewers;
        self.viewers_sealed += viewers_sealed;
        self.live_broadcasts += live_broadcasts;
        self.demux_addrs += demux_addrs;
        self.demux_ufrags += demux_ufrags;
        self.deadlines += deadlines;
        self.datagrams_dropped += datagrams_dropped;
        self.packets_in += packets_in;
        self.bytes_in += bytes_in;
        self.packets_out += packets_out;
        self.bytes_out += bytes_out;
        self.packets_forwarded += packets_forwarded;
        self.plis_sent += plis_sent;
        self.plis_received += plis_received;
        self.nacks_sent += nacks_sent;
        self.nacks_received += nacks_received;
        self.rembs_received += rembs_received;
        self.transport_feedbacks += transport_feedbacks;
        self.probe_packets += probe_packets;
        self.retransmissions += retransmissions;
        self.evictions += evictions;
        self.late_packets_dropped += late_packets_dropped;
        self.layer_switches += layer_switches;
        self.viewers_slow += viewers_slow;
        for (mine, theirs) in self.simulcast_viewers.iter_mut().zip(simulcast_viewers) {
            *mine += theirs;
        }
        for (mine, theirs) in self.simulcast_ingest.iter_mut().zip(simulcast_ingest) {
            mine.bits_per_second += theirs.bits_per_second;
            mine.height = mine.height.max(theirs.height);
        }
    }
}

/// Where a broadcast is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BroadcastState {
    /// No publisher.
    Idle,
    /// A publisher is sending.
    Live,
    /// The publisher vanished without DELETE; viewers wait for it to resume.
    Reconnecting,
}

/// What the engine knows of one broadcast.
#[derive(Debug, Clone)]
pub struct BroadcastInfo {
    pub state: BroadcastState,
    pub viewers: usize,
    /// Ingest bitrate over the last second.
    pub bitrate_bps: u64,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    /// Profile and size from the publisher's SPS (H.264 only).
    pub sps: Option<crate::h264::SpsInfo>,
    pub live_for: Option<std::time::Duration>,
    /// Fraction of ingest packets lost, per str0m's receiver stats.
    pub ingest_loss: Option<f32>,
    /// Video frames per second over the last couple of seconds.
    pub fps: Option<f32>,
    /// Time between the last two complete keyframes.
    pub keyframe_interval: Option<std::time::Duration>,
    /// Frames arrived in decode order different from presentation order (B-frames).
    pub b_frames: bool,
    /// How long each connected viewer (not an edge's relay) has been connected, oldest
    /// first: an edge reports them to its origin, which caps the whole cluster.
    pub connected_for: Vec<std::time::Duration>,
    /// The publisher's video layers, the full-size one first (one without simulcast).
    pub layers: Vec<LayerInfo>,
    /// Viewers whose link stayed slower than what they are sent (`slow.rs`).
    pub slow_viewers: usize,
}

/// One simulcast layer (or the one video stream) as it arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    /// Its rid, with simulcast.
    pub rid: Option<String>,
    /// Bits per second over the last second (0: nothing arrives on it).
    pub bitrate_bps: u64,
    /// Its picture size, from its SPS (H.264).
    pub size: Option<(u32, u32)>,
    pub fps: Option<f32>,
}

/// Something that happened, for the HTTP layer (viewer counts, SSE) and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// The broadcast has a connected publisher.
    BroadcastLive(BroadcastKey),
    /// The publisher vanished without DELETE; viewers are kept for the resume grace.
    BroadcastReconnecting(BroadcastKey),
    /// The publisher stopped (or the grace ran out); every viewer session was closed.
    BroadcastEnded(BroadcastKey),
    ViewerCountChanged {
        broadcast: BroadcastKey,
        viewers: usize,
    },
    /// A connectivity test completed ICE and DTLS over UDP.
    ProbeConnected(SessionId),
    /// A viewer session finished its handshake and took its place.
    ViewerConnected(SessionId),
    /// A session ended, and why.
    SessionClosed {
        session: SessionId,
        reason: CloseReason,
    },
    /// A simulcast broadcast's layers changed (one started or stopped arriving, changed size,
    /// or its bitrate moved by a fifth), at most every [`LAYERS_EVERY`](super::LAYERS_EVERY):
    /// what viewers choose from.
    LayersChanged {
        broadcast: BroadcastKey,
        layers: Vec<LayerState>,
    },
}

/// A simulcast layer as viewers are told of it: the WHEP draft's `layers` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerState {
    pub rid: String,
    /// 0 when it does not arrive now.
    pub bitrate_bps: u64,
    pub size: Option<(u32, u32)>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// HTTP DELETE.
    Deleted,
    /// Replaced by a newer viewer because the broadcast was full.
    Evicted,
    /// A newer publisher took over the broadcast.
    Replaced,
    /// The broadcast's publisher stopped.
    BroadcastEnded,
    /// The broadcaster rotated the view ID.
    Revoked,
    /// ICE/DTLS never completed in time, or consent was lost.
    TimedOut,
    /// The peer sent something str0m could not handle.
    PeerFailed,
    /// The publisher resumed with a codec this viewer's session did not negotiate; the
    /// viewer is to make a new session.
    CodecChanged,
    /// The peer closed its connection cleanly (DTLS close_notify): it hung up on purpose.
    HungUp,
}
