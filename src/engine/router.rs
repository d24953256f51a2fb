//! Broadcast routes: who publishes, which tracks, who watches, and the per-track frame state
//! that decides where a viewer may start (the keyframe cache).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::{Codec, PayloadParams};
use str0m::media::{MediaKind, Mid, Pt};

use super::audience::Audience;
use super::command::IngestTrack;
use super::gop::Gop;
use super::key::{BroadcastKey, PeerKey};
use super::packet::CachedPacket;

/// All routes, by broadcast.
#[derive(Default)]
pub(crate) struct Router {
    routes: HashMap<BroadcastKey, Route>,
    /// Numbers the routes this engine creates (see [`Route::generation`]).
    generations: u64,
}

/// One broadcast as the media path sees it.
#[derive(Default)]
pub(crate) struct Route {
    pub(crate) publisher: Option<PeerKey>,
    /// Set while the publisher is gone without a DELETE and viewers wait for it to resume.
    pub(crate) lost_at: Option<Instant>,
    /// Bumped for every new publisher, so consumers know to splice.
    pub(crate) epoch: u32,
    pub(crate) tracks: Vec<Track>,
    /// Viewers in join order: the first is the oldest (evicted first when full).
    pub(crate) viewers: Vec<PeerKey>,
    pub(crate) live_since: Option<Instant>,
    pub(crate) ingest: RateMeter,
    pub(crate) sps: Option<crate::h264::SpsInfo>,
    pub(crate) ingest_loss: Option<f32>,
    /// Every viewer of the broadcast on any worker: the viewer cap's book (audience.rs).
    pub(crate) audience: Arc<Audience>,
    /// Set on a mirror (span.rs): the worker whose engine has the publisher.
    pub(crate) home: Option<usize>,
    /// Tells this route from an earlier one of the same broadcast, in messages between
    /// engines (a mirror's is its home's).
    pub(crate) generation: u64,
    /// A mirror whose home has a publisher: it is live.
    pub(crate) fed: bool,
    /// On the home: the workers holding mirrors, with their viewer sessions.
    pub(crate) relays: Vec<(usize, usize)>,
}

/// Bytes per second over windows of about a second.
#[derive(Default)]
pub(crate) struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    bps: u64,
    last: Option<Instant>,
}

impl RateMeter {
    pub(crate) fn add(&mut self, now: Instant, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            self.bps = self.bytes * 8 * 1_000_000 / elapsed.as_micros().max(1) as u64;
            self.bytes = 0;
            self.window_start = Some(now);
        }
        self.bytes += bytes as u64;
        self.last = Some(now);
    }

    /// Bits per second, or 0 once nothing has arrived for a few seconds.
    pub(crate) fn bps(&self, now: Instant) -> u64 {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < RATE_WINDOW * 3 => self.bps,
            _ => 0,
        }
    }
}

/// One publisher track (m-line).
pub(crate) struct Track {
    pub(crate) mid: Mid,
    pub(crate) kind: MediaKind,
    pub(crate) params: Vec<PayloadParams>,
    /// The simulcast layer this track is, if the publisher sends several (each is a track).
    pub(crate) layer: Option<str0m::media::Rid>,
    /// Its rank among the route's tracks of its kind: 0 for the full-size (or only) layer.
    pub(crate) rank: u8,
    /// What arrives on it (a simulcast layer's own bitrate).
    pub(crate) rate: RateMeter,
    /// H.264: what its SPS says (each simulcast layer has its own size).
    pub(crate) sps: Option<crate::h264::SpsInfo>,
    /// Packets of the newest frame (same RTP timestamp), shared `Arc` payloads, any order.
    frame: Vec<CachedPacket>,
    frame_ts: Option<u32>,
    frame_is_key: bool,
    /// The sequence number the newest frame should start at (after the last marker bit).
    frame_start: Option<u64>,
    last_marker: Option<u64>,
    /// Highest sequence number seen, to tell B-frames (newer packets with older timestamps)
    /// from late retransmissions.
    max_seq: Option<u64>,
    pub(crate) doctor: Doctor,
    /// The last complete keyframe (SPS/PPS included), in sequence order: sent to a new viewer
    /// at once, and where a waiting viewer starts. Shared, so a viewer that was sent it can
    /// keep it for its NACKs without a copy (`first_frame.rs`).
    pub(crate) keyframe: Arc<[CachedPacket]>,
    /// Every packet since that keyframe (gop.rs): sent to a new viewer right after it.
    pub(crate) gop: Gop,
    last_pli: Option<Instant>,
    /// Video: the newest packets by sequence number modulo [`RECENT`], shared by every viewer
    /// for answering their NACKs (empty until the first packet, and for audio).
    recent: Vec<Option<CachedPacket>>,
}

