//! A viewer's first frame: the cached keyframe and the GOP since it, sent on connecting
//! (`keyframes.rs`), made to arrive whole.
//!
//! A lost packet of that burst cannot always be repaired the way live packets are: without a
//! whole GOP cache the viewer's consumer forgets its offsets right after the keyframe (the
//! live frames until the next IDR reference pictures the viewer never had), and the burst may
//! be older than the broadcast's ring of recent packets. So a viewer whose media we seal keeps
//! a [`FirstFrame`]: what it was sent (the router's keyframe shared, or one copy of keyframe
//! and GOP) and how it was numbered for that viewer, for a few seconds. With it:
//!
//! - **NACKs** for the burst are answered (`feedback.rs` asks it first);
//! - **its first and last packets are sent twice**: a receiver learns of a loss only from a
//!   gap between packets it has. It counts from the first packet it gets (str0m drops
//!   anything older), so the first packet goes out twice in a row within the burst; and no
//!   video may follow the burst until the next IDR (no GOP cache), so the first and last go
//!   again shortly after it (a retransmission: libwebrtc still takes an older first packet).
//!   Once they arrive, every gap is visible and NACKed;
//! - **the burst is sent again** when the viewer cannot have decrypted it: our final DTLS
//!   flight is sent again after we counted the viewer connected (it never got the first
//!   one, so it had no keys when the burst came), or the viewer asks for a keyframe before
//!   it has shown one (a browser does, when it got no decodable frame). At most
//!   [`MAX_FIRST_FRAMES`] bursts per viewer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Pt};

use super::consumer::Source;
use super::keyframes::Burst;
use super::packet::CachedPacket;
use super::peer::live;
use super::{Engine, PeerKey};

/// The cached keyframe as one viewer was sent it.
pub(crate) struct FirstFrame {
    packets: Arc<[CachedPacket]>,
    /// The viewer's stream (egress index) it went out on.
    stream: usize,
    /// Output sequence number and timestamp of the first packet.
    seq: u64,
    ts: u32,
    /// Publisher PT → viewer PT (a keyframe is one codec).
    pt: (Pt, Pt),
    /// When the first and last packets go again, soonest first.
    repeats: [Option<Instant>; REPEATS.len()],
    /// When NACKs for it stop being answered and the packets are let go.
    until: Instant,
}

impl FirstFrame {
    /// `packets` was sent on `stream` from output sequence number `seq` and timestamp `ts`,
    /// with the publisher's PT mapped as `pt`.
    pub(crate) fn new(
        packets: Arc<[CachedPacket]>,
        stream: usize,
        (seq, ts): (u64, u32),
        pt: (Pt, Pt),
        now: Instant,
    ) -> Self {
        Self {
            packets,
            stream,
            seq,
            ts,
            pt,
            repeats: REPEATS.map(|d| Some(now + d)),
            until: now + KEEP,
        }
    }

    /// The packet of the burst the viewer knows as `seq16` on `stream`, as it was sent.
    pub(crate) fn packet(&self, stream: usize, seq16: u16) -> Option<CachedPacket> {
        if stream != self.stream {
            return None;
        }
        // By sequence number, not position: the GOP after the keyframe may miss a packet
        // the publisher has not repaired yet.
        let source = self.packets.first()?.seq + u64::from(seq16.wrapping_sub(self.seq as u16));
        let i = self.packets.binary_search_by_key(&source, |p| p.seq).ok()?;
        self.sent(i)
    }

    fn sent(&self, i: usize) -> Option<CachedPacket> {
        let first = self.packets.first()?;
        let p = self.packets.get(i)?;
        Some(CachedPacket {
            seq: self.seq + (p.seq - first.seq),
            ts: p.ts.wrapping_sub(first.ts).wrapping_add(self.ts),
            pt: (p.pt == self.pt.0).then_some(self.pt.1)?,
            marker: p.marker,
            orientation: p.orientation,
            payload: p.payload.clone(),
        })
    }

    pub(crate) fn stream(&self) -> usize {
        self.stream
    }

    pub(crate) fn next_deadline(&self) -> Instant {
        self.repeats
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(self.until)
    }

    /// Whether it is kept past `now`.
    pub(crate) fn alive(&self, now: Instant) -> bool {
        now < self.until
    }

