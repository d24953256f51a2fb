//! Feedback from the viewers whipcast seals for, read from their SRTCP by us: str0m no longer
//! has send streams for them (see `egress.rs`), so it would ignore it.
//!
//! - NACKs: each lost number is mapped back through the viewer's consumer to the publisher
//!   packet (kept once per broadcast in the router's ring) and sealed again for that viewer;
//!   numbers of the cached keyframe the viewer started on are found in its first frame
//!   (`first_frame.rs`).
//! - PLI and FIR: a keyframe request for the broadcast's video, like str0m's
//!   `Event::KeyframeRequest` for everyone else.
//! - Transport-wide feedback (our estimate of the viewer's link, egress/send_side.rs), or
//!   REMB from a viewer that sends none (its own), and receiver reports (the round trip):
//!   the layer it is sent and the probes of its link (layers.rs, probe.rs).

mod transport_wide;

use tracing::{debug, trace};

use super::egress::Estimate;
use super::packet::CachedPacket;
use super::peer::{Peer, Role, live};
use super::{Engine, PeerKey};

impl Engine {
    /// Answers the feedback in a viewer's SRTCP datagram: NACKed packets are sent again, a
    /// keyframe request goes to the broadcast's video.
    pub(super) fn answer_feedback(&mut self, v: PeerKey, data: &[u8]) {
        let mut lost = std::mem::take(&mut self.scratch_lost);
        lost.clear();
        let mut rtcp = std::mem::take(&mut self.scratch_rtcp);
        let mut keyframe = None;
        let mut estimate = None;
        if let Some(Peer {
            broadcast,
            role: Role::Viewer(consumers),
            egress: Some(egress),
            media_path,
            ..
        }) = live(&mut self.peers, v)
        {
            let read = egress.feedback(data, &mut rtcp, &mut lost);
            self.counters.nacks_received += read.nacks;
            if let Some(now) = self.last_now
                && let Some(c) = consumers.iter_mut().find(|c| c.kind.is_video())
            {
                // A probe that fills the viewer's link shows as a longer round trip (its
                // queue), then as loss (probe.rs).
                if let Some(rtt) = read.report.and_then(|r| egress.round_trip(now, r)) {
                    trace!(peer = %v, rtt_ms = rtt.as_millis() as u64, "viewer's round trip");
                    if c.probing.round_trip(now, rtt) {
                        debug!(peer = %v, rtt_ms = rtt.as_millis() as u64, "the probe queued on the viewer's link");
                    }
                }
                if !lost.is_empty() {
                    // What a probe makes it lose stops the probe; what it loses otherwise
                    // counts against its layer (loss.rs).
                    if !c.probing.is_active() {
                        let video = lost.iter().filter(|(s, _)| egress.mid(*s) == Some(c.mid));
                        c.loss.lost(now, video.count(), c.layer);
                    }
                    c.probing.lost(now, lost.len());
                }
            }
            if let (Some(e), Some(now)) = (read.estimate, self.last_now) {
                self.counters.transport_feedbacks += 1;
                trace!(peer = %v, bps = e.bps, queued = e.queued, "our estimate of the viewer's link (transport-wide feedback)");
                (egress.estimate, egress.estimated_at) = (Some((e.bps, now)), Some(now));
                estimate = Some((e, now));
            }
            if let (Some(bps), Some(now)) = (read.remb, self.last_now) {
                self.counters.rembs_received += 1;
                trace!(peer = %v, bps, "viewer's estimate (REMB)");
                // A viewer whose transport-wide feedback gives our estimate is followed by
                // that (a browser's REMB then covers only what carries no number).
                if (egress.estimated_at).is_none_or(|t| now >= t + REMB_AFTER) {
                    egress.estimate = Some((bps, now));
                    let (queued, ours, full_bps) = (false, false, None); // REMB cannot tell
                    let e = Estimate {
                        bps,
                        queued,
                        ours,
                        full_bps,
                    };
                    estimate = Some((e, now));
                }
            }
            keyframe = read.keyframe.and_then(|stream| {
                let mid = egress.mid(stream)?;
                consumers.iter().find(|c| c.mid == mid).map(|c| c.kind)
            });
            let route = self.router.route(*broadcast);
            for &(stream, seq16) in &lost {
                let (Some(route), Some(path)) = (route, *media_path) else {
                    break;
                };
                if let Some(again) = egress.first_frame_packet(stream, seq16) {
                    if egress.resend(stream, &again, path, &mut self.outbox) {
                        self.counters.retransmissions += 1;
                    }
                    continue;
                }
                let Some(consumer) = egress
                    .mid(stream)
                    .and_then(|mid| consumers.iter().find(|c| c.mid == mid))
                else {
                    continue;
                };
                let Some((from, source_seq, seq)) = consumer.source_of(seq16) else {
                    continue;
                };
                let packet = (from.epoch == route.epoch)
                    .then(|| route.layer(consumer.kind, from.layer))
                    .flatten()
                    .and_then(|t| t.recent(source_seq));
                let Some((p, pt)) = packet.and_then(|p| Some((p, consumer.mapped_pt(p.pt)?)))
                else {
                    continue;
                };
                let again = CachedPacket {
                    seq,
                    ts: consumer.ts_out(p.ts),
                    pt,
                    marker: p.marker,
                    orientation: p.orientation,
                    payload: p.payload.clone(),
                };
                if egress.resend(stream, &again, path, &mut self.outbox) {
                    self.counters.retransmissions += 1;
                }
            }
        }
        self.scratch_lost = lost;
        self.scratch_rtcp = rtcp;
        if let Some(kind) = keyframe {
            self.keyframe_requested(v, kind);
        }
        if let Some((e, now)) = estimate {
            self.follow_estimate(now, v, e);
            self.quicken_reports_while_probing(now, v);
            self.track_slow(now, v, e.bps);
        }
    }
}

