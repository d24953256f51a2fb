//! The GOP cache of a video track: every packet since its cached keyframe (`router.rs`).
//!
//! A new viewer is sent the keyframe and then these (`keyframes.rs`), so it reaches the live
//! edge at once and its picture moves, instead of showing one still until the publisher's
//! next IDR (OBS ignores keyframe requests). One still is not even sure to be shown: a
//! browser that is just starting may decode a lone keyframe and never present it (a first
//! visit in Chromium: the `<video>` element hears of no frame until the next one comes).
//!
//! Payloads are shared `Arc`s, so the cache costs a `CachedPacket` (32 bytes) per packet
//! and keeps up to a GOP of payloads alive, per broadcast: bounded by [`MAX_PACKETS`] and
//! [`MAX_BYTES`]. Past the bound it gives up until the next keyframe, and new viewers get the
//! keyframe alone, as they would without it.
//!
//! The burst's timestamps are squeezed toward its newest frame ([`squeezed`]): sent with
//! their own spacing, a viewer gets up to a GOP's worth of RTP time (2 s) in one instant,
//! which its receiver counts as frames arriving that much early and its video timing and
//! A/V sync take a long while to get over (a Chromium viewer heard the sound 40-70 ms late
//! for over 20 s). Squeezed, the frames the viewer decodes at once are also stamped as
//! (nearly) one instant, and the newest keeps its own timestamp, so the live frames after it
//! follow at their real spacing.

use std::sync::Arc;

use super::packet::CachedPacket;

/// Cloned (`Arc` payloads shared) when a mirror on another worker starts (span.rs).
#[derive(Clone, Default)]
pub(crate) struct Gop {
    /// In sequence order, each once.
    packets: Vec<CachedPacket>,
    bytes: usize,
    /// `packets` holds every packet after the keyframe: none dropped for the bound, and the
    /// keyframe completed on this track or its home's.
    complete: bool,
}

impl Gop {
    /// A keyframe just completed on the track: the cache starts after it.
    pub(crate) fn restart(&mut self) {
        self.packets.clear();
        self.bytes = 0;
        self.complete = true;
    }

    /// Adds a packet that came after the keyframe (whose last packet is `keyframe_end`), in
    /// its place by sequence number: a late or repeated packet is put there once.
    pub(crate) fn extend(&mut self, keyframe_end: u64, pkt: &CachedPacket) {
        if !self.complete || pkt.seq <= keyframe_end {
            return;
        }
        let at = match self.packets.last() {
            Some(last) if last.seq >= pkt.seq => {
                match self.packets.binary_search_by_key(&pkt.seq, |p| p.seq) {
                    Ok(_) => return,
                    Err(at) => at,
                }
            }
            _ => self.packets.len(),
        };
        self.bytes += pkt.payload.len();
        if self.packets.len() >= MAX_PACKETS || self.bytes > MAX_BYTES {
            *self = Self::default();
            return;
        }
        self.packets.insert(at, pkt.clone());
    }

    /// Payload bytes since the keyframe.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every packet since the keyframe, or `None` if the cache gave up (or never had a
    /// keyframe of its own): then a viewer sent the keyframe must wait for the next one.
    pub(crate) fn packets(&self) -> Option<&[CachedPacket]> {
        self.complete.then_some(self.packets.as_slice())
    }
}

/// A start burst: `packets` (a keyframe and the packets since it, in sequence order) with
/// each frame's timestamp moved to [`SQUEEZED_FRAME_TICKS`] per newer frame before the
/// newest frame's, which is left as it is. A frame is the packets of one timestamp.
/// (Frames are numbered in sending order: a publisher's B-frames would be shown in that
/// order, but WebRTC publishers send none.)
pub(crate) fn squeezed<'a>(
    packets: impl DoubleEndedIterator<Item = &'a CachedPacket>,
) -> Arc<[CachedPacket]> {
    let mut out: Vec<CachedPacket> = packets.cloned().collect();
    let Some(newest) = out.last().map(|p| p.ts) else {
        return out.into();
    };
    let mut newer_frames = 0u32;
    let mut frame_ts = newest;
    for p in out.iter_mut().rev() {
        if p.ts != frame_ts {
            frame_ts = p.ts;
            newer_frames += 1;
        }
        p.ts = newest.wrapping_sub(newer_frames.wrapping_mul(SQUEEZED_FRAME_TICKS));
    }
    out.into()
}

