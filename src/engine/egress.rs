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
//!
//! This file queues and seals the live media and schedules the reports; the repairs (NACKs,
//! resends, first-frame repeats) are `egress/repair.rs`, the packets as written `egress/wire.rs`,
//! the estimate of the viewer's link from its transport-wide feedback `egress/send_side.rs`.

mod repair;
mod send_side;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::media::{Mid, Pt};
use str0m::rtp::{Extension, VideoOrientation};

use self::repair::ResendBudget;
pub(crate) use self::send_side::Estimate;
use self::send_side::SendSide;
use self::wire::{Header, abs_send_time, orientation, seal};
use super::consumer::{Consumer, RtpStart};
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
    /// The origin of the send times we write (abs-send-time), and the last flush: resends go
    /// out at about that time.
    clock: (Instant, Instant),
    /// The estimate of what the viewer's link carries (ours from its transport-wide
    /// feedback, else its own REMB), and when it came.
    pub(crate) estimate: Option<(u64, Instant)>,
    /// When its transport-wide feedback last gave an estimate: REMB is not followed then.
    pub(crate) estimated_at: Option<Instant>,
    /// Every packet numbered transport-wide, and what the viewer's feedback says of them.
    send_side: SendSide,
    /// When the resend budget was last refilled.
    refilled: Instant,
}

/// A queued packet: a [`CachedPacket`]'s fields, numbered for the viewer, with the stream
/// index in the padding (32 bytes); a probe's copy for the stream's RTX has [`COPY`] set in
/// it too.
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
    /// The id the viewer gave urn:3gpp:video-orientation, a header extension we negotiate
    /// (src/offer/mod.rs) and so write.
    orientation_id: Option<u8>,
    /// The id the viewer gave abs-send-time, the other one.
    abs_send_time_id: Option<u8>,
}

impl OutStream {
    /// The header of a packet of this stream: its SSRC and header extensions, the packet's
    /// own fields.
    fn header(
        &self,
        seq: u64,
        ts: u32,
        pt: Pt,
        marker: bool,
        cvo: Option<VideoOrientation>,
        since_origin: Duration,
    ) -> Header {
        Header {
            ssrc: self.ssrc,
            seq,
            ts,
            pt,
            marker,
            orientation: orientation(self.orientation_id, cvo),
            abs_send_time: abs_send_time(self.abs_send_time_id, since_origin),
            transport_cc: None,
        }
    }
}

/// Bytes a packet takes on the wire besides its payload: RTP header and extensions, SRTP's
/// tag, UDP and IPv4 (what a link's capacity is spent on).
const OVERHEAD: usize = 12 + 12 + 16 + 8 + 20;

/// Marks a [`Pending`] that is a copy of the one before it, for the stream's RTX: a probe's
/// (probe.rs). Streams are numbered far below it (a viewer has an audio and a video one).
const COPY: u8 = 0x80;

/// The stream's RTX (RFC 4588): its SSRC, viewer PT → RTX PT, and its own numbering.
struct Rtx {
    ssrc: u32,
    pts: Vec<(Pt, Pt)>,
    seq: u64,
}

