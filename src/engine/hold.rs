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

use std::time::{Duration, Instant};

/// How long the GOP waits behind its keyframe: time for a browser to decode and present a
/// 1080p keyframe at the next screen refresh.
pub(crate) const HOLD: Duration = Duration::from_millis(40);

/// What one stream holds back until `until`, in the order it was queued.
pub(crate) struct Hold<P> {
    stream: u8,
    until: Instant,
    held: Vec<P>,
}

impl<P> Hold<P> {
    /// Holds what is queued on `stream` from now until `until`.
    pub(crate) fn new(stream: u8, until: Instant) -> Self {
        Self {
            stream,
            until,
            held: Vec::new(),
        }
    }

    /// Keeps `packet` if it is on the held stream; gives it back otherwise.
    pub(crate) fn keep(&mut self, stream: u8, packet: P) -> Option<P> {
        if stream == self.stream {
            self.held.push(packet);
            None
        } else {
            Some(packet)
        }
    }

    /// When the held packets go.
    pub(crate) fn until(&self) -> Instant {
        self.until
    }

    /// The held packets, in the order they were queued.
    pub(crate) fn release(self) -> Vec<P> {
        self.held
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
}
