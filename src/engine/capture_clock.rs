//! When a publisher's media was current, on our clock: what our sender reports to viewers
//! (report.rs) map each stream's RTP time to.
//!
//! Stamping a packet with its arrival is not enough: a publisher's video leaves it later than
//! the audio of the same instant (encoding and pacing a frame take longer than an Opus
//! packet), and a viewer that lines the two streams up by arrival plays the sound late by
//! that much. The publisher says when its media was current in its own sender reports (RTP
//! time ↔ its NTP time, one clock for all its streams, RFC 3550 §6.4.1), so a packet's
//! instant is the NTP time its stream's latest report gives its RTP time, moved onto our
//! clock by one offset for the whole publisher. That offset is the smallest
//! `arrival − NTP time` seen lately over all its streams: the least delayed stream's transit.
//! One offset keeps the publisher's own alignment between streams; taking it over a window
//! (not for ever) follows a publisher clock that drifts against ours.
//!
//! Until a stream's first report (about a second in), or when a report makes no sense
//! against the others, a packet is stamped with its arrival as before.

use std::time::{Duration, Instant, SystemTime};

use str0m::rtp::rtcp::SenderInfo;

/// How long an offset sample counts towards the minimum (two windows' worth at most).
const WINDOW: Duration = Duration::from_secs(30);
/// How far before its arrival a packet may be put. A report further off than this (a
/// publisher whose streams' clocks disagree) is not followed.
const MAX_BEFORE_ARRIVAL: Duration = Duration::from_secs(1);

/// One publisher's mapping of its streams' RTP times to our clock.
#[derive(Default)]
pub(crate) struct CaptureClock {
    /// The instant the nanosecond counts below start from (the first packet mapped).
    base: Option<Instant>,
    /// The smallest `arrival − NTP time` (ns) in the current window, and in the one before.
    current: Option<i128>,
    previous: Option<i128>,
    window_start: Option<Instant>,
}

impl CaptureClock {
    /// When the media of a packet with RTP timestamp `ts` that arrived at `arrival` was
    /// current, by `report`, the latest sender report of its stream.
    pub(crate) fn instant(
        &mut self,
        arrival: Instant,
        ts: u32,
        report: Option<&SenderInfo>,
    ) -> Instant {
        let Some(report) = report else {
            return arrival;
        };
        let Some(ntp) = ntp_of(ts, report) else {
            return arrival;
        };
        let base = *self.base.get_or_insert(arrival);
        let arrival_ns = signed_nanos(arrival, base);
        let sample = arrival_ns - ntp;
        let max_before = MAX_BEFORE_ARRIVAL.as_nanos() as i128;
        if self.offset().is_some_and(|o| sample < o - max_before) {
            // This stream's reports put it far earlier than the others': not followed.
            return arrival;
        }
        let start = *self.window_start.get_or_insert(arrival);
        if arrival.saturating_duration_since(start) >= WINDOW {
            self.previous = self.current.take();
            self.window_start = Some(arrival);
        }
        self.current = Some(self.current.map_or(sample, |c| c.min(sample)));
        let Some(offset) = self.offset() else {
            return arrival;
        };
        let at = ntp + offset;
        if at > arrival_ns || arrival_ns - at > max_before {
            return arrival;
        }
        let before = Duration::from_nanos((arrival_ns - at) as u64);
        arrival.checked_sub(before).unwrap_or(arrival)
    }

    /// The smallest `arrival − NTP time` over the current and the previous window.
    fn offset(&self) -> Option<i128> {
        match (self.current, self.previous) {
            (Some(c), Some(p)) => Some(c.min(p)),
            (c, p) => c.or(p),
        }
    }
}

/// The publisher's NTP time (ns since the Unix epoch) of RTP timestamp `ts`, by `report`.
/// RTP timestamps are compared modulo 2^32 (they wrap).
fn ntp_of(ts: u32, report: &SenderInfo) -> Option<i128> {
    let rate = i128::from(report.rtp_time.denom());
    if rate == 0 {
        return None;
    }
    let ntp = report
        .ntp_time
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?;
    let ticks = i128::from(ts.wrapping_sub(report.rtp_time.numer() as u32) as i32);
    Some(ntp.as_nanos() as i128 + ticks * 1_000_000_000 / rate)
}

