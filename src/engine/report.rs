//! What we tell a viewer about the streams we send it: sender reports.
//!
//! Browsers align audio and video with each stream's SR (RTP time ↔ NTP time). One
//! compound SR + SDES for all of a viewer's streams goes out every [`REPORT_INTERVAL`],
//! the first [`FIRST_REPORT_AFTER`] its media starts. Only for viewers whose media we seal
//! ourselves (`egress.rs`, which seals the compound with the viewer's keys); str0m reports
//! on the streams it sends.

use std::time::{Duration, Instant};

/// The CNAME of a viewer's streams, from the SSRC of its first: in the SDES of our sender
/// reports, and written in the viewer's answer (`offer/answer.rs`) to match.
pub fn viewer_cname(first_ssrc: u32) -> String {
    format!("whipcast-{first_ssrc:08x}")
}

/// What one stream has sent, as its SR tells it.
#[derive(Default)]
pub(super) struct Sent {
    clock_rate: u32,
    /// Packets and payload octets sealed (RFC 3550 §6.4.1), not merely queued.
    packets: u32,
    octets: u32,
    /// RTP timestamp and wall-clock time of the newest packet (the highest timestamp, not
    /// the last queued, which can be a late retransmission or a B-frame), for the SR.
    last: Option<(u32, Instant)>,
}

impl Sent {
    /// A packet with RTP timestamp `ts` (at `clock_rate`) was queued; its media was current
    /// at `wallclock`.
    pub(super) fn queued(&mut self, ts: u32, clock_rate: u32, wallclock: Instant) {
        // Timestamps are compared as RFC 3550 serial numbers (they wrap).
        if self
            .last
            .is_none_or(|(last, _)| (ts.wrapping_sub(last) as i32) > 0)
        {
            self.last = Some((ts, wallclock));
        }
        self.clock_rate = clock_rate;
    }

    /// A packet with `payload_len` octets of payload was sealed.
    pub(super) fn sealed(&mut self, payload_len: usize) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
    }
}

/// One viewer's report schedule, NTP clock and CNAME.
pub(super) struct Reports {
    /// When the next report is due; `None` until media has been sent.
    next: Option<Instant>,
    /// The instant our SR NTP clock counts from (see [`ntp_at`]).
    origin: Instant,
    /// Until then, reports every [`QUICK_INTERVAL`]: a probe of the viewer's link reads its
    /// queue from the round trips they give (probe.rs).
    quick_until: Option<Instant>,
    cname: String,
}

impl Reports {
    pub(super) fn new(cname: String, now: Instant) -> Self {
        Self {
            next: None,
            origin: now,
            quick_until: None,
            cname,
        }
    }

    /// The round trip a receiver report read at `now` tells: now, less when we sent the SR
    /// it names (LSR: the middle 32 bits of its NTP time), less how long the receiver held
    /// it (DLSR), in 1/65536 s (RFC 3550 §6.4.1). `None` for one that makes no sense (an
    /// SR of another clock, or more than a minute).
    pub(super) fn round_trip(&self, now: Instant, (lsr, dlsr): (u32, u32)) -> Option<Duration> {
        let middle = (ntp_at(self.origin, now) >> 16) as u32;
        let units = middle.wrapping_sub(lsr).checked_sub(dlsr)?;
        (units < (60 << 16)).then(|| Duration::from_micros((u64::from(units) * 1_000_000) >> 16))
    }

