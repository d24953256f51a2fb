//! A recording's one timeline: each track's RTP timestamps mapped onto time since the
//! recording's first packet.
//!
//! Each track is anchored where its first packet arrived, and from there follows its own RTP
//! clock, so the file keeps the publisher's spacing rather than network jitter. A publisher
//! that resumes after a drop (a new epoch: new SSRCs, new timestamp bases) is anchored again
//! at its arrival, which leaves the outage in the file as a gap on the same timeline.
//!
//! Not yet done: aligning tracks by the publisher's sender reports (NTP ↔ RTP) instead of the
//! arrival of each track's first packet; on a LAN the two differ by the network's jitter.

use std::time::Instant;

/// One track's clock.
pub(crate) struct TrackClock {
    rate: u32,
    anchor: Option<Anchor>,
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
        Self { rate, anchor: None }
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
}