    /// The first and last packet, if a repeat of them is due at `now` (each repeat once).
    pub(crate) fn take_due_repeat(&mut self, now: Instant) -> Option<[CachedPacket; 2]> {
        let due = self
            .repeats
            .iter_mut()
            .find(|t| t.is_some_and(|t| t <= now))?;
        *due = None;
        Some([
            self.sent(0)?,
            self.sent(self.packets.len().checked_sub(1)?)?,
        ])
    }
}

impl Engine {
    /// Sends viewer `v` the cached keyframe again if it has not started on a keyframe yet and
    /// may have another burst. See the module docs for when.
    pub(super) fn resend_first_frame(&mut self, v: PeerKey) {
        let Some(now) = self.last_now else { return };
        let Some(peer) = live(&mut self.peers, v) else {
            return;
        };
        if !peer.connected || peer.first_frames == 0 || peer.first_frames >= MAX_FIRST_FRAMES {
            return;
        }
        let b = peer.broadcast;
        let Some(route) = self.router.route(b) else {
            return;
        };
        let has_cache = route
            .tracks
            .iter()
            .any(|t| t.kind == MediaKind::Video && !t.keyframe.is_empty());
        // Started at the live edge, a viewer is synced at once: it may still have no picture.
        let waiting = peer.consumer_mut(MediaKind::Video).is_some_and(|c| {
            let source = Source {
                epoch: route.epoch,
                layer: c.layer,
            };
            !c.is_synced_to(source) || c.starting(now)
        });
        if has_cache && waiting {
            self.queue_start(v, Burst::WithGop);
        }
    }
}

/// A DTLS handshake or ChangeCipherSpec record: the handshake is still going on.
pub(crate) fn is_dtls_handshake(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(20 | 22))
}

/// Bursts of the cached keyframe per viewer: the first, and two more when it could not
/// have been decrypted. Each costs a keyframe's bytes, so a viewer cannot make many.
pub(crate) const MAX_FIRST_FRAMES: u8 = 3;
/// When the first and last packets go again after the burst: once the burst has drained
/// from a receive buffer it may have overflowed on a fast link, and once more after a
/// longer path's round trip.
const REPEATS: [Duration; 2] = [Duration::from_millis(30), Duration::from_millis(300)];
/// How long NACKs for the burst are answered: past a couple of round trips the viewer has
/// either repaired it or started on a live IDR. Holding the keyframe longer would keep old
/// keyframes alive per viewer.
const KEEP: Duration = Duration::from_secs(2);

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick their own start instant
mod tests {
    use super::*;

    fn burst() -> Arc<[CachedPacket]> {
        (0..5u64)
            .map(|i| CachedPacket {
                seq: 1000 + i,
                ts: 7000,
                pt: 96.into(),
                marker: i == 4,
                orientation: None,
                payload: Arc::from([i as u8].as_slice()),
            })
            .collect()
    }

    #[test]
    fn nacked_numbers_map_to_the_burst_across_the_16_bit_wrap() {
        let now = Instant::now();
        let ff = FirstFrame::new(burst(), 0, (65_534, 90_000), (96.into(), 102.into()), now);
        let p = ff.packet(0, 1).expect("65534 + 3 wraps to 1");
        assert_eq!((p.seq, p.ts, *p.pt, p.marker), (65_537, 90_000, 102, false));
        assert_eq!(&*p.payload, &[3]);
        assert!(ff.packet(0, 2).unwrap().marker, "the last one");
        assert!(ff.packet(0, 3).is_none(), "past the burst");
        assert!(ff.packet(0, 65_533).is_none(), "before it");
        assert!(ff.packet(1, 1).is_none(), "another stream");
    }

    #[test]
    fn head_and_tail_are_repeated_once_each_time_then_let_go() {
        let now = Instant::now();
        let mut ff = FirstFrame::new(burst(), 0, (10, 0), (96.into(), 102.into()), now);
        assert!(ff.take_due_repeat(now).is_none(), "not at once");
        let t1 = ff.next_deadline();
        let [head, tail] = ff.take_due_repeat(t1).expect("first repeat");
        assert_eq!((head.seq, tail.seq), (10, 14));
        assert!(ff.take_due_repeat(t1).is_none(), "once");
        let t2 = ff.next_deadline();
        assert!(t2 > t1);
        assert!(ff.take_due_repeat(t2).is_some(), "second repeat");
        assert!(ff.alive(t2));
        assert!(!ff.alive(ff.next_deadline()), "then only its end is left");
    }
}
