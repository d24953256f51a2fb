//! GStreamer, an independent WebRTC stack (its own ICE, libnice; its own DTLS, OpenSSL with an
//! RSA certificate): a `webrtcbin` WHIP publisher reaches the Chromium viewer page, and a
//! `webrtcbin` WHEP viewer decodes an OBS-shaped publisher's video with `avdec_h264`. The
//! clients are tests/gst/*.py (python3-gi); `.ci/run` installs GStreamer and the bindings.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::gst::GstClient;
use common::page_test::{blocking, start, watch};
use common::server::create;
use common::udp_client::Client;

#[tokio::test(flavor = "multi_thread")]
async fn gstreamer_publisher_reaches_chromium_viewer_page() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let publisher = GstClient::publishing(&base, &id);
        let viewer = watch(
            &base,
            &view,
            "gstreamer_publisher_reaches_chromium_viewer_page",
        );
        let size = viewer.js(
            "const v = document.querySelector('video'); return [v.videoWidth, v.videoHeight]",
            serde_json::json!([]),
        );
        assert_eq!(
            size,
            serde_json::json!([320, 240]),
            "GStreamer's test picture"
        );
        let (stopped, output) = publisher.finish();
        assert!(stopped, "the publisher stopped cleanly:\n{output}");
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gstreamer_whep_viewer_decodes_an_obs_shaped_broadcast() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let _obs = Client::publish(&base, &id).expect("OBS-shaped WHIP accepted");
        let viewer = GstClient::start(
            "whep_viewer.py",
            &[&format!("{base}/stream?id={view}"), "60", "45"],
        );
        let (decoded, output) = viewer.finish();
        assert!(decoded, "the GStreamer viewer decoded 60 frames:\n{output}");
        assert!(
            output.contains("out: decoded 60 frames 320x240"),
            "60 frames of the fixture's size:\n{output}"
        );
    })
    .await;
    r.server.shutdown().await;
}
