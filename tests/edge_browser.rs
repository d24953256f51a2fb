//! The viewer page in Chromium against an origin that redirects viewers to an edge: it
//! follows the 307, plays through the edge, and plays again through the origin when the
//! edge dies.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::page_test::{blocking, watch};
use common::server::{create, start_in, temp_dir};
use common::udp_client::{Client, http};

const SECRET: &str = "edge-browser-secret";

fn status(base: &str) -> serde_json::Value {
    let (code, _, body) = http("GET", &format!("{base}/api/status"), &[], "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Viewer sessions of the one live broadcast on `base`.
fn viewers(base: &str) -> u64 {
    status(base)["broadcasts"][0]["viewers"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_viewer_page_plays_through_an_edge_and_through_the_origin_when_the_edge_dies() {
    let (origin, obase) = start_in(
        &temp_dir("origin"),
        &["--edge-secret", SECRET, "--redirect-viewers"],
    )
    .await;
    // The edge's HTTP port is known only once it listens: it registers with that URL.
    let edge_http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let edge_addr = edge_http.local_addr().unwrap();
    drop(edge_http);
    let ebase = format!("http://{edge_addr}");
    let dir = temp_dir("edge");
    let edge = whipcast::Server::start(<whipcast::Config as clap::Parser>::parse_from([
        "whipcast",
        "--http-listen",
        &edge_addr.to_string(),
        "--udp-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--origin",
        &obase,
        "--edge-secret",
        SECRET,
        "--edge-url",
        &ebase,
    ]))
    .await
    .expect("the edge starts");
    let (o, e) = (obase.clone(), ebase.clone());
    let (publisher, browser) = blocking(move || {
        let (id, view) = create(&o);
        let publisher = Client::publish(&o, &id).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while status(&o)["edges"].as_array().is_none_or(|a| a.is_empty()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the edge never registered"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let browser = watch(&o, &view, "edge-redirected");
        let session = browser
            .js("return window.whipcast.session", serde_json::json!([]))
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            session.starts_with(&format!("{e}/stream/session/")),
            "the page's session is on the edge: {session}"
        );
        assert_eq!(viewers(&e), 1, "the page watches on the edge");
        assert_eq!(viewers(&o), 1, "the origin serves only the edge's pull");
        (publisher, browser)
    })
    .await;
    // A crash, not a shutdown: no goodbye to anyone.
    drop(edge);
    let o = obase.clone();
    blocking(move || {
        browser.wait("the page plays again, through the origin", |b| {
            let session = b
                .js("return window.whipcast.session", serde_json::json!([]))
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // Served by the origin itself: a path on the page's own server.
            let here = session.starts_with("/stream/session/")
                || session.starts_with(&format!("{o}/stream/session/"));
            (here && b.player_state() == "live").then_some(())
        });
        browser.wait_decoding("frames decoded through the origin");
        browser.screenshot("edge-died-origin-serves");
        drop(browser);
        publisher.stop();
    })
    .await;
    origin.shutdown().await;
}
