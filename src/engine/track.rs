//! One publisher track as the media path keeps it (a simulcast layer is a track of its
//! own): its newest frame and the last complete keyframe (where a viewer may start), the GOP
//! since it, the packets viewers may NACK, its bitrate, and what the ingest doctor reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::{Codec, PayloadParams};
use str0m::media::{MediaKind, Mid, Pt};

use super::command::IngestTrack;
use super::gop::Gop;
use super::packet::CachedPacket;

/// Bits and packets per second over windows of about a second.
#[derive(Default, Clone, Copy)]
pub(crate) struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    packets: u64,
    bps: u64,
    pps: u64,
    last: Option<Instant>,
}

impl RateMeter {
    pub(crate) fn add(&mut self, now: Instant, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let micros = elapsed.as_micros().max(1) as u64;
            self.bps = self.bytes * 8 * 1_000_000 / micros;
            self.pps = self.packets * 1_000_000 / micros;
            (self.bytes, self.packets) = (0, 0);
            self.window_start = Some(now);
        }
        self.bytes += bytes as u64;
        self.packets += 1;
        self.last = Some(now);
    }

    /// Packets per second, or 0 once nothing has arrived for a few seconds.
    pub(crate) fn pps(&self, now: Instant) -> u64 {
        if self.bps(now) == 0 { 0 } else { self.pps }
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

/// A home track's state a mirror starts from: its cached keyframe and the GOP since it, so
/// the mirror's first viewer gets its first frame at once and starts at the live edge; its
/// bitrate and size, so that viewer starts on a layer that fits (`Route::start_layer`).
pub(crate) struct Mirrored {
    keyframe: Arc<[CachedPacket]>,
    gop: Gop,
    rate: RateMeter,
    sps: Option<crate::h264::SpsInfo>,
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

impl Track {
    /// A packet of `size` bytes arrived on it: counted in its bitrate, and its picture size
    /// read from an H.264 SPS (alone or in a STAP-A), which is returned when it carries one.
    pub(crate) fn arrived(
        &mut self,
        now: Instant,
        size: usize,
        payload: &[u8],
    ) -> Option<crate::h264::SpsInfo> {
        self.rate.add(now, size);
        if self.kind != MediaKind::Video
            || !payload.first().is_some_and(|b| matches!(b & 0x1f, 7 | 24))
        {
            return None;
        }
        let sps = crate::h264::sps_in_rtp_payload(payload)?;
        self.sps = Some(sps);
        Some(sps)
    }

    /// What a mirror on another worker starts this track from (span.rs).
    pub(crate) fn mirrored(&self) -> Mirrored {
        Mirrored {
            keyframe: self.keyframe.clone(),
            gop: self.gop.clone(),
            rate: self.rate,
            sps: self.sps,
        }
    }

    /// Starts this track as a mirror of its home's, from what the home sent.
    pub(crate) fn start_from(&mut self, home: Mirrored) {
        self.keyframe = home.keyframe;
        self.gop = home.gop;
        self.rate = home.rate;
        self.sps = home.sps;
    }

    /// A publisher's tracks, each simulcast layer ranked among those of its kind in the
    /// order given (the full-size layer first).
    pub(super) fn all(specs: &[IngestTrack]) -> Vec<Self> {
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

    /// Whether its cached keyframe may move a viewer onto this layer, with the GOP since it,
    /// instead of a keyframe asked of the publisher: the GOP holds every packet since it
    /// and at most [`CURRENT_FOR`] of the layer's bitrate, so the burst costs the viewer's
    /// link little more than the layer itself (and the publisher no keyframe).
    pub(crate) fn keyframe_is_current(&self, now: Instant) -> bool {
        let budget = self.rate.bps(now) / 8 * CURRENT_FOR.as_millis() as u64 / 1000;
        !self.keyframe.is_empty()
            && self
                .gop
                .packets()
                .is_some_and(|_| self.gop.bytes() as u64 <= budget)
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
/// How much of a layer (in time at its bitrate) may have come since its cached keyframe for
/// that keyframe to count as current ([`Track::keyframe_is_current`]).
const CURRENT_FOR: Duration = Duration::from_millis(500);
/// At most one keyframe request per track per second (DESIGN.md §5).
const PLI_INTERVAL: Duration = Duration::from_secs(1);
/// A 1080p IDR at high bitrate is a few hundred packets; past this a "frame" is garbage.
const MAX_FRAME_PACKETS: usize = 1024;

/// Packets kept per video track for viewers' NACKs: ~1.7 s at a 2.5 Mb/s stream's ~300
/// packets/s, far more than a NACK round trip; one ring per broadcast (~20 KB), not per
/// viewer.
const RECENT: usize = 512;
