//! A viewer's media, sealed by us instead of str0m (see `crate::srtp` for why).
//!
//! Once the viewer's DTLS has exported AES-GCM keys, every forwarded packet is written as a
//! plain RTP header plus the shared payload straight into the outbox and sealed there: no
//! str0m send queue, RTX cache, pacer or tick per packet, and no allocation. What str0m did
//! for those streams besides is done here too:
//!
//! - **Retransmissions.** The viewer's NACKs are read from its SRTCP by us;
//!   the engine maps each lost number back to the publisher packet (kept once per
//!   broadcast, `router::Track::recent`) and it is sent again on the negotiated RTX stream
//!   (RFC 4588), or as it was when the viewer has no RTX.
//! - **Keyframe requests.** PLI and FIR are read from the same SRTCP (`feedback.rs`).
//! - **Sender reports.** Counted and scheduled per viewer here, written by `report.rs`.
//!
//! str0m's send streams for a viewer are taken out of its session when the viewer
//! subscribes (their RTX buffers, stats and report timers were the largest part of a
//! viewer's memory), so str0m sends no media or reports on them, and the viewer's RTCP is
//! read here only. When the keys are not AES-GCM, [`hand_to_str0m`] declares the same
//! streams to str0m again and str0m does all of the above itself. str0m runs ICE and DTLS
//! either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::media::{Mid, Pt};
use str0m::rtp::{Extension, VideoOrientation};

use super::consumer::{Consumer, RtpStart};
use super::feedback::{Feedback, for_each_feedback};
use super::first_frame::FirstFrame;
use super::hold::Hold;
use super::outbox::{Outbox, Path};
use super::packet::CachedPacket;
use super::report::{Reports, Sent};
use crate::srtp::capture::Captured;
use crate::srtp::context::{SrtcpReceiver, SrtpSender};

/// Gives a viewer's send streams back to str0m, to seal and repair its media itself (keys
/// that are not AES-GCM). The SSRCs are the ones its answer announced.
pub(crate) fn hand_to_str0m(rtc: &mut Rtc, consumers: &[Consumer]) {
    for c in consumers {
        if rtc.media(c.mid).is_none() {
            continue; // str0m would panic; the mid came from this session's answer
        }
        let mut api = rtc.direct_api();
        let tx = api.declare_stream_tx(c.ssrc, c.rtx.filter(|_| c.kind.is_video()), c.mid, None);
        if c.kind.is_video() {
            tx.set_rtx_cache(STR0M_RTX_PACKETS, STR0M_RTX_AGE, Some(0.15));
        } else {
            tx.set_rtx_cache(1, Duration::from_millis(1), None);
        }
    }
}

/// str0m's NACK cache for a session it seals: about 0.4 s of 2.5 Mb/s video, a couple of
/// round trips on a long path. Payloads are `Arc`s every viewer shares, but each entry costs
/// str0m's packet metadata (300 packets cost ~70 KB more per viewer in the loadgen).
const STR0M_RTX_PACKETS: usize = 128;
const STR0M_RTX_AGE: Duration = Duration::from_millis(1000);

pub(crate) struct Egress {
    srtp: SrtpSender,
    rtcp_in: SrtcpReceiver,
    streams: Vec<OutStream>,
    pending: Vec<Pending>,
    reports: Reports,
    resends: ResendBudget,
    /// The cached keyframe this viewer started on, while it may still need repair.
    first_frame: Option<FirstFrame>,
    /// Video queued behind a start burst's keyframe, for a moment (hold.rs).
    hold: Option<Hold<Pending>>,
}

/// A queued packet: a [`CachedPacket`]'s fields, numbered for the viewer, with the stream
/// index in the padding (32 bytes).
struct Pending {
    seq: u64,
    payload: Arc<[u8]>,
    ts: u32,
    pt: Pt,
    marker: bool,
    stream: u8,
    orientation: Option<VideoOrientation>,
}

/// One of the viewer's send streams (an m-line).
struct OutStream {
    mid: Mid,
    ssrc: u32,
    rtx: Option<Rtx>,
    /// What its sender reports tell.
    sent: Sent,
    /// The id the viewer gave urn:3gpp:video-orientation, the one header extension we
    /// negotiate (src/offer/mod.rs) and so write.
    orientation_id: Option<u8>,
}

