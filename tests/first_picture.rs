//! A first visit: a freshly started headless Chromium (new process, new profile) opens the
//! viewer page of a broadcast that is well into its GOP, and the picture is presented and
//! moves. The publisher streams a clip with a single keyframe (its first frame), so the only
//! way for the page to see motion is the cached keyframe *and* the frames since it: nothing
//! newer to start from comes while the test waits. Times are not asserted (the bench
//! `first_frame` measures them); only that presentation and motion happen.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::time::{Duration, Instant};

use common::annexb::access_units;
use common::chromium::Browser;
use common::page_test::{blocking, start};
use common::server::create;
use common::udp_client::Client;
use serde_json::{Value, json};

/// Run before the page's own scripts: the first presented frame and the decoder's counts.
const PROBE: &str = include_str!("js/first-frame-probe.js");

/// 30 s with one keyframe; the publisher loops it, so the next keyframe comes 30 s after the
/// first: later than [`DEADLINE`] after the page loads.
const ONE_KEYFRAME: &[u8] = include_bytes!("fixtures/testsrc2-320x240-one-keyframe.h264");
/// How far into the clip the page loads: the cached keyframe is this old, the frames since
/// it about 60.
const JOIN_AFTER: Duration = Duration::from_secs(2);
/// Generous: "it eventually happens", well before the clip's loop brings a new keyframe.
const DEADLINE: Duration = Duration::from_secs(15);
/// More decoded frames than the first one by this many: the picture moves.
const MOTION: u64 = 10;

#[tokio::test(flavor = "multi_thread")]
async fn a_first_visit_presents_the_first_picture_and_motion_follows_mid_gop() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let script = access_units(ONE_KEYFRAME)
            .into_iter()
            .enumerate()
            .map(|(i, u)| (u, i as u64))
            .collect();
        let obs = Client::publish_script(&base, &id, script).expect("WHIP accepted");
        obs.wait_for("publisher connected", |s| s.connected);
        std::thread::sleep(JOIN_AFTER);

        let browser = Browser::start();
        browser.before_page_scripts(PROBE);
        browser.goto(&format!("{base}/stream?id={view}"));
        let first = until(&browser, "the first picture is presented", |ff| {
            ff["frame"].as_f64().is_some()
        });
        let decoded_at_first = first["atFrame"]["decoded"].as_u64().unwrap_or(0);
        let moving = until(&browser, "frames decoded keep rising", |ff| {
            ff["stats"]["decoded"]
                .as_u64()
                .is_some_and(|n| n > decoded_at_first + MOTION)
        });
        eprintln!("first picture {first}\nmotion {moving}");
        let (mean, spread) = browser.picture();
        assert!(
            mean > 20.0 && spread > 5.0,
            "the picture is not black or flat: mean {mean}, spread {spread}"
        );
        browser.screenshot("a_first_visit_presents_the_first_picture_and_motion_follows");
    })
    .await;
    r.server.shutdown().await;
}

/// Polls the probe's record until `done` holds, or fails with the record at [`DEADLINE`].
fn until(browser: &Browser, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ff = browser.js("return window.__firstFrame || null", json!([]));
        if done(&ff) {
            return ff;
        }
        assert!(
            Instant::now() < deadline,
            "never happened within {DEADLINE:?}: {what}; the page saw {ff}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
