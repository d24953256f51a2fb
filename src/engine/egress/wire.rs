//! The RTP packets we write for a viewer: the header fields, and one packet written into
//! the outbox and sealed in place.

use str0m::media::Pt;
use str0m::rtp::VideoOrientation;

use crate::engine::outbox::{Outbox, Path};
use crate::srtp::context::SrtpSender;

/// The fields of the RTP header we write: no CSRCs, and no extension but the video
/// orientation, the send time and, on a probe's copies, a transport-wide number (the SSRCs
/// are in the SDP answer, so receivers need no MID extension to place them; see
/// src/offer/mod.rs for what is negotiated).
#[derive(Clone, Copy)]
pub(super) struct Header {
    pub(super) ssrc: u32,
    /// Extended: the rollover counter above the 16 bits on the wire.
    pub(super) seq: u64,
    pub(super) ts: u32,
    pub(super) pt: Pt,
    pub(super) marker: bool,
    /// (extension id, CVO byte), when the viewer negotiated it and the packet carries one.
    pub(super) orientation: Option<(u8, u8)>,
    /// (extension id, 24-bit send time), when the viewer negotiated abs-send-time: what its
    /// receive-side estimate (REMB) is computed from.
    pub(super) abs_send_time: Option<(u8, u32)>,
    /// (extension id, transport-wide sequence number): on a probe's copies only, when the
    /// viewer negotiated transport-cc, so that its feedback says when each arrived
    /// (arrivals.rs). Media packets carry none: a browser leaves a packet that has one out of
    /// its own estimate (REMB), which layer choice follows.
    pub(super) transport_cc: Option<(u8, u16)>,
}

/// abs-send-time: seconds in 6.18 fixed point, modulo 64 s; only differences matter, so
/// any fixed origin does.
pub(super) fn abs_send_time(
    id: Option<u8>,
    since_origin: std::time::Duration,
) -> Option<(u8, u32)> {
    let ticks = (since_origin.as_micros() << 18) / 1_000_000;
    Some((id?, (ticks & 0xff_ffff) as u32))
}

pub(super) fn orientation(id: Option<u8>, value: Option<VideoOrientation>) -> Option<(u8, u8)> {
    Some((id?, value? as u8))
}

/// Writes one RTP packet (with RTX's original sequence number first, if any) into the
/// outbox, seals it in place and queues it. Returns its length.
pub(super) fn seal(
    srtp: &SrtpSender,
    out: &mut Outbox,
    path: Path,
    h: Header,
    osn: Option<u16>,
    payload: &[u8],
) -> usize {
    let buf = out.bytes();
    let start = buf.len();
    // RFC 8285 one-byte header elements: id and length minus one, then the value (CVO's one
    // byte, abs-send-time's three, the transport-wide number's two); padded with zeros to
    // whole 32-bit words.
    let mut ext = [0u8; 12];
    let mut n = 0;
    if let Some((id, cvo)) = h.orientation {
        ext[..2].copy_from_slice(&[id << 4, cvo]);
        n = 2;
    }
    if let Some((id, t)) = h.abs_send_time {
        let t = t.to_be_bytes();
        ext[n..n + 4].copy_from_slice(&[id << 4 | 2, t[1], t[2], t[3]]);
        n += 4;
    }
    if let Some((id, seq)) = h.transport_cc {
        let seq = seq.to_be_bytes();
        ext[n..n + 3].copy_from_slice(&[id << 4 | 1, seq[0], seq[1]]);
        n += 3;
    }
    let words = n.div_ceil(4);
    buf.push(if words > 0 { 0x90 } else { 0x80 });
    buf.push(u8::from(h.marker) << 7 | (*h.pt & 0x7f));
    buf.extend_from_slice(&(h.seq as u16).to_be_bytes());
    buf.extend_from_slice(&h.ts.to_be_bytes());
    buf.extend_from_slice(&h.ssrc.to_be_bytes());
    if words > 0 {
        buf.extend_from_slice(&[0xBE, 0xDE, 0, words as u8]);
        buf.extend_from_slice(&ext[..words * 4]);
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

const SRTP_INDEX_MASK: u64 = (1 << 48) - 1;
