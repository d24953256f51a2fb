//! A Chromium viewer behind a lossy link keeps playing because whipcast retransmits (RTX):
//! over 10 s after its first NACK, the link drops 3 % or more of the datagrams (nftables'
//! own counters say so), yet the page decodes 99 % or more of the frames sent meanwhile and
//! the picture is frozen for under half a second of the ten. The viewer runs in a network namespace of the test's own whose incoming UDP loses
//! 5 % at random (nftables `numgen random`: this machine's kernel has no netem qdisc), and
//! whipcast listens on the root namespace's end of the veth. Needs root, iproute2, nftables,
//! Chromium.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use clap::Parser;
use common::chromium::Browser;
use std::time::Duration;

use common::netns::{Netns, link};
use common::page_test::blocking;
use common::server::{create, temp_dir};
use common::udp_client::Client;
use serde_json::{Value, json};
use whipcast::Config;

/// Drops 5 % of the UDP datagrams that reach the namespace, at random: media, RTX and STUN
/// alike (ICE and DTLS retry; the page's HTTP is TCP). Named counters count every UDP
/// datagram that arrives and those dropped.
const LOSE_5_PERCENT: &str = "table inet lossy {
  counter arrived { }
  counter dropped { }
  chain input {
    type filter hook input priority 0;
    meta l4proto udp counter name arrived
    meta l4proto udp numgen random mod 100 < 5 counter name dropped drop
  }
}";

/// How long the repair is watched, from the first NACK.
const WATCHED: Duration = Duration::from_secs(10);
/// Readings per end of the watched time (see [`lag`]).
const LAG_READINGS: usize = 5;
/// How many frames more the viewer may be behind at the end than at the start besides 1 %
/// of those sent: Chromium's jitter buffer lengthens its delay while retransmissions arrive
/// (seen: 4 frames, 133 ms, over 10 s on a loaded machine, with no freeze). A packet never
/// repaired costs the frames up to the next keyframe, and a freeze (`MAX_FROZEN`).
const DELAY_GROWTH_FRAMES: i64 = 6;
/// How long the picture may be frozen in all while it is watched.
const MAX_FROZEN: Duration = Duration::from_millis(500);

/// The viewer page's video `inbound-rtp` counters that tell loss and its repair.
const VIDEO_INBOUND: &str = "
const done = arguments[arguments.length - 1];
window.whipcast.pc.getStats().then((stats) => {
  let found = null;
  stats.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') found = {
    framesDecoded: r.framesDecoded || 0,
    packetsReceived: r.packetsReceived,
    packetsLost: r.packetsLost,
    freezeCount: r.freezeCount,
    totalFreezesDuration: r.totalFreezesDuration,
    nackCount: r.nackCount || 0,
    retransmittedPacketsReceived: r.retransmittedPacketsReceived,
    retransmittedBytesReceived: r.retransmittedBytesReceived,
  }; });
  done(found);
}).catch((e) => done(String(e)));";

fn video_inbound(page: &Browser) -> Value {
    page.js_async(VIDEO_INBOUND, json!([]))
}

/// How many frames the viewer is behind the publisher (sent and not decoded), the least of
/// [`LAG_READINGS`] readings a fifth of a second apart; the last reading's stats and frames
/// sent. A frame
/// that waits for its retransmission is behind for a moment only; one never repaired stays
/// behind, so only those make the least reading grow between two times.
fn lag(viewer: &Browser, obs: &Client) -> (i64, Value, i64) {
    let (mut least, mut stats, mut sent) = (i64::MAX, Value::Null, 0);
    for i in 0..LAG_READINGS {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        sent = obs.frames().len() as i64;
        stats = video_inbound(viewer);
        least = least.min(sent - count(&stats, "framesDecoded"));
    }
    (least, stats, sent)
}

/// A counter of `field` in `stats`; fails when the browser did not report it.
fn count(stats: &Value, field: &str) -> i64 {
    stats[field]
        .as_i64()
        .unwrap_or_else(|| panic!("video inbound-rtp has no {field}: {stats}"))
}

/// A duration in seconds of `field` in `stats`; fails when the browser did not report it.
fn seconds(stats: &Value, field: &str) -> f64 {
    stats[field]
        .as_f64()
        .unwrap_or_else(|| panic!("video inbound-rtp has no {field}: {stats}"))
}