/// How long after our last estimate from a viewer's transport-wide feedback its REMB is
/// followed again (a viewer that stopped sending that feedback).
const REMB_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// What one RTCP packet of a compound asks of us.
#[derive(Debug, PartialEq)]
pub(super) enum Feedback {
    /// A generic NACK (RFC 4585 §6.2.1): the media SSRC and one lost sequence number.
    Nack(u32, u16),
    /// A PLI (RFC 4585 §6.3.1) or FIR (RFC 5104 §4.3.1) for this media SSRC.
    Keyframe(u32),
    /// REMB (draft-alvestrand-rmcat-remb): the receiver's estimate of its link, bits/s.
    Remb(u64),
    /// A receiver report block (RFC 3550 §6.4.1) on one of our SR: the middle 32 bits of
    /// that SR's NTP time (LSR) and how long the receiver held it (DLSR, 1/65536 s): the
    /// round trip, and so the queue on the way, is read from them.
    Report { lsr: u32, dlsr: u32 },
    /// A transport-wide feedback packet (RTPFB FMT 15) on `count` packets begins; an
    /// [`Feedback::Arrival`] follows for each that arrived.
    TransportWide { count: u16 },
    /// Transport-wide feedback says the packet numbered `seq` arrived at `at_us` (the
    /// receiver's clock, µs).
    Arrival { seq: u16, at_us: i64 },
}

