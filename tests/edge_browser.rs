//! The viewer page in Chromium against an origin that redirects viewers to its edges: it
//! follows the 307, plays through an edge (pages spread over the edges), and plays again
//! through the origin when the edge dies.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::chromium::Browser;
use common::edges::{origin, registered_edge, status, wait_for_edges};
use common::page_test::{blocking, watch};
use common::server::create;
use common::udp_client::Client;

/// The page's WHEP session URL (absolute when it was redirected to another server).
fn session_of(page: &Browser) -> String {
    page.js("return window.whipcast.session", serde_json::json!([]))
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Viewer sessions of the one live broadcast on `base`.
fn viewers(base: &str) -> u64 {
    status(base)["broadcasts"][0]["viewers"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_viewer_page_plays_through_an_edge_and_through_the_origin_when_the_edge_dies() {
    let (origin, obase) = origin(&["--redirect-viewers"]).await;
    let (edge, ebase) = registered_edge(&obase, &[]).await;
    let (o, e) = (obase.clone(), ebase.clone());
    let (publisher, browser) = blocking(move || {
        let (id, view) = create(&o);
        let publisher = Client::publish(&o, &id).unwrap();
        wait_for_edges(&o, 1);
        let browser = watch(&o, &view, "edge-redirected");
        let session = session_of(&browser);
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
            let session = session_of(b);
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

#[tokio::test(flavor = "multi_thread")]
async fn viewer_pages_opened_at_the_origin_are_spread_over_two_edges_and_play() {
    let (origin, obase) = origin(&["--redirect-viewers"]).await;
    let (edge1, e1) = registered_edge(&obase, &[]).await;
    let (edge2, e2) = registered_edge(&obase, &[]).await;
    let o = obase.clone();
    blocking(move || {
        wait_for_edges(&o, 2);
        let (id, view) = create(&o);
        let publisher = Client::publish(&o, &id).unwrap();
        // Each page opens the origin's link; `watch` returns once it decodes frames.
        let pages = [
            watch(&o, &view, "two-edges-first"),
            watch(&o, &view, "two-edges-second"),
        ];
        let mut served_by: Vec<&str> = pages
            .iter()
            .map(|p| {
                let session = session_of(p);
                [e1.as_str(), e2.as_str()]
                    .into_iter()
                    .find(|e| session.starts_with(&format!("{e}/stream/session/")))
                    .unwrap_or_else(|| panic!("the page watches on an edge: {session}"))
            })
            .collect();
        served_by.sort_unstable();
        let mut edges = vec![e1.as_str(), e2.as_str()];
        edges.sort_unstable();
        assert_eq!(served_by, edges, "the least-loaded edge gets the next page");
        assert_eq!(
            (viewers(&e1), viewers(&e2)),
            (1, 1),
            "one page on each edge"
        );
        assert_eq!(
            viewers(&o),
            2,
            "the origin serves only the two edges' pulls"
        );
        for page in &pages {
            page.wait_decoding("each page keeps decoding");
        }
        drop(pages);
        publisher.stop();
    })
    .await;
    for server in [edge1, edge2, origin] {
        server.shutdown().await;
    }
}
