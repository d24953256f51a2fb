//! Probing a viewer's link for a larger simulcast layer.
//!
//! A viewer's estimate (REMB, computed by the browser from what it receives) cannot say that
//! its link would carry more than it is sent: Chromium's and Firefox's receive-side
//! estimator never rises above 1.5 times the rate that arrives, and rises about 8 % a second
//! at most. A viewer on the 800 kb/s layer is told at most ~1.2 Mb/s however fast its link,
//! and would never reach the 2.5 Mb/s layer. So while its estimate sits near that ceiling
//! ([`PINNED_PERCENT`] of its layer or more: nothing it receives is queueing), whipcast
//! sends it more: RTX copies of the packets it is sent anyway (RFC 4588; the browser drops
//! them as duplicates), in steps of a quarter more ([`STEP`]) up to the next layer's bitrate
//! with headroom.
//!
//! - A link that cannot carry a step queues it: the round trip to the viewer (from its
//!   receiver reports on our sender reports) grows by [`QUEUED`] or more. The probe stops
//!   at once, before that queue overflows, and is tried again later ([`BACKOFF_MAX`]).
//!   Should it overflow all the same, the viewer NACKs media packets (more than
//!   [`LOST_PERCENT`] of those sent during the probe), or its estimate falls: it stops then.
//! - A link that carries the last step for [`HOLD`] has shown it carries the larger layer:
//!   the viewer moves up (layers.rs). Its estimate climbs slowly towards that layer's
//!   bitrate afterwards; until it gets there it is taken as the rate the probe proved
//!   ([`Probing::effective`]), unless it falls or the viewer loses packets again.
//!
//! Bounded: at most [`MAX_RATIO`] times what the viewer is sent, only for a viewer whose
//! estimate is pinned, and only on an RTX stream the viewer negotiated (its media stream's
//! numbering is untouched).

use std::time::{Duration, Instant};

/// One viewer's probing state.
#[derive(Debug)]
pub(crate) struct Probing {
    active: Option<Probe>,
    /// After a probe the link carried: the rate it proved.
    proven: Option<Watch>,
    /// No new probe before then.
    not_before: Option<Instant>,
    /// The wait after the next failed probe.
    backoff: Duration,
    /// The round trip to the viewer with nothing queued on the way: the lowest seen, which
    /// rises slowly towards what is seen while no probe runs (a path can get longer).
    base_rtt: Option<Duration>,
}

#[derive(Debug)]
struct Probe {
    /// When the current step began.
    step_since: Instant,
    /// What the viewer is sent of media, the rate of this step and the last step's (all
    /// in bits/s).
    media_bps: u64,
    step_bps: u64,
    to_bps: u64,
    /// Extra bytes to send per byte of media at this step, in 1/256ths.
    extra_256: u64,
    /// Extra bytes owed, in 1/256ths.
    owed: u64,
    watch: Watch,
}

/// What tells a link that is full: its estimate falling, or the viewer losing packets.
#[derive(Debug)]
struct Watch {
    /// The rate being shown (a probe's last step; the rate it proved), and since when.
    bps: u64,
    since: Instant,
    /// The highest estimate seen since it started.
    peak_bps: u64,
    /// Media packets sent, and NACKed, since it started.
    sent: u32,
    lost: u32,
}

impl Watch {
    fn new(now: Instant, bps: u64, estimate: u64) -> Self {
        Self {
            bps,
            since: now,
            peak_bps: estimate,
            sent: 0,
            lost: 0,
        }
    }

    /// Takes an estimate in; whether it fell.
    fn fell(&mut self, estimate: u64) -> bool {
        self.peak_bps = self.peak_bps.max(estimate);
        estimate.saturating_mul(100) < self.peak_bps.saturating_mul(FELL_PERCENT)
    }

    fn lossy(&self) -> bool {
        u64::from(self.lost) > MIN_LOST.max(u64::from(self.sent) * LOST_PERCENT / 100)
    }
}

/// What an estimate says of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No probe, or one still under way.
    Going,
    /// The link is full (the estimate fell, or the viewer lost packets). The probe stopped.
    Full,
    /// The link carried the probe's last step for [`HOLD`]: the viewer can move up. The
    /// probe stopped.
    Carried,
}

impl Default for Probing {
    fn default() -> Self {
        Self {
            active: None,
            proven: None,
            not_before: None,
            backoff: BACKOFF_MIN,
            base_rtt: None,
        }
    }
}