/// What the broadcaster page's ingest doctor needs to know about a video track.
#[derive(Default)]
pub(crate) struct Doctor {
    window_start: Option<Instant>,
    window_frames: u32,
    pub(crate) fps: Option<f32>,
    last_keyframe: Option<Instant>,
    pub(crate) keyframe_interval: Option<Duration>,
    pub(crate) b_frame_at: Option<Instant>,
    /// The last B-frame's timestamp, so a B-frame counts once in the frame rate.
    b_frame_ts: Option<u32>,
}

impl Doctor {
    fn frame(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        self.window_frames += 1;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= FPS_WINDOW {
            self.fps = Some(self.window_frames as f32 / elapsed.as_secs_f32());
            self.window_start = Some(now);
            self.window_frames = 0;
        }
    }

    fn keyframe(&mut self, now: Instant) {
        if let Some(last) = self.last_keyframe.replace(now) {
            self.keyframe_interval = Some(now.saturating_duration_since(last));
        }
    }

    /// B-frames were seen in the last minute.
    pub(crate) fn b_frames(&self, now: Instant) -> bool {
        self.b_frame_at
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(60))
    }
}

impl Router {
    pub(crate) fn route(&self, b: BroadcastKey) -> Option<&Route> {
        self.routes.get(&b)
    }

    pub(crate) fn route_mut(&mut self, b: BroadcastKey) -> Option<&mut Route> {
        self.routes.get_mut(&b)
    }

    pub(crate) fn entry(&mut self, b: BroadcastKey) -> &mut Route {
        let generations = &mut self.generations;
        self.routes.entry(b).or_insert_with(|| {
            *generations += 1;
            Route {
                generation: *generations,
                ..Route::default()
            }
        })
    }

    pub(crate) fn remove(&mut self, b: BroadcastKey) {
        self.routes.remove(&b);
    }

    /// Drops routes with neither publisher nor viewers, so the map stays as small as the
    /// set of active broadcasts.
    pub(crate) fn gc(&mut self, b: BroadcastKey) {
        if let Some(r) = self.routes.get(&b)
            && r.home.is_none()
            && r.relays.is_empty()
            && r.publisher.is_none()
            && r.lost_at.is_none()
            && r.viewers.is_empty()
        {
            self.routes.remove(&b);
        }
    }

    /// Broadcasts holding a slot: live, or waiting for their publisher to resume.
    pub(crate) fn slots_in_use(&self) -> usize {
        self.routes.values().filter(|r| r.holds_slot()).count()
    }

    pub(crate) fn holding_slots(&self) -> impl Iterator<Item = BroadcastKey> + '_ {
        self.routes
            .iter()
            .filter(|(_, r)| r.holds_slot())
            .map(|(b, _)| *b)
    }

    pub(crate) fn live(&self) -> usize {
        self.routes
            .values()
            .filter(|r| r.publisher.is_some())
            .count()
    }
}

impl Route {
    /// Viewers may join: a publisher here, or at the home of a mirror.
    pub(crate) fn is_live(&self) -> bool {
        self.publisher.is_some() || self.fed
    }

    /// Live or waiting for its publisher to resume, on its home (a mirror holds no slot).
    pub(crate) fn holds_slot(&self) -> bool {
        self.home.is_none() && (self.publisher.is_some() || self.lost_at.is_some())
    }

    /// The publisher's tracks as a new engine would be told them.
    pub(crate) fn ingest_tracks(&self) -> Vec<IngestTrack> {
        self.tracks
            .iter()
            .map(|t| IngestTrack {
                mid: t.mid,
                kind: t.kind,
                params: t.params.clone(),
                layer: t.layer,
            })
            .collect()
    }

    /// A mirror takes its home's publisher epoch, tracks, cached keyframes and GOPs (the
    /// home relays every later packet, so they go on from there).
    pub(crate) fn mirror_epoch(
        &mut self,
        epoch: u32,
        tracks: &[IngestTrack],
        caches: Vec<(Arc<[CachedPacket]>, Gop)>,
    ) {
        self.epoch = epoch;
        self.tracks = Track::all(tracks);
        for (t, (keyframe, gop)) in self.tracks.iter_mut().zip(caches) {
            t.keyframe = keyframe;
            t.gop = gop;
        }
    }

    /// Installs a new publisher's tracks; consumers re-sync at the next keyframe.
    pub(crate) fn start_epoch(&mut self, publisher: PeerKey, tracks: &[IngestTrack]) {
        self.publisher = Some(publisher);
        self.lost_at = None;
        self.ingest = RateMeter::default();
        self.sps = None;
        self.ingest_loss = None;
        self.epoch = self.epoch.wrapping_add(1);
        self.tracks = Track::all(tracks);
    }

