//! The offer/answer rules against real offers (OBS, Chromium) and made-up ones.

use super::*;

const OBS: &str = include_str!("../../tests/fixtures/obs-31-offer.sdp");
const CHROMIUM: &str = include_str!("../../tests/fixtures/chromium-recvonly-offer.sdp");

fn setup() -> SessionSetup {
    SessionSetup::new(vec!["127.0.0.1:8189".parse().unwrap()])
}

pub(super) fn viewer_answer() -> String {
    let setup = setup();
    let now = Instant::now();
    let publisher = setup
        .accept_publisher(now, OBS)
        .expect("OBS offer accepted");
    let viewer = setup
        .accept_viewer(now, CHROMIUM, &publisher.tracks)
        .expect("Chromium offer accepted");
    viewer.answer
}

#[test]
fn viewers_negotiate_only_the_header_extensions_whipcast_sends() {
    let answer = viewer_answer();
    let mut extmaps: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("a=extmap:"))
        .collect();
    extmaps.sort_unstable();
    extmaps.dedup();
    assert_eq!(
        extmaps,
        [
            "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "a=extmap:3 urn:3gpp:video-orientation",
            "a=extmap:4 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        ],
        "the video orientation, the send time (for the viewer's REMB) and the transport-wide \
         number (our estimate), under its ids"
    );
    assert!(
        answer
            .lines()
            .any(|l| l.starts_with("a=rtcp-fb") && l.contains("transport-cc")),
        "transport-cc, for the feedback our estimate reads:\n{answer}"
    );
    assert!(
        answer
            .lines()
            .any(|l| l.starts_with("a=rtcp-fb") && l.contains("goog-remb")),
        "REMB, the viewer's estimate, is asked for:\n{answer}"
    );
    for kept in ["nack", "nack pli", "ccm fir"] {
        assert!(
            answer
                .lines()
                .any(|l| l.starts_with("a=rtcp-fb") && l.ends_with(kept)),
            "{kept} missing:\n{answer}"
        );
    }
}

#[test]
fn a_publisher_whose_video_cannot_be_forwarded_is_refused() {
    let mp4v = OBS
        .replace("a=rtpmap:96 H264/90000", "a=rtpmap:96 MP4V-ES/90000")
        .replace(
            "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1",
            "a=fmtp:96 profile-level-id=3",
        );
    assert_ne!(mp4v, OBS);
    let err = setup()
        .accept_publisher(Instant::now(), &mp4v)
        .err()
        .expect("refused");
    assert_eq!(err, OfferError::CannotForward("video"));
    assert!(
        err.to_string().contains("H264, VP8, VP9, AV1 or H265"),
        "{err}"
    );
}

#[test]
fn simulcast_layers_are_ordered_from_the_full_size_down() {
    let order = |rids: &[&str]| -> Vec<String> {
        let rids: Vec<str0m::media::Rid> = rids.iter().map(|r| (*r).into()).collect();
        layers_in_order(&rids)
            .iter()
            .map(|r| r.to_string())
            .collect()
    };
    assert_eq!(order(&["0", "1", "2"]), ["0", "1", "2"], "OBS");
    assert_eq!(
        order(&["q", "h", "f"]),
        ["f", "h", "q"],
        "browsers, smallest first"
    );
    assert_eq!(order(&["low", "mid", "high"]), ["high", "mid", "low"]);
    assert_eq!(
        order(&["b", "a", "f"]),
        ["f", "b", "a"],
        "unknown names keep their order"
    );
}

#[test]
fn the_transport_cc_id_the_engine_checks_is_the_one_str0m_negotiated() {
    // Chromium's offer turned round: a browser publisher, transport-cc on 4 (str0m's own map
    // has it on 3, and the offer's video orientation on 3 moves it first).
    let offer = CHROMIUM.replace("a=recvonly", "a=sendonly");
    let accepted = setup()
        .accept_publisher(Instant::now(), &offer)
        .expect("a browser's publishing offer is accepted");
    let negotiated: Vec<&str> = accepted
        .answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=extmap:"))
        .filter(|l| l.ends_with("transport-wide-cc-extensions-01"))
        .collect();
    assert!(!negotiated.is_empty(), "{}", accepted.answer);
    for line in negotiated {
        assert!(line.starts_with("4 "), "{line}");
    }
    assert_eq!(accepted.transport_cc, Some(4));
    // OBS maps no extension: str0m still reads transport-cc on 3.
    let obs = setup().accept_publisher(Instant::now(), OBS).unwrap();
    assert_eq!(obs.transport_cc, Some(3));
}