/// The stream's RTX (RFC 4588): its SSRC, viewer PT → RTX PT, and its own numbering.
struct Rtx {
    ssrc: u32,
    pts: Vec<(Pt, Pt)>,
    seq: u64,
}

impl Egress {
    /// Our sealing for this viewer, or `None` when its keys are not AES-GCM (str0m keeps
    /// sending then) or a stream is missing.
    pub(crate) fn new(
        keys: &Captured,
        rtc: &mut Rtc,
        consumers: &[Consumer],
        now: Instant,
    ) -> Option<Self> {
        let srtp = SrtpSender::new(keys)?;
        let rtcp_in = SrtcpReceiver::new(keys)?;
        let rtx_pts: Vec<(Pt, Pt)> = rtc
            .codec_config()
            .iter()
            .filter_map(|p| Some((p.pt(), p.resend()?)))
            .collect();
        let mut streams = Vec::with_capacity(consumers.len());
        for c in consumers {
            let video = c.kind.is_video();
            streams.push(OutStream {
                mid: c.mid,
                ssrc: *c.ssrc,
                rtx: c.rtx.filter(|_| video).map(|ssrc| Rtx {
                    ssrc: *ssrc,
                    pts: rtx_pts.clone(),
                    // An RTP stream of its own: a random start too (RFC 3550 §5.1).
                    seq: RtpStart::random(None).seq,
                }),
                sent: Sent::default(),
                orientation_id: rtc
                    .media(c.mid)
                    .filter(|_| video)
                    .and_then(|m| m.remote_extmap().id_of(Extension::VideoOrientation))
                    .filter(|id| (1..=14).contains(id)),
            });
        }
        let cname = super::report::viewer_cname(streams.first().map_or(0, |s| s.ssrc));
        Some(Self {
            srtp,
            rtcp_in,
            streams,
            pending: Vec::new(),
            reports: Reports::new(cname, now),
            resends: ResendBudget::default(),
            first_frame: None,
            hold: None,
        })
    }

    /// Queues a packet for the stream of m-line `mid`, to be sealed by [`flush`](Self::flush).
    /// `wallclock` is when the packet's media was current (for the sender reports).
    pub(crate) fn queue(
        &mut self,
        mid: Mid,
        packet: CachedPacket,
        clock_rate: u32,
        wallclock: Instant,
    ) {
        if let Some(stream) = self.streams.iter().position(|s| s.mid == mid) {
            self.streams[stream]
                .sent
                .queued(packet.ts, clock_rate, wallclock);
            let pending = Pending {
                seq: packet.seq,
                payload: packet.payload,
                ts: packet.ts,
                pt: packet.pt,
                marker: packet.marker,
                stream: stream as u8,
                orientation: packet.orientation,
            };
            let pending = match &mut self.hold {
                Some(hold) => hold.keep(stream as u8, pending),
                None => Some(pending),
            };
            self.pending.extend(pending);
        }
    }

    /// Holds what is queued on `mid` from now on until `until` (hold.rs); what an earlier
    /// hold kept is queued first.
    pub(crate) fn hold(&mut self, mid: Mid, until: Instant) {
        self.release_hold();
        if let Some(stream) = self.streams.iter().position(|s| s.mid == mid) {
            self.hold = Some(Hold::new(stream as u8, until));
        }
    }

    /// Queues what was held, once its time has come. Returns whether it did.
    pub(crate) fn release_due_hold(&mut self, now: Instant) -> bool {
        if self.hold.as_ref().is_some_and(|h| h.until() <= now) {
            self.release_hold();
            return true;
        }
        false
    }

    fn release_hold(&mut self) {
        if let Some(hold) = self.hold.take() {
            self.pending.extend(hold.release());
        }
    }

