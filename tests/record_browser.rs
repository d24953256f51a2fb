//! Recordings in real headless Chromium (issue 27): the broadcaster page's Recording card
//! (switch, status, list, delete), and a recording played from its download link in a
//! `<video>`: frames decoded, audio decoded, a seek served by byte ranges, `currentTime` at the
//! end. And recordings from a Chromium and a GStreamer publisher, and from Chromium publishers
//! held to VP8, VP9 and AV1, which `ffprobe` reads and Chromium plays the same way.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::time::{Duration, Instant};

use common::chromium::Browser;
use common::gst::GstClient;
use common::page_test::{blocking, start_in};
use common::record::{
    decoded_video, ffprobe, list, recording_server, recordings, wait_sent, wait_state,
};
use common::server::{create, metric};
use common::udp_client::Client;
use serde_json::json;

/// Plays `url` in a muted `<video>` at double speed, seeks back to the middle once it has
/// passed it, and reports what Chromium decoded once it ended.
const PLAY_TO_THE_END: &str = "
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
const v = document.createElement('video');
v.muted = true;
document.body.append(v);
let seeked = false;
v.addEventListener('error', () => done({ error: String(v.error && v.error.message) }));
v.addEventListener('timeupdate', () => {
  if (!seeked && v.currentTime > v.duration * 0.7) {
    seeked = true;
    v.currentTime = v.duration * 0.4;
  }
});
v.addEventListener('seeked', () => { window.seekedTo = v.currentTime; });
v.addEventListener('ended', () => {
  const q = v.getVideoPlaybackQuality();
  done({
    duration: v.duration,
    currentTime: v.currentTime,
    frames: q.totalVideoFrames - q.droppedVideoFrames,
    audioBytes: v.webkitAudioDecodedByteCount,
    width: v.videoWidth,
    seekedTo: window.seekedTo ?? null,
  });
});
v.src = url;
v.playbackRate = 2;
v.play().catch((e) => done({ error: String(e) }));
setTimeout(() => done({ error: 'not ended in 40 s', currentTime: v.currentTime, duration: v.duration }), 40000);";

/// Plays `url` to the end (as [`PLAY_TO_THE_END`]) and checks that it got there with frames
/// and audio decoded; returns what Chromium reported.
fn plays_to_the_end(player: &Browser, url: &str, who: &str) -> serde_json::Value {
    let played = player.js_async(PLAY_TO_THE_END, json!([url]));
    println!("{who} publisher's recording played: {played}");
    assert_eq!(played["error"], serde_json::Value::Null, "{who}: {played}");
    let duration = played["duration"].as_f64().unwrap();
    assert!(
        played["currentTime"].as_f64().unwrap() >= duration - 0.1,
        "{who}: played to the end: {played}"
    );
    assert!(played["frames"].as_u64().unwrap() >= 60, "{who}: {played}");
    assert!(
        played["audioBytes"].as_u64().unwrap() > 0,
        "{who}: {played}"
    );
    played
}