    /// Media was sent at `now`: the first media schedules the first report. Returns whether
    /// the deadline changed.
    pub(super) fn media_sent(&mut self, now: Instant) -> bool {
        if self.next.is_some() {
            return false;
        }
        self.next = Some(now + FIRST_REPORT_AFTER);
        true
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Whether the reports are due at `now`; when they are, the next ones are scheduled.
    pub(super) fn due(&mut self, now: Instant) -> bool {
        if self.next.is_none_or(|t| t > now) {
            return false;
        }
        let quick = self.quick_until.is_some_and(|t| now < t);
        self.next = Some(
            now + if quick {
                QUICK_INTERVAL
            } else {
                REPORT_INTERVAL
            },
        );
        true
    }

    /// Reports every [`QUICK_INTERVAL`] until `until`. Returns whether the deadline moved.
    pub(super) fn quicken(&mut self, now: Instant, until: Instant) -> bool {
        self.quick_until = Some(until);
        match self.next {
            Some(t) if t > now + QUICK_INTERVAL => {
                self.next = Some(now + QUICK_INTERVAL);
                true
            }
            _ => false,
        }
    }

    /// Appends the compound SR + SDES (plain RTCP, to be sealed) for the `(ssrc, sent)`
    /// streams that have sent media. Returns `false`, having written nothing, when none has.
    pub(super) fn write<'a>(
        &self,
        buf: &mut Vec<u8>,
        now: Instant,
        streams: impl Iterator<Item = (u32, &'a Sent)> + Clone,
    ) -> bool {
        let ntp = ntp_at(self.origin, now);
        let mut sources = 0u8;
        for (ssrc, s) in streams.clone() {
            let Some((ts, at)) = s.last else { continue };
            let elapsed = now.saturating_duration_since(at);
            let rtp_now = ts.wrapping_add((elapsed.as_secs_f64() * f64::from(s.clock_rate)) as u32);
            rtcp_header(buf, 0, PT_SR, 6);
            buf.extend_from_slice(&ssrc.to_be_bytes());
            buf.extend_from_slice(&ntp.to_be_bytes());
            buf.extend_from_slice(&rtp_now.to_be_bytes());
            buf.extend_from_slice(&s.packets.to_be_bytes());
            buf.extend_from_slice(&s.octets.to_be_bytes());
            sources += 1;
        }
        if sources == 0 {
            return false;
        }
        // SDES: one chunk per reported stream, each its SSRC, the CNAME item, then zero
        // padding to a 32-bit boundary (at least one zero ends the item list).
        let sdes = buf.len();
        rtcp_header(buf, sources, PT_SDES, 0);
        for (ssrc, _) in streams.filter(|(_, s)| s.last.is_some()) {
            buf.extend_from_slice(&ssrc.to_be_bytes());
            buf.push(SDES_CNAME);
            buf.push(self.cname.len() as u8);
            buf.extend_from_slice(self.cname.as_bytes());
            buf.push(0);
            while !(buf.len() - sdes).is_multiple_of(4) {
                buf.push(0);
            }
        }
        let words = ((buf.len() - sdes) / 4 - 1) as u16;
        buf[sdes + 2..sdes + 4].copy_from_slice(&words.to_be_bytes());
        true
    }
}

fn rtcp_header(buf: &mut Vec<u8>, count: u8, pt: u8, words_minus_one: u16) {
    buf.push(0x80 | (count & 0x1f));
    buf.push(pt);
    buf.extend_from_slice(&words_minus_one.to_be_bytes());
}

/// A 64-bit NTP timestamp for `now`: [`NTP_ORIGIN_SECS`] at `origin`, counting on. Only
/// differences between one viewer's reports matter to receivers (A/V alignment, RTT), and
/// the engine never reads the wall clock.
fn ntp_at(origin: Instant, now: Instant) -> u64 {
    let d = now.saturating_duration_since(origin);
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    ((NTP_ORIGIN_SECS + d.as_secs()) << 32) | frac
}

/// 2026-01-01 00:00 UTC in NTP seconds (since 1900).
const NTP_ORIGIN_SECS: u64 = 3_976_214_400;

/// As str0m does for video (RFC 3550 leaves it to the profile); the first report soon
/// after media starts, so browsers can align audio and video from the start.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Reports while a viewer's link is probed: a receiver reports back on each (Firefox about
/// every 200 ms, Chromium with its next feedback), so the round trip, and a probe's queue,
/// is read four times a second instead of once; a probe step a quarter over a 1 Mb/s link
/// is then seen at ~60 ms of queue instead of ~250.
const QUICK_INTERVAL: Duration = Duration::from_millis(250);
const FIRST_REPORT_AFTER: Duration = Duration::from_millis(100);

const PT_SR: u8 = 200;
const PT_SDES: u8 = 202;
const SDES_CNAME: u8 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // any instant will do as the start
    fn sender_reports_count_sealed_packets_and_pair_the_newest_timestamp() {
        use str0m::Rtc;
        use str0m::crypto::dtls::SrtpProfile;
        use str0m::media::{MediaKind, Mid};
        use str0m::net::Protocol;

        use crate::engine::consumer::{Consumer, RtpStart};
        use crate::engine::egress::Egress;
        use crate::engine::outbox::{Outbox, Path};
        use crate::engine::packet::CachedPacket;
        use crate::srtp::SrtcpReceiver;
        use crate::srtp::capture::Captured;

        let t0 = Instant::now();
        let keys = Captured {
            profile: SrtpProfile::AEAD_AES_128_GCM,
            material: (0..56).collect(),
            active: false,
        };
        let mid = Mid::from("0");
        let start = RtpStart { seq: 1, ts: 0 };
        let c = Consumer::new(mid, MediaKind::Video, 7.into(), None, start);
        let mut e = Egress::new(&keys, &mut Rtc::new(t0), &[c], t0).unwrap();
        let mut out = Outbox::default();
        let packet = |seq, ts| CachedPacket {
            seq,
            ts,
            pt: 96.into(),
            marker: false,
            orientation: None,
            payload: vec![0u8; 100].into(),
        };
        // Queued while the viewer had no path: dropped, never sent.
        e.queue(mid, packet(1, 1000), 90_000, t0);
        e.flush(t0, None, &mut out);
        // Sent: a frame, then a late packet of an older frame (an older timestamp).
        let t1 = t0 + Duration::from_millis(10);
        let addr = "127.0.0.1:9".parse().unwrap();
        let path = Path {
            proto: Protocol::Udp,
            source: addr,
            destination: addr,
        };
        e.queue(mid, packet(2, 4000), 90_000, t0);
        e.queue(mid, packet(3, 1000), 90_000, t1);
        e.flush(t1, Some(path), &mut out);
        let at = t1 + FIRST_REPORT_AFTER;
        assert!(e.report(at, Some(path), &mut out));
        for _ in 0..2 {
            out.pop().expect("the two RTP packets sent");
        }
        let sr = out.pop().expect("the report").contents;
        // Opened as the viewer does, with the other half of the keys.
        let rx = SrtcpReceiver::new(&Captured {
            active: true,
            ..keys
        })
        .unwrap();
        let mut scratch = Vec::new();
        let sr = rx.open(sr, &mut scratch).expect("the SR opens");
        let word = |i: usize| u32::from_be_bytes(sr[i..i + 4].try_into().unwrap());
        assert_eq!((sr[1], word(4)), (PT_SR, 7));
        assert_eq!(
            (word(20), word(24)),
            (2, 200),
            "packets and octets sent, not queued"
        );
        // The newest packet (timestamp 4000 at t0), 110 ms on at 90 kHz.
        let rtp = word(16);
        assert!(
            (13_899..=13_900).contains(&rtp),
            "RTP time from the newest timestamp: {rtp}"
        );
    }

    #[test]
    fn a_receiver_report_tells_the_round_trip() {
        let t0 = crate::clock::now();
        let r = Reports::new(String::new(), t0);
        let sent = t0 + Duration::from_secs(3);
        let lsr = (ntp_at(t0, sent) >> 16) as u32;
        // Held 10 ms by the receiver (655/65536 s), read back 60 ms after it was sent.
        let rtt = r
            .round_trip(sent + Duration::from_millis(60), (lsr, 655))
            .unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(50)) < Duration::from_millis(1),
            "{rtt:?}"
        );
        // A report on an SR of another clock says nothing.
        assert_eq!(r.round_trip(sent, (lsr.wrapping_add(1 << 30), 0)), None);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any instant will do as the origin
    fn ntp_time_counts_from_the_origin() {
        let t0 = Instant::now();
        assert_eq!(ntp_at(t0, t0), NTP_ORIGIN_SECS << 32);
        let later = ntp_at(t0, t0 + Duration::from_millis(1500));
        assert_eq!(later >> 32, NTP_ORIGIN_SECS + 1);
        assert_eq!(
            later & 0xffff_ffff,
            1 << 31,
            "half a second is half the fraction"
        );
    }
}