    /// Seals every queued packet into `out` towards `path`. Returns (datagrams, bytes) and
    /// whether the next deadline changed (the first packet schedules the first report).
    pub(crate) fn flush(&mut self, now: Instant, path: Option<Path>, out: &mut Outbox) -> Flushed {
        let mut flushed = Flushed::default();
        let Some(path) = path else {
            self.pending.clear();
            return flushed;
        };
        let Self {
            srtp,
            streams,
            pending,
            ..
        } = self;
        for p in pending.drain(..) {
            let s = &mut streams[usize::from(p.stream)];
            s.sent.sealed(p.payload.len());
            let header = Header {
                ssrc: s.ssrc,
                seq: p.seq,
                ts: p.ts,
                pt: p.pt,
                marker: p.marker,
                orientation: orientation(s.orientation_id, p.orientation),
            };
            flushed.bytes += seal(srtp, out, path, header, None, &p.payload) as u64;
            flushed.datagrams += 1;
        }
        self.resends.sent(flushed.datagrams);
        if flushed.datagrams > 0 && self.reports.media_sent(now) {
            flushed.rescheduled = true;
        }
        flushed
    }

    /// Reads a viewer SRTCP datagram (decrypted into `scratch`): appends (stream, 16-bit
    /// sequence number) for every packet it reports lost to `lost`, at most
    /// [`MAX_RESENDS_PER_RTCP`], and names a stream it wants a keyframe on.
    pub(crate) fn feedback(
        &self,
        data: &[u8],
        scratch: &mut Vec<u8>,
        lost: &mut Vec<(usize, u16)>,
    ) -> Read {
        let mut read = Read::default();
        let Some(plain) = self.rtcp_in.open(data, scratch) else {
            return read;
        };
        let stream_of = |ssrc| self.streams.iter().position(|s| s.ssrc == ssrc);
        read.nacks = for_each_feedback(plain, |f| match f {
            Feedback::Nack(ssrc, seq) => {
                if lost.len() < MAX_RESENDS_PER_RTCP
                    && let Some(i) = stream_of(ssrc)
                {
                    lost.push((i, seq));
                }
            }
            Feedback::Keyframe(ssrc) => read.keyframe = read.keyframe.or(stream_of(ssrc)),
        });
        read
    }

    /// The m-line of one of this viewer's streams.
    pub(crate) fn mid(&self, stream: usize) -> Option<Mid> {
        self.streams.get(stream).map(|s| s.mid)
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
        let Some(s) = self.streams.get_mut(stream) else {
            return false;
        };
        if !self.resends.take() {
            return false;
        }
        match &mut s.rtx {
            Some(rtx) => {
                let Some(&(_, pt)) = rtx.pts.iter().find(|(main, _)| *main == p.pt) else {
                    return false;
                };
                let header = Header {
                    ssrc: rtx.ssrc,
                    seq: rtx.seq,
                    ts: p.ts,
                    pt,
                    marker: p.marker,
                    orientation: orientation(s.orientation_id, p.orientation),
                };
                rtx.seq += 1;
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
                let header = Header {
                    ssrc: s.ssrc,
                    seq: p.seq,
                    ts: p.ts,
                    pt: p.pt,
                    marker: p.marker,
                    orientation: orientation(s.orientation_id, p.orientation),
                };
                seal(&self.srtp, out, path, header, None, &p.payload);
            }
        }
        true
    }

    /// Packets queued and not yet sealed.
    pub(crate) fn queued(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let first_frame = self.first_frame.as_ref().map(FirstFrame::next_deadline);
        let hold = self.hold.as_ref().map(Hold::until);
        [self.reports.next_deadline(), first_frame, hold]
            .into_iter()
            .flatten()
            .min()
    }

    /// Keeps the cached keyframe just queued on `mid` (numbered from `out`, its PT mapped as
    /// `pt`) so it can be repaired (see `first_frame.rs`).
    pub(crate) fn started_on(
        &mut self,
        mid: Mid,
        packets: Arc<[CachedPacket]>,
        out: (u64, u32),
        pt: (Pt, Pt),
        now: Instant,
    ) {
        if let Some(stream) = self.streams.iter().position(|s| s.mid == mid) {
            self.first_frame = Some(FirstFrame::new(packets, stream, out, pt, now));
        }
    }

