//! Viewers tell whipcast when its packets arrived: with a transport-wide number on every
//! packet whipcast seals and transport-cc negotiated, Chromium's and Firefox's receivers send
//! transport-wide feedback, which whipcast's estimate of each viewer's link (the one a layer
//! per viewer is chosen from) is read from.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::time::{Duration, Instant};

use common::chromium::Browser;
use common::firefox::firefox_holds;
use common::page_test::{blocking, start};
use common::server::{create, metric};
use common::udp_client::Client;

/// Transport-wide feedback read into an estimate.
const READ: &str = "whipcast_viewer_transport_feedback_total";

/// Waits until `/metrics` counts more than `since` + 20 feedbacks read (a second or two of
/// them); the count.
fn wait_for_feedback(base: &str, since: u64, who: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = metric(base, READ);
        if n > since + 20 {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{who} sent no transport-wide feedback in 20 s ({n} read in all)"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_and_firefox_viewers_send_the_feedback_their_estimate_is_read_from() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let _obs = Client::publish(&base, &id).expect("OBS-shaped WHIP accepted");
        let url = format!("{base}/stream?id={view}");
        let before = metric(&base, READ);
        let chromium = Browser::start();
        chromium.goto(&url);
        chromium.wait_decoding("the Chromium viewer decodes");
        let after_chromium = wait_for_feedback(&base, before, "the Chromium viewer");
        drop(chromium);
        // The Chromium viewer's session ends with its page; what comes next is Firefox's.
        std::thread::sleep(Duration::from_secs(2));
        let before_firefox = metric(&base, READ);
        let firefox = std::thread::spawn(move || firefox_holds(&url, "estimate-firefox", 8));
        let after_firefox = wait_for_feedback(&base, before_firefox, "the Firefox viewer");
        firefox.join().expect("Firefox played the page");
        let total = metric(&base, READ);
        eprintln!(
            "feedback read: {before} before, {after_chromium} with Chromium, {before_firefox} → \
             {after_firefox} with Firefox, {total} when its 8 s were over; REMBs {}",
            metric(&base, "whipcast_viewer_rembs_total")
        );
    })
    .await;
    r.server.shutdown().await;
}
