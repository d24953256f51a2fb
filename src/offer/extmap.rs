//! Which header extension id str0m will read transport-wide sequence numbers from.
//!
//! str0m parses every incoming RTP header with its session-wide extension map: ours
//! (`RtcConfig::set_extension_map`) with each extension the offer names moved to the
//! offer's id (`ExtensionMap::remap`, str0m 0.25 `src/rtp/ext.rs`), whether or not the offer
//! negotiated transport-cc. The map itself is not public, so the engine's check in front of
//! str0m (`engine/twcc_guard.rs`) gets the id from here, computed as str0m computes it.

use str0m::change::SdpOffer;
use str0m::rtp::{Extension, ExtensionMap};

/// str0m's map holds ids 1 to 16 (`MAX_ID`).
const MAX_ID: usize = 16;

/// The id `ours` ends up giving transport-cc once str0m has accepted `offer`: for each
/// audio or video section in order, each `a=extmap` moves its extension to the offered id,
/// swapping places with whatever held that id, unless an earlier section already moved (and
/// so locked) that extension elsewhere.
pub(super) fn transport_cc_id(ours: &ExtensionMap, offer: &SdpOffer) -> Option<u8> {
    let mut slots: [Option<Extension>; MAX_ID] = std::array::from_fn(|_| None);
    for (id, ext) in ours.iter() {
        if let Some(slot) = slots.get_mut(usize::from(id).wrapping_sub(1)) {
            *slot = Some(ext.clone());
        }
    }
    let mut locked: Vec<Extension> = Vec::new();
    for line in offer.media_lines.iter().filter(|l| l.typ.is_media()) {
        for (id, ext) in line.extmaps() {
            let Some(new) = usize::from(id).checked_sub(1).filter(|i| *i < MAX_ID) else {
                continue;
            };
            let Some(old) = slots.iter().position(|s| s.as_ref() == Some(ext)) else {
                continue;
            };
            let is_locked = locked.contains(ext);
            if new != old && is_locked {
                continue;
            }
            if !is_locked {
                locked.push(ext.clone());
            }
            slots.swap(old, new);
        }
    }
    let at = slots
        .iter()
        .position(|s| s.as_ref() == Some(&Extension::TransportSequenceNumber))?;
    Some(at as u8 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWCC: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
    const MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
    const ABS: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
    const LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

    /// An offer with an audio and a video section carrying these `a=extmap`s.
    fn offer(audio: &[(u8, &str)], video: &[(u8, &str)]) -> SdpOffer {
        let section = |kind: &str, pt: u8, codec: &str, mid: u8, exts: &[(u8, &str)]| {
            let mut s = format!(
                "m={kind} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
                 a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
                 a=fingerprint:sha-256 {fp}\r\na=setup:actpass\r\na=mid:{mid}\r\n",
                fp = ["AA"; 32].join(":"),
            );
            for (id, uri) in exts {
                s += &format!("a=extmap:{id} {uri}\r\n");
            }
            s += &format!("a=sendonly\r\na=rtcp-mux\r\na=rtpmap:{pt} {codec}\r\n");
            s
        };
        let sdp = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n{}{}",
            section("audio", 111, "opus/48000/2", 0, audio),
            section("video", 96, "H264/90000", 1, video),
        );
        SdpOffer::from_sdp_string(&sdp).expect("a valid offer")
    }

    fn id(audio: &[(u8, &str)], video: &[(u8, &str)]) -> Option<u8> {
        transport_cc_id(&ExtensionMap::standard(), &offer(audio, video))
    }

    #[test]
    fn the_offered_id_when_the_offer_maps_it() {
        // Chromium: 3, as in str0m's own map.
        assert_eq!(
            id(&[(1, LEVEL), (3, TWCC)], &[(2, ABS), (3, TWCC)]),
            Some(3)
        );
        // Firefox-like: the MID on 3 and abs-send-time on 4 move transport-cc out of the
        // way before its own line puts it on 7.
        assert_eq!(id(&[(3, MID)], &[(3, MID), (4, ABS), (7, TWCC)]), Some(7));
    }

    #[test]
    fn the_first_section_wins_when_two_disagree() {
        assert_eq!(id(&[(5, TWCC)], &[(7, TWCC)]), Some(5));
    }

    #[test]
    fn an_offer_without_it_still_leaves_it_somewhere() {
        // OBS maps no extension: str0m keeps reading transport-cc on 3.
        assert_eq!(id(&[], &[]), Some(3));
        // An offer that puts abs-send-time on 3 swaps transport-cc onto abs-send-time's 2.
        assert_eq!(id(&[], &[(3, ABS)]), Some(2));
    }

    #[test]
    fn a_map_without_it_reads_none() {
        let mut viewer = ExtensionMap::empty();
        viewer.set(2, Extension::AbsoluteSendTime);
        assert_eq!(transport_cc_id(&viewer, &offer(&[], &[(3, TWCC)])), None);
    }
}
