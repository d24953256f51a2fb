//! What a simulcast viewer loses on its layer (the packets it NACKs), and the layers that lost
//! too much for a while.
//!
//! A browser's estimate (REMB) follows the bitrate a link carries on average. A layer whose
//! average fits can still overfill a shallow queue at each keyframe (an 800 kb/s layer's
//! keyframe every 2 s through a 1 Mb/s link with a fifth of a second of queue): the estimate
//! stays over the layer while the viewer loses packets and freezes at every keyframe. So a
//! viewer that loses more than [`LOSSY_PERCENT`] of its layer's packets over [`WINDOW`] is
//! moved down (layers.rs), and that layer is barred to it for [`BARRED_FOR`], twice as long
//! each time it happens again, so it does not go back up to lose again at once.

use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub(crate) struct LayerLoss {
    /// Since when packets are counted, from the first loss, and on which layer (a loss on
    /// the layer it left does not count against the one it moved to).
    since: Option<Instant>,
    lost: u64,
    on: u8,
    /// When it last moved to another layer: losses for [`AFTER_A_MOVE`] after it are not
    /// counted (a move down leaves the larger layer's queue to drain on its link).
    moved: Option<Instant>,
    /// The largest layer (smallest rank) it may not go to, until when, and how many times
    /// a layer was barred to it.
    barred: Option<(u8, Instant)>,
    bars: u32,
}

impl LayerLoss {
    /// The viewer NACKed `n` packets while it was sent `layer`.
    pub(crate) fn lost(&mut self, now: Instant, n: usize, layer: u8) {
        if self.on != layer {
            (self.since, self.lost, self.on) = (None, 0, layer);
        }
        if self.moved.is_some_and(|t| now < t + AFTER_A_MOVE) {
            return;
        }
        self.since.get_or_insert(now);
        self.lost += n as u64;
    }

    /// Whether, over a window of at least [`WINDOW`] since its first loss, the viewer lost
    /// more than [`LOSSY_PERCENT`] of the `pps` packets a second its layer (`layer`) sends.
    /// Each window is judged once.
    pub(crate) fn lossy(&mut self, now: Instant, pps: u64, layer: u8) -> bool {
        let Some(since) = self.since.filter(|_| self.on == layer) else {
            return false;
        };
        let elapsed = now.saturating_duration_since(since);
        if elapsed < WINDOW {
            return false;
        }
        let sent = pps * elapsed.as_millis() as u64 / 1000;
        let lossy = self.lost >= MIN_LOST && self.lost * 100 > sent * LOSSY_PERCENT;
        (self.since, self.lost) = (None, 0);
        lossy
    }

    /// The viewer moved to another layer at `now`.
    pub(crate) fn moved(&mut self, now: Instant) {
        self.moved = Some(now);
    }

    /// The viewer leaves `layer` for losing on it: it may not go back for a while.
    pub(crate) fn bar(&mut self, now: Instant, layer: u8) {
        let factor = 1u32 << self.bars.min(3);
        self.barred = Some((layer, now + BARRED_FOR * factor));
        self.bars += 1;
    }

    /// The smallest rank (the largest layer) the viewer may be moved up to now.
    pub(crate) fn top(&self, now: Instant) -> u8 {
        match self.barred {
            Some((layer, until)) if now < until => layer.saturating_add(1),
            _ => 0,
        }
    }
}

/// Loss over this share of a layer's packets (percent) moves a viewer down.
const LOSSY_PERCENT: u64 = 5;
/// Fewer lost packets than this are never enough (a few in a short window).
const MIN_LOST: u64 = 10;
/// Losses this long after a move are the layer it left's (its queue draining, what was
/// NACKed before): a 200 ms queue and a round trip or two.
const AFTER_A_MOVE: Duration = Duration::from_secs(1);
/// Loss is judged over at least this long.
const WINDOW: Duration = Duration::from_secs(2);
/// How long a layer left for loss stays barred the first time (then 2, 4, 8 times as long).
/// Short enough that a viewer whose link got better is back within the time a cap takes to
/// lift in the tests (15 s), long enough that it does not lose again every few seconds.
const BARRED_FOR: Duration = Duration::from_secs(10);

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick their own start instant
mod tests {
    use super::*;

    #[test]
    fn a_loss_over_five_percent_of_two_seconds_is_lossy_once() {
        let now = Instant::now();
        let mut l = LayerLoss::default();
        l.lost(now, 12, 0);
        assert!(
            !l.lossy(now + Duration::from_secs(1), 100, 0),
            "not before 2 s"
        );
        // 12 of 200 packets: 6 %.
        assert!(l.lossy(now + WINDOW, 100, 0));
        assert!(!l.lossy(now + WINDOW * 2, 100, 0), "judged once");
        l.lost(now, 9, 0);
        assert!(!l.lossy(now + WINDOW, 10, 0), "under the minimum count");
        l.lost(now, 10, 0);
        assert!(!l.lossy(now + WINDOW, 150, 0), "10 of 300: 3 %");
    }

    #[test]
    fn a_loss_on_the_layer_left_does_not_count_against_the_next() {
        let now = Instant::now();
        let mut l = LayerLoss::default();
        l.lost(now, 40, 0);
        assert!(
            !l.lossy(now + WINDOW, 100, 1),
            "lost on layer 0, judged on 1"
        );
        l.lost(now + WINDOW, 5, 1);
        assert!(
            !l.lossy(now + WINDOW * 2, 100, 1),
            "5 on layer 1: not enough"
        );
        l.lost(now, 40, 0);
        l.lost(now, 15, 1);
        assert!(l.lossy(now + WINDOW, 100, 1), "15 of 200 on layer 1");
        l.moved(now);
        l.lost(now + AFTER_A_MOVE / 2, 40, 1);
        assert!(
            !l.lossy(now + WINDOW, 100, 1),
            "the layer it left's queue draining"
        );
    }

    #[test]
    fn a_barred_layer_opens_again_later_each_time() {
        let now = Instant::now();
        let mut l = LayerLoss::default();
        assert_eq!(l.top(now), 0);
        l.bar(now, 1);
        assert_eq!(l.top(now), 2, "nothing larger than layer 2");
        assert_eq!(l.top(now + BARRED_FOR), 0);
        l.bar(now, 1);
        assert_eq!(l.top(now + BARRED_FOR), 2, "twice as long the second time");
        assert_eq!(l.top(now + BARRED_FOR * 2), 0);
    }
}
