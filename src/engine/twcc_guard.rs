//! A publisher's transport-wide sequence numbers, checked before str0m sees them.
//!
//! str0m 0.25 extends each 16-bit transport-wide number (the transport-cc header extension)
//! against the highest it has registered, and while that is below 2^15 a number more than
//! half the space above it counts as one that went back past 0: `extend_u16` wraps it to
//! nearly 2^64, and the next feedback report (`TwccRecvRegister::build_report`) pushes one
//! "missing" entry per 8,192 numbers between the two, until the allocation aborts the
//! process (issue 28, `tests/twcc_underflow.rs`). Any publisher that negotiated transport-cc
//! could send that pair; 0.25 is the newest str0m, so the rule is kept here: a packet whose
//! number str0m would extend below zero never reaches it.
//!
//! That needs a lower bound on str0m's highest registered number, learnt only from packets
//! str0m accepted, so that a forged packet (the header is clear text, and it is read here
//! before anything authenticated it) can neither widen the rule nor make it drop a real one:
//!
//! - each `Event::RtpPacket` is a packet str0m authenticated and registered: its number is
//!   at most str0m's highest. Other packets register without an event (padding, repeated
//!   RTX, probes), so str0m may be ahead of us, which only makes the rule stricter than
//!   str0m needs; a live sender is never a half space ahead of its own last media packet.
//! - before the first such event we know nothing: the first packet with a number is checked
//!   against the peer's SRTP keys here ([`SrtpVerifier`]), and until str0m reports one only
//!   numbers within a quarter space of it pass. In a window narrower than half the space that
//!   does not cross 0, no number is "behind 0" of another, whatever str0m registered.
//! - once str0m's highest is at least 2^15 no number can go below 0 again: the check stops.
//!
//! What a real sender loses: nothing while it counts on from where it started. A sender
//! whose first 16,384 numbers carry no media, or that sends more than 32,768 padding
//! packets in a row before 2^15, would have numbers dropped; one that turns transport-cc on
//! only after its sequence numbers wrapped is never anchored (the first packet is checked
//! with rollover counter 0, as str0m assumes for a new stream).

use crate::srtp::{KeySlot, SrtpVerifier};

/// Half of the 16-bit space: how far str0m lets a number go back before it wraps.
const HALF: u16 = 1 << 15;
/// How far from the authenticated first number the numbers before str0m's first report may
/// be: a quarter space either way, so the window is half the space wide.
const QUARTER: u16 = 1 << 14;

/// One publisher session's check.
pub(crate) struct TwccGuard {
    /// The header extension id str0m reads the number from, `None` when it reads none.
    id: Option<u8>,
    state: State,
    /// Built for the first numbered packet, dropped once one authenticated.
    verifier: Option<Box<SrtpVerifier>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No numbered packet authenticated yet: only one that does passes (and anchors).
    Unanchored,
    /// Anchored on an authenticated number, str0m has reported none: `lo..=lo + HALF - 1`.
    Anchored { lo: u16 },
    /// str0m registered `max` (below [`HALF`]) or more: numbers up to `max + HALF` pass.
    Low { max: u16 },
    /// str0m's highest is at least [`HALF`]: nothing can go below 0 any more.
    Clear,
}

impl TwccGuard {
    /// For a session whose `Rtc` reads transport-wide numbers from header extension `id`.
    pub(crate) fn new(id: Option<u8>) -> Self {
        Self {
            id,
            state: State::Unanchored,
            verifier: None,
        }
    }

    /// Whether the RTP datagram `packet` (still sealed) may go to str0m.
    pub(crate) fn admits(&mut self, packet: &[u8], keys: &KeySlot) -> bool {
        let Some(id) = self.id else {
            return true;
        };
        if self.state == State::Clear {
            return true;
        }
        let Some((seq, header_len)) = transport_wide_seq(packet, id) else {
            return true;
        };
        match self.state {
            State::Clear => true,
            State::Low { max } => seq <= max + HALF,
            State::Anchored { lo } => seq >= lo && seq - lo < HALF,
            State::Unanchored => {
                if !self.authentic(packet, header_len, keys) {
                    return false;
                }
                self.verifier = None;
                self.state = State::Anchored {
                    lo: seq.saturating_sub(QUARTER).min(HALF),
                };
                true
            }
        }
    }

    /// str0m delivered a packet (`Event::RtpPacket`) with this transport-wide number: it
    /// authenticated and registered it.
    pub(crate) fn registered(&mut self, seq: Option<u16>) {
        let Some(seq) = seq else {
            return;
        };
        self.state = match self.state {
            State::Clear => State::Clear,
            _ if seq >= HALF => State::Clear,
            State::Low { max } => State::Low { max: max.max(seq) },
            State::Unanchored | State::Anchored { .. } => State::Low { max: seq },
        };
    }

