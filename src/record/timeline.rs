//! A recording's one timeline: each track's RTP timestamps mapped onto time since the
//! recording's first packet.
//!
//! Each track is anchored where its first packet arrived, and from there follows its own RTP
//! clock, so the file keeps the publisher's spacing rather than network jitter. A publisher
//! that resumes after a drop (a new epoch: new SSRCs, new timestamp bases) is anchored again
//! at its arrival, which leaves the outage in the file as a gap on the same timeline.
//!
//! Arrival does not line the tracks up: an encoder's video leaves it later than the audio of
//! the same instant. The publisher's sender reports say when each stream's RTP time was
//! current on its one wall clock (NTP), so once they come the tracks are aligned by them: the
//! video's first report in an epoch fixes the offset from the publisher's clock to the
//! timeline (video keeps its anchor: moving it could drop frames that later ones depend on),
//! and the audio is re-anchored once at its own first report to where that offset puts it.
//! Audio that comes before the reports (about the first second) stays placed by arrival.

use std::time::{Instant, SystemTime};

use super::Report;

/// A report that would move a track further than this is not followed (a publisher whose
/// streams' clocks disagree): the track stays placed by arrival.
const MAX_SHIFT_NS: i128 = 2_000_000_000;

/// Which of a recording's tracks a packet is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Track {
    Video,
    Audio,
}

/// Both tracks' clocks and, per publisher epoch, the publisher's wall clock on the timeline.
pub(crate) struct Timeline {
    origin: Instant,
    video: TrackClock,
    audio: TrackClock,
    /// `(epoch, offset)`: timeline ns = the publisher's NTP ns + offset, in that epoch.
    sync: Option<(u32, i128)>,
}

impl Timeline {
    pub(crate) fn new(origin: Instant, video_rate: u32, audio_rate: u32) -> Self {
        Self {
            origin,
            video: TrackClock::new(video_rate),
            audio: TrackClock::new(audio_rate),
            sync: None,
        }
    }

    /// The time of a packet in ticks of its track's rate on the timeline.
    pub(crate) fn time(
        &mut self,
        track: Track,
        epoch: u32,
        ts: u32,
        arrival: Instant,
        report: Option<Report>,
    ) -> i64 {
        let video_in_epoch = self.video.epoch() == Some(epoch);
        let clock = match track {
            Track::Video => &mut self.video,
            Track::Audio => &mut self.audio,
        };
        let t = clock.time(self.origin, epoch, ts, arrival);
        let Some(report) = report else {
            return t;
        };
        if clock.synced == Some(epoch) {
            return t;
        }
        let rate = i128::from(clock.rate);
        let Some(ntp) = ntp_ns(ts, report, clock.rate) else {
            return t;
        };
        let t_ns = i128::from(t) * 1_000_000_000 / rate;
        match self.sync {
            Some((e, offset)) if e == epoch => {
                clock.synced = Some(epoch);
                let aligned_ns = ntp + offset;
                if (aligned_ns - t_ns).abs() > MAX_SHIFT_NS {
                    return t;
                }
                let aligned = (aligned_ns * rate / 1_000_000_000) as i64;
                clock.reanchor(aligned);
                aligned
            }
            // The reference: the video, or the audio of a broadcast without video.
            _ if track == Track::Video || !video_in_epoch => {
                clock.synced = Some(epoch);
                self.sync = Some((epoch, t_ns - ntp));
                t
            }
            _ => t,
        }
    }
}

/// The publisher's wall-clock time (ns since the Unix epoch) of RTP time `ts`, by `report`.
/// RTP times are compared modulo 2^32 (they wrap).
fn ntp_ns(ts: u32, report: Report, rate: u32) -> Option<i128> {
    let ntp = report.ntp.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let ticks = i128::from(ts.wrapping_sub(report.rtp) as i32);
    Some(ntp.as_nanos() as i128 + ticks * 1_000_000_000 / i128::from(rate.max(1)))
}

/// One track's clock.
pub(crate) struct TrackClock {
    rate: u32,
    anchor: Option<Anchor>,
    /// The epoch in which this track has been aligned by a sender report.
    synced: Option<u32>,
}

struct Anchor {
    epoch: u32,
    /// The last timestamp seen, and its extended (unwrapped) value.
    last_ts: u32,
    last_ext: i64,
    /// Extended RTP timestamp of the anchor, and its time on the timeline in ticks.
    rtp: i64,
    at: i64,
}

impl TrackClock {
    pub(crate) fn new(rate: u32) -> Self {
        Self {
            rate,
            anchor: None,
            synced: None,
        }
    }

    /// The publisher epoch the track is anchored in.
    fn epoch(&self) -> Option<u32> {
        self.anchor.as_ref().map(|a| a.epoch)
    }

    /// Moves the anchor so that the last timestamp seen maps to `at`.
    fn reanchor(&mut self, at: i64) {
        if let Some(a) = &mut self.anchor {
            a.rtp = a.last_ext;
            a.at = at;
        }
    }

