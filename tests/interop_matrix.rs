//! Every publisher reaches every viewer: an OBS-shaped str0m publisher, a Chromium publisher
//! and a GStreamer `webrtcbin` publisher each feed one broadcast that four viewers join at once
//! (the Chromium viewer page, the Firefox viewer page, a GStreamer WHEP viewer and a str0m WHEP
//! viewer). Each viewer must decode video and receive and decode audio; a failure names the
//! publisher → viewer pair. The tests fail, never skip, when a browser or tool is missing.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::thread::JoinHandle;

use common::chromium::Browser;
use common::firefox::firefox_plays;
use common::gst::GstClient;
use common::page_test::{blocking, start, watch};
use common::server::create;
use common::udp_client::Client;
use serde_json::json;

/// What the GStreamer viewer must decode: video frames and Opus buffers (20 ms each).
const GST_FRAMES: &str = "60";
const GST_AUDIO_BUFFERS: &str = "50";

/// Attaches the four viewers to the broadcast `view` at once, each in its own thread named
/// `<publisher> → <viewer>`, and fails naming every pair that did not decode video and audio.
fn four_viewers_play(base: &str, view: &str, publisher: &str) {
    let url = format!("{base}/stream?id={view}");
    let pair = |viewer: &str| format!("{publisher} → {viewer}");
    let name = |viewer: &str| format!("interop-{publisher}-to-{viewer}");
    let mut viewers: Vec<(String, JoinHandle<()>)> = Vec::new();
    let mut spawn = |viewer: &str, check: Box<dyn FnOnce() + Send>| {
        let thread = std::thread::Builder::new()
            .name(pair(viewer))
            .spawn(check)
            .unwrap();
        viewers.push((pair(viewer), thread));
    };
    let (u, p) = (url.clone(), pair("GStreamer"));
    spawn(
        "GStreamer",
        Box::new(move || {
            let args = [u.as_str(), GST_FRAMES, "45", GST_AUDIO_BUFFERS];
            let (decoded, output) = GstClient::start("whep_viewer.py", &args).finish();
            assert!(
                decoded,
                "{p}: {GST_FRAMES} video frames and {GST_AUDIO_BUFFERS} audio buffers decoded:\n{output}"
            );
            eprintln!("{p}: {}", output.lines().last().unwrap_or_default());
        }),
    );
    let (u, p, n) = (url.clone(), pair("Firefox"), name("firefox"));
    spawn(
        "Firefox",
        Box::new(move || {
            let seen = firefox_plays(&u, &n);
            eprintln!("{p}: {seen}");
            assert_eq!(seen["state"], "live", "{p}: {seen}");
            let count = |key: &str, field: &str| seen[key][field].as_u64().unwrap_or(0);
            let frames = |key: &str| seen[key].as_u64().unwrap_or(0);
            assert!(
                frames("framesLater") > frames("framesAtLive"),
                "{p}: video frames decoded rise: {seen}"
            );
            assert!(
                count("audioAtLive", "packets") > 0
                    && count("audioLater", "samples") > count("audioAtLive", "samples"),
                "{p}: audio received and decoded samples rise: {seen}"
            );
        }),
    );
    let (b, v, p) = (base.to_owned(), view.to_owned(), pair("str0m"));
    spawn(
        "str0m",
        Box::new(move || {
            let viewer = Client::view(&b, &v).unwrap_or_else(|r| panic!("{p}: refused: {r:?}"));
            viewer.wait_for(
                &format!("{p}: a keyframe, 60 frames, 50 audio packets"),
                |s| {
                    s.frames.iter().any(|f| f.keyframe)
                        && s.frames.len() >= 60
                        && s.audio_frames >= 50
                },
            );
            let frames = viewer.frames().len();
            eprintln!(
                "{p}: {frames} video frames, {} audio",
                viewer.audio_frames()
            );
        }),
    );
    let (b, v, p, n) = (
        base.to_owned(),
        view.to_owned(),
        pair("Chromium"),
        name("chromium"),
    );
    spawn(
        "Chromium",
        Box::new(move || {
            let page = watch(&b, &v, &n);
            let frames = page.wait_decoding(&format!("{p}: video frames decoded rise"));
            let (packets, samples) = page.wait_audio(&format!("{p}: audio decoded rises"));
            eprintln!("{p}: {frames} frames, {packets} audio packets, {samples} samples");
        }),
    );
    let failed: Vec<String> = viewers
        .into_iter()
        .filter_map(|(pair, thread)| thread.join().is_err().then_some(pair))
        .collect();
    assert!(
        failed.is_empty(),
        "no decoded video and audio (see each pair's panic above): {failed:?}"
    );
}

/// Starts the server and a broadcast, then `publish(base, broadcast ID)`; plays it in the four
/// viewers; then hands the publisher to `stop`.
async fn reaches_all_four_viewers<P: 'static>(
    publisher: &'static str,
    publish: fn(&str, &str) -> P,
    stop: fn(P),
) {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let running = publish(&base, &id);
        four_viewers_play(&base, &view, publisher);
        stop(running);
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn obs_shaped_publisher_reaches_all_four_viewers() {
    let publish = |base: &str, id: &str| Client::publish(base, id).expect("OBS-shaped WHIP");
    reaches_all_four_viewers("OBS-shaped", publish, drop).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_publisher_reaches_all_four_viewers() {
    reaches_all_four_viewers("Chromium", chromium_publishing, drop).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gstreamer_publisher_reaches_all_four_viewers() {
    let stop = |publisher: GstClient| {
        let (stopped, output) = publisher.finish();
        assert!(
            stopped,
            "the GStreamer publisher stopped cleanly:\n{output}"
        );
    };
    reaches_all_four_viewers("GStreamer", GstClient::publishing, stop).await;
}

/// A Chromium publisher, once it sends both audio and video.
fn chromium_publishing(base: &str, id: &str) -> Browser {
    let publisher = Browser::publishing(base, id);
    let sent = publisher.wait("the Chromium publisher sends audio and video", |b| {
        let sent = b.js_async(PACKETS_SENT, json!([]));
        let some = |kind: &str| sent[kind].as_u64().is_some_and(|n| n > 0);
        (some("audio") && some("video")).then_some(sent)
    });
    eprintln!("the Chromium publisher sent {sent}");
    publisher
}

/// Packets the Chromium publisher sent per kind (`outbound-rtp`).
const PACKETS_SENT: &str = "
const done = arguments[arguments.length - 1];
window.publisher.pc.getStats().then(stats => {
  const n = {};
  stats.forEach(r => { if (r.type === 'outbound-rtp') n[r.kind] = (n[r.kind] || 0) + r.packetsSent; });
  done(n);
}).catch(() => done({}));";