    /// The track of a packet: its m-line and, with simulcast, its layer.
    pub(crate) fn track_index(&self, mid: Mid, rid: Option<str0m::media::Rid>) -> Option<usize> {
        self.tracks
            .iter()
            .position(|t| t.mid == mid && (t.layer.is_none() || t.layer == rid))
    }

    /// The track of `kind` at simulcast rank `layer` (0: the full-size or only one).
    pub(crate) fn layer(&self, kind: MediaKind, layer: u8) -> Option<&Track> {
        self.tracks
            .iter()
            .find(|t| t.kind == kind && t.rank == layer)
    }

    /// Its index, as [`layer`](Self::layer).
    pub(crate) fn layer_index(&self, kind: MediaKind, layer: u8) -> Option<usize> {
        self.tracks
            .iter()
            .position(|t| t.kind == kind && t.rank == layer)
    }

    /// How many layers of `kind` the publisher sends (1 without simulcast).
    pub(crate) fn layers(&self, kind: MediaKind) -> u8 {
        self.tracks.iter().filter(|t| t.kind == kind).count() as u8
    }
}

impl Track {
    /// A publisher's tracks, each simulcast layer ranked among those of its kind in the
    /// order given (the full-size layer first).
    fn all(specs: &[IngestTrack]) -> Vec<Self> {
        let mut tracks: Vec<Self> = Vec::with_capacity(specs.len());
        for spec in specs {
            let rank = tracks.iter().filter(|t| t.kind == spec.kind).count() as u8;
            tracks.push(Self::new(spec, rank));
        }
        tracks
    }

    fn new(spec: &IngestTrack, rank: u8) -> Self {
        Self {
            mid: spec.mid,
            kind: spec.kind,
            params: spec.params.clone(),
            layer: spec.layer,
            rank,
            rate: RateMeter::default(),
            sps: None,
            frame: Vec::new(),
            frame_ts: None,
            frame_is_key: false,
            frame_start: None,
            last_marker: None,
            max_seq: None,
            doctor: Doctor::default(),
            keyframe: Arc::from([]),
            gop: Gop::default(),
            last_pli: None,
            recent: Vec::new(),
        }
    }

    /// Keeps a forwarded video packet for retransmission to viewers that lose it.
    pub(crate) fn remember(&mut self, pkt: &CachedPacket) {
        if self.kind != MediaKind::Video {
            return;
        }
        if self.recent.is_empty() {
            self.recent = vec![None; RECENT];
        }
        let slot = pkt.seq as usize % RECENT;
        if self.recent[slot]
            .as_ref()
            .is_none_or(|old| old.seq < pkt.seq)
        {
            self.recent[slot] = Some(pkt.clone());
        }
    }

    /// A recent packet by its (publisher) sequence number.
    pub(crate) fn recent(&self, seq: u64) -> Option<&CachedPacket> {
        self.recent
            .get(seq as usize % RECENT)?
            .as_ref()
            .filter(|p| p.seq == seq)
    }

    pub(crate) fn codec(&self, pt: Pt) -> Option<&PayloadParams> {
        self.params.iter().find(|p| p.pt() == pt)
    }

    /// Records an arriving video packet. Returns true when it completes a keyframe: every
    /// packet from the frame's first (right after the previous frame's marker) to its marker,
    /// none missing. Only then may a waiting viewer start, so it never gets an IDR without its
    /// SPS/PPS, whatever was lost or reordered on the way in.
    pub(crate) fn observe(&mut self, now: Instant, pkt: &CachedPacket) -> bool {
        if self.kind == MediaKind::Audio {
            return false;
        }
        let newest = self.max_seq.is_none_or(|m| pkt.seq > m);
        if newest {
            self.max_seq = Some(pkt.seq);
        }
        if let Some(end) = self.keyframe.last() {
            self.gop.extend(end.seq, pkt);
        }
        match self.frame_ts {
            Some(ts) if ts == pkt.ts => {}
            // An older timestamp: a late packet of an older frame (forwarded, not cached), or,
            // if it is also the newest packet, a B-frame (sent in decode order).
            Some(ts) if (pkt.ts.wrapping_sub(ts) as i32) < 0 => {
                if newest {
                    self.doctor.b_frame_at = Some(now);
                    if self.doctor.b_frame_ts.replace(pkt.ts) != Some(pkt.ts) {
                        self.doctor.frame(now);
                    }
                    // A B-frame still ends where the next frame begins: without this, the
                    // IDR after it (x264 sends … P B B IDR) never looks complete.
                    if pkt.marker {
                        self.last_marker = Some(pkt.seq);
                    }
                }
                return false;
            }
            _ => {
                self.doctor.frame(now);
                self.frame.clear();
                self.frame_ts = Some(pkt.ts);
                self.frame_is_key = false;
                self.frame_start = self.last_marker.map(|m| m + 1);
            }
        }
        if pkt.marker && self.last_marker.is_none_or(|m| pkt.seq > m) {
            self.last_marker = Some(pkt.seq);
        }
        if self.frame.len() >= MAX_FRAME_PACKETS || self.frame.iter().any(|p| p.seq == pkt.seq) {
            return false;
        }
        self.frame.push(pkt.clone());
        self.frame_is_key |= self.is_keyframe_packet(pkt);
        if !self.frame_is_key || !self.frame_complete() {
            return false;
        }
        self.frame.sort_by_key(|p| p.seq);
        self.keyframe = Arc::from(self.frame.as_slice());
        self.gop.restart();
        self.doctor.keyframe(now);
        // Complete once: later duplicates of this frame must not report it again.
        self.frame_is_key = false;
        true
    }

