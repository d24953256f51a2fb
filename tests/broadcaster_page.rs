//! Real headless Chromium against the broadcaster page: issuing a broadcast, the OBS
//! settings, going live, the connection test, and the ingest doctor naming what to change in
//! OBS. Screenshots land in `target/screenshots/`.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::annexb::AccessUnit;
use common::chromium::Browser;
use common::page_test::{blocking, start};
use common::server::create;
use common::sim::{HIGH_SPS, frame_with_sps};
use common::udp_client::Client;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn broadcaster_page_issues_an_id_shows_obs_settings_and_goes_live() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let page = Browser::start();
        page.goto(&format!("{base}/broadcast"));
        page.screenshot("broadcast-start");
        let history_before = page.js("return history.length", json!([]));
        page.click("#create");
        let url = page.wait("the address holds the broadcast ID", |p| {
            let u = p.current_url();
            u.contains("/broadcast?id=").then_some(u)
        });
        let id = url.split("id=").nth(1).unwrap().to_owned();
        page.wait("the panel shows the settings", |p| {
            (p.text("#whip-server").ends_with("/broadcast")).then_some(())
        });
        assert_eq!(page.text("#token"), id);
        assert_eq!(
            page.js("return history.length", json!([])),
            history_before,
            "replaced, not pushed"
        );
        let viewer_url = page.text("#viewer-url");
        assert!(viewer_url.contains("/stream?id=") && !viewer_url.contains(&id));
        // Publish to the URL the page shows, as OBS would.
        let _obs = Client::publish(&base, &id).unwrap();
        page.wait("the panel says live", |p| {
            (p.text("#state") == "live").then_some(())
        });
        page.wait("resolution from the stream", |p| {
            (p.text("#resolution") == "320x240").then_some(())
        });
        page.screenshot("broadcast-live");
        let result = run_connection_test(&page);
        assert_eq!(result, "ok", "{}", page.text("#test-result"));
        scroll_to(&page, "#test-result");
        page.screenshot("broadcast-connection-test");
        let status = Browser::start();
        status.goto(&format!("{base}/status"));
        status.wait("the status page lists it", |p| {
            p.text("#rows").contains("live").then_some(())
        });
        let html = status
            .js("return document.documentElement.outerHTML", json!([]))
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            !html.contains(&id),
            "the status page never shows a broadcast ID"
        );
        status.screenshot("status-live");
    })
    .await;
    r.server.shutdown().await;
}

/// Clicks "Test my connection" and returns the result the page records (ok, failed, error).
fn run_connection_test(page: &Browser) -> String {
    page.click("#test-connection");
    page.wait("the connection test finishes", |p| {
        let r = p.js(
            "return document.querySelector('#test-result').dataset.result || null",
            json!([]),
        );
        r.as_str().map(str::to_owned)
    })
}

/// Brings an element to the middle of the window for a screenshot.
fn scroll_to(page: &Browser, css: &str) {
    page.js(
        "document.querySelector(arguments[0]).scrollIntoView({block: 'center'})",
        json!([css]),
    );
}

/// One 149-frame GOP (a keyframe every ~5 s at 30 fps) of High-profile H.264 with B-frames:
/// decode order I P B P B …, each B shown before the P sent just before it.
fn problem_stream() -> Vec<(AccessUnit, u64)> {
    let unit = |n: u64, keyframe: bool| AccessUnit {
        data: frame_with_sps(n, keyframe, HIGH_SPS),
        keyframe,
    };
    let mut script = vec![(unit(0, true), 0)];
    for pts in (2..150).step_by(2) {
        script.push((unit(pts, false), pts));
        script.push((unit(pts - 1, false), pts - 1));
    }
    script
}

#[tokio::test(flavor = "multi_thread")]
async fn the_doctor_names_each_obs_problem_with_the_setting_to_change() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, _) = create(&base);
        let _obs = Client::publish_script(&base, &id, problem_stream()).unwrap();
        let page = Browser::start();
        page.goto(&format!("{base}/broadcast?id={id}"));
        // The keyframe interval needs two keyframes, ~5 s apart.
        let warnings = page.wait("three warnings", |p| {
            let w = p.text("#warnings");
            (w.matches("In OBS").count() == 3).then_some(w)
        });
        assert!(
            warnings.contains("High profile") && warnings.contains("Profile to \"baseline\""),
            "{warnings}"
        );
        assert!(
            warnings.contains("Keyframes come every 5 s")
                && warnings.contains("Keyframe Interval to 1 s"),
            "{warnings}"
        );
        assert!(
            warnings.contains("B-frames") && warnings.contains("B-frames to 0"),
            "{warnings}"
        );
        assert_eq!(page.text("#codec"), "H264 · High");
        assert_eq!(page.text("#resolution"), "1280x720");
        let fps: f32 = page.text("#fps").parse().unwrap();
        assert!(
            (25.0..35.0).contains(&fps),
            "B-frames count as frames: {fps} fps"
        );
        scroll_to(&page, "#warnings");
        page.screenshot("broadcast-doctor-problems");
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_test_says_what_to_open_when_udp_does_not_arrive() {
    // The server advertises [::1] while its UDP socket listens on 127.0.0.1 only: the
    // browser's checks go to a loopback port where nothing answers, as they would to a
    // firewalled one.
    let r = start(&["--public-ip", "::1"]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, _) = create(&base);
        let page = Browser::start();
        page.goto(&format!("{base}/broadcast?id={id}"));
        page.wait("the panel", |p| {
            (!p.text("#token").is_empty()).then_some(())
        });
        let result = run_connection_test(&page);
        let text = page.text("#test-result");
        assert_eq!(result, "failed", "{text}");
        assert!(text.contains("UDP"), "the fix names the UDP port: {text}");
        scroll_to(&page, "#test-result");
        page.screenshot("broadcast-connection-test-failed");
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcaster_page_sends_the_create_token_when_the_server_needs_one() {
    let r = start(&["--create-token", "s3cret-token"]).await;
    let base = r.base.clone();
    blocking(move || {
        let page = Browser::start();
        page.goto(&format!("{base}/broadcast"));
        page.click("#create");
        page.wait("the page asks for the create token", |p| {
            let shown = p.js(
                "return !document.querySelector('#create-token-row').classList.contains('hidden')",
                json!([]),
            );
            (shown == json!(true)).then_some(())
        });
        page.js(
            "document.querySelector('#create-token').value = arguments[0]",
            json!(["s3cret-token"]),
        );
        page.click("#create");
        page.wait("the address holds a broadcast ID", |p| {
            p.current_url().contains("/broadcast?id=").then_some(())
        });
        page.wait("the panel polls its status with the ID in a header", |p| {
            (p.text("#state") == "idle" && p.text("#viewer-url").contains("/stream?id="))
                .then_some(())
        });
    })
    .await;
    r.server.shutdown().await;
}