    /// The packet's tag checks out with rollover counter 0. Without keys str0m has no SRTP
    /// context either and drops the packet anyway.
    fn authentic(&mut self, packet: &[u8], header_len: usize, keys: &KeySlot) -> bool {
        if self.verifier.is_none() {
            self.verifier = keys.get().and_then(SrtpVerifier::new).map(Box::new);
        }
        self.verifier
            .as_ref()
            .is_some_and(|v| v.is_authentic(packet, header_len, 0))
    }
}

/// The transport-wide number str0m would read from `packet`'s header, and the header's
/// length. As str0m 0.25 parses (`RtpHeader::parse`, `ExtensionMap::parse`): one- and
/// two-byte elements, padding bytes skipped, id 15 ends a one-byte list, a truncated element
/// ends the list, an element shorter than 2 bytes is no number, and the last one counts.
fn transport_wide_seq(packet: &[u8], id: u8) -> Option<(u16, usize)> {
    // What str0m takes for RTP (`MultiplexKind`): version 2, payload type not 64–95 (RTCP).
    if packet.len() < 12 || packet[0] >> 6 != 2 || (64..96).contains(&(packet[1] & 0x7f)) {
        return None;
    }
    if packet[0] & 0x10 == 0 {
        return None;
    }
    let at = 12 + 4 * (packet[0] & 0x0f) as usize;
    let ext = packet.get(at..at + 4)?;
    let profile = u16::from_be_bytes([ext[0], ext[1]]);
    let one_byte = match profile {
        0xbede => true,
        p if p & 0xfff0 == 0x1000 => false,
        _ => return None,
    };
    let len = 4 * u16::from_be_bytes([ext[2], ext[3]]) as usize;
    let mut body = packet.get(at + 4..at + 4 + len)?;
    let mut seq = None;
    while let Some(&first) = body.first() {
        if first == 0 {
            body = &body[1..];
            continue;
        }
        let (element, n) = if one_byte {
            if first >> 4 == 15 {
                break;
            }
            ((first >> 4), 1 + (first & 0x0f) as usize)
        } else {
            let Some(&n) = body.get(1) else {
                break;
            };
            (first, n as usize)
        };
        let skip = if one_byte { 1 } else { 2 };
        let Some(value) = body.get(skip..skip + n) else {
            break;
        };
        if element == id && n >= 2 {
            seq = Some(u16::from_be_bytes([value[0], value[1]]));
        }
        body = &body[skip + n..];
    }
    Some((seq?, at + 4 + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::SrtpSender;
    use crate::srtp::capture::Captured;
    use str0m::crypto::dtls::SrtpProfile;

    const ID: u8 = 3;
    const SSRC: u32 = 0x0a0b_0c0d;

    /// The server's keys (DTLS server) and a sealer as its peer.
    fn keys() -> (KeySlot, SrtpSender) {
        let server = Captured {
            profile: SrtpProfile::AEAD_AES_128_GCM,
            material: (0..56).collect(),
            active: false,
        };
        let peer = Captured {
            active: true,
            ..server.clone()
        };
        (KeySlot::holding(server), SrtpSender::new(&peer).unwrap())
    }

    /// An RTP packet carrying transport-wide number `twcc` in a one-byte element.
    fn packet(twcc: u16, seq: u16) -> Vec<u8> {
        let mut p = vec![0x90, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1]);
        p.extend_from_slice(&SSRC.to_be_bytes());
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, ID << 4 | 1]);
        p.extend_from_slice(&twcc.to_be_bytes());
        p.extend_from_slice(&[0, 1, 2, 3, 4]);
        p
    }

    fn sealed(tx: &SrtpSender, twcc: u16, seq: u16) -> Vec<u8> {
        let mut p = packet(twcc, seq);
        tx.seal_rtp(&mut p, 0, 20, SSRC, u64::from(seq));
        p
    }

    /// Sealed with made-up keys: what anyone who can reach the publisher's address can send.
    fn forged(twcc: u16, seq: u16) -> Vec<u8> {
        let mut p = packet(twcc, seq);
        p.extend_from_slice(&[0x5a; 16]);
        p
    }

    #[test]
    fn the_number_is_read_as_str0m_reads_it() {
        let p = packet(0x1234, 1);
        assert_eq!(transport_wide_seq(&p, ID), Some((0x1234, 20)));
        assert_eq!(transport_wide_seq(&p, 4), None, "another id");
        // Two-byte form with padding, a short element of the id, then the number.
        let mut two = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0x10, 0, 0, 2];
        two.extend_from_slice(&[0, ID, 1, 9, ID, 2, 0xab, 0xcd]);
        assert_eq!(transport_wide_seq(&two, ID), Some((0xabcd, 24)));
        // Id 15 ends a one-byte list; the last element of the id counts.
        let mut p = packet(7, 1);
        p[15] = 2;
        p.splice(20..20, [ID << 4 | 1, 0, 9, 0xf0, ID << 4 | 1, 0, 8, 0]);
        assert_eq!(transport_wide_seq(&p, ID), Some((9, 24)));
        // An extension longer than the packet is not a header str0m accepts.
        let mut p = packet(7, 1);
        p[15] = 9;
        assert_eq!(transport_wide_seq(&p, ID), None);
        // CSRCs come before the extension.
        let mut p = packet(5, 1);
        p[0] |= 1;
        p.splice(12..12, [0, 0, 0, 9]);
        assert_eq!(transport_wide_seq(&p, ID), Some((5, 24)));
    }

    #[test]
    fn a_number_behind_zero_of_one_str0m_reported_is_refused() {
        let (slot, tx) = keys();
        let mut g = TwccGuard::new(Some(ID));
        assert!(g.admits(&sealed(&tx, 100, 1), &slot));
        g.registered(Some(100));
        // 40,100 is 25,536 behind 100: str0m would extend it past 0.
        assert!(!g.admits(&sealed(&tx, 40_100, 2), &slot));
        assert!(
            g.admits(&sealed(&tx, 32_868, 3), &slot),
            "half the space ahead"
        );
        assert!(!g.admits(&sealed(&tx, 32_869, 3), &slot));
        assert!(g.admits(&sealed(&tx, 99, 4), &slot), "just behind");
        g.registered(Some(20_000));
        assert!(g.admits(&sealed(&tx, 40_100, 5), &slot), "now just ahead");
        g.registered(Some(40_100));
        assert!(
            g.admits(&sealed(&tx, 65_535, 6), &slot),
            "str0m is past 2^15"
        );
        assert_eq!(g.state, State::Clear);
    }

    #[test]
    fn forged_packets_neither_anchor_nor_move_the_bound() {
        let (slot, tx) = keys();
        let mut g = TwccGuard::new(Some(ID));
        // Before anything authenticated, forgeries are refused and change nothing.
        for n in [60_000, 5, 30_000] {
            assert!(!g.admits(&forged(n, 1), &slot));
        }
        assert_eq!(g.state, State::Unanchored);
        // The publisher's own first packet anchors, wherever it starts.
        assert!(g.admits(&sealed(&tx, 50_000, 1), &slot));
        assert_eq!(g.state, State::Anchored { lo: 32_768 });
        assert!(g.admits(&sealed(&tx, 50_001, 2), &slot));
        assert!(!g.admits(&sealed(&tx, 10, 3), &slot), "outside the window");
        // Forgeries in the window pass to str0m (which refuses them) but move nothing.
        assert!(g.admits(&forged(40_000, 3), &slot));
        assert_eq!(g.state, State::Anchored { lo: 32_768 });
        g.registered(Some(50_001));
        assert_eq!(g.state, State::Clear);
    }

    #[test]
    fn a_start_near_zero_anchors_a_window_that_does_not_cross_it() {
        let (slot, tx) = keys();
        let mut g = TwccGuard::new(Some(ID));
        assert!(g.admits(&sealed(&tx, 1, 1), &slot));
        assert_eq!(g.state, State::Anchored { lo: 0 });
        assert!(g.admits(&sealed(&tx, 32_767, 2), &slot));
        assert!(!g.admits(&sealed(&tx, 65_535, 3), &slot), "behind 0");
        g.registered(Some(2));
        assert_eq!(g.state, State::Low { max: 2 });
    }

    #[test]
    fn without_keys_or_an_id_nothing_numbered_is_judged_wrongly() {
        let (_, tx) = keys();
        let mut g = TwccGuard::new(Some(ID));
        assert!(!g.admits(&sealed(&tx, 1, 1), &KeySlot::default()));
        let mut off = TwccGuard::new(None);
        assert!(off.admits(&forged(40_000, 1), &KeySlot::default()));
        // Packets without the element pass whatever the state.
        let mut plain = packet(0, 1);
        plain[16] = 4 << 4 | 1;
        assert!(g.admits(&plain, &KeySlot::default()));
    }
}