    /// The first frame's packet the viewer knows as `seq16` on `stream`, as it was sent.
    pub(crate) fn first_frame_packet(&self, stream: usize, seq16: u16) -> Option<CachedPacket> {
        self.first_frame.as_ref()?.packet(stream, seq16)
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

    /// Sends the sender reports if they are due. Returns whether the deadline moved.
    pub(crate) fn report(&mut self, now: Instant, path: Option<Path>, out: &mut Outbox) -> bool {
        if !self.reports.due(now) {
            return false;
        }
        self.resends.refill();
        let Some(path) = path else { return true };
        let buf = out.bytes();
        let start = buf.len();
        let streams = self.streams.iter().map(|s| (s.ssrc, &s.sent));
        if self.reports.write(buf, now, streams) {
            self.srtp.seal_rtcp(buf, start);
            out.commit(path, start);
        }
        true
    }
}

/// How many packets a viewer may have resent: per report interval, a quarter of what it was
/// sent in the previous one plus a few, so NACKs (honest ones at heavy loss, or a client
/// that NACKs everything) cannot make a viewer cost much more than its stream. str0m capped
/// retransmissions at 15 % of the bytes sent; loss that heavy is past repair anyway.
struct ResendBudget {
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
    fn sent(&mut self, datagrams: u64) {
        self.sent += datagrams;
    }

    fn take(&mut self) -> bool {
        let ok = self.left > 0;
        self.left = self.left.saturating_sub(1);
        ok
    }

    fn refill(&mut self) {
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
}

#[derive(Default)]
pub(crate) struct Flushed {
    pub(crate) datagrams: u64,
    pub(crate) bytes: u64,
    pub(crate) rescheduled: bool,
}

/// The fields of the RTP header we write: no CSRCs, and no extension but the video
/// orientation (the SSRCs are in the SDP answer, so receivers need no MID extension to place
/// them; see src/offer/mod.rs for what is negotiated).
#[derive(Clone, Copy)]
struct Header {
    ssrc: u32,
    /// Extended: the rollover counter above the 16 bits on the wire.
    seq: u64,
    ts: u32,
    pt: Pt,
    marker: bool,
    /// (extension id, CVO byte), when the viewer negotiated it and the packet carries one.
    orientation: Option<(u8, u8)>,
}

fn orientation(id: Option<u8>, value: Option<VideoOrientation>) -> Option<(u8, u8)> {
    Some((id?, value? as u8))
}

/// Writes one RTP packet (with RTX's original sequence number first, if any) into the
/// outbox, seals it in place and queues it. Returns its length.
fn seal(
    srtp: &SrtpSender,
    out: &mut Outbox,
    path: Path,
    h: Header,
    osn: Option<u16>,
    payload: &[u8],
) -> usize {
    let buf = out.bytes();
    let start = buf.len();
    buf.push(if h.orientation.is_some() { 0x90 } else { 0x80 });
    buf.push(u8::from(h.marker) << 7 | (*h.pt & 0x7f));
    buf.extend_from_slice(&(h.seq as u16).to_be_bytes());
    buf.extend_from_slice(&h.ts.to_be_bytes());
    buf.extend_from_slice(&h.ssrc.to_be_bytes());
    if let Some((id, cvo)) = h.orientation {
        // RFC 8285 one-byte header: profile 0xBEDE, one 32-bit word of elements; the
        // element's length field is the length minus one (0 for CVO's single byte).
        buf.extend_from_slice(&[0xBE, 0xDE, 0, 1, id << 4, cvo, 0, 0]);
    }
    let header_len = buf.len() - start;
    if let Some(osn) = osn {
        buf.extend_from_slice(&osn.to_be_bytes());
    }
    buf.extend_from_slice(payload);
    srtp.seal_rtp(buf, start, header_len, h.ssrc, h.seq & SRTP_INDEX_MASK);
    let len = buf.len() - start;
    out.commit(path, start);
    len
}

/// A NACK storm must not turn into a resend storm.
const MAX_RESENDS_PER_RTCP: usize = 64;
/// Packets queued per viewer before they are sealed anyway. A whole keyframe (~70 packets
/// at 2.5 Mb/s) fits, so a burst stays queued (32 bytes a packet, ≤ 4 KB a viewer) and is
/// sealed viewer after viewer within the outbox budget as the io loop sends; at 32, a
/// keyframe sealed 32 packets for every viewer at once (~40 MB of outbox at 1,000 viewers)
/// before the first left.
pub(crate) const MAX_QUEUED: usize = 128;

const SRTP_INDEX_MASK: u64 = (1 << 48) - 1;

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