    fn frame_complete(&self) -> bool {
        let (Some(first), Some(last)) = (
            self.frame.iter().map(|p| p.seq).min(),
            self.frame.iter().map(|p| p.seq).max(),
        ) else {
            return false;
        };
        let ends = self.frame.iter().any(|p| p.seq == last && p.marker);
        let contiguous = (last - first + 1) as usize == self.frame.len();
        let starts = match self.frame_start {
            Some(start) => first == start,
            // No marker seen yet (stream start): the first packet must itself begin the frame.
            None => self
                .frame
                .iter()
                .find(|p| p.seq == first)
                .is_some_and(|p| self.begins_frame(p)),
        };
        ends && contiguous && starts
    }

    /// Whether a packet can be the first of a keyframe: it carries the SPS or the keyframe
    /// start.
    fn begins_frame(&self, pkt: &CachedPacket) -> bool {
        let h264 = self
            .codec(pkt.pt)
            .is_some_and(|p| p.spec().codec == Codec::H264);
        (h264 && str0m::format::detect_h264_nalu(&pkt.payload, 7)) || self.is_keyframe_packet(pkt)
    }

    /// Whether a keyframe request may go to the publisher now (at most one per
    /// [`PLI_INTERVAL`]: OBS largely ignores them and a storm of viewers must not flood it).
    /// When the next keyframe request may go, if one went within [`PLI_INTERVAL`].
    pub(crate) fn next_pli_slot(&self) -> Option<Instant> {
        self.last_pli.map(|t| t + PLI_INTERVAL)
    }

    pub(crate) fn take_pli_slot(&mut self, now: Instant) -> bool {
        match self.last_pli {
            Some(t) if now.saturating_duration_since(t) < PLI_INTERVAL => false,
            _ => {
                self.last_pli = Some(now);
                true
            }
        }
    }

    pub(crate) fn clock_rate(&self, pt: Pt) -> u32 {
        self.codec(pt)
            .map(|p| p.spec().clock_rate.get())
            .unwrap_or(90_000)
    }

    fn is_keyframe_packet(&self, pkt: &CachedPacket) -> bool {
        let Some(params) = self.codec(pkt.pt) else {
            return false;
        };
        let p = &pkt.payload;
        match params.spec().codec {
            Codec::H264 => str0m::format::detect_h264_keyframe(p),
            Codec::H265 => str0m::format::detect_h265_keyframe(p),
            Codec::Vp8 => str0m::format::detect_vp8_keyframe(p),
            Codec::Vp9 => str0m::format::detect_vp9_keyframe(p),
            Codec::Av1 => str0m::format::detect_av1_keyframe(p),
            _ => false,
        }
    }
}

const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Frame rate over two seconds: steady enough to read, quick to follow a change in OBS.
const FPS_WINDOW: Duration = Duration::from_secs(2);
/// At most one keyframe request per track per second (DESIGN.md §5).
const PLI_INTERVAL: Duration = Duration::from_secs(1);
/// A 1080p IDR at high bitrate is a few hundred packets; past this a "frame" is garbage.
const MAX_FRAME_PACKETS: usize = 1024;

/// Packets kept per video track for viewers' NACKs: ~1.7 s at a 2.5 Mb/s stream's ~300
/// packets/s, far more than a NACK round trip; one ring per broadcast (~20 KB), not per
/// viewer.
const RECENT: usize = 512;
