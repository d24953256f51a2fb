//! One viewer's copy of one publisher track: sequence number and timestamp rebasing, payload
//! type mapping. Pure arithmetic, no str0m state, so splicing is easy to test.

use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::Ssrc;

use super::probe::Probing;

/// The rewrite state of one viewer m-line.
///
/// Output numbering is continuous for the whole life of the viewer session: across publisher
/// replacement (OBS restarts seq and timestamps at 0), across the keyframe-cache burst and
/// across skipped packets. Whenever the consumer is not synced to the current source it waits
/// for a sync point (a keyframe's first packet; any packet for audio) and re-derives the
/// offsets there, so the viewer sees one stream that simply continues.
#[derive(Debug)]
pub(crate) struct Consumer {
    /// The viewer's m-line this track is written to.
    pub(crate) mid: Mid,
    pub(crate) kind: MediaKind,
    /// The SSRCs the viewer's answer announced for this m-line: its media and, for video,
    /// its RTX stream. Whoever seals the viewer's media sends on them (see egress.rs).
    pub(crate) ssrc: Ssrc,
    pub(crate) rtx: Option<Ssrc>,
    /// Which source the offsets below are valid for; `None` waits for a sync point.
    synced_to: Option<Source>,
    seq_offset: u64,
    ts_offset: u32,
    /// The first output sequence number the current offsets were used for.
    synced_from: u64,
    /// The last sequence number and timestamp written, and when.
    last: Option<Written>,
    /// Publisher PT → viewer PT, filled on first use (at most a few codecs), emptied when a
    /// new publisher takes over (its PT 96 may be another codec).
    pt_map: Vec<(Pt, Pt)>,
    /// Where this viewer's numbering starts.
    start: RtpStart,
    /// When it first synced: its first frame was sent then.
    first_sync: Option<Instant>,
    /// Video from a simulcast publisher: the layer this viewer is sent (0 is the full-size
    /// layer; see [`Source::layer`]).
    pub(crate) layer: u8,
    /// The layer it is to move to at that layer's next keyframe, meanwhile still sent
    /// `layer`.
    pub(crate) target: Option<u8>,
    /// The server chooses its layer from its estimate (layers.rs); false once the viewer
    /// pinned one.
    pub(crate) auto: bool,
    /// Since when its estimate has been below what its layer needs, and the estimate then.
    pub(crate) below_since: Option<(Instant, u64)>,
    /// Since when what it is sent has queued on its link without a break, and on which layer
    /// (our estimate from its transport-wide feedback; layers.rs).
    pub(crate) queued_since: Option<(Instant, u8)>,
    /// Since when its estimate has been enough for a larger layer.
    pub(crate) above_since: Option<Instant>,
    /// Whether its link is being probed for a larger layer (probe.rs).
    pub(crate) probing: Probing,
    /// Whether its link carries what it is sent (slow.rs).
    pub(crate) slow: super::slow::Slowness,
    /// What it loses on its layer, and the layers it lost too much on (loss.rs).
    pub(crate) loss: super::loss::LayerLoss,
}

/// What a viewer's numbering is derived from: one publisher (its epoch) and one of its
/// layers. Another publisher, or another simulcast layer, is another source: the viewer
/// re-syncs at its next sync point and its numbering goes on without a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) epoch: u32,
    /// The simulcast layer, by rank among the tracks of its kind (0 for a single layer).
    pub(crate) layer: u8,
}

/// The first sequence number and timestamp of a viewer stream: random (RFC 3550 §5.1), so
/// they tell an observer nothing and collide with no earlier session's.
///
/// The sequence number is drawn below 2^15: any 16-bit start gives the first packet SRTP
/// rollover counter 0, which str0m (and a receiver told no ROC) assumes, and the first wrap
/// then comes at least 2^15 packets (~2 minutes of 2.5 Mb/s video) after the start, past
/// the first seconds in which a receiver is still learning the stream (a packet reordered
/// across a wrap that early could make it guess the ROC wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RtpStart {
    pub(crate) seq: u64,
    pub(crate) ts: u32,
}

