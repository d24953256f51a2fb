//! `shaped_link.rs` with OBS as the publisher: an OBS 32.1-shaped simulcast publisher over
//! UDP (rids "0", "1", "2", the full size first; 1280×720 at 2.5 Mb/s, 852×480 at 800 kb/s,
//! 426×240 at 250 kb/s of real H.264 made by ffmpeg) and two Chromium viewers, one behind a
//! 1 Mb/s token bucket in a network namespace of the test's own, one not capped. The capped
//! viewer must settle on a layer that fits and then play smoothly, the uncapped one must stay
//! on the full size, the publisher must not be asked for more than a keyframe per 2 s, and
//! lifting the cap must bring the capped viewer back to the full size. Needs root, iproute2,
//! ffmpeg, Chromium.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::time::{Duration, Instant};

use common::chromium::Browser;
use common::obs_simulcast::{OBS_LAYERS, ObsSimulcast};
use common::page_test::blocking;
use common::server::create;
use common::shaped::{
    PRESENTED_SINCE, ShapedLink, height_now, metric, page_now, presented, server_on, since,
    until_settled, viewer_page, within,
};
use common::udp_client::http;
use serde_json::{Value, json};

/// The capped viewer's link.
const CAP_KBIT: u32 = 1000;
/// How long the capped viewer may take to move to a layer that fits once it plays (the
/// issue's 5 s, with shaped_link.rs's slack for a loaded 2-core machine; printed).
const SETTLE: Duration = Duration::from_secs(10);
/// How long both viewers are watched once it settled.
const WATCHED: Duration = Duration::from_secs(20);
/// How long the capped viewer may take to be back on the full layer once the cap lifts.
const BACK: Duration = Duration::from_secs(15);
/// The full layer's height.
const FULL: u64 = OBS_LAYERS[0].height as u64;

