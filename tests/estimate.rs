//! Viewers tell whipcast what their links carry: with abs-send-time written on the packets
//! whipcast seals and `goog-remb` negotiated (no transport-cc), Chromium's and Firefox's
//! receivers send REMB, the estimate a layer per viewer is chosen from.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::time::{Duration, Instant};

use common::chromium::Browser;
use common::firefox::firefox_holds;
use common::page_test::{blocking, start};
use common::server::{create, metric};
use common::udp_client::Client;

const REMBS: &str = "whipcast_viewer_rembs_total";

/// Waits until `/metrics` counts more REMBs than `since`; the count.
fn wait_for_rembs(base: &str, since: u64, who: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = metric(base, REMBS);
        if n > since {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{who} sent no REMB in 20 s ({n} in all)"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_and_firefox_viewers_send_their_estimate() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let _obs = Client::publish(&base, &id).expect("OBS-shaped WHIP accepted");
        let url = format!("{base}/stream?id={view}");
        let before = metric(&base, REMBS);
        let chromium = Browser::start();
        chromium.goto(&url);
        chromium.wait_decoding("the Chromium viewer decodes");
        let after_chromium = wait_for_rembs(&base, before, "the Chromium viewer");
        drop(chromium);
        // The Chromium viewer's session ends with its page; what comes next is Firefox's.
        std::thread::sleep(Duration::from_secs(2));
        let before_firefox = metric(&base, REMBS);
        let firefox = std::thread::spawn(move || firefox_holds(&url, "estimate-firefox", 8));
        let after_firefox = wait_for_rembs(&base, before_firefox, "the Firefox viewer");
        firefox.join().expect("Firefox played the page");
        let total = metric(&base, REMBS);
        eprintln!(
            "REMBs: {before} before, {after_chromium} with Chromium, {before_firefox} → \
             {after_firefox} with Firefox, {total} when its 8 s were over"
        );
    })
    .await;
    r.server.shutdown().await;
}
