//! A Chromium viewer behind a lossy link keeps playing because whipcast retransmits (RTX).
//! The viewer runs in a network namespace of the test's own whose incoming UDP loses 5 % at
//! random (nftables `numgen random`: this machine's kernel has no netem qdisc), and whipcast
//! listens on the root namespace's end of the veth. Needs root, iproute2, nftables, Chromium.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use clap::Parser;
use common::chromium::Browser;
use common::netns::{Netns, link};
use common::page_test::blocking;
use common::server::{create, temp_dir};
use common::udp_client::Client;
use serde_json::{Value, json};
use whipcast::{Config, Server};

/// Drops 5 % of the UDP datagrams that reach the namespace, at random: media, RTX and STUN
/// alike (ICE and DTLS retry; the page's HTTP is TCP).
const LOSE_5_PERCENT: &str = "table inet lossy {
  chain input {
    type filter hook input priority 0;
    meta l4proto udp numgen random mod 100 < 5 counter drop
  }
}";

/// The viewer page's video `inbound-rtp` counters that tell loss and its repair.
const VIDEO_INBOUND: &str = "
const done = arguments[arguments.length - 1];
window.whipcast.pc.getStats().then((stats) => {
  let found = null;
  stats.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') found = {
    framesDecoded: r.framesDecoded || 0,
    packetsLost: r.packetsLost || 0,
    nackCount: r.nackCount || 0,
    retransmittedPacketsReceived: r.retransmittedPacketsReceived,
    retransmittedBytesReceived: r.retransmittedBytesReceived,
  }; });
  done(found);
}).catch((e) => done(String(e)));";

fn video_inbound(page: &Browser) -> Value {
    page.js_async(VIDEO_INBOUND, json!([]))
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
    let server = Server::start(Config::parse_from(args))
        .await
        .expect("server starts");
    let base = format!("http://{}", server.http_addr);
    let ns = viewer_ns.name.clone();
    let last = blocking(move || {
        let (id, view) = create(&base);
        let _obs = Client::publish(&base, &id).expect("OBS-shaped WHIP accepted");
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
        viewer.wait("a retransmission answers a NACK", |b| {
            let stats = video_inbound(b);
            eprintln!("video inbound-rtp: {stats}");
            let rtx = stats["retransmittedPacketsReceived"].as_u64().unwrap_or(0);
            (rtx > before).then_some(())
        });
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
