//! RTCP BYE from a publisher is a hang-up (RFC 3550 §6.6), as DTLS close_notify is
//! (teardown.rs). str0m parses BYE but acts on nothing in it, so the engine opens the
//! publisher's SRTCP itself, with the session's own keys (srtp/), and reads the BYE packets.
//! GStreamer's `rtpsession` sends BYE for each of its sources when its pipeline stops; a
//! browser sends it when its PeerConnection closes.
//!
//! The session ends once BYE has named every SSRC the publisher sent media on: a BYE for one
//! track that stops is not the end of the broadcast. Only RTCP that authenticates counts, so
//! nobody but the publisher can say goodbye for it.

use str0m::rtp::Ssrc;
use tracing::trace;

use super::Engine;
use super::key::PeerKey;
use super::peer::{Role, live};
use crate::srtp::SrtcpReceiver;

/// What a publisher has said goodbye for so far.
#[derive(Default)]
pub(crate) struct Goodbye {
    /// Opens the publisher's SRTCP; made when the first RTCP after DTLS arrives.
    rtcp_in: Option<SrtcpReceiver>,
    /// SSRCs named in its BYE packets (bounded like the ingest's SSRCs).
    said: Vec<Ssrc>,
}

impl Engine {
    /// Whether `data`, an SRTCP datagram from publisher `key`, completes its goodbye: every
    /// SSRC it sent media on has now been named in a BYE.
    pub(super) fn said_goodbye(&mut self, key: PeerKey, data: &[u8]) -> bool {
        let Some(peer) = live(&mut self.peers, key) else {
            return false;
        };
        let Role::Publisher(ingest) = &mut peer.role else {
            return false;
        };
        let goodbye = &mut ingest.goodbye;
        if goodbye.rtcp_in.is_none() {
            goodbye.rtcp_in = peer.keys.get().and_then(SrtcpReceiver::new);
        }
        let Some(rx) = &goodbye.rtcp_in else {
            return false;
        };
        let mut scratch = std::mem::take(&mut self.scratch_rtcp);
        let mut any = false;
        let opened = rx.open(data, &mut scratch);
        trace!(peer = %key, len = data.len(), opened = opened.is_some(), "publisher rtcp");
        if let Some(plain) = opened {
            for_each_bye(plain, |ssrc| {
                any = true;
                let ssrc = Ssrc::from(ssrc);
                if !goodbye.said.contains(&ssrc) && goodbye.said.len() < MAX_SAID {
                    goodbye.said.push(ssrc);
                }
            });
        }
        self.scratch_rtcp = scratch;
        any && ingest
            .media_ssrcs()
            .all(|s| ingest.goodbye.said.contains(&s))
    }
}

/// Calls `f` with each SSRC the BYE packets of a compound RTCP packet name. Malformed input
/// ends the walk.
fn for_each_bye(mut rtcp: &[u8], mut f: impl FnMut(u32)) {
    while rtcp.len() >= 4 {
        let len = (usize::from(u16::from_be_bytes([rtcp[2], rtcp[3]])) + 1) * 4;
        if len > rtcp.len() || rtcp[0] >> 6 != 2 {
            return;
        }
        let (packet, rest) = rtcp.split_at(len);
        rtcp = rest;
        if packet[1] != PT_BYE {
            continue;
        }
        let count = usize::from(packet[0] & 0x1f);
        for ssrc in packet[4..].chunks_exact(4).take(count) {
            f(u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]));
        }
    }
}

const PT_BYE: u8 = 203;
/// As many as an ingest keeps SSRCs (peer.rs), so a peer cannot grow it.
const MAX_SAID: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bye_packets_name_their_sources_and_other_rtcp_is_skipped() {
        // An RR from SSRC 1, then a BYE for 7 and 9 with a reason.
        let mut rtcp = vec![0x80, 201, 0, 1, 0, 0, 0, 1];
        rtcp.extend_from_slice(&[0x82, 203, 0, 3, 0, 0, 0, 7, 0, 0, 0, 9, 1, b'x', 0, 0]);
        let mut named = Vec::new();
        for_each_bye(&rtcp, |s| named.push(s));
        assert_eq!(named, [7, 9]);
        // Cut short anywhere: no panic, and never a source that is not there.
        for cut in 0..rtcp.len() {
            let mut some = Vec::new();
            for_each_bye(&rtcp[..cut], |s| some.push(s));
            assert!(some.iter().all(|s| [7, 9].contains(s)));
        }
    }
}
