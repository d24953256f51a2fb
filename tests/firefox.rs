//! Firefox, an independent WebRTC stack: Debian's headless `firefox-esr` plays a broadcast from
//! an OBS-shaped publisher through the real viewer page (driven by `common::firefox`).

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::firefox::firefox_plays;
use common::page_test::{blocking, start};
use common::server::create;
use common::udp_client::Client;

#[tokio::test(flavor = "multi_thread")]
async fn obs_shaped_publisher_reaches_firefox_viewer_page() {
    let r = start(&[]).await;
    let base = r.base.clone();
    let seen = blocking(move || {
        let (id, view) = create(&base);
        let _obs = Client::publish(&base, &id).expect("OBS-shaped WHIP accepted");
        firefox_plays(
            &format!("{base}/stream?id={view}"),
            "obs_shaped_publisher_reaches_firefox_viewer_page",
        )
    })
    .await;
    r.server.shutdown().await;
    eprintln!("Firefox saw {seen}");
    assert_eq!(seen["state"], "live");
    assert_eq!(
        seen["size"],
        serde_json::json!([320, 240]),
        "the fixture's size"
    );
    let (at_live, later) = (
        seen["framesAtLive"].as_u64().unwrap(),
        seen["framesLater"].as_u64().unwrap(),
    );
    assert!(
        later > at_live,
        "frames decoded rise: {at_live} then {later}"
    );
    let (mean, spread) = (
        seen["screenshot"]["mean"].as_f64().unwrap(),
        seen["screenshot"]["spread"].as_f64().unwrap(),
    );
    assert!(
        mean > 20.0 && spread > 5.0,
        "the screenshot of the video is not black or flat: mean {mean}, spread {spread}"
    );
}