impl Probing {
    pub(crate) fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// How many copies of a media packet of `len` bytes to send with it now; the probe
    /// steps up as its time comes.
    pub(crate) fn copies(&mut self, now: Instant, len: usize) -> u32 {
        if let Some(w) = &mut self.proven {
            w.sent += 1;
        }
        let Some(p) = &mut self.active else {
            return 0;
        };
        p.watch.sent += 1;
        if p.step_bps < p.to_bps && now >= p.step_since + STEP {
            p.step(now);
        }
        let len = (len as u64).max(1) * 256;
        p.owed += len / 256 * p.extra_256;
        let n = (p.owed / len).min(u64::from(MAX_COPIES));
        p.owed -= n * len;
        n as u32
    }

    /// A round trip to the viewer was measured (a receiver report): one [`QUEUED`] longer
    /// than the link's own means what it is sent queues on the way, so a probe stops and a
    /// rate proved before is forgotten. Returns whether a probe stopped.
    pub(crate) fn round_trip(&mut self, now: Instant, rtt: Duration) -> bool {
        let base = *self.base_rtt.get_or_insert(rtt);
        if rtt <= base {
            self.base_rtt = Some(rtt);
            return false;
        }
        if rtt <= base + QUEUED {
            if self.active.is_none() {
                self.base_rtt = Some(base + (rtt - base) / 16);
            }
            return false;
        }
        self.proven = None;
        if self.active.is_none() {
            return false;
        }
        self.failed(now);
        true
    }

    /// The viewer NACKed `n` media packets: a probe that makes it lose stops (and waits
    /// out a backoff), and a rate proved before is forgotten.
    pub(crate) fn lost(&mut self, now: Instant, n: usize) {
        let n = n.min(u32::MAX as usize) as u32;
        if let Some(w) = &mut self.proven {
            w.lost += n;
            if w.lossy() {
                self.proven = None;
            }
        }
        if let Some(p) = &mut self.active {
            p.watch.lost += n;
            if p.watch.lossy() {
                self.failed(now);
            }
        }
    }

    /// Whether a probe may start: the viewer's estimate `bps` is pinned near what it is sent
    /// (`media_bps`), and no failed probe is being waited out.
    pub(crate) fn may_start(&self, now: Instant, bps: u64, media_bps: u64) -> bool {
        self.active.is_none()
            && media_bps > 0
            && bps.saturating_mul(100) >= media_bps.saturating_mul(PINNED_PERCENT)
            && self.not_before.is_none_or(|t| now >= t)
    }

    /// Starts probing a viewer sent `media_bps` of media, in steps up to `to_bps` in all
    /// (at most [`MAX_RATIO`] times the media).
    pub(crate) fn start(&mut self, now: Instant, bps: u64, media_bps: u64, to_bps: u64) {
        let to_bps = to_bps.min(media_bps.saturating_mul(MAX_RATIO));
        if to_bps <= media_bps {
            return;
        }
        let mut p = Probe {
            step_since: now,
            media_bps,
            step_bps: media_bps,
            to_bps,
            extra_256: 0,
            owed: 0,
            watch: Watch::new(now, to_bps, bps),
        };
        p.step(now);
        self.active = Some(p);
    }

    /// A new estimate: stops a probe when it fell or the probe's last step was carried
    /// long enough to move the viewer up.
    pub(crate) fn estimate(&mut self, now: Instant, bps: u64) -> Verdict {
        if let Some(w) = &mut self.proven
            && (w.fell(bps) || bps >= w.bps)
        {
            self.proven = None;
        }
        let Some(p) = &mut self.active else {
            return Verdict::Going;
        };
        if p.watch.fell(bps) || p.watch.lossy() {
            self.failed(now);
            return Verdict::Full;
        }
        if p.step_bps >= p.to_bps && now >= p.step_since + HOLD {
            let proved = p.to_bps;
            self.reset();
            self.proven = Some(Watch::new(now, proved, bps));
            return Verdict::Carried;
        }
        Verdict::Going
    }

    /// The estimate to choose a layer from: the viewer's own, or what a probe proved while
    /// the estimate climbs towards it (for [`PROVEN_FOR`] at most).
    pub(crate) fn effective(&self, now: Instant, bps: u64) -> u64 {
        (self.proven.as_ref())
            .filter(|w| now < w.since + PROVEN_FOR)
            .map_or(bps, |w| bps.max(w.bps))
    }

