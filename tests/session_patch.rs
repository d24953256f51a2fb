//! PATCH on session URLs against the real server (RFC 9725 §4.3): `ETag`s on `201`, trickle
//! (`204`), ICE restart (`200` + sdpfrag + new `ETag`), and the `If-Match` rules (`412`,
//! `428`), with connected str0m clients over loopback.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::server::{create, start_in, temp_dir};
use common::sim::viewer_offer;
use common::udp_client::{Client, http};

const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn sdp_line<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("a={name}:")))
}

fn restart_fragment(ufrag: &str) -> String {
    format!(
        "a=ice-ufrag:{ufrag}\r\na=ice-pwd:0123456789abcdefghijklmn\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
    )
}

/// PATCHes `url`: (status, headers, body).
fn patch(url: &str, if_match: Option<&str>, body: &str) -> (u16, Vec<(String, String)>, String) {
    let mut headers = vec![("Content-Type", SDPFRAG)];
    if let Some(m) = if_match {
        headers.push(("If-Match", m));
    }
    http("PATCH", url, &headers, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn whip_and_whep_answers_carry_the_etag_scripts_can_read() {
    let (server, base) = start_in(&temp_dir("patch"), &[]).await;
    tokio::task::spawn_blocking(move || {
        let (id, view) = create(&base);
        let publisher = Client::publish(&base, &id).unwrap();
        publisher.wait_for("publisher connected", |s| s.connected);
        let (status, headers, answer) = http(
            "POST",
            &format!("{base}/stream?id={view}"),
            &[("Content-Type", "application/sdp")],
            &viewer_offer(false),
        );
        assert_eq!(status, 201, "{answer}");
        let ufrag = sdp_line(&answer, "ice-ufrag").unwrap();
        assert_eq!(
            header(&headers, "etag"),
            Some(format!("\"{ufrag}\"").as_str()),
            "the ETag names the session's ICE credentials"
        );
        let exposed = header(&headers, "access-control-expose-headers").unwrap();
        assert!(exposed.contains("ETag"), "{exposed}");
        // The WHIP answer has one too (checked through a second publisher, which replaces
        // the first one: the same route OBS takes when it reconnects).
        let url = format!("{base}/broadcast?id={id}");
        let (status, headers, answer) = http(
            "POST",
            &url,
            &[("Content-Type", "application/sdp")],
            &common::sim::obs_offer(),
        );
        assert_eq!(status, 201, "{answer}");
        let ufrag = sdp_line(&answer, "ice-ufrag").unwrap();
        assert_eq!(
            header(&headers, "etag"),
            Some(format!("\"{ufrag}\"").as_str())
        );
    })
    .await
    .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_answers_204_for_trickle_and_200_412_428_for_ice_restarts() {
    let (server, base) = start_in(&temp_dir("patch"), &[]).await;
    tokio::task::spawn_blocking(move || {
        let (id, _) = create(&base);
        let publisher = Client::publish(&base, &id).unwrap();
        // Connected: the server has seen the client's ICE ufrag in its checks.
        publisher.wait_for("publisher connected", |s| s.connected);
        let url = format!("{base}{}", publisher.location);
        let etag = format!("\"{}\"", sdp_line(&publisher.answer, "ice-ufrag").unwrap());

        let trickle = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
        assert_eq!(patch(&url, None, trickle).0, 204, "trickle");
        assert_eq!(patch(&url, Some(&etag), trickle).0, 204, "trickle, ETag");
        let (status, headers, _) = patch(&url, None, &restart_fragment("newufrag1"));
        assert_eq!(status, 428, "a restart without If-Match");
        assert_eq!(
            header(&headers, "content-type"),
            Some("application/problem+json")
        );
        let wrong = patch(
            &url,
            Some("\"not-the-etag\""),
            &restart_fragment("newufrag1"),
        );
        assert_eq!(wrong.0, 412, "a restart with a stale ETag");

        let (status, headers, body) = patch(&url, Some("*"), &restart_fragment("newufrag1"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(header(&headers, "content-type"), Some(SDPFRAG));
        let new_ufrag = sdp_line(&body, "ice-ufrag").expect("our new ufrag");
        let new_etag = header(&headers, "etag").expect("a new ETag").to_owned();
        assert_eq!(new_etag, format!("\"{new_ufrag}\""));
        assert_ne!(new_etag, etag, "the ETag changes with the credentials");
        assert!(sdp_line(&body, "ice-pwd").is_some_and(|p| p.len() >= 22));
        assert_eq!(sdp_line(&body, "mid"), Some("0"), "under the client's mid");
        // The same host candidate as in the answer: "<ip> <port> typ host".
        let first = publisher
            .answer
            .lines()
            .find(|l| l.starts_with("a=candidate:"))
            .unwrap();
        let addr: Vec<&str> = first.split_whitespace().skip(4).take(4).collect();
        assert!(body.contains(&addr.join(" ")), "{addr:?} in:\n{body}");
        assert!(body.contains("a=end-of-candidates"), "{body}");

        assert_eq!(
            patch(&url, Some(&etag), &restart_fragment("newufrag2")).0,
            412,
            "the old ETag is stale now"
        );
        assert_eq!(
            patch(&url, Some(&new_etag), &restart_fragment("newufrag2")).0,
            200,
            "the new ETag restarts again"
        );
        assert_eq!(
            patch(&url, Some("*"), "a=ice-ufrag:abcd\r\n").0,
            400,
            "a ufrag without a password"
        );
        let viewer_space = url.replace("/broadcast/session/", "/stream/session/");
        assert_eq!(
            patch(&viewer_space, Some("*"), &restart_fragment("newufrag3")).0,
            404,
            "a publisher session is not reachable through viewer URLs"
        );
    })
    .await
    .unwrap();
    server.shutdown().await;
}
