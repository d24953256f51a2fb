//! A measured window, viewer by viewer: what each viewer should have received is what the
//! publisher sent meanwhile (the server forwards every media packet to every viewer), so a
//! viewer that gets nothing, or stops halfway, counts as loss for everything it missed. A
//! viewer's own sequence numbers cannot say that: they start at its first packet and end at
//! its last.
//!
//! Viewers the load generator itself sends away (soak churn) leave the window's count; those
//! that join during it are not in it.
//!
//! Nothing is on its way at either end: the run holds the publisher back ([`hold`]) until what
//! it sent has arrived, then reads the counts. Without that, packets in flight at the start
//! counted as received but not as sent, and those in flight at the end the other way round;
//! the two cancel only when the network holds the same at both ends, and a keyframe's fan-out
//! (~70 packets per viewer, 100–200 ms at 1,000 viewers) in flight at one end only showed as
//! loss that no viewer had (0.1–0.5 % with no packet dropped anywhere).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::stats::Counters;

/// Longer than this without a media packet is a stall: the publisher sends video at 30 fps
/// and audio every 20 ms, so even a slow loopback never leaves a gap near a second.
pub const STALL: Duration = Duration::from_secs(1);

/// How long the publisher is held back at each end of a window for what it sent to arrive:
/// longer than the p99 latency of a server near its limit (100–300 ms at 1,000 viewers on one
/// core), shorter than [`STALL`]. A packet later than this counts as lost.
pub const DRAIN: Duration = Duration::from_millis(500);

/// Holds the publisher back (its `hold` flag) from now until the guard is dropped; returns
/// once [`DRAIN`] has passed.
pub async fn hold(flag: &AtomicBool) -> Held<'_> {
    flag.store(true, Relaxed);
    let held = Held(flag);
    tokio::time::sleep(DRAIN).await;
    held
}

/// The publisher is held back while this lives.
pub struct Held<'a>(&'a AtomicBool);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

/// The counts at the start of a window.
pub struct Window {
    start_us: u64,
    sent: u64,
    viewers: Vec<(Arc<Counters>, u64)>,
}

/// What a window saw.
#[derive(Debug, PartialEq)]
pub struct WindowReport {
    /// Viewers counted (those present at the start that the load generator did not send away).
    pub viewers: usize,
    /// Packets the publisher sent during the window, i.e. expected at each viewer.
    pub sent: u64,
    /// Distinct media packets the counted viewers received during the window.
    pub received: u64,
    /// 1 − received / (viewers × sent), at least 0; NaN when nothing was expected. Exact when
    /// the window was opened and reported while the publisher was held back ([`hold`]).
    pub loss: f64,
    /// Packets received beyond viewers × sent: 0 unless the count is wrong (a packet counted
    /// twice, or one in flight at an end of a window not held). Loss is clamped at 0, so this
    /// is where over-counting shows.
    pub excess: u64,
    /// Viewers that had video before the window, never went silent for [`STALL`] during it,
    /// were still getting packets at its end, and were not ended by the server.
    pub played_whole: usize,
}

impl Window {
    /// Opens a window at `now_us` (µs since the run's epoch) when the publisher has sent
    /// `sent` packets; resets each viewer's longest silence.
    pub fn open<'a>(
        now_us: u64,
        sent: u64,
        viewers: impl IntoIterator<Item = &'a Arc<Counters>>,
    ) -> Self {
        let viewers = viewers
            .into_iter()
            .map(|c| {
                c.longest_silence_us.store(0, Relaxed);
                (Arc::clone(c), c.received.load(Relaxed))
            })
            .collect();
        Self {
            start_us: now_us,
            sent,
            viewers,
        }
    }

    /// The window from its start to `now_us`, when the publisher has sent `sent` packets.
    /// May be called more than once (progress logs).
    pub fn report(&self, now_us: u64, sent: u64) -> WindowReport {
        let expected = sent.saturating_sub(self.sent);
        let stall = STALL.as_micros() as u64;
        let (mut viewers, mut received, mut played_whole) = (0, 0, 0);
        for (c, before) in &self.viewers {
            if c.left.load(Relaxed) {
                continue;
            }
            viewers += 1;
            received += c.received.load(Relaxed).saturating_sub(*before);
            let first = c.first_packet_us.load(Relaxed);
            let last = c.last_rtp_us.load(Relaxed);
            if first > 0
                && first <= self.start_us
                && !c.ended.load(Relaxed)
                && c.longest_silence_us.load(Relaxed) < stall
                && last + stall >= now_us
            {
                played_whole += 1;
            }
        }
        let want = viewers as u64 * expected;
        WindowReport {
            viewers,
            sent: expected,
            received,
            excess: received.saturating_sub(want),
            loss: if want > 0 {
                (1.0 - received as f64 / want as f64).max(0.0)
            } else {
                f64::NAN
            },
            played_whole,
        }
    }
}

