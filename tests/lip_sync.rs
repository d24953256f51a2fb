//! Lip sync in the browser: a Chromium viewer's audio and video arrive in one `MediaStream`.
//! libwebrtc aligns audio with video only within one stream (one msid stream id, one cname);
//! tracks in different streams play unsynced whatever the sender reports say. The viewer page
//! builds its own `MediaStream`, so the test records what the peer connection itself says: the
//! streams of each `track` event.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::chromium::Browser;
use common::page_test::{blocking, start};
use common::server::create;
use common::udp_client::Client;
use serde_json::{Value, json};

/// Wraps `RTCPeerConnection` so that every `track` event's kind and stream ids are kept in
/// `window.trackEvents` (installed before the viewer page's own scripts run).
const RECORD_TRACK_EVENTS: &str = "
window.trackEvents = [];
const Original = window.RTCPeerConnection;
window.RTCPeerConnection = class extends Original {
  constructor(...args) {
    super(...args);
    this.addEventListener('track', (e) => {
      window.trackEvents.push({ kind: e.track.kind, streams: e.streams.map((s) => s.id) });
      if (e.track.kind === 'video') window.videoEventStream = e.streams[0];
    });
  }
};";

/// The recorded events, audio first.
fn track_events(page: &Browser) -> Vec<Value> {
    let v = page.js("return window.trackEvents || []", json!([]));
    let mut events = v.as_array().cloned().unwrap_or_default();
    events.sort_by_key(|e| e["kind"].as_str().unwrap_or_default().to_owned());
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_viewer_gets_audio_and_video_in_one_media_stream() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let _obs = Client::publish(&base, &id).expect("OBS-shaped WHIP accepted");
        let viewer = Browser::start();
        viewer.before_page_scripts(RECORD_TRACK_EVENTS);
        viewer.goto(&format!("{base}/stream?id={view}"));
        viewer.wait("the viewer page says live", |b| {
            (b.player_state() == "live").then_some(())
        });
        viewer.wait_decoding("frames decoded");
        viewer.screenshot("chromium_viewer_gets_audio_and_video_in_one_media_stream");
        let events = viewer.wait("a track event for audio and for video", |b| {
            let events = track_events(b);
            (events.len() >= 2).then_some(events)
        });
        eprintln!("track events: {events:?}");
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            ["audio", "video"],
            "one track of each kind: {events:?}"
        );
        let (audio, video) = (&events[0]["streams"], &events[1]["streams"]);
        assert_eq!(audio.as_array().map(Vec::len), Some(1), "{events:?}");
        assert_eq!(video.as_array().map(Vec::len), Some(1), "{events:?}");
        assert_eq!(
            audio, video,
            "audio and video are in the same MediaStream (one msid stream id)"
        );
        // And the stream the peer connection made for the video holds the audio too.
        let both = viewer.js_async(TRACKS_OF_THE_VIDEO_STREAM, json!([]));
        assert_eq!(both, json!(["audio", "video"]), "the video's MediaStream");
    })
    .await;
    r.server.shutdown().await;
}

/// The kinds of track now in the stream of the video `track` event.
const TRACKS_OF_THE_VIDEO_STREAM: &str = "
const done = arguments[arguments.length - 1];
const stream = window.videoEventStream;
done(stream ? stream.getTracks().map((t) => t.kind).sort() : []);";