/// The spacing of a start burst's frames: 1 ms at video's 90 kHz, so a 2 s GOP at 30 fps
/// spans 60 ms.
const SQUEEZED_FRAME_TICKS: u32 = 90;

/// Packets since the keyframe: a 2 s GOP of 1080p at 6 Mb/s is about 1,300.
const MAX_PACKETS: usize = 2048;
/// Payload bytes since the keyframe: 2 s at 8 Mb/s. Keeps a broadcast's cache to a few MB
/// whatever the packet size, and a new viewer's start burst too.
const MAX_BYTES: usize = 2 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn pkt(seq: u64, len: usize) -> CachedPacket {
        CachedPacket {
            seq,
            ts: seq as u32,
            pt: 96.into(),
            marker: false,
            orientation: None,
            payload: Arc::from(vec![0u8; len]),
        }
    }

    fn seqs(g: &Gop) -> Option<Vec<u64>> {
        g.packets().map(|p| p.iter().map(|p| p.seq).collect())
    }

    #[test]
    fn holds_what_came_after_the_keyframe_in_order_once_each() {
        let mut g = Gop::default();
        assert_eq!(seqs(&g), None, "no keyframe yet");
        g.restart();
        for s in [9, 10, 11, 14, 12, 14, 13, 11] {
            g.extend(10, &pkt(s, 100));
        }
        assert_eq!(seqs(&g), Some(vec![11, 12, 13, 14]));
        g.restart();
        assert_eq!(seqs(&g), Some(vec![]), "the next keyframe starts it over");
    }

    #[test]
    fn a_burst_is_squeezed_toward_its_newest_frame() {
        // Three frames 3000 ticks apart (30 fps), the second of two packets.
        let frames = [(1, 1000), (2, 4000), (3, 4000), (4, 7000)];
        let packets: Vec<CachedPacket> = frames
            .iter()
            .map(|&(seq, ts)| CachedPacket { ts, ..pkt(seq, 10) })
            .collect();
        let burst = squeezed(packets.iter());
        let ts: Vec<u32> = burst.iter().map(|p| p.ts).collect();
        assert_eq!(ts, vec![7000 - 180, 7000 - 90, 7000 - 90, 7000]);
        let seqs: Vec<u64> = burst.iter().map(|p| p.seq).collect();
        assert_eq!(
            seqs,
            vec![1, 2, 3, 4],
            "the packets themselves are as they were"
        );
        // Near the 32-bit wrap the newest is kept and the older ones wrap below it.
        let wrapped = [
            CachedPacket {
                ts: u32::MAX - 5000,
                ..pkt(1, 10)
            },
            CachedPacket {
                ts: 10,
                ..pkt(2, 10)
            },
        ];
        let ts: Vec<u32> = squeezed(wrapped.iter()).iter().map(|p| p.ts).collect();
        assert_eq!(ts, vec![10u32.wrapping_sub(90), 10]);
    }

    #[test]
    fn gives_up_past_its_bound_until_the_next_keyframe() {
        let mut g = Gop::default();
        g.restart();
        for s in 1..=MAX_PACKETS as u64 {
            g.extend(0, &pkt(s, 10));
        }
        assert_eq!(g.packets().map(<[_]>::len), Some(MAX_PACKETS));
        g.extend(0, &pkt(MAX_PACKETS as u64 + 1, 10));
        assert_eq!(seqs(&g), None, "over the packet bound");
        g.extend(0, &pkt(MAX_PACKETS as u64 + 2, 10));
        assert_eq!(seqs(&g), None, "still, until a keyframe");
        g.restart();
        g.extend(0, &pkt(1, MAX_BYTES));
        g.extend(0, &pkt(2, 1));
        assert_eq!(seqs(&g), None, "over the byte bound");
    }
}