impl Rtx {
    /// The header of the next RTX packet that carries the media packet of header `media`;
    /// `None` for a PT the viewer has no RTX for.
    fn header(&mut self, media: Header) -> Option<Header> {
        let &(_, pt) = self.pts.iter().find(|(main, _)| *main == media.pt)?;
        let seq = self.seq;
        self.seq += 1;
        Some(Header {
            ssrc: self.ssrc,
            seq,
            pt,
            ..media
        })
    }
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
                abs_send_time_id: rtc
                    .media(c.mid)
                    .and_then(|m| m.remote_extmap().id_of(Extension::AbsoluteSendTime))
                    .filter(|id| (1..=14).contains(id)),
            });
        }
        let cname = super::report::viewer_cname(streams.first().map_or(0, |s| s.ssrc));
        // Transport-wide numbers are the session's: one sequence over all its streams.
        let transport_cc = (consumers.iter())
            .find_map(|c| rtc.media(c.mid))
            .and_then(|m| m.remote_extmap().id_of(Extension::TransportSequenceNumber))
            .filter(|id| (1..=14).contains(id));
        Some(Self {
            srtp,
            rtcp_in,
            streams,
            pending: Vec::new(),
            reports: Reports::new(cname, now),
            resends: ResendBudget::default(),
            first_frame: None,
            hold: None,
            clock: (now, now),
            estimate: None,
            estimated_at: None,
            send_side: SendSide::new(transport_cc),
            refilled: now,
        })
    }

    /// Queues a packet for the stream of m-line `mid`, to be sealed by [`flush`](Self::flush).
    /// `wallclock` is when the packet's media was current (for the sender reports). Returns
    /// whether it is the last one queued (not held back, hold.rs).
    pub(crate) fn queue(
        &mut self,
        mid: Mid,
        packet: CachedPacket,
        clock_rate: u32,
        wallclock: Instant,
    ) -> bool {
        let before = self.pending.len();
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
        self.pending.len() > before
    }

    /// Queues `n` copies of the last packet queued for its stream's RTX, when it has one: a
    /// probe (probe.rs).
    pub(crate) fn queue_copies(&mut self, n: u32) {
        let Some(last) = self.pending.last() else {
            return;
        };
        if last.stream & COPY != 0 || self.streams[usize::from(last.stream)].rtx.is_none() {
            return;
        }
        let copy = Pending {
            stream: last.stream | COPY,
            payload: last.payload.clone(),
            ..*last
        };
        for _ in 1..n {
            self.pending.push(Pending {
                payload: copy.payload.clone(),
                ..copy
            });
        }
        self.pending.push(copy);
    }

    /// Holds what is queued on `mid` from now on until `until` (hold.rs); what an earlier
    /// hold kept is queued first.
    pub(crate) fn hold(&mut self, mid: Mid, until: Instant) {
        self.release_hold();
        if let Some(stream) = self.streams.iter().position(|s| s.mid == mid) {
            self.hold = Some(Hold::new(stream as u8, until));
        }
    }

    /// Queues the next of what was held, once its time has come (hold.rs paces it). Returns
    /// whether it did.
    pub(crate) fn release_due_hold(&mut self, now: Instant) -> bool {
        let Some(hold) = self.hold.as_mut().filter(|h| h.until() <= now) else {
            return false;
        };
        if !hold.release_due(now, &mut self.pending) {
            self.hold = None;
        }
        true
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
        self.clock.1 = now;
        let since_origin = now.saturating_duration_since(self.clock.0);
        let Self {
            srtp,
            streams,
            pending,
            send_side,
            ..
        } = self;
        for p in pending.drain(..) {
            let s = &mut streams[usize::from(p.stream & !COPY)];
            let mut header = s.header(p.seq, p.ts, p.pt, p.marker, p.orientation, since_origin);
            header.transport_cc = send_side.sent(since_origin, p.payload.len() + OVERHEAD);
            if p.stream & COPY != 0 {
                let Some(header) = s.rtx.as_mut().and_then(|rtx| rtx.header(header)) else {
                    continue;
                };
                flushed.bytes +=
                    seal(srtp, out, path, header, Some(p.seq as u16), &p.payload) as u64;
                flushed.datagrams += 1;
                flushed.copies += 1;
                continue;
            }
            s.sent.sealed(p.payload.len());
            flushed.bytes += seal(srtp, out, path, header, None, &p.payload) as u64;
            flushed.datagrams += 1;
        }
        self.resends.sent(flushed.datagrams - flushed.copies);
        if flushed.datagrams > 0 && self.reports.media_sent(now) {
            flushed.rescheduled = true;
        }
        flushed
    }

    /// Sender reports four times a second until `until` (a probe reads the round trips).
    /// Returns whether the deadline moved.
    pub(crate) fn quicken_reports(&mut self, now: Instant, until: Instant) -> bool {
        self.reports.quicken(now, until)
    }

    /// The round trip to the viewer, from a receiver report's (LSR, DLSR) read at `now`.
    pub(crate) fn round_trip(&self, now: Instant, report: (u32, u32)) -> Option<Duration> {
        self.reports.round_trip(now, report)
    }

    /// The m-line of one of this viewer's streams.
    pub(crate) fn mid(&self, stream: usize) -> Option<Mid> {
        self.streams.get(stream).map(|s| s.mid)
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

    /// Sends the sender reports if they are due. Returns whether the deadline moved.
    pub(crate) fn report(&mut self, now: Instant, path: Option<Path>, out: &mut Outbox) -> bool {
        if !self.reports.due(now) {
            return false;
        }
        // The resend budget is per second, however often reports go (probes quicken them).
        if now >= self.refilled + RESEND_PERIOD {
            self.resends.refill();
            self.refilled = now;
        }
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

#[derive(Default)]
pub(crate) struct Flushed {
    /// Datagrams sealed, probes' copies included.
    pub(crate) datagrams: u64,
    /// Of which probes' copies.
    pub(crate) copies: u64,
    pub(crate) bytes: u64,
    pub(crate) rescheduled: bool,
}

/// Packets queued per viewer before they are sealed anyway. A whole keyframe (~70 packets
/// at 2.5 Mb/s) fits, so a burst stays queued (32 bytes a packet, ≤ 4 KB a viewer) and is
/// sealed viewer after viewer within the outbox budget as the io loop sends; at 32, a
/// keyframe sealed 32 packets for every viewer at once (~40 MB of outbox at 1,000 viewers)
/// before the first left.
pub(crate) const MAX_QUEUED: usize = 128;

/// The resend budget's period (repair.rs): the regular report interval.
const RESEND_PERIOD: Duration = Duration::from_secs(1);