impl RtpStart {
    /// A random start, or the sequence number `seq` (testing only: tests start just below
    /// the 16-bit wrap to cross it quickly).
    pub(crate) fn random(seq: Option<u16>) -> Self {
        let mut bytes = [0u8; 6];
        // Without an OS random source the start stays fixed (still ROC 0); whipcast could
        // not have made its IDs either, so this never happens in a running server.
        let _ = getrandom::fill(&mut bytes);
        let drawn = u16::from_be_bytes([bytes[0], bytes[1]]) & RANDOM_SEQ_MASK;
        Self {
            seq: u64::from(seq.unwrap_or(drawn)),
            ts: u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]),
        }
    }
}

/// Why [`Consumer::rewrite`] skipped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// The viewer waits for a sync point (a keyframe) and this is not one.
    Waiting,
    /// The packet is from before the sync point: its number would fall on one the viewer
    /// was already sent (RFC 7714 §8.1: the same SSRC and index sealed twice with another
    /// payload reuses the AES-GCM nonce).
    BeforeSyncPoint,
}

#[derive(Debug, Clone, Copy)]
struct Written {
    seq: u64,
    ts: u32,
    at: Instant,
}

/// Where a packet sits in its source stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SourcePacket {
    pub(crate) source: Source,
    pub(crate) seq: u64,
    pub(crate) ts: u32,
    /// A point a decoder can start from: the first packet of a keyframe, or any audio packet.
    pub(crate) sync_point: bool,
    pub(crate) clock_rate: u32,
}

impl Consumer {
    pub(crate) fn new(
        mid: Mid,
        kind: MediaKind,
        ssrc: Ssrc,
        rtx: Option<Ssrc>,
        start: RtpStart,
    ) -> Self {
        Self {
            mid,
            kind,
            ssrc,
            rtx,
            synced_to: None,
            seq_offset: 0,
            ts_offset: 0,
            synced_from: 0,
            last: None,
            pt_map: Vec::new(),
            start,
            first_sync: None,
            layer: 0,
            target: None,
            auto: true,
            below_since: None,
            queued_since: None,
            above_since: None,
            probing: Probing::default(),
            slow: Default::default(),
            loss: Default::default(),
        }
    }

    /// The (sequence number, timestamp) to write for `pkt`, or why it is skipped.
    pub(crate) fn rewrite(&mut self, pkt: SourcePacket, now: Instant) -> Result<(u64, u32), Skip> {
        if self.synced_to != Some(pkt.source) {
            if !pkt.sync_point {
                return Err(Skip::Waiting);
            }
            self.sync(pkt, now);
        }
        let seq = pkt.seq.wrapping_add(self.seq_offset);
        if seq < self.synced_from || seq >= SEQ_LIMIT {
            // Older than the sync point (a late packet or retransmission from before it):
            // the viewer never had the frame it belongs to, and the number it maps to was
            // already used before the sync point (or lies below the first).
            return Err(Skip::BeforeSyncPoint);
        }
        let ts = pkt.ts.wrapping_add(self.ts_offset);
        match self.last {
            Some(last) if seq <= last.seq => {}
            _ => self.last = Some(Written { seq, ts, at: now }),
        }
        Ok((seq, ts))
    }

    /// Forgets the source: the next packet written must be a sync point. Used after the
    /// keyframe-cache burst (live packets after it reference frames the viewer never got).
    pub(crate) fn unsync(&mut self) {
        self.synced_to = None;
    }

    pub(crate) fn is_synced_to(&self, source: Source) -> bool {
        self.synced_to == Some(source)
    }

    /// Its first frame went out less than [`STARTING`] ago: a viewer asking for a keyframe
    /// now has probably not shown a picture yet (first_frame.rs).
    pub(crate) fn starting(&self, now: Instant) -> bool {
        self.first_sync
            .is_some_and(|t| now.saturating_duration_since(t) < STARTING)
    }

    fn sync(&mut self, pkt: SourcePacket, now: Instant) {
        let (seq, ts) = match self.last {
            None => (self.start.seq, self.start.ts),
            Some(last) => {
                // Continue the viewer's timeline by the real time that passed, so its jitter
                // buffer sees neither a jump nor a stall.
                let elapsed = now.saturating_duration_since(last.at).max(MIN_TS_STEP);
                let ticks = (elapsed.as_micros() as u64 * pkt.clock_rate as u64 / 1_000_000) as u32;
                (last.seq + 1, last.ts.wrapping_add(ticks.max(1)))
            }
        };
        self.seq_offset = seq.wrapping_sub(pkt.seq);
        self.ts_offset = ts.wrapping_sub(pkt.ts);
        self.synced_from = seq;
        self.synced_to = Some(pkt.source);
        self.first_sync.get_or_insert(now);
    }