    /// No probe, and none waited for: the viewer moved up (the link carries more, probing
    /// can go on from there at once) or chose its layer itself.
    pub(crate) fn reset(&mut self) {
        self.active = None;
        self.proven = None;
        self.not_before = None;
        self.backoff = BACKOFF_MIN;
    }

    /// The link did not carry more (or the viewer moved down): wait before the next probe,
    /// twice as long as last time.
    pub(crate) fn failed(&mut self, now: Instant) {
        self.active = None;
        self.proven = None;
        self.not_before = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

impl Probe {
    /// The next step: a quarter more, up to the last.
    fn step(&mut self, now: Instant) {
        self.step_bps = (self.step_bps * 5 / 4).min(self.to_bps);
        self.step_since = now;
        self.extra_256 = (self.step_bps - self.media_bps) * 256 / self.media_bps.max(1);
    }
}

/// An estimate this far above what the viewer is sent (percent) is at the browser's ceiling
/// (150 % of the rate it receives, plus 10 kb/s), not at its link's: below it, the browser
/// saw packets queue and lowered it, and the link is full. Firefox's sits lower than
/// Chromium's, at 1.2–1.3 times what arrives; 115 leaves room for the layer's bitrate to
/// wander (keyframes) without starting probes on every full link.
pub(crate) const PINNED_PERCENT: u64 = 115;

/// How much longer than the link's own a round trip must be to mean that what the viewer
/// is sent queues on the way: above the jitter of a home link (a few milliseconds, tens on
/// a busy Wi-Fi), and well under the queue of a home router (100–500 ms), so a probe stops
/// long before that queue overflows and drops the viewer's media.
const QUEUED: Duration = Duration::from_millis(40);

/// An estimate that falls under this share (percent) of its highest means the browser saw
/// its packets queue: it only lowers its estimate then, and otherwise only raises it.
const FELL_PERCENT: u64 = 90;

/// Media packets NACKed during a probe, as a share of those sent (percent), and at least
/// this many, that mean the probe overflowed the link's queue. A link that loses a packet
/// now and then (Wi-Fi) is still probed.
const LOST_PERCENT: u64 = 2;
const MIN_LOST: u64 = 3;

/// A probe sends at most this many times what the viewer is sent of media: OBS's and
/// browsers' layers are 2–4 times the bitrate of the next smaller one.
const MAX_RATIO: u64 = 5;

/// Copies of one packet at most.
const MAX_COPIES: u32 = 5;

/// How long each step lasts: about the time between two receiver reports from a browser
/// (Chromium sends one a second), so that each step is seen carried or queued before the
/// next. A step a quarter over what a 1 Mb/s link carries adds ~30 ms to its queue in that
/// second, less than a home router holds (a 200 ms queue takes ~1.5 s to overflow then).
const STEP: Duration = Duration::from_secs(1);

/// How long the last step must be carried, without loss and without the estimate falling,
/// for the viewer to move up.
const HOLD: Duration = Duration::from_secs(1);

/// How long a rate a probe proved stands for an estimate that has not climbed to it: a
/// browser's rises about 8 % a second, from 1.5 times the 800 kb/s layer to the 2.5 Mb/s
/// layer's bitrate in ~10 s. One that has not got there by then is believed.
const PROVEN_FOR: Duration = Duration::from_secs(15);

/// The first wait after a failed probe, and the longest: a viewer whose link is full is
/// probed about every 8 s, and one whose link got better is found within that.
const BACKOFF_MIN: Duration = Duration::from_secs(4);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

#[cfg(test)]
mod tests {
    use super::*;

    fn copies(p: &mut Probing, now: Instant, packets: u32) -> u32 {
        (0..packets).map(|_| p.copies(now, 1000)).sum()
    }

    #[test]
    fn a_probe_steps_up_by_a_quarter_to_the_rate_asked_and_no_more_than_the_bound() {
        let now = crate::clock::now();
        let mut p = Probing::default();
        assert!(p.may_start(now, 1_300_000, 1_000_000));
        p.start(now, 1_300_000, 1_000_000, 2_500_000);
        // 1.25 Mb/s first: one copy every four packets.
        assert_eq!(copies(&mut p, now, 100), 25);
        // Then 1.5625, 1.953125, 2.44140625, then 2.5 Mb/s.
        assert_eq!(copies(&mut p, now + STEP, 100), 56);
        assert_eq!(copies(&mut p, now + STEP * 2, 100), 95);
        assert_eq!(copies(&mut p, now + STEP * 3, 100), 144);
        assert_eq!(copies(&mut p, now + STEP * 4, 100), 150);
        assert_eq!(copies(&mut p, now + STEP * 5, 100), 150);
        let mut p = Probing::default();
        p.start(now, 300_000, 100_000, 10_000_000);
        for i in 0..20 {
            copies(&mut p, now + STEP * i, 1);
        }
        let most = copies(&mut p, now + STEP * 20, 100);
        assert_eq!(most, 400, "five times the media at most");
    }

    #[test]
    fn a_falling_estimate_or_loss_stops_the_probe_and_the_next_waits_longer() {
        let now = crate::clock::now();
        let ms = Duration::from_millis;
        let mut p = Probing::default();
        assert!(
            !p.may_start(now, 1_000_000, 1_000_000),
            "a full link is not probed"
        );
        p.start(now, 1_300_000, 1_000_000, 2_000_000);
        assert_eq!(p.estimate(now + STEP, 1_600_000), Verdict::Going);
        assert_eq!(p.estimate(now + STEP, 1_400_000), Verdict::Full);
        assert!(!p.is_active());
        let later = now + STEP + BACKOFF_MIN;
        assert!(!p.may_start(later - ms(1), 1_300_000, 1_000_000));
        assert!(p.may_start(later, 1_300_000, 1_000_000));
        p.start(later, 1_300_000, 1_000_000, 2_000_000);
        copies(&mut p, later, 100);
        p.lost(later, 3);
        let lossy = p.estimate(later, 1_300_000);
        assert_eq!(lossy, Verdict::Going, "3 of 100: a lossy link");
        p.lost(later, 1);
        assert!(
            !p.is_active(),
            "4 of 100 lost: the probe overflowed the link"
        );
        assert!(!p.may_start(later + BACKOFF_MAX - ms(1), 1_300_000, 1_000_000));
        assert!(p.may_start(later + BACKOFF_MAX, 1_300_000, 1_000_000));
    }

    #[test]
    fn a_round_trip_that_grows_stops_the_probe() {
        let now = crate::clock::now();
        let ms = Duration::from_millis;
        let mut p = Probing::default();
        assert!(!p.round_trip(now, ms(20)));
        assert!(!p.round_trip(now, ms(10)));
        p.start(now, 1_300_000, 1_000_000, 2_000_000);
        assert!(!p.round_trip(now, ms(50)), "jitter");
        assert!(p.is_active());
        assert!(
            p.round_trip(now, ms(51)),
            "queued 41 ms past the link's own"
        );
        assert!(!p.is_active());
    }

    #[test]
    fn a_last_step_carried_long_enough_moves_the_viewer_up() {
        let now = crate::clock::now();
        let mut p = Probing::default();
        p.start(now, 1_300_000, 1_000_000, 1_500_000);
        copies(&mut p, now + STEP, 1); // 1.25 → 1.5 Mb/s, the last step
        let t = now + STEP;
        assert_eq!(p.estimate(t + HOLD / 2, 1_500_000), Verdict::Going);
        assert_eq!(p.estimate(t + HOLD, 1_600_000), Verdict::Carried);
        assert!(!p.is_active());
        assert!(
            p.may_start(t + HOLD, 1_300_000, 1_000_000),
            "and may probe on"
        );
        // The estimate climbs slowly: the rate proved stands for it until it gets there.
        assert_eq!(p.effective(t + HOLD, 1_400_000), 1_500_000);
        let later = t + HOLD + PROVEN_FOR;
        assert_eq!(p.effective(later, 1_400_000), 1_400_000, "for a while");
        assert_eq!(p.estimate(t + HOLD, 1_400_000), Verdict::Going);
        assert_eq!(p.estimate(t + HOLD, 1_200_000), Verdict::Going);
        assert_eq!(p.effective(now, 1_200_000), 1_200_000, "unless it falls");
        let mut p = Probing::default();
        p.start(now, 1_300_000, 1_000_000, 1_250_000);
        assert_eq!(p.estimate(now + HOLD, 1_300_000), Verdict::Carried);
        assert_eq!(p.effective(now, 1_100_000), 1_250_000);
        copies(&mut p, now + HOLD, 100);
        p.lost(now + HOLD, 4);
        assert_eq!(
            p.effective(now, 1_100_000),
            1_100_000,
            "or the viewer loses packets"
        );
    }
}