#[tokio::test(flavor = "multi_thread")]
async fn a_capped_viewer_of_obs_simulcast_settles_on_a_layer_that_fits_and_comes_back() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let link = ShapedLink::new(239);
    let (server, base) = server_on(&link, "shaped-obs").await;
    let (ns, viewer_ip) = (link.ns.name.clone(), link.viewer);
    blocking(move || {
        let (id, view) = create(&base);
        let publisher = ObsSimulcast::publish(&base, &id, &OBS_LAYERS);
        let url = format!("{base}/stream?id={view}");
        // The server's reading of the layers, once each one has a bitrate.
        let t0 = Instant::now();
        let layers = loop {
            let layers = panel_layers(&base, &id);
            let all = layers.len() == 3 && layers.iter().all(|l| l.1 > 0);
            if all || t0.elapsed() > Duration::from_secs(20) {
                break layers;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        std::thread::sleep(Duration::from_secs(3));
        let layers = if layers.len() == 3 { panel_layers(&base, &id) } else { layers };
        eprintln!("the server reads the layers as (rid, kb/s, size): {layers:?}");
        let panel = panel(&base, &id);
        eprintln!(
            "and the broadcast as {} {}, a keyframe every {} s, {} % lost on the way in",
            panel["resolution"], panel["h264_profile"], panel["keyframe_interval_s"], panel["ingest_loss_percent"]
        );
        eprintln!("publisher sent {:?}", publisher.counts());
        assert!(publisher.connected(), "the publisher connected");
        assert_eq!(layers.len(), 3, "three layers on the broadcaster panel: {layers:?}");
        let (rids, sizes): (Vec<&str>, Vec<&str>) =
            layers.iter().map(|l| (l.0.as_str(), l.2.as_str())).unzip();
        assert_eq!(rids, ["0", "1", "2"], "full size first: {layers:?}");
        assert_eq!(sizes, ["1280x720", "852x480", "426x240"], "{layers:?}");
        assert!(
            layers[0].1 > u64::from(CAP_KBIT) * 3 / 2,
            "the full layer well over the cap: {layers:?}"
        );
        let uncapped = Browser::start();
        viewer_page(&uncapped, &url);
        link.cap(CAP_KBIT);
        let capped = Browser::start_in(Some((&ns, viewer_ip)));
        let joined = Instant::now();
        viewer_page(&capped, &url);
        within("the capped viewer moves to a layer that fits", SETTLE, || {
            let h = height_now(&capped);
            h > 0 && h < FULL
        });
        let settled = joined.elapsed();
        eprintln!("the capped viewer settled in {settled:?} at {}p", height_now(&capped));
        // Then 20 s of both, side by side, from the 5 s after it joined.
        until_settled(joined);
        let (sent0, requests0) = (publisher.counts(), publisher.requests());
        let plis0 = metric(&base, "plis_sent_total");
        let (c0, u0) = (page_now(&capped), page_now(&uncapped));
        let (bytes0, drops0) = link.cap_counters();
        let watch = Instant::now();
        std::thread::sleep(WATCHED);
        let (c, u) = (since(&capped, c0), since(&uncapped, u0));
        let (bytes, drops) = link.cap_counters();
        let (sent, requests) = (publisher.counts(), publisher.requests());
        let keyframes: Vec<u64> = (sent.iter().zip(&sent0))
            .map(|(a, b)| a.keyframes - b.keyframes)
            .collect();
        let forced: Vec<u64> = (sent.iter().zip(&sent0)).map(|(a, b)| a.forced - b.forced).collect();
        let requested = requests - requests0;
        eprintln!(
            "over {WATCHED:?}: capped {c:?}, uncapped {u:?}; the cap passed {} kb/s and dropped {} packets; \
             the publisher got {requested} keyframe requests and sent keyframes {keyframes:?} per layer, \
             {forced:?} of them early ({} from its GOP of 2 s); the server sent {} keyframe requests; \
             {} probe packets in all",
            (bytes - bytes0) * 8 / 1000 / WATCHED.as_secs(),
            drops - drops0,
            WATCHED.as_secs() / 2,
            metric(&base, "plis_sent_total") - plis0,
            metric(&base, "viewer_probe_packets_total"),
        );
        eprintln!("the server reads the layers as {:?}", panel_layers(&base, &id));
        eprintln!("the capped viewer's pauses over 100 ms: {:?}", pauses(&capped, c0));
        eprintln!("the uncapped viewer's pauses over 100 ms: {:?}", pauses(&uncapped, u0));
        eprintln!("the publisher's frames over 50 ms late: {:?}", publisher.late_since(watch));
        capped.screenshot("shaped_link_obs_capped_viewer");
        assert!(c.fps >= 25.0 && c.freezes == 0, "the capped viewer plays smoothly: {c:?}");
        assert!(c.last_height < FULL, "and stays on a layer that fits: {c:?}");
        assert!(u.fps >= 25.0 && u.freezes == 0, "the uncapped viewer plays smoothly: {u:?}");
        assert_eq!(u.last_height, FULL, "on the full layer: {u:?}");
        assert!(
            requested <= WATCHED.as_secs() / 2,
            "at most one keyframe request per 2 s: {requested} in {WATCHED:?}"
        );
        // The cap lifts: back to the full size.
        link.lift();
        let (lifted, mut heights) = (Instant::now(), Vec::new());
        // Watched for up to twice the limit, so that a late return is measured.
        let back = within("the viewer is back on the full layer", BACK * 2, || {
            let h = height_now(&capped);
            if heights.last().is_none_or(|&(_, last)| last != h) {
                heights.push((lifted.elapsed().as_millis() as u64, h));
            }
            h == FULL
        });
        eprintln!(
            "with the cap lifted, the viewer was back on the full layer in {back:?}: (ms, height) {heights:?}"
        );
        assert!(back <= BACK, "back on the full layer within {BACK:?}: {back:?}");
        let from = page_now(&capped);
        std::thread::sleep(Duration::from_secs(5));
        let after = since(&capped, from);
        assert!(after.fps >= 25.0 && after.last_height == FULL, "and plays it: {after:?}");
        eprintln!(
            "publisher sent {:?}, {} audio packets; {} keyframe requests in all",
            publisher.counts(),
            publisher.audio_packets(),
            publisher.requests()
        );
    })
    .await;
    server.shutdown().await;
}

/// Where a page paused over 100 ms since `from` (its clock): (ms after `from`, pause in ms,
/// height before, height after).
fn pauses(page: &Browser, from: u64) -> Vec<(u64, u64, u64, u64)> {
    let (_, frames) = presented(&page.js(PRESENTED_SINCE, json!([from])));
    (frames.windows(2))
        .filter(|w| w[1].0 - w[0].0 > 100)
        .map(|w| (w[0].0 - from, w[1].0 - w[0].0, w[0].1, w[1].1))
        .collect()
}

/// The broadcaster panel (`GET /api/broadcast`).
fn panel(base: &str, broadcast_id: &str) -> Value {
    let auth = format!("Bearer {broadcast_id}");
    let (status, _, body) = http(
        "GET",
        &format!("{base}/api/broadcast"),
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The broadcaster panel's layers: (rid, kb/s, size), full size first.
fn panel_layers(base: &str, broadcast_id: &str) -> Vec<(String, u64, String)> {
    let panel = panel(base, broadcast_id);
    (panel["layers"].as_array().into_iter().flatten())
        .map(|l| {
            (
                l["rid"].as_str().unwrap_or("").to_owned(),
                l["bitrate_kbps"].as_u64().unwrap_or(0),
                l["resolution"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}