    /// Where an output packet the viewer NACKed (by its 16-bit number) came from: (source,
    /// source sequence number, extended output number). `None` unless it was written
    /// since the current sync point, whose offsets alone can map it back.
    pub(crate) fn source_of(&self, seq16: u16) -> Option<(Source, u64, u64)> {
        let source = self.synced_to?;
        let last = self.last?.seq;
        let same_rollover = (last & !0xffff) | u64::from(seq16);
        let out = if same_rollover <= last {
            same_rollover
        } else {
            same_rollover.checked_sub(1 << 16)?
        };
        if out < self.synced_from {
            return None;
        }
        Some((source, out.wrapping_sub(self.seq_offset), out))
    }

    /// The output sequence number for a source sequence number, with the current offsets.
    pub(crate) fn seq_out(&self, source_seq: u64) -> u64 {
        source_seq.wrapping_add(self.seq_offset)
    }

    /// The output timestamp for a source timestamp, with the current offsets.
    pub(crate) fn ts_out(&self, source_ts: u32) -> u32 {
        source_ts.wrapping_add(self.ts_offset)
    }

    pub(crate) fn mapped_pt(&self, publisher_pt: Pt) -> Option<Pt> {
        self.pt_map
            .iter()
            .find(|(p, _)| *p == publisher_pt)
            .map(|(_, v)| *v)
    }

    pub(crate) fn remember_pt(&mut self, publisher_pt: Pt, viewer_pt: Pt) {
        if self.pt_map.len() < MAX_PT_MAP {
            self.pt_map.push((publisher_pt, viewer_pt));
        }
    }

    /// Drops the PT mapping: a new publisher's payload types are mapped afresh.
    pub(crate) fn forget_pts(&mut self) {
        self.pt_map.clear();
    }
}

/// A random sequence number start below 2^15 (see [`RtpStart`]).
const RANDOM_SEQ_MASK: u16 = 0x7fff;
/// Offsets past this mean the packet is from before the sync point (u64 wrap-around).
const SEQ_LIMIT: u64 = 1 << 62;
/// Smallest timestamp step at a splice, so two frames never share a timestamp.
const MIN_TS_STEP: Duration = Duration::from_millis(1);
/// How long after its first frame a viewer counts as starting: a couple of round trips and
/// a DTLS retransmission (1 s) past the first frame, the time a viewer that could not use it
/// takes to say so.
const STARTING: Duration = Duration::from_secs(2);
/// Publishers use one video and one audio codec; a few entries cover renegotiated PTs.
const MAX_PT_MAP: usize = 8;

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick their own start instant
mod tests {
    use super::*;

    const FIRST_SEQ: u64 = 1;
    const FIRST_TS: u32 = 90_000;

    fn consumer() -> Consumer {
        let start = RtpStart {
            seq: FIRST_SEQ,
            ts: FIRST_TS,
        };
        Consumer::new(Mid::from("1"), MediaKind::Video, 1.into(), None, start)
    }

    fn pkt(epoch: u32, seq: u64, ts: u32, sync_point: bool) -> SourcePacket {
        SourcePacket {
            source: Source { epoch, layer: 0 },
            seq,
            ts,
            sync_point,
            clock_rate: 90_000,
        }
    }

    #[test]
    fn video_waits_for_a_sync_point() {
        let now = Instant::now();
        let mut c = consumer();
        assert_eq!(c.rewrite(pkt(0, 500, 1000, false), now), Err(Skip::Waiting));
        assert_eq!(
            c.rewrite(pkt(0, 501, 4000, true), now),
            Ok((FIRST_SEQ, FIRST_TS))
        );
        assert_eq!(
            c.rewrite(pkt(0, 502, 7000, false), now),
            Ok((FIRST_SEQ + 1, FIRST_TS + 3000))
        );
    }