/// Viewers among `all` still getting packets at `now_us` (none for [`STALL`]) and not ended.
pub fn playing_at<'a>(now_us: u64, all: impl IntoIterator<Item = &'a Counters>) -> usize {
    let stall = STALL.as_micros() as u64;
    all.into_iter()
        .filter(|c| {
            let last = c.last_rtp_us.load(Relaxed);
            !c.ended.load(Relaxed) && last > 0 && last + stall >= now_us
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A viewer that has played since t=1 s and received `n` packets by then.
    fn viewer(n: u64) -> Arc<Counters> {
        let c = Arc::new(Counters::default());
        c.first_packet_us.store(1_000_000, Relaxed);
        c.last_rtp_us.store(1_000_000, Relaxed);
        c.received.store(n, Relaxed);
        c
    }

    /// Viewer `c` receives `n` more packets, the last at `at_us`, in steps of `gap_us`.
    fn receive(c: &Counters, n: u64, at_us: u64, gap_us: u64) {
        c.received.fetch_add(n, Relaxed);
        c.last_rtp_us.store(at_us, Relaxed);
        c.longest_silence_us.fetch_max(gap_us, Relaxed);
    }

    #[tokio::test]
    async fn a_hold_lasts_until_its_guard_is_dropped() {
        let flag = AtomicBool::new(false);
        let held = hold(&flag).await;
        assert!(flag.load(Relaxed), "held for the drain and after it");
        drop(held);
        assert!(!flag.load(Relaxed), "let go");
    }

    #[test]
    fn silent_and_stalled_viewers_count_as_loss() {
        let (fine, silent, stalled) = (viewer(500), viewer(500), viewer(500));
        let w = Window::open(2_000_000, 10_000, [&fine, &silent, &stalled]);
        // 12 s: the publisher sent 1 000 packets; one viewer got them all, one nothing, one
        // stopped after 400 (at 6 s).
        receive(&fine, 1_000, 12_000_000, 20_000);
        receive(&stalled, 400, 6_000_000, 20_000);
        let r = w.report(12_000_000, 11_000);
        assert_eq!(
            r,
            WindowReport {
                viewers: 3,
                sent: 1_000,
                received: 1_400,
                loss: 1.0 - 1_400.0 / 3_000.0,
                excess: 0,
                played_whole: 1,
            }
        );
        assert_eq!(playing_at(12_000_000, [&*fine, &*silent, &*stalled]), 1);
    }

    #[test]
    fn a_gap_mid_window_is_not_playing_the_whole_window() {
        let (a, b) = (viewer(0), viewer(0));
        let w = Window::open(2_000_000, 0, [&a, &b]);
        receive(&a, 100, 5_000_000, 30_000);
        receive(&b, 100, 5_000_000, 2_500_000);
        let r = w.report(5_000_000, 100);
        assert_eq!((r.loss, r.played_whole), (0.0, 1));
    }

    #[test]
    fn packets_beyond_those_sent_are_excess_not_negative_loss() {
        let c = viewer(0);
        let w = Window::open(2_000_000, 0, [&c]);
        receive(&c, 103, 3_000_000, 20_000);
        let r = w.report(3_000_000, 100);
        assert_eq!((r.loss, r.excess), (0.0, 3));
    }

    #[test]
    fn viewers_sent_away_are_not_loss() {
        let (stays, goes) = (viewer(0), viewer(0));
        let w = Window::open(2_000_000, 0, [&stays, &goes]);
        goes.left.store(true, Relaxed);
        receive(&stays, 100, 3_000_000, 20_000);
        let r = w.report(3_000_000, 100);
        assert_eq!((r.viewers, r.received, r.loss), (1, 100, 0.0));
    }

    #[test]
    fn an_ended_viewer_did_not_play_the_whole_window() {
        let c = viewer(0);
        let w = Window::open(2_000_000, 0, [&c]);
        receive(&c, 100, 3_000_000, 20_000);
        c.ended.store(true, Relaxed);
        assert_eq!(w.report(3_000_000, 100).played_whole, 0);
        assert_eq!(playing_at(3_000_000, [&*c]), 0);
    }
}
