//! Abuse over HTTP against the real server on 127.0.0.1:0: strangers without a broadcast ID,
//! and holders of a viewer link, trying to exhaust the server. Every flood here is small,
//! bounded and aimed at loopback only.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::io::Write;

use common::http_server::{self, Running, create, create_with, post_sdp};
use common::raw_http::{raw, read_head};
use common::sim::{obs_offer, viewer_offer};
use reqwest::{StatusCode, header};
use serde_json::Value;

async fn start(extra: &[&str]) -> Running {
    http_server::start("abuse", extra).await
}

/// A live broadcast (its publisher is in place; media never flows): (broadcast, view) IDs.
async fn live(r: &Running) -> (String, String) {
    let (id, view) = create(r).await;
    let res = post_sdp(r, &format!("/broadcast?id={id}"), obs_offer()).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    (id, view)
}

fn retry_after(res: &reqwest::Response) -> u64 {
    res.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test]
async fn viewer_sessions_still_connecting_are_bounded_per_address() {
    let r = start(&["--max-pending-viewers-per-ip", "2", "--max-viewers", "50"]).await;
    let (_, view) = live(&r).await;
    for _ in 0..2 {
        let res = post_sdp(&r, &format!("/stream?id={view}"), viewer_offer(false)).await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let res = post_sdp(&r, &format!("/stream?id={view}"), viewer_offer(false)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&res) >= 1);
    assert_eq!(r.server.stats().await.unwrap().viewers, 2);
    r.server.shutdown().await;
}

