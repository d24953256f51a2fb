//! A start burst's GOP held back behind its keyframe for a moment (`egress.rs`).
//!
//! A viewer that starts at the live edge is sent the cached keyframe and every frame since
//! (`gop.rs`). Sent as one burst, a browser decodes the whole GOP before it presents a
//! picture: in a warm Chromium the first picture came 11–19 ms (p50) later than with the
//! keyframe alone, and more on a slow decoder. So the keyframe goes at once and the rest of
//! the video, the GOP and the live frames after it, waits [`HOLD`]: the keyframe is shown as
//! soon as it would be alone, then the picture catches up to the live edge and moves. A
//! browser that is just starting and never presents a lone keyframe (a first visit) shows
//! the newest frame of the rest instead, [`HOLD`] later.
//!
//! What is held then goes [`PACE_PACKETS`] at a time, every [`PACE_GAP`]: a GOP of a large
//! layer is a couple of hundred kilobytes (a move to another layer sends it too), more than
//! a receiver's socket buffer holds if it comes at once (Linux's default is 208 KB, about 90
//! full-size datagrams): Firefox lost packets of such bursts on loopback and NACKed them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long the GOP waits behind its keyframe: time for a browser to decode and present a
/// 1080p keyframe at the next screen refresh.
pub(crate) const HOLD: Duration = Duration::from_millis(40);

/// What is released at once, and how often: ~40 Mb/s of full-size packets, several times any
/// layer's bitrate (the picture catches up with the live edge within a few tenths of a
/// second), in steps a receiver reads well before the next.
const PACE_PACKETS: usize = 16;
const PACE_GAP: Duration = Duration::from_millis(4);

/// What one stream holds back until `until`, in the order it was queued.
pub(crate) struct Hold<P> {
    stream: u8,
    until: Instant,
    held: VecDeque<P>,
}

impl<P> Hold<P> {
    /// Holds what is queued on `stream` from now until `until`.
    pub(crate) fn new(stream: u8, until: Instant) -> Self {
        Self {
            stream,
            until,
            held: VecDeque::new(),
        }
    }

    /// Keeps `packet` if it is on the held stream; gives it back otherwise.
    pub(crate) fn keep(&mut self, stream: u8, packet: P) -> Option<P> {
        if stream == self.stream {
            self.held.push_back(packet);
            None
        } else {
            Some(packet)
        }
    }

    /// When the held packets go.
    pub(crate) fn until(&self) -> Instant {
        self.until
    }

    /// Every held packet, in the order they were queued.
    pub(crate) fn release(self) -> VecDeque<P> {
        self.held
    }

    /// Once its time has come (`until`), the next [`PACE_PACKETS`] held packets, the next
    /// step [`PACE_GAP`] later; whether any are left.
    pub(crate) fn release_due(&mut self, now: Instant, out: &mut Vec<P>) -> bool {
        if now < self.until {
            return true;
        }
        let n = PACE_PACKETS.min(self.held.len());
        out.extend(self.held.drain(..n));
        self.until = now + PACE_GAP;
        !self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_held_stream_is_kept_and_it_is_released_in_order() {
        let now = crate::clock::now();
        let mut hold = Hold::new(1, now + HOLD);
        assert_eq!(hold.keep(1, "a"), None);
        assert_eq!(hold.keep(0, "audio"), Some("audio"));
        assert_eq!(hold.keep(1, "b"), None);
        assert_eq!(hold.until(), now + HOLD);
        assert_eq!(hold.release(), vec!["a", "b"]);
    }

    #[test]
    fn what_is_held_goes_a_few_packets_at_a_time_once_its_time_came() {
        let now = crate::clock::now();
        let mut hold = Hold::new(1, now + HOLD);
        for i in 0..PACE_PACKETS * 2 + 1 {
            assert_eq!(hold.keep(1, i), None);
        }
        let mut out = Vec::new();
        assert!(hold.release_due(now, &mut out));
        assert!(out.is_empty(), "not yet");
        assert!(hold.release_due(now + HOLD, &mut out));
        assert_eq!(out, (0..PACE_PACKETS).collect::<Vec<_>>());
        assert_eq!(hold.until(), now + HOLD + PACE_GAP);
        assert!(hold.release_due(now + HOLD + PACE_GAP, &mut out));
        assert!(!hold.release_due(now + HOLD + PACE_GAP * 2, &mut out));
        assert_eq!(out, (0..PACE_PACKETS * 2 + 1).collect::<Vec<_>>());
    }
}
