//! Every publisher reaches every viewer: an OBS-shaped str0m publisher, a Chromium publisher
//! and a GStreamer `webrtcbin` publisher each feed one broadcast that four viewers join at once
//! (the Chromium viewer page, the Firefox viewer page, a GStreamer WHEP viewer and a str0m WHEP
//! viewer). Each viewer must decode video and hear audio (the OBS-shaped publisher sends a
//! 440 Hz tone, GStreamer's a sine, Chromium's fake microphone a beep): the browsers'
//! `totalAudioEnergy` and GStreamer's `level` after `opusdec` at −50 dBFS or louder, and the
//! str0m viewer's frames and Opus packets byte for byte those sent (or, from publishers that
//! do not keep them, its Opus decoded as loud). A failure names the publisher → viewer pair.
//! The tests fail, never skip, when a browser or tool is missing.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::as_sent::viewer_got_as_sent;
use common::chromium::Browser;
use common::firefox::firefox_plays;
use common::gst::GstClient;
use common::opus::{AUDIBLE_DBFS, audible_energy, loudest_dbfs, mean_square};
use common::page_test::{blocking, start, watch};
use common::server::create;
use common::udp_client::{Client, Shared};
use serde_json::{Value, json};

/// What the GStreamer viewer must decode: video frames and Opus buffers (20 ms each).
const GST_FRAMES: &str = "60";
const GST_AUDIO_BUFFERS: &str = "50";

/// What a publisher sent, when it keeps it (the OBS-shaped one does).
type Sent = Option<Arc<Mutex<Shared>>>;

/// What the str0m viewer must receive: a GOP and more of video, a second of audio.
const STR0M_FRAMES: usize = 60;
const STR0M_PACKETS: usize = 50;

/// Attaches the four viewers to the broadcast `view` at once, each in its own thread named
/// `<publisher> → <viewer>`, and fails naming every pair that did not decode video and hear
/// audio. `sent` is what the publisher sent, when it keeps it (the OBS-shaped one): the str0m
/// viewer's frames and Opus packets must then be those, byte for byte.
fn four_viewers_play(base: &str, view: &str, publisher: &str, sent: Sent) {
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
            let dbfs = AUDIBLE_DBFS.to_string();
            let args = [u.as_str(), GST_FRAMES, "45", GST_AUDIO_BUFFERS, &dbfs];
            let (decoded, output) = GstClient::start("whep_viewer.py", &args).finish();
            assert!(
                decoded,
                "{p}: {GST_FRAMES} video frames and {GST_AUDIO_BUFFERS} audio buffers decoded, \
                 audio at {dbfs} dBFS or louder:\n{output}"
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
            firefox_decoded_and_heard(&seen).unwrap_or_else(|e| panic!("{p}: {e}: {seen}"));
        }),
    );
    let (b, v, p) = (base.to_owned(), view.to_owned(), pair("str0m"));
    spawn(
        "str0m",
        Box::new(move || {
            let viewer = Client::view(&b, &v).unwrap_or_else(|r| panic!("{p}: refused: {r:?}"));
            viewer.wait_for(
                &format!("{p}: a keyframe, {STR0M_FRAMES} frames, {STR0M_PACKETS} audio packets"),
                |s| {
                    s.frames.iter().any(|f| f.keyframe)
                        && s.frames.len() >= STR0M_FRAMES
                        && s.audio.len() >= STR0M_PACKETS
                },
            );
            let heard = match &sent {
                Some(sent) => {
                    viewer_got_as_sent(sent, &viewer, STR0M_FRAMES, STR0M_PACKETS)
                        .unwrap_or_else(|e| panic!("{p}: as sent, byte for byte: {e}"));
                    "frames and Opus packets as sent".to_owned()
                }
                None => {
                    let loudest = loudest_dbfs(&viewer.shared.lock().unwrap().audio);
                    assert!(
                        loudest >= AUDIBLE_DBFS,
                        "{p}: the Opus received, decoded, is at {loudest} dBFS, below {AUDIBLE_DBFS}"
                    );
                    format!("Opus decoded at {loudest} dBFS")
                }
            };
            let s = viewer.shared.lock().unwrap();
            eprintln!(
                "{p}: {} video frames, {} audio packets, {heard}",
                s.frames.len(),
                s.audio.len()
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
            page.unmute();
            let heard = page.wait_audible(&format!("{p}: audio at {AUDIBLE_DBFS} dBFS or louder"));
            eprintln!(
                "{p}: {frames} frames, {packets} audio packets, {samples} samples, level {:.1} dBFS",
                10.0 * heard.log10()
            );
        }),
    );
    let failed: Vec<String> = viewers
        .into_iter()
        .filter_map(|(pair, thread)| thread.join().is_err().then_some(pair))
        .collect();
    assert!(
        failed.is_empty(),
        "no decoded video and audible audio (see each pair's panic above): {failed:?}"
    );
}

/// What the Firefox driver must have seen (`tests/js/firefox-viewer.mjs`): the page live,
/// video frames decoded and rising, a picture that is neither black nor flat, audio decoded
/// and rising, and over the second or more between its two looks, audible.
fn firefox_decoded_and_heard(seen: &Value) -> Result<(), String> {
    if seen["state"] != "live" {
        return Err("the page is not live".into());
    }
    let number = |path: &[&str]| {
        let v = path.iter().fold(seen, |v, k| &v[*k]);
        v.as_f64().ok_or(format!("no {}", path.join(".")))
    };
    if number(&["framesLater"])? <= number(&["framesAtLive"])? {
        return Err("video frames decoded do not rise".into());
    }
    let (mean, spread) = (
        number(&["screenshot", "mean"])?,
        number(&["screenshot", "spread"])?,
    );
    if !(mean > 20.0 && spread > 5.0) {
        return Err(format!(
            "the picture is black or flat: mean {mean}, spread {spread}"
        ));
    }
    let audio = |field: &str| {
        Ok::<_, String>(number(&["audioLater", field])? - number(&["audioAtLive", field])?)
    };
    if !(number(&["audioAtLive", "packets"])? > 0.0 && audio("samples")? > 0.0) {
        return Err("audio received and decoded samples do not rise".into());
    }
    let heard = mean_square(audio("energy")?, audio("duration")?);
    if !audible_energy(heard) {
        return Err(format!(
            "the audio played is at {:.1} dBFS, below {AUDIBLE_DBFS}",
            10.0 * heard.log10()
        ));
    }
    Ok(())
}

/// Starts the server and a broadcast, then `publish(base, broadcast ID)`; plays it in the four
/// viewers; then hands the publisher to `stop`.
async fn reaches_all_four_viewers<P: 'static>(
    publisher: &'static str,
    publish: fn(&str, &str) -> (P, Sent),
    stop: fn(P),
) {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let (running, sent) = publish(&base, &id);
        four_viewers_play(&base, &view, publisher, sent);
        stop(running);
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn obs_shaped_publisher_reaches_all_four_viewers() {
    let publish = |base: &str, id: &str| {
        let publisher = Client::publish(base, id).expect("OBS-shaped WHIP");
        let sent = publisher.shared.clone();
        (publisher, Some(sent))
    };
    reaches_all_four_viewers("OBS-shaped", publish, drop).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_publisher_reaches_all_four_viewers() {
    let publish = |base: &str, id: &str| (chromium_publishing(base, id), None);
    reaches_all_four_viewers("Chromium", publish, drop).await;
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
    let publish = |base: &str, id: &str| (GstClient::publishing(base, id), None);
    reaches_all_four_viewers("GStreamer", publish, stop).await;
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
