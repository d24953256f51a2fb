//! Repairs for a viewer we seal for: its SRTCP feedback read, lost packets sent again (on
//! the RTX stream when it negotiated one) within a budget, and the first frame's repeats.

use std::time::Instant;

use super::wire::seal;
use super::{Egress, OVERHEAD};
use crate::engine::feedback::{Feedback, for_each_feedback};
use crate::engine::outbox::{Outbox, Path};
use crate::engine::packet::CachedPacket;

impl Egress {
    /// Reads a viewer SRTCP datagram (decrypted into `scratch`): appends (stream, 16-bit
    /// sequence number) for every packet it reports lost to `lost`, at most
    /// [`MAX_RESENDS_PER_RTCP`], and names a stream it wants a keyframe on.
    pub(crate) fn feedback(
        &mut self,
        data: &[u8],
        scratch: &mut Vec<u8>,
        lost: &mut Vec<(usize, u16)>,
    ) -> Read {
        let mut read = Read::default();
        let Some(plain) = self.rtcp_in.open(data, scratch) else {
            return read;
        };
        let (streams, send_side) = (&self.streams, &mut self.send_side);
        let stream_of = |ssrc| streams.iter().position(|s| s.ssrc == ssrc);
        read.nacks = for_each_feedback(plain, |f| match f {
            Feedback::Nack(ssrc, seq) => {
                if lost.len() < MAX_RESENDS_PER_RTCP
                    && let Some(i) = stream_of(ssrc)
                {
                    lost.push((i, seq));
                }
            }
            Feedback::Keyframe(ssrc) => read.keyframe = read.keyframe.or(stream_of(ssrc)),
            Feedback::Remb(bps) => read.remb = Some(bps),
            Feedback::Report { lsr, dlsr } => read.report = Some((lsr, dlsr)),
            Feedback::TransportWide { count } => send_side.feedback(count),
            Feedback::Arrival { seq, at_us } => send_side.arrived(seq, at_us),
        });
        read.estimate = send_side.estimate();
        read
    }

    /// Sends `p` again on `stream`: over its RTX stream, or as it was when the viewer
    /// negotiated no RTX.
    pub(crate) fn resend(
        &mut self,
        stream: usize,
        p: &CachedPacket,
        path: Path,
        out: &mut Outbox,
    ) -> bool {
        let since_origin = self.clock.1.saturating_duration_since(self.clock.0);
        let Some(s) = self.streams.get_mut(stream) else {
            return false;
        };
        if !self.resends.take() {
            return false;
        }
        let mut header = s.header(p.seq, p.ts, p.pt, p.marker, p.orientation, since_origin);
        header.transport_cc = (self.send_side).sent(since_origin, p.payload.len() + OVERHEAD);
        match &mut s.rtx {
            Some(rtx) => {
                let Some(header) = rtx.header(header) else {
                    return false;
                };
                seal(
                    &self.srtp,
                    out,
                    path,
                    header,
                    Some(p.seq as u16),
                    &p.payload,
                );
            }
            None => {
                seal(&self.srtp, out, path, header, None, &p.payload);
            }
        }
        true
    }

    /// Sends the first frame's first and last packets again when that is due, and lets the
    /// first frame go once its time is over. Returns how many packets were resent.
    pub(crate) fn repair_first_frame(
        &mut self,
        now: Instant,
        path: Option<Path>,
        out: &mut Outbox,
    ) -> u64 {
        let Some(ff) = self.first_frame.as_mut() else {
            return 0;
        };
        if !ff.alive(now) {
            self.first_frame = None;
            return 0;
        }
        let (Some(packets), Some(path)) = (ff.take_due_repeat(now), path) else {
            return 0;
        };
        let stream = ff.stream();
        packets
            .iter()
            .filter(|p| self.resend(stream, p, path, out))
            .count() as u64
    }
}

/// How many packets a viewer may have resent: per report interval, a quarter of what it was
/// sent in the previous one plus a few, so NACKs (honest ones at heavy loss, or a client
/// that NACKs everything) cannot make a viewer cost much more than its stream. str0m capped
/// retransmissions at 15 % of the bytes sent; loss that heavy is past repair anyway.
pub(super) struct ResendBudget {
    sent: u64,
    left: u64,
}

impl Default for ResendBudget {
    fn default() -> Self {
        Self {
            sent: 0,
            left: RESENDS_BASE,
        }
    }
}

impl ResendBudget {
    pub(super) fn sent(&mut self, datagrams: u64) {
        self.sent += datagrams;
    }

    fn take(&mut self) -> bool {
        let ok = self.left > 0;
        self.left = self.left.saturating_sub(1);
        ok
    }

    pub(super) fn refill(&mut self) {
        self.left = RESENDS_BASE + self.sent / 4;
        self.sent = 0;
    }
}

/// Resends every viewer may have per report interval whatever it was sent.
const RESENDS_BASE: u64 = 16;

/// What a viewer's RTCP asked for (see [`Egress::feedback`]).
#[derive(Default)]
pub(crate) struct Read {
    /// NACK messages read.
    pub nacks: u64,
    /// The stream a PLI or FIR names, if any.
    pub keyframe: Option<usize>,
    /// The viewer's estimate of its link (REMB), bits per second.
    pub remb: Option<u64>,
    /// A receiver report's (LSR, DLSR) on our sender reports: see [`Egress::round_trip`].
    pub report: Option<(u32, u32)>,
    /// Our estimate of its link from its transport-wide feedback (send_side.rs).
    pub estimate: Option<super::send_side::Estimate>,
}

/// A NACK storm must not turn into a resend storm.
const MAX_RESENDS_PER_RTCP: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_are_capped_at_a_quarter_of_what_was_sent() {
        let mut b = ResendBudget::default();
        let base = (0..100).filter(|_| b.take()).count() as u64;
        assert_eq!(base, RESENDS_BASE, "a few before anything was sent");
        b.sent(300);
        b.refill();
        let allowed = (0..1000).filter(|_| b.take()).count() as u64;
        assert_eq!(allowed, RESENDS_BASE + 75);
        b.refill();
        assert_eq!(
            (0..1000).filter(|_| b.take()).count() as u64,
            RESENDS_BASE,
            "nothing sent since"
        );
    }
}