    #[test]
    fn publisher_restart_continues_seq_and_timestamps() {
        let t0 = Instant::now();
        let mut c = consumer();
        c.rewrite(pkt(0, 40_000, 3_000_000, true), t0).unwrap();
        let (last_seq, last_ts) = c.rewrite(pkt(0, 40_001, 3_003_000, false), t0).unwrap();
        // OBS reconnects: new epoch, seq and ts from 0; non-keyframes are skipped until the IDR.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(c.rewrite(pkt(1, 0, 0, false), t1), Err(Skip::Waiting));
        let (seq, ts) = c.rewrite(pkt(1, 1, 0, true), t1).unwrap();
        assert_eq!(seq, last_seq + 1);
        assert_eq!(
            ts,
            last_ts + 45_000,
            "500 ms at 90 kHz after the last frame"
        );
        assert_eq!(
            c.rewrite(pkt(1, 2, 3000, false), t1),
            Ok((seq + 1, ts + 3000))
        );
    }

    #[test]
    fn nacked_numbers_map_back_to_their_source_since_the_sync_point() {
        let now = Instant::now();
        let mut c = consumer();
        c.rewrite(pkt(0, 70_000, 500, true), now).unwrap();
        for s in 70_001..70_010 {
            c.rewrite(pkt(0, s, 500, false), now).unwrap();
        }
        // Output numbers FIRST_SEQ..FIRST_SEQ + 9 stand for source 70_000..70_009.
        assert_eq!(
            c.source_of(FIRST_SEQ as u16 + 4),
            Some((Source { epoch: 0, layer: 0 }, 70_004, FIRST_SEQ + 4))
        );
        assert_eq!(c.ts_out(500), FIRST_TS);
        assert_eq!(c.source_of(FIRST_SEQ as u16 + 20), None, "not written yet");
        c.unsync();
        assert_eq!(c.source_of(FIRST_SEQ as u16 + 4), None, "offsets gone");
    }

    #[test]
    fn retransmissions_from_before_the_sync_point_are_dropped() {
        let now = Instant::now();
        let mut c = consumer();
        c.rewrite(pkt(0, 100, 0, true), now).unwrap();
        assert_eq!(
            c.rewrite(pkt(0, 98, 0, false), now),
            Err(Skip::BeforeSyncPoint)
        );
        // A retransmission after the sync point keeps its place.
        c.rewrite(pkt(0, 103, 0, false), now).unwrap();
        assert_eq!(
            c.rewrite(pkt(0, 102, 0, false), now),
            Ok((FIRST_SEQ + 2, FIRST_TS))
        );
    }

    #[test]
    fn a_late_packet_after_a_resync_never_lands_on_a_number_already_sent() {
        let now = Instant::now();
        let mut c = consumer();
        // The cached keyframe (source 100..=104) goes out as FIRST_SEQ..=FIRST_SEQ + 4.
        for s in 100..105 {
            c.rewrite(pkt(0, s, 0, s == 100), now).unwrap();
        }
        c.unsync();
        // The next live IDR (source 200) continues the numbering.
        let (seq, _) = c.rewrite(pkt(0, 200, 9000, true), now).unwrap();
        assert_eq!(seq, FIRST_SEQ + 5);
        // Source 197..199 arrive late: they would map to FIRST_SEQ + 2..=4, already sealed
        // with the keyframe's payloads.
        for s in 197..200 {
            assert_eq!(
                c.rewrite(pkt(0, s, 6000, false), now),
                Err(Skip::BeforeSyncPoint),
                "source {s}"
            );
        }
        // The same after a publisher splice, for audio too (every packet a sync point).
        let mut a = consumer();
        a.rewrite(pkt(0, 10, 0, true), now).unwrap();
        a.rewrite(pkt(0, 11, 960, true), now).unwrap();
        let (first, _) = a.rewrite(pkt(1, 50, 0, true), now).unwrap();
        assert_eq!(first, FIRST_SEQ + 2);
        assert_eq!(
            a.rewrite(pkt(1, 49, 0, true), now),
            Err(Skip::BeforeSyncPoint)
        );
    }

    #[test]
    fn random_starts_differ_and_keep_the_first_rollover_counter_at_zero() {
        let starts: Vec<RtpStart> = (0..8).map(|_| RtpStart::random(None)).collect();
        assert!(starts.iter().all(|s| s.seq < 1 << 15), "{starts:?}");
        assert!(
            starts.windows(2).any(|w| w[0] != w[1]),
            "drawn, not constant: {starts:?}"
        );
        assert_eq!(RtpStart::random(Some(65_500)).seq, 65_500);
    }
}