/// Calls `f` for every lost packet and keyframe request in a compound RTCP packet; returns
/// how many NACK messages it held. Malformed input ends the walk.
pub(super) fn for_each_feedback(mut rtcp: &[u8], mut f: impl FnMut(Feedback)) -> u64 {
    let mut nacks = 0;
    while rtcp.len() >= 4 {
        let len = (usize::from(u16::from_be_bytes([rtcp[2], rtcp[3]])) + 1) * 4;
        if len > rtcp.len() {
            break;
        }
        let (packet, rest) = rtcp.split_at(len);
        rtcp = rest;
        if packet.len() < 12 {
            continue;
        }
        let media = be32(&packet[8..12]);
        match (packet[1], packet[0] & 0x1f) {
            (PT_RTPFB, FMT_NACK) => {
                nacks += 1;
                for fci in packet[12..].chunks_exact(4) {
                    let pid = u16::from_be_bytes([fci[0], fci[1]]);
                    let blp = u16::from_be_bytes([fci[2], fci[3]]);
                    f(Feedback::Nack(media, pid));
                    for bit in 0..16u16 {
                        if blp & (1 << bit) != 0 {
                            f(Feedback::Nack(media, pid.wrapping_add(bit + 1)));
                        }
                    }
                }
            }
            (PT_PSFB, FMT_PLI) => f(Feedback::Keyframe(media)),
            (PT_RTPFB, FMT_TRANSPORT_WIDE) => transport_wide::read(packet, &mut f),
            (PT_RR, count) => {
                for block in packet[8..].chunks_exact(24).take(usize::from(count)) {
                    let lsr = be32(&block[16..20]);
                    if lsr != 0 {
                        let dlsr = be32(&block[20..24]);
                        f(Feedback::Report { lsr, dlsr });
                    }
                }
            }
            // "REMB", the number of SSRCs, then a 6-bit exponent and 18-bit mantissa.
            (PT_PSFB, FMT_AFB) if packet.len() >= 20 && &packet[12..16] == b"REMB" => {
                let exp = u32::from(packet[17] >> 2);
                let mantissa = u64::from(be32(&[0, packet[17] & 3, packet[18], packet[19]]));
                f(Feedback::Remb(match exp {
                    0..46 => mantissa << exp,
                    _ => u64::MAX,
                }));
            }
            // FIR names its targets in the FCI (SSRC, command number, reserved).
            (PT_PSFB, FMT_FIR) => {
                for fci in packet[12..].chunks_exact(8) {
                    f(Feedback::Keyframe(be32(&fci[..4])));
                }
            }
            _ => {}
        }
    }
    nacks
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

const PT_RR: u8 = 201;
const PT_RTPFB: u8 = 205;
const PT_PSFB: u8 = 206;
const FMT_NACK: u8 = 1;
const FMT_TRANSPORT_WIDE: u8 = 15;
const FMT_PLI: u8 = 1;
const FMT_FIR: u8 = 4;
/// Application layer feedback (RFC 4585 §6.4): REMB is one.
const FMT_AFB: u8 = 15;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nack_bitmasks_name_every_lost_packet() {
        // RR (ignored), then a NACK for SSRC 7: pid 100 with 101 and 116 lost too.
        let mut rtcp = vec![0x80, 201, 0, 1, 0, 0, 0, 1];
        rtcp.extend_from_slice(&[0x81, 205, 0, 3, 0, 0, 0, 1, 0, 0, 0, 7, 0, 100, 0x80, 0x01]);
        let mut lost = Vec::new();
        assert_eq!(for_each_feedback(&rtcp, |f| lost.push(f)), 1);
        let nack = Feedback::Nack;
        assert_eq!(lost, vec![nack(7, 100), nack(7, 101), nack(7, 116)]);
    }

    #[test]
    fn pli_and_fir_are_keyframe_requests_for_their_media() {
        // PLI for SSRC 7, then a FIR whose FCI targets SSRC 9 (the header's media SSRC is 0).
        let mut rtcp = vec![0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 7];
        rtcp.extend_from_slice(&[0x84, 206, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0]);
        rtcp.extend_from_slice(&[0, 0, 0, 9, 3, 0, 0, 0]);
        let mut asks = Vec::new();
        assert_eq!(for_each_feedback(&rtcp, |f| asks.push(f)), 0);
        assert_eq!(asks, vec![Feedback::Keyframe(7), Feedback::Keyframe(9)]);
    }

    #[test]
    fn receiver_reports_give_each_block_on_our_reports() {
        // RR from SSRC 9 with two blocks: one on an SR we sent (LSR, DLSR), one on none yet.
        let mut rtcp = vec![0x82, 201, 0, 13, 0, 0, 0, 9];
        let block = |lsr: u32, dlsr: u32| {
            let mut b = vec![0u8; 16];
            b.extend_from_slice(&lsr.to_be_bytes());
            b.extend_from_slice(&dlsr.to_be_bytes());
            b
        };
        rtcp.extend(block(0x1234_5678, 655));
        rtcp.extend(block(0, 0));
        let mut got = Vec::new();
        for_each_feedback(&rtcp, |f| got.push(f));
        let lsr = 0x1234_5678;
        assert_eq!(got, vec![Feedback::Report { lsr, dlsr: 655 }]);
    }

    #[test]
    fn remb_gives_the_viewers_estimate() {
        // REMB for one SSRC: exponent 3, mantissa 187,500 → 1.5 Mb/s; then an AFB that is
        // not REMB, which is ignored.
        let (exp, mantissa) = (3u32, 187_500u32);
        let br = (exp << 18 | mantissa).to_be_bytes();
        let mut rtcp = vec![0x8f, 206, 0, 5, 0, 0, 0, 1, 0, 0, 0, 0];
        rtcp.extend_from_slice(b"REMB");
        rtcp.extend_from_slice(&[1, br[1], br[2], br[3], 0, 0, 0, 7]);
        rtcp.extend_from_slice(&[0x8f, 206, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0]);
        rtcp.extend_from_slice(b"XXXX");
        let mut got = Vec::new();
        for_each_feedback(&rtcp, |f| got.push(f));
        assert_eq!(got, vec![Feedback::Remb(1_500_000)]);
        // The largest exponent does not overflow.
        let mut huge = vec![0x8f, 206, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0];
        huge.extend_from_slice(b"REMB");
        huge.extend_from_slice(&[0, 0xff, 0xff, 0xff]);
        let mut got = Vec::new();
        for_each_feedback(&huge, |f| got.push(f));
        assert_eq!(got, vec![Feedback::Remb(u64::MAX)]);
    }

    #[test]
    fn truncated_rtcp_is_ignored() {
        let rtcp = [0x81, 205, 0, 9, 0, 0, 0, 1, 0, 0, 0, 7];
        assert_eq!(for_each_feedback(&rtcp, |_| panic!("nothing to read")), 0);
    }
}
