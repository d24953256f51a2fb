//! Any body as a WHIP offer and as a WHEP offer: an error or an answer, never a panic.

#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use whipcast::engine::IngestTrack;
use whipcast::offer::SessionSetup;

fn setup() -> &'static (SessionSetup, Vec<IngestTrack>) {
    static SETUP: OnceLock<(SessionSetup, Vec<IngestTrack>)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let setup = SessionSetup::new(vec!["127.0.0.1:8189".parse().unwrap()]);
        let tracks = setup
            .accept_publisher(Instant::now(), OBS_OFFER)
            .expect("the seed offer is valid")
            .tracks;
        (setup, tracks)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = std::str::from_utf8(data) else {
        return;
    };
    let (setup, tracks) = setup();
    let now = Instant::now();
    let _ = setup.accept_publisher(now, offer);
    let _ = setup.accept_viewer(now, offer, tracks);
});

/// What OBS 31 sends (libdatachannel): no candidates, group:LS, H264 96, Opus 111.
const OBS_OFFER: &str = include_str!("../../tests/fixtures/obs-31-offer.sdp");