/// The nftables counters of the namespace named `ns`: (datagrams arrived, dropped).
fn datagrams(ns: &str) -> (u64, u64) {
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "-j", "list", "counters", "table", "inet", "lossy",
        ])
        .output()
        .expect("nft runs");
    let listed: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nft's JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let packets = |name: &str| {
        listed["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["counter"]["name"] == name)
            .and_then(|o| o["counter"]["packets"].as_u64())
            .unwrap_or_else(|| panic!("no counter {name}: {listed}"))
    };
    (packets("arrived"), packets("dropped"))
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_viewer_behind_5_percent_loss_keeps_decoding_with_retransmissions() {
    let viewer_ns = Netns::new();
    link(None, "10.233.0.1/24", Some(&viewer_ns), "10.233.0.2/24");
    viewer_ns.nft(LOSE_5_PERCENT);
    let data = temp_dir("lossy");
    let args = [
        "whipcast",
        "--http-listen",
        "10.233.0.1:0",
        "--udp-listen",
        "10.233.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let server = common::server::start_config(Config::parse_from(args))
        .await
        .expect("server starts");
    let base = format!("http://{}", server.http_addr);
    let ns = viewer_ns.name.clone();
    let last = blocking(move || {
        let (id, view) = create(&base);
        let obs = Client::publish(&base, &id).expect("OBS-shaped WHIP accepted");
        let viewer = Browser::start_in(Some((&ns, [10, 233, 0, 2].into())));
        viewer.goto(&format!("{base}/stream?id={view}"));
        viewer.wait("the viewer page says live", |b| {
            (b.player_state() == "live").then_some(())
        });
        viewer.wait_decoding("frames decoded behind the lossy link");
        // The first frame's packets are repeated as retransmissions without being asked
        // (first_frame.rs), so RTX alone proves nothing: wait for a NACK, then for RTX
        // beyond what had arrived by then.
        let asked = viewer.wait("the viewer asks for what it lost (NACK)", |b| {
            let stats = video_inbound(b);
            eprintln!("video inbound-rtp: {stats}");
            (stats["nackCount"].as_u64().unwrap_or(0) > 0).then_some(stats)
        });
        let before = asked["retransmittedPacketsReceived"].as_u64().unwrap_or(0);
        let link_before = datagrams(&ns);
        let (lag_before, _, sent_before) = lag(&viewer, &obs);
        std::thread::sleep(WATCHED);
        let (lag_after, stats, sent_after) = lag(&viewer, &obs);
        let link = datagrams(&ns);
        eprintln!("after {WATCHED:?}: video inbound-rtp: {stats}");
        let (arrived, dropped) = (link.0 - link_before.0, link.1 - link_before.1);
        let dropped_share = dropped as f64 / arrived.max(1) as f64;
        eprintln!(
            "the link dropped {dropped} of {arrived} datagrams ({:.2} %)",
            dropped_share * 100.0
        );
        assert!(
            dropped_share >= 0.03,
            "the link dropped {dropped} of {arrived} datagrams: too few to test a repair"
        );
        // A packet never repaired leaves its frame incomplete, and the decoder waits for the
        // next keyframe: the frames decoded fall behind those sent for good, by up to a GOP
        // each time. (Chromium's packetsLost cannot say it: RTX-recovered packets are not
        // counted as received on the media stream, so it stays near the link's loss however
        // well retransmission repairs.)
        let delta = |field: &str| count(&stats, field) - count(&asked, field);
        let sent = sent_after - sent_before;
        let missing = (lag_after - lag_before).max(0);
        let missing_share = missing as f64 / sent.max(1) as f64;
        eprintln!(
            "frames behind: {lag_before} at the start, {lag_after} at the end: {missing} of the \
             {sent} sent meanwhile not decoded ({:.2} %); packetsLost rose {} of {}",
            missing_share * 100.0,
            delta("packetsLost"),
            delta("packetsReceived") + delta("packetsLost")
        );
        assert!(
            sent > 0 && missing < sent / 100 + DELAY_GROWTH_FRAMES,
            "retransmissions repair what the link lost: {missing} of {sent} frames sent were not decoded"
        );
        // A frame that waits for a second retransmission (Chromium asks again after its
        // default 100 ms RTT when the first is lost too), or a busy 2-core machine, can hold
        // one frame past Chromium's freeze threshold (about 180 ms at 30 fps) now and then; a
        // loss never repaired freezes the picture until the next keyframe.
        let frozen = seconds(&stats, "totalFreezesDuration") - seconds(&asked, "totalFreezesDuration");
        assert!(
            frozen < MAX_FROZEN.as_secs_f64(),
            "the picture was frozen for {frozen:.2} s of {WATCHED:?} ({} freezes): {asked} then {stats}",
            delta("freezeCount")
        );
        let rtx = stats["retransmittedPacketsReceived"].as_u64().unwrap_or(0);
        assert!(rtx > before, "retransmissions answered the NACKs: {asked} then {stats}");
        viewer.wait_decoding("frames keep being decoded");
        let (mean, spread) = viewer.picture();
        assert!(
            mean > 20.0 && spread > 5.0,
            "the picture is not black or flat: mean {mean}, spread {spread}"
        );
        viewer.screenshot("chromium_viewer_behind_5_percent_loss");
        video_inbound(&viewer)
    })
    .await;
    eprintln!("at the end: {last}");
    server.shutdown().await;
    drop(viewer_ns);
}