fn wait_ended(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(base, "whipcast_recordings_active") != 0 {
        assert!(Instant::now() < deadline, "the recording never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcaster_page_lists_a_recording_that_plays_and_seeks_in_a_video_element() {
    let (server, base, rec) = recording_server("record-page").await;
    blocking(move || {
        let (id, _view) = create(&base);
        let page = Browser::start();
        page.goto(&format!("{base}/broadcast?id={id}"));
        page.wait("the Recording card shows it waits", |p| {
            (p.text("#record-state") == "waiting").then_some(())
        });
        // The switch, off and on again, from the page.
        page.click("#record-switch");
        page.wait("switched off", |p| (p.text("#record-state") == "off").then_some(()));
        page.click("#record-switch");
        page.wait("switched on", |p| (p.text("#record-state") == "waiting").then_some(()));
        let publisher = Client::publish(&base, &id).expect("WHIP accepted");
        page.wait("the page says recording", |p| {
            (p.text("#record-state") == "recording").then_some(())
        });
        wait_sent(&publisher, 300);
        assert_eq!(publisher.stop(), 200);
        wait_ended(&base);
        let href = page.wait("the page lists the recording", |p| {
            let v = p.js(
                "const a = document.querySelector('#recordings a.download'); return a && !a.closest('tr').textContent.includes('(recording)') ? a.href : null",
                json!([]),
            );
            v.as_str().map(str::to_owned)
        });
        page.screenshot("record-list");
        let row = page.text("#recordings tr");
        assert!(row.contains("0:1") && row.contains("kB"), "start, duration, size: {row}");
        let played = page.js_async(PLAY_TO_THE_END, json!([href]));
        println!("played: {played}");
        assert_eq!(played["error"], serde_json::Value::Null, "{played}");
        let duration = played["duration"].as_f64().unwrap();
        assert!((duration - 10.0).abs() <= 1.0, "10 s sent, {duration} s");
        assert!(
            played["currentTime"].as_f64().unwrap() >= duration - 0.1,
            "{played}"
        );
        // Seeked back to 40 % after 70 %: the second half was decoded twice, so more than
        // the 300 frames sent (the first ones maybe dropped at double speed) were decoded.
        assert!(played["seekedTo"].as_f64().is_some(), "{played}");
        assert!(played["frames"].as_u64().unwrap() >= 250, "{played}");
        assert!(played["audioBytes"].as_u64().unwrap() > 0, "{played}");
        assert_eq!(played["width"], 320);

        // Delete from the page.
        page.js("window.confirm = () => true", json!([]));
        page.click("#recordings button.delete");
        page.wait("the list is empty", |p| {
            (p.js("return document.querySelectorAll('#recordings tr').length", json!([])) == 0)
                .then_some(())
        });
        assert!(recordings(&rec).is_empty());
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn recordings_from_chromium_and_gstreamer_publishers_pass_ffprobe_and_play_in_chromium() {
    let (server, base, rec) = recording_server("record-publishers").await;
    let files = blocking(move || {
        let (chromium_id, _) = create(&base);
        let (gst_id, _) = create(&base);
        let chromium = Browser::publishing(&base, &chromium_id);
        let gst = GstClient::publishing(&base, &gst_id);
        std::thread::sleep(Duration::from_secs(8));
        chromium.unpublish(&base);
        gst.finish();
        wait_ended(&base);
        // Each played from its download link in a `<video>`, as a broadcaster would.
        let player = Browser::start();
        player.goto(&base);
        for (who, id) in [("Chromium", &chromium_id), ("GStreamer", &gst_id)] {
            let (status, listed) = list(&base, id);
            assert_eq!(status, 200, "{listed}");
            let url = listed["files"][0]["url"].as_str().expect("a download link");
            let played = plays_to_the_end(&player, &format!("{base}{url}"), who);
            let duration = played["duration"].as_f64().unwrap();
            assert!(duration >= 5.0, "{who}: 8 s sent, {duration} s");
        }
        recordings(&rec)
    })
    .await;
    server.shutdown().await;
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        let (codecs, duration, errors) = ffprobe(f);
        println!("{}: {codecs:?}, {duration} s", f.display());
        assert_eq!(
            errors,
            "",
            "ffprobe -v error printed nothing for {}",
            f.display()
        );
        assert_eq!(codecs, ["h264", "opus"], "{}", f.display());
        assert!(duration >= 5.0, "8 s sent, {duration} s in {}", f.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcaster_page_says_why_recording_stopped_while_the_broadcast_goes_on() {
    let dir = common::server::temp_dir("record-page-cap");
    let rec = dir.join("rec");
    let rec_arg = rec.to_str().unwrap().to_owned();
    let r = start_in(
        &dir,
        &[
            "--record",
            "--record-dir",
            &rec_arg,
            "--record-max-bytes",
            "120K",
        ],
    )
    .await;
    let base = r.base.clone();
    blocking(move || {
        let (id, _view) = create(&base);
        let page = Browser::start();
        page.goto(&format!("{base}/broadcast?id={id}"));
        let publisher = Client::publish(&base, &id).expect("WHIP accepted");
        page.wait("the page says stopped", |p| {
            (p.text("#record-state") == "stopped").then_some(())
        });
        let reason = page.text("#record-reason");
        page.js(
            "document.querySelector('#record-card').scrollIntoView()",
            json!([]),
        );
        page.screenshot("record-stopped");
        assert!(
            reason.contains("--record-max-bytes") && reason.contains("0.1 MB"),
            "{reason}"
        );
        assert_eq!(page.text("#state"), "live", "the broadcast goes on");
        // The list follows: the file written before the stop is no longer being written.
        page.wait("the list shows the file done", |p| {
            let row = p.text("#recordings tr");
            (!row.is_empty() && !row.contains("(recording)")).then_some(())
        });
        drop(publisher);
    })
    .await;
    r.server.shutdown().await;
}

/// How long each codec's publisher is recorded: short, since four of these run in CI.
const CODEC_SECONDS: u64 = 6;

/// A Chromium publisher held to video codec `mime` (in `scalability` mode, if given) for
/// [`CODEC_SECONDS`] of recording: the file holds `codec` (ffprobe's name) and Opus, `ffprobe
/// -v error` says nothing, it lasts that long (±1 s), FFmpeg shows one picture per sample,
/// and it plays to the end in Chromium from its download link.
async fn chromium_publisher_held_to(mime: &str, scalability: Option<&str>, codec: &str) {
    let (server, base, rec) = recording_server(&format!("record-{codec}")).await;
    let (mime, scalability, codec) = (
        mime.to_owned(),
        scalability.map(str::to_owned),
        codec.to_owned(),
    );
    blocking(move || {
        let (id, _) = create(&base);
        let publisher = Browser::publishing_codec(&base, &id, &mime, scalability.as_deref());
        wait_state(&base, &id, "recording");
        std::thread::sleep(Duration::from_secs(CODEC_SECONDS));
        publisher.unpublish(&base);
        wait_ended(&base);
        let files = recordings(&rec);
        assert_eq!(files.len(), 1, "one file: {files:?}");
        let (codecs, duration, errors) = ffprobe(&files[0]);
        let (samples, shown) = decoded_video(&files[0]);
        println!(
            "{}: {codecs:?}, {duration} s, {samples} video samples, {shown} pictures shown",
            files[0].display()
        );
        assert_eq!(errors, "", "ffprobe -v error printed nothing");
        assert_eq!(codecs, [codec.as_str(), "opus"]);
        assert!(
            (duration - CODEC_SECONDS as f64).abs() <= 1.0,
            "{CODEC_SECONDS} s recorded, {duration} s"
        );
        assert_eq!(samples, shown, "one picture per sample");
        let (status, listed) = list(&base, &id);
        assert_eq!(status, 200, "{listed}");
        let url = listed["files"][0]["url"].as_str().expect("a download link");
        let player = Browser::start();
        player.goto(&base);
        let played = plays_to_the_end(&player, &format!("{base}{url}"), &mime);
        assert!((played["duration"].as_f64().unwrap() - duration).abs() < 0.1);
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chromium_publisher_held_to_vp8_is_recorded_as_vp8_and_opus_that_plays() {
    chromium_publisher_held_to("video/VP8", None, "vp8").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chromium_publisher_held_to_vp9_is_recorded_as_vp9_and_opus_that_plays() {
    chromium_publisher_held_to("video/VP9", None, "vp9").await;
}

/// Two spatial layers at 640×360 (Chromium leaves out the third; it starts with the base
/// layer alone and adds the top one with a key picture): each sample is what a viewer shows,
/// the top layer (with the base on key pictures, where the top predicts from it).
#[tokio::test(flavor = "multi_thread")]
async fn a_chromium_publisher_of_vp9_spatial_layers_is_recorded_as_the_top_layer() {
    chromium_publisher_held_to("video/VP9", Some("L3T3_KEY"), "vp9").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chromium_publisher_held_to_av1_is_recorded_as_av1_and_opus_that_plays() {
    chromium_publisher_held_to("video/AV1", None, "av1").await;
}
