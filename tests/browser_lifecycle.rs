//! Session lifecycle in real headless Chromium: a publisher page that stops the way the
//! `whip-whep` reference clients do (close the PeerConnection, then DELETE), and a viewer page
//! that restarts ICE on its session instead of making a new one.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::chromium::Browser;
use common::page_test::{blocking, start, watch};
use common::server::create;
use common::udp_client::{Client, http};
use serde_json::{Value, json};

/// `WHIPClient.stop()`: `pc.close()` first, DELETE after.
const CLOSE_THEN_DELETE: &str = "
const done = arguments[arguments.length - 1];
fetch(window.publisher.location, { method: 'DELETE' }).then(r => done(r.status), e => done('error ' + e));";

/// The ICE ufrag of the viewer's selected candidate pair, and its current local one.
const SELECTED_UFRAG: &str = "
const done = arguments[arguments.length - 1];
(async () => {
  const pc = window.whipcast.pc;
  const stats = await pc.getStats();
  let selected = null;
  stats.forEach((s) => {
    if (s.type !== 'transport' || !s.selectedCandidatePairId) return;
    const pair = stats.get(s.selectedCandidatePairId);
    const local = pair && stats.get(pair.localCandidateId);
    selected = (local && local.usernameFragment) || s.iceLocalUsernameFragment || null;
  });
  const current = (pc.localDescription.sdp.match(/a=ice-ufrag:(\\S+)/) || [])[1];
  done({ selected, current, state: pc.iceConnectionState });
})().catch((e) => done({ error: String(e) }));";

fn broadcast_state(base: &str, id: &str) -> String {
    let (status, _, body) = http("GET", &format!("{base}/api/broadcasts/{id}"), &[], "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["state"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_page_that_closes_then_deletes_ends_the_broadcast_for_its_viewers() {
    // A 60 s resume grace: within the test's waits only the hang-up path can end it.
    let r = start(&["--resume-grace", "60s"]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let publisher = Browser::publishing(&base, &id);
        let viewer = watch(&base, &view, "hang-up-viewer-live");
        publisher.js("window.publisher.pc.close(); return true", json!([]));
        // The close_notify reaches the server before the DELETE leaves, as when the two
        // race and the close wins.
        viewer.wait("the server saw the publisher's close", |_| {
            (broadcast_state(&base, &id) == "reconnecting").then_some(())
        });
        let status = publisher.js_async(CLOSE_THEN_DELETE, json!([]));
        assert_eq!(status, 200, "the DELETE after the close succeeds");
        viewer.wait("the viewer page says the broadcast ended", |b| {
            (b.player_state() == "ended").then_some(())
        });
        assert_eq!(broadcast_state(&base, &id), "idle");
        viewer.screenshot("hang-up-viewer-ended");
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_page_keeps_playing_through_an_ice_restart_on_the_same_peer_connection() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let _obs = Client::publish(&base, &id).unwrap();
        let viewer = watch(&base, &view, "ice-restart-viewer-before");
        let before = viewer.js_async(SELECTED_UFRAG, json!([]));
        assert!(
            before["selected"].is_string() && before["selected"] == before["current"],
            "the stats name the selected pair's ufrag: {before}"
        );
        viewer.js(
            "window.pcBefore = window.whipcast.pc; return true",
            json!([]),
        );
        let restarted = viewer.js_async(
            "const done = arguments[arguments.length - 1];
             window.whipcast.restartIce().then(() => done('ok'), e => done('error ' + e));",
            json!([]),
        );
        assert_eq!(restarted, "ok", "PATCH answered 200 and the answer applied");
        viewer.wait("media flows on the pair of the new credentials", |b| {
            let now = b.js_async(SELECTED_UFRAG, json!([]));
            (now["current"] != before["current"] && now["selected"] == now["current"]).then_some(())
        });
        viewer.wait_decoding("frames keep rising after the restart");
        assert_eq!(
            viewer.js("return window.pcBefore === window.whipcast.pc", json!([])),
            true,
            "the same RTCPeerConnection"
        );
        assert_eq!(viewer.player_state(), "live");
        viewer.screenshot("ice-restart-viewer-after");
    })
    .await;
    r.server.shutdown().await;
}