/// The bound counts sessions in their handshake, not sessions started lately: a viewer who
/// reloads the page again and again (each load connecting) is never made to wait.
#[tokio::test(flavor = "multi_thread")]
async fn viewer_sessions_that_connect_give_their_pending_place_back() {
    let r = start(&["--max-pending-viewers-per-ip", "2"]).await;
    let (id, view) = create(&r).await;
    let base = r.base.clone();
    blocking(move || {
        let publisher = common::udp_client::Client::publish(&base, &id).unwrap();
        publisher.wait_for("a frame sent", |s| !s.frames.is_empty());
        for load in 0..5 {
            let viewer = common::udp_client::Client::view(&base, &view)
                .unwrap_or_else(|e| panic!("load {load} was refused: {e:?}"));
            viewer.wait_for("a frame", |s| !s.frames.is_empty());
            viewer.stop();
        }
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test]
async fn connectivity_tests_are_bounded_per_address_and_counted_in_metrics() {
    let r = start(&[]).await;
    // The server's own start-up self-test is a connectivity test too: let it finish first.
    let metrics = || async {
        let res = r.http.get(format!("{}/metrics", r.base)).send().await;
        res.unwrap().text().await.unwrap()
    };
    for _ in 0..300 {
        if metrics()
            .await
            .contains("whipcast_connectivity_tests_running 0")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for _ in 0..2 {
        let res = post_sdp(&r, "/api/connectivity-test", viewer_offer(false)).await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let res = post_sdp(&r, "/api/connectivity-test", viewer_offer(false)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&res) >= 1);
    let metrics = metrics().await;
    for line in [
        "whipcast_connectivity_tests_total 2",
        "whipcast_connectivity_tests_refused_total 1",
        "whipcast_connectivity_tests_running 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    r.server.shutdown().await;
}

#[tokio::test]
async fn creating_broadcasts_is_rate_limited_per_address() {
    let r = start(&["--max-creations-per-ip", "3"]).await;
    for _ in 0..3 {
        create(&r).await;
    }
    let res = create_with(&r, &[]).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&res);
    assert!((1..=3600).contains(&wait), "{wait}");
    r.server.shutdown().await;
}

#[tokio::test]
async fn a_forwarded_address_counts_only_from_a_trusted_proxy() {
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    // Without --trusted-proxy the header is ignored: both "clients" are 127.0.0.1.
    let r = start(&["--max-creations-per-ip", "1"]).await;
    assert_eq!(
        create_with(&r, &xff("198.51.100.1")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        create_with(&r, &xff("198.51.100.2")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    r.server.shutdown().await;
    // Behind a configured proxy, each forwarded client has its own bucket.
    let r = start(&[
        "--max-creations-per-ip",
        "1",
        "--trusted-proxy",
        "127.0.0.1",
    ])
    .await;
    for ip in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(
            create_with(&r, &xff(ip)).await.status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(
        create_with(&r, &xff("198.51.100.1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    r.server.shutdown().await;
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408() {
    let r = start(&["--http-header-timeout", "1s"]).await;
    let (id, _) = create(&r).await;
    let addr = r.server.http_addr;
    let head = format!(
        "POST /broadcast?id={id} HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: 5000\r\n\r\nv=0\r\n"
    );
    let answer = blocking(move || {
        let mut s = raw(addr, &head);
        read_head(&mut s)
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    r.server.shutdown().await;
}

#[tokio::test]
async fn a_view_id_rotated_while_the_offer_trickles_in_admits_nobody() {
    let r = start(&[]).await;
    let (id, view) = live(&r).await;
    let offer = viewer_offer(false);
    let (first, rest) = offer.split_at(offer.len() / 2);
    let head = format!(
        "POST /stream?id={view} HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{first}",
        offer.len()
    );
    let addr = r.server.http_addr;
    let s = blocking(move || raw(addr, &head)).await;
    let rotated = r
        .http
        .post(format!("{}/api/broadcast/view-id", r.base))
        .bearer_auth(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);
    let rest = rest.to_owned();
    let answer = blocking(move || {
        let mut s = s;
        s.write_all(rest.as_bytes()).unwrap();
        read_head(&mut s)
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
    assert_eq!(r.server.stats().await.unwrap().viewers, 0);
    r.server.shutdown().await;
}

#[tokio::test]
async fn patch_on_an_unknown_session_is_refused_without_reading_its_body() {
    let r = start(&["--http-header-timeout", "60s"]).await;
    let addr = r.server.http_addr;
    let session = "A".repeat(22);
    let head = format!(
        "PATCH /stream/session/{session} HTTP/1.1\r\nHost: x\r\nContent-Type: application/trickle-ice-sdpfrag\r\nContent-Length: 5000\r\n\r\n"
    );
    // The body never comes; the answer must not wait for it (nor for the 60 s deadline).
    let answer = blocking(move || {
        let mut s = raw(addr, &head);
        read_head(&mut s)
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
    r.server.shutdown().await;
}

#[tokio::test]
async fn a_state_file_that_cannot_be_saved_changes_nothing_in_memory() {
    let r = start(&["--max-broadcasts", "1"]).await;
    // A directory where the state file should be: the rename onto it fails.
    let state = r.dir.join("broadcasts.json");
    let _ = std::fs::remove_file(&state);
    std::fs::create_dir_all(state.join("in-the-way")).unwrap();
    let res = create_with(&r, &[]).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = res.json().await.unwrap();
    assert!(
        v["detail"].as_str().unwrap().contains("save"),
        "says what failed: {v}"
    );
    std::fs::remove_dir_all(&state).unwrap();
    // Had the failed creation stayed in memory, the one place would be taken.
    create(&r).await;
    r.server.shutdown().await;
}

#[tokio::test]
async fn the_broadcaster_panel_takes_the_broadcast_id_in_a_header() {
    let r = start(&[]).await;
    let (id, view) = create(&r).await;
    let panel = r
        .http
        .get(format!("{}/api/broadcast", r.base))
        .bearer_auth(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(panel.status(), StatusCode::OK);
    let v: Value = panel.json().await.unwrap();
    assert_eq!(v["view_id"], view.as_str());
    let anonymous = r
        .http
        .get(format!("{}/api/broadcast", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // The page itself polls that way: its script never puts the ID in a path.
    let js = r
        .http
        .get(format!("{}/assets/broadcast.js", r.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!js.contains("/api/broadcasts/${"), "{js}");
    r.server.shutdown().await;
}

#[tokio::test]
async fn pages_forbid_framing_foreign_scripts_and_sniffing() {
    let r = start(&[]).await;
    for path in ["/", "/broadcast", "/stream?id=x", "/status"] {
        let res = r
            .http
            .get(format!("{}{path}", r.base))
            .send()
            .await
            .unwrap();
        let h = res.headers();
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{path}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
    }
    let js = r
        .http
        .get(format!("{}/assets/player.js", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(js.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    r.server.shutdown().await;
}

#[tokio::test]
async fn a_huge_user_agent_is_stored_short() {
    let r = start(&[]).await;
    let (id, _) = create(&r).await;
    let agent = format!("OBS-Studio/31.0.2; {})", "x".repeat(8000));
    let res = r
        .http
        .post(format!("{}/broadcast?id={id}", r.base))
        .header(header::CONTENT_TYPE, "application/sdp")
        .header(header::USER_AGENT, agent)
        .body(obs_offer())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: Value = r
        .http
        .get(format!("{}/api/broadcast", r.base))
        .bearer_auth(&id)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored = v["publisher_agent"].as_str().unwrap();
    assert!(stored.starts_with("OBS Studio 31.0.2"), "{stored}");
    assert!(stored.len() <= 64, "{} chars kept", stored.len());
    r.server.shutdown().await;
}