/// `t − base` in nanoseconds, negative when `t` is earlier.
fn signed_nanos(t: Instant, base: Instant) -> i128 {
    match t.checked_duration_since(base) {
        Some(d) => d.as_nanos() as i128,
        None => -(base.duration_since(t).as_nanos() as i128),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::media::{Frequency, MediaTime};
    use str0m::rtp::Ssrc;

    /// A report saying RTP time `rtp` (at 90 kHz) was current at `ntp_ms` after an epoch.
    fn report(rtp: u64, ntp_ms: u64) -> SenderInfo {
        SenderInfo {
            ssrc: Ssrc::from(1),
            ntp_time: SystemTime::UNIX_EPOCH
                + Duration::from_secs(1_800_000_000)
                + Duration::from_millis(ntp_ms),
            rtp_time: MediaTime::new(rtp, Frequency::NINETY_KHZ),
            sender_packet_count: 0,
            sender_octet_count: 0,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn without_a_report_a_packet_is_stamped_with_its_arrival() {
        let t0 = crate::clock::now();
        assert_eq!(CaptureClock::default().instant(t0, 90_000, None), t0);
    }

    #[test]
    fn a_stream_that_arrives_later_is_put_back_to_when_its_report_says() {
        let t0 = crate::clock::now();
        let mut clock = CaptureClock::default();
        // Audio (here also at 90 kHz) of NTP time 1000 ms arrives at t0 + 10 ms; the video of
        // the same instant 40 ms later.
        let audio = report(0, 1000);
        let video = report(500_000, 1000);
        assert_eq!(clock.instant(t0 + ms(10), 0, Some(&audio)), t0 + ms(10));
        assert_eq!(
            clock.instant(t0 + ms(50), 500_000, Some(&video)),
            t0 + ms(10)
        );
        // A frame 100 ms on (9000 ticks) that arrives 45 ms after its audio.
        let at = clock.instant(t0 + ms(155), 509_000, Some(&video));
        assert_eq!(at, t0 + ms(110));
    }

    #[test]
    fn a_less_delayed_stream_lowers_the_offset_for_both() {
        let t0 = crate::clock::now();
        let mut clock = CaptureClock::default();
        let video = report(0, 1000);
        let audio = report(0, 1000);
        assert_eq!(clock.instant(t0 + ms(40), 0, Some(&video)), t0 + ms(40));
        assert_eq!(clock.instant(t0 + ms(12), 0, Some(&audio)), t0 + ms(12));
        assert_eq!(
            clock.instant(t0 + ms(140), 9000, Some(&video)),
            t0 + ms(112)
        );
    }

    #[test]
    fn a_report_far_from_the_others_is_not_followed() {
        let t0 = crate::clock::now();
        let mut clock = CaptureClock::default();
        let audio = report(0, 1000);
        // A video report five seconds behind the audio's clock.
        let video = report(0, 6000);
        clock.instant(t0, 0, Some(&audio));
        assert_eq!(clock.instant(t0 + ms(30), 0, Some(&video)), t0 + ms(30));
        // A later audio packet is still put where the audio reports say.
        assert_eq!(
            clock.instant(t0 + ms(120), 9000, Some(&audio)),
            t0 + ms(100)
        );
    }

    #[test]
    fn the_offset_follows_a_drifting_clock_within_two_windows() {
        let t0 = crate::clock::now();
        let mut clock = CaptureClock::default();
        let r = report(0, 1000);
        clock.instant(t0, 0, Some(&r));
        // The publisher's clock falls 20 ms behind ours: its packets now arrive 20 ms later
        // against its reports. Within the first two windows the old offset still holds...
        let late = |s: u64| t0 + Duration::from_secs(s) + ms(20);
        let ticks = |s: u64| (s * 90_000) as u32;
        let at = clock.instant(late(31), ticks(31), Some(&r));
        assert_eq!(at, t0 + Duration::from_secs(31));
        // ...after them the offset is the new one, and packets are stamped as they arrive.
        clock.instant(late(62), ticks(62), Some(&r));
        let at = clock.instant(late(93), ticks(93), Some(&r));
        assert_eq!(at, late(93));
    }
}