    /// The time of a packet in ticks of this track's rate since `origin`. Out-of-order packets
    /// can map before earlier ones; the caller decides what to do with them.
    pub(crate) fn time(&mut self, origin: Instant, epoch: u32, ts: u32, arrival: Instant) -> i64 {
        match &mut self.anchor {
            Some(a) if a.epoch == epoch => {
                let ext = a.last_ext + i64::from(ts.wrapping_sub(a.last_ts) as i32);
                a.last_ts = ts;
                a.last_ext = ext;
                a.at + (ext - a.rtp)
            }
            previous => {
                let since = arrival.saturating_duration_since(origin);
                let mut at = (since.as_micros() as i64) * i64::from(self.rate) / 1_000_000;
                if let Some(p) = previous {
                    // A resumed publisher never maps before what was already recorded.
                    at = at.max(p.at + (p.last_ext - p.rtp) + 1);
                }
                *previous = Some(Anchor {
                    epoch,
                    last_ts: ts,
                    last_ext: 0,
                    rtp: 0,
                    at,
                });
                at
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_follow_the_rtp_clock_across_the_wrap_and_resume_with_a_gap() {
        let origin = crate::clock::now();
        let mut c = TrackClock::new(90_000);
        let t0 = c.time(
            origin,
            0,
            u32::MAX - 1499,
            origin + Duration::from_millis(100),
        );
        assert_eq!(t0, 9_000);
        // 3000 ticks later, across the 32-bit wrap, whatever the arrival.
        assert_eq!(c.time(origin, 0, 1500, origin), 12_000);
        // A new publisher 10 s in: anchored at its arrival.
        let t = c.time(origin, 1, 77, origin + Duration::from_secs(10));
        assert_eq!(t, 900_000);
        assert_eq!(c.time(origin, 1, 3077, origin), 903_000);
    }

    /// Instant `n` (of 20 ms) as audio RTP time (48 kHz) and video RTP time (90 kHz), from
    /// different random bases, and a report for each stream saying so.
    fn at(n: u64) -> (u32, u32) {
        (7_000 + n as u32 * 960, 900_000_000 + n as u32 * 1800)
    }

    fn reports(t0: SystemTime) -> (Report, Report) {
        let (a, v) = at(0);
        (Report { ntp: t0, rtp: a }, Report { ntp: t0, rtp: v })
    }

    #[test]
    fn sender_reports_align_audio_with_video_that_left_the_publisher_150_ms_later() {
        let origin = crate::clock::now();
        let ms = |n: u64| Duration::from_millis(n);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (ra, rv) = reports(t0);
        let mut tl = Timeline::new(origin, 90_000, 48_000);
        let late = ms(150);
        // Before any report: placed by arrival, the video 150 ms behind.
        let (a, v) = at(0);
        let ta = tl.time(Track::Audio, 0, a, origin, None);
        let tv = tl.time(Track::Video, 0, v, origin + late, None);
        assert_eq!((ta, tv), (0, 13_500));
        // Reports from instant 50 (1 s) on: the video sets the offset, the audio follows.
        let (a, v) = at(50);
        let tv = tl.time(Track::Video, 0, v, origin + ms(1000) + late, Some(rv));
        let ta = tl.time(Track::Audio, 0, a, origin + ms(1000), Some(ra));
        let (sv, sa) = (tv * 1_000_000 / 90_000, ta * 1_000_000 / 48_000);
        assert_eq!(sv, 1_150_000, "video keeps its anchor");
        assert_eq!(sa, sv, "the same instant, the same time");
        // And on, by their RTP clocks.
        let (a, v) = at(100);
        let tv = tl.time(Track::Video, 0, v, origin, Some(rv));
        let ta = tl.time(Track::Audio, 0, a, origin, Some(ra));
        assert_eq!(tv * 1_000_000 / 90_000, ta * 1_000_000 / 48_000);
    }

    #[test]
    fn a_resume_is_aligned_again_by_its_own_reports_after_a_gap() {
        let origin = crate::clock::now();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (ra, rv) = reports(t0);
        let mut tl = Timeline::new(origin, 90_000, 48_000);
        let (a, v) = at(0);
        tl.time(Track::Video, 0, v, origin, Some(rv));
        tl.time(Track::Audio, 0, a, origin, Some(ra));
        // Epoch 1, 10 s later, its clocks from other bases; video 80 ms behind its audio.
        let later = origin + Duration::from_secs(10);
        let t1 = t0 + Duration::from_secs(3600);
        let (ra1, rv1) = (Report { ntp: t1, rtp: 5 }, Report { ntp: t1, rtp: 11 });
        let tv = tl.time(
            Track::Video,
            1,
            11,
            later + Duration::from_millis(80),
            Some(rv1),
        );
        let ta = tl.time(Track::Audio, 1, 5, later, Some(ra1));
        assert_eq!(tv, 900_000 + 7_200, "a gap, then placed by its arrival");
        assert_eq!(ta * 1_000_000 / 48_000, tv * 1_000_000 / 90_000);
    }

    #[test]
    fn a_report_that_would_move_the_audio_by_seconds_is_not_followed() {
        let origin = crate::clock::now();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (ra, rv) = reports(t0);
        let bogus = Report {
            ntp: t0 + Duration::from_secs(30),
            ..ra
        };
        let mut tl = Timeline::new(origin, 90_000, 48_000);
        let (a, v) = at(0);
        tl.time(Track::Video, 0, v, origin, Some(rv));
        assert_eq!(tl.time(Track::Audio, 0, a, origin, Some(bogus)), 0);
    }
}
