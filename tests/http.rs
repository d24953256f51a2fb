//! The HTTP surface against the real server on 127.0.0.1:0: status codes, headers and
//! problem+json bodies for every class of request, good and bad.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use clap::Parser;
use common::http_server::{self, Running, create, start_in};
use common::sim::{obs_offer, viewer_offer};
use reqwest::{StatusCode, header};
use serde_json::Value;
use whipcast::{Config, Server};

async fn start(extra: &[&str]) -> Running {
    http_server::start("http", extra).await
}

/// Asserts a problem+json answer with this status and a human sentence; returns the response
/// headers.
async fn problem(res: reqwest::Response, status: StatusCode) -> (header::HeaderMap, String) {
    assert_eq!(res.status(), status);
    let headers = res.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["status"], status.as_u16());
    let detail = v["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.len() > 10,
        "a sentence a person can act on: {detail}"
    );
    (headers, detail)
}

async fn whip(
    r: &Running,
    query_id: Option<&str>,
    ctype: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let url = match query_id {
        Some(id) => format!("{}/broadcast?id={id}", r.base),
        None => format!("{}/broadcast", r.base),
    };
    r.http
        .post(url)
        .header(header::CONTENT_TYPE, ctype)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn create_broadcast_returns_independent_random_ids_and_urls() {
    let r = start(&[]).await;
    let res = r
        .http
        .post(format!("{}/api/broadcasts", r.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: Value = res.json().await.unwrap();
    let (id, view) = (
        v["broadcast_id"].as_str().unwrap(),
        v["view_id"].as_str().unwrap(),
    );
    assert_eq!(id.len(), 22, "128 bits in base64url");
    assert_ne!(id, view);
    assert!(
        v["whip_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/broadcast?id={id}"))
    );
    assert!(
        v["viewer_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/stream?id={view}"))
    );
    assert!(!v["viewer_url"].as_str().unwrap().contains(id));
    r.server.shutdown().await;
}

/// OBS's offer with its H264 video swapped for another codec OBS can send (`rtpmap`), the
/// H264 `fmtp` dropped.
fn obs_offer_with_video(rtpmap: &str) -> String {
    obs_offer()
        .lines()
        .filter(|l| !l.contains("profile-level-id"))
        .map(|l| l.replace("H264/90000", rtpmap))
        .map(|l| l + "\r\n")
        .collect()
}

#[tokio::test]
async fn whip_accepts_obs_offers_with_av1_or_hevc_video() {
    let r = start(&[]).await;
    for codec in ["AV1/90000", "H265/90000"] {
        let (id, _) = create(&r).await;
        let offer = obs_offer_with_video(codec);
        assert!(offer.contains(codec) && !offer.contains("H264"), "{offer}");
        let res = whip(&r, Some(&id), "application/sdp", offer).await;
        assert_eq!(res.status(), StatusCode::CREATED, "{codec}");
        let answer = res.text().await.unwrap();
        assert!(
            answer.contains(codec),
            "{codec} accepted in the answer:\n{answer}"
        );
    }
    r.server.shutdown().await;
}

#[tokio::test]
async fn whip_accepts_an_obs_offer_with_201_answer_and_absolute_location() {
    let r = start(&[]).await;
    let (id, _) = create(&r).await;
    let res = r
        .http
        .post(format!("{}/broadcast", r.base))
        .bearer_auth(&id)
        .header(header::CONTENT_TYPE, "application/sdp")
        .body(obs_offer())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/sdp");
    let location = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with("/broadcast/session/"), "{location}");
    let answer = res.text().await.unwrap();
    assert!(answer.contains("a=ice-lite"));
    assert!(answer.contains("a=recvonly"));
    let candidate = format!("{} typ host", r.server.udp_addr.port());
    assert!(
        answer.contains(&candidate) && answer.contains("127.0.0.1"),
        "answer carries our host candidate: {answer}"
    );
    assert!(answer.contains("H264/90000") && answer.contains("opus/48000"));
    let del = r
        .http
        .delete(format!("{}{location}", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        del.status(),
        StatusCode::OK,
        "OBS treats anything but 200 as a failure"
    );
    let again = r
        .http
        .delete(format!("{}{location}", r.base))
        .send()
        .await
        .unwrap();
    problem(again, StatusCode::NOT_FOUND).await;
    r.server.shutdown().await;
}

#[tokio::test]
async fn real_obs_and_chromium_offer_texts_are_accepted() {
    let r = start(&[]).await;
    let (id, view) = create(&r).await;
    // libdatachannel's layout as OBS 31 sends it: ICE and DTLS attributes per m-line,
    // a=group:LS, no candidates, SSRC lines, no RTX.
    let obs = include_str!("fixtures/obs-31-offer.sdp");
    let res = whip(&r, Some(&id), "application/sdp", obs).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let answer = res.text().await.unwrap();
    assert!(
        answer.contains("a=rtpmap:96 H264/90000") && answer.contains("a=rtpmap:111 opus/48000/2"),
        "{answer}"
    );
    assert!(answer.contains("a=setup:passive"));
    // OBS 32.1 with simulcast: every layer must be accepted, or OBS gives up.
    let simulcast = include_str!("fixtures/obs-32-simulcast-offer.sdp");
    let res = whip(&r, Some(&id), "application/sdp", simulcast).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let answer = res.text().await.unwrap();
    assert!(answer.contains("a=simulcast:recv 0;1;2"), "{answer}");
    // Chromium's own recvonly offer (captured from the Chromium in CI), with RTX and TWCC.
    let chromium = include_str!("fixtures/chromium-recvonly-offer.sdp");
    let res = r
        .http
        .post(format!("{}/stream?id={view}", r.base))
        .header(header::CONTENT_TYPE, "application/sdp")
        .body(chromium)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let answer = res.text().await.unwrap();
    assert!(
        answer.contains("H264/90000") && answer.contains("profile-level-id=42e01f"),
        "{answer}"
    );
    assert!(
        answer.contains("rtx/90000"),
        "viewer NACKs are answered from RTX: {answer}"
    );
    r.server.shutdown().await;
}

#[tokio::test]
async fn whip_rejects_bad_requests_with_problem_json() {
    let r = start(&[]).await;
    let (id, view) = create(&r).await;
    problem(
        whip(&r, Some(&id), "text/plain", obs_offer()).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    let (h, _) = problem(
        whip(&r, None, "application/sdp", obs_offer()).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
    problem(
        whip(
            &r,
            Some("AAAAAAAAAAAAAAAAAAAAAA"),
            "application/sdp",
            obs_offer(),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        whip(&r, Some("../../etc/passwd"), "application/sdp", obs_offer()).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        whip(&r, Some(&view), "application/sdp", obs_offer()).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        whip(&r, Some(&id), "application/sdp", vec![b'v'; 100_000]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    problem(
        whip(&r, Some(&id), "application/sdp", "").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        whip(&r, Some(&id), "application/sdp", "hello").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        whip(
            &r,
            Some(&id),
            "application/sdp",
            vec![0xff, 0xfe, 0x00, 0x80],
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let truncated = obs_offer()[..200].to_owned();
    problem(
        whip(&r, Some(&id), "application/sdp", truncated).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let no_media = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";
    problem(
        whip(&r, Some(&id), "application/sdp", no_media).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let pcmu_only = obs_offer()
        .lines()
        .filter(|l| !l.contains("rtpmap:96") && !l.contains("fmtp:96") && !l.contains("rtcp-fb:96"))
        .map(|l| {
            l.replace(" 111", " 0")
                .replace("rtpmap:111 opus/48000/2", "rtpmap:0 PCMU/8000")
                .replace("UDP/TLS/RTP/SAVPF 96", "UDP/TLS/RTP/SAVPF 0")
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n";
    let (_, detail) = problem(
        whip(&r, Some(&id), "application/sdp", pcmu_only).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(detail.contains("codec"), "{detail}");
    let health = r
        .http
        .get(format!("{}/healthz", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK, "still healthy");
    r.server.shutdown().await;
}

#[tokio::test]
async fn odd_but_legal_offers_work_and_broken_ones_get_a_clear_4xx() {
    let r = start(&[]).await;
    let (id, _) = create(&r).await;
    let obs = include_str!("fixtures/obs-31-offer.sdp");
    // setup:active: the client insists on being the DTLS client; we are passive anyway.
    let active = obs.replace("a=setup:actpass", "a=setup:active");
    let res = whip(&r, Some(&id), "application/sdp", active).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(res.text().await.unwrap().contains("a=setup:passive"));
    // setup:passive: str0m takes the DTLS client role instead.
    let passive = obs.replace("a=setup:actpass", "a=setup:passive");
    let res = whip(&r, Some(&id), "application/sdp", passive).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(res.text().await.unwrap().contains("a=setup:active"));
    // The same offer twice (same client ufrag): the second publisher replaces the first.
    assert_eq!(
        whip(&r, Some(&id), "application/sdp", obs).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        whip(&r, Some(&id), "application/sdp", obs).await.status(),
        StatusCode::CREATED
    );
    // Too many m-lines.
    let video = &obs[obs.find("m=video").unwrap()..];
    let mut many = obs.to_owned();
    for i in 2..20 {
        many.push_str(&video.replace("a=mid:1", &format!("a=mid:{i}")));
    }
    let (_, detail) = problem(
        whip(&r, Some(&id), "application/sdp", many).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(detail.contains("media sections"), "{detail}");
    assert_eq!(
        r.http
            .get(format!("{}/healthz", r.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    r.server.shutdown().await;
}

#[tokio::test]
async fn whep_answers_404_409_and_422_as_the_design_says() {
    let r = start(&[]).await;
    let (id, view) = create(&r).await;
    let post = |q: String, body: String| {
        r.http
            .post(format!("{}/stream?id={q}", r.base))
            .header(header::CONTENT_TYPE, "application/sdp")
            .body(body)
            .send()
    };
    problem(
        post("AAAAAAAAAAAAAAAAAAAAAA".into(), viewer_offer(false))
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        post(id.clone(), viewer_offer(false)).await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    let (h, _) = problem(
        post(view.clone(), viewer_offer(false)).await.unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(
        h.contains_key(header::RETRY_AFTER),
        "409 carries Retry-After"
    );
    assert_eq!(
        whip(&r, Some(&id), "application/sdp", obs_offer())
            .await
            .status(),
        StatusCode::CREATED
    );
    let (_, detail) = problem(
        post(view.clone(), viewer_offer(true)).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(detail.contains("H264"), "names the codec: {detail}");
    let ok = post(view.clone(), viewer_offer(false)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert!(
        ok.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/stream/session/")
    );
    let link = ok.headers()[header::LINK].to_str().unwrap().to_owned();
    assert!(
        link.contains("urn:ietf:params:whep:ext:core:server-sent-events"),
        "{link}"
    );
    let answer = ok.text().await.unwrap();
    assert!(
        answer.contains("a=sendonly") && answer.contains("H264/90000") && !answer.contains("VP8"),
        "{answer}"
    );
    r.server.shutdown().await;
}

#[tokio::test]
async fn preflight_and_cors_headers_are_on_every_whip_and_whep_url() {
    let r = start(&[]).await;
    for path in [
        "/broadcast",
        "/stream?id=x",
        "/broadcast/session/x",
        "/stream/session/x",
    ] {
        let res = r
            .http
            .request(reqwest::Method::OPTIONS, format!("{}{path}", r.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{path}");
        assert_eq!(res.headers()["accept-post"], "application/sdp");
        assert_eq!(res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(
            res.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
                .to_str()
                .unwrap()
                .contains("Location")
        );
        assert!(
            res.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("Authorization")
        );
    }
    r.server.shutdown().await;
}

#[tokio::test]
async fn head_on_the_whep_url_announces_sdp() {
    let r = start(&[]).await;
    let res = r
        .http
        .head(format!("{}/stream?id=x", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/sdp");
    r.server.shutdown().await;
}

#[tokio::test]
async fn patch_trickle_is_acknowledged_and_ice_restart_is_answered() {
    let r = start(&[]).await;
    let (id, _) = create(&r).await;
    let res = whip(&r, Some(&id), "application/sdp", obs_offer()).await;
    let location = format!(
        "{}{}",
        r.base,
        res.headers()[header::LOCATION].to_str().unwrap()
    );
    let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:efghijklmnopqrstuvwxyz\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9999 typ host\r\n";
    let patch = |ctype: &'static str, if_match: bool| {
        let mut req = r
            .http
            .patch(&location)
            .header(header::CONTENT_TYPE, ctype)
            .body(frag);
        if if_match {
            req = req.header(header::IF_MATCH, "*");
        }
        req.send()
    };
    problem(
        patch("application/sdp", false).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    assert_eq!(
        patch("application/trickle-ice-sdpfrag", false)
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    // Before the peer's first check its ufrag is unknown: If-Match makes it a restart
    // (tests/session_patch.rs has the full set of rules).
    let res = patch("application/trickle-ice-sdpfrag", true)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key(header::ETAG));
    r.server.shutdown().await;
}

#[tokio::test]
async fn full_server_answers_503_with_retry_after() {
    let r = start(&["--max-live-broadcasts", "1"]).await;
    let (a, _) = create(&r).await;
    let (b, _) = create(&r).await;
    assert_eq!(
        whip(&r, Some(&a), "application/sdp", obs_offer())
            .await
            .status(),
        StatusCode::CREATED
    );
    let (h, _) = problem(
        whip(&r, Some(&b), "application/sdp", obs_offer()).await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert!(h.contains_key(header::RETRY_AFTER));
    // The live broadcast's own reconnect is not refused.
    assert_eq!(
        whip(&r, Some(&a), "application/sdp", obs_offer())
            .await
            .status(),
        StatusCode::CREATED
    );
    r.server.shutdown().await;
}

#[tokio::test]
async fn create_token_is_required_when_configured() {
    let r = start(&["--create-token", "s3cret-token"]).await;
    let url = format!("{}/api/broadcasts", r.base);
    problem(
        r.http.post(&url).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        r.http.post(&url).bearer_auth("wrong").send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        r.http
            .post(&url)
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    r.server.shutdown().await;
}

#[tokio::test]
async fn broadcast_ids_survive_a_server_restart() {
    let r = start(&[]).await;
    let (id, view) = create(&r).await;
    let dir = r.dir.clone();
    r.server.shutdown().await;
    let r = start_in(dir, &[]).await;
    assert_eq!(
        whip(&r, Some(&id), "application/sdp", obs_offer())
            .await
            .status(),
        StatusCode::CREATED,
        "same broadcast ID publishes again"
    );
    let panel: Value = r
        .http
        .get(format!("{}/api/broadcasts/{id}", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(panel["view_id"], view.as_str());
    r.server.shutdown().await;
}

#[tokio::test]
async fn status_metrics_and_panel_never_show_a_broadcast_id() {
    let r = start(&[]).await;
    let (id, view) = create(&r).await;
    assert_eq!(
        whip(&r, Some(&id), "application/sdp", obs_offer())
            .await
            .status(),
        StatusCode::CREATED
    );
    for path in [
        "/status",
        "/api/status",
        "/metrics",
        &format!("/stream?id={view}"),
        "/assets/status.js",
        "/assets/player.js",
    ] {
        let res = r
            .http
            .get(format!("{}{path}", r.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let body = res.text().await.unwrap();
        assert!(!body.contains(&id), "{path} leaks the broadcast ID");
        assert!(
            path.starts_with("/stream") || !body.contains(&view),
            "{path} leaks the view ID"
        );
    }
    let status: Value = r
        .http
        .get(format!("{}/api/status", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["slots_total"], 4);
    assert_eq!(status["slots_used"], 1);
    let metrics = r
        .http
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("# TYPE whipcast_viewers gauge")
            && metrics.contains("whipcast_publishers 1"),
        "{metrics}"
    );
    let panel: Value = r
        .http
        .get(format!("{}/api/broadcasts/{id}", r.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(panel["max_viewers"], 8);
    problem(
        r.http
            .get(format!("{}/api/broadcasts/{view}", r.base))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    r.server.shutdown().await;
}

#[tokio::test]
async fn rotating_the_view_id_revokes_the_old_viewer_link() {
    let r = start(&[]).await;
    let (id, view) = create(&r).await;
    let res = r
        .http
        .post(format!("{}/api/broadcasts/{id}/view-id", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    let fresh = v["view_id"].as_str().unwrap();
    assert_ne!(fresh, view);
    let post = |q: &str| {
        r.http
            .post(format!("{}/stream?id={q}", r.base))
            .header(header::CONTENT_TYPE, "application/sdp")
            .body(viewer_offer(false))
            .send()
    };
    problem(post(&view).await.unwrap(), StatusCode::NOT_FOUND).await;
    problem(post(fresh).await.unwrap(), StatusCode::CONFLICT).await;
    r.server.shutdown().await;
}

mod limits {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn read_some(stream: &mut TcpStream) -> Vec<u8> {
        let mut buf = vec![0; 4096];
        // A guard against "never happened", not a timing assertion.
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(n)) => buf[..n].to_vec(),
            Ok(Err(_)) => Vec::new(),
            Err(_) => panic!("the server neither answered nor closed the connection"),
        }
    }

    /// Sends the start of a request that never ends.
    async fn unfinished_request(server: &Server) -> TcpStream {
        let mut s = TcpStream::connect(server.http_addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        s
    }

    /// True while the server has neither answered nor closed the connection.
    fn still_open(s: &TcpStream) -> bool {
        let mut buf = [0; 1];
        matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    #[tokio::test]
    async fn slow_headers_are_cut_off_after_the_configured_time() {
        // Two servers, the same unfinished request to each: only the configured time differs.
        let short = start(&["--http-header-timeout", "1s"]).await;
        let long = start(&["--http-header-timeout", "60s"]).await;
        let started = std::time::Instant::now();
        let mut cut = unfinished_request(&short.server).await;
        let waiting = unfinished_request(&long.server).await;
        let answer = read_some(&mut cut).await;
        let after = started.elapsed();
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        // Causes, not timings: a timer cannot fire before its time, and the 60 s server still
        // holds its connection when the 1 s one has given up on its own.
        assert!(after >= Duration::from_secs(1), "cut off after {after:?}");
        assert!(still_open(&waiting), "the 60 s server waited too");
        // And near 1 s, not at the 10 s default: a bound far above 1 s, still below 10 s.
        assert!(after < Duration::from_secs(8), "cut off after {after:?}");
        short.server.shutdown().await;
        long.server.shutdown().await;
    }

    #[tokio::test]
    async fn too_many_connections_from_one_address_get_429() {
        let r = start(&["--max-connections-per-ip", "3"]).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(r.server.http_addr).await.unwrap();
            // A complete request keeps the connection counted while it stays open.
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            assert!(read_some(&mut s).await.starts_with(b"HTTP/1.1 200"));
            idle.push(s);
        }
        let mut extra = TcpStream::connect(r.server.http_addr).await.unwrap();
        let answer = read_some(&mut extra).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 429"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert!(String::from_utf8_lossy(&answer).contains("application/problem+json"));
        drop(idle);
        // Once they close, the address may connect again.
        let mut ok = false;
        for _ in 0..50 {
            if let Ok(res) = r.http.get(format!("{}/healthz", r.base)).send().await
                && res.status() == StatusCode::OK
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "connections are released when closed");
        r.server.shutdown().await;
    }

    #[tokio::test]
    async fn huge_headers_are_refused_and_the_server_stays_healthy() {
        let r = start(&[]).await;
        let big = "x".repeat(64 * 1024);
        let res = r
            .http
            .get(format!("{}/healthz", r.base))
            .header("x-big", big)
            .send()
            .await;
        if let Ok(res) = res {
            assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        } // or the connection was closed: both refuse it
        assert_eq!(
            r.http
                .get(format!("{}/healthz", r.base))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        r.server.shutdown().await;
    }
}

#[tokio::test]
async fn https_is_served_with_the_given_certificate() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::ServerName};

    let dir =
        std::env::temp_dir().join(format!("whipcast-tls-{}", whipcast::secret::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    let r = start_in(
        dir.clone(),
        &[
            "--tls-cert",
            c.to_str().unwrap(),
            "--tls-key",
            k.to_str().unwrap(),
        ],
    )
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(r.server.http_addr)
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with our certificate");
    tls.write_all(b"POST /api/broadcasts HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(
        answer.contains("\"whip_url\":\"https://localhost/broadcast?id="),
        "URLs say https: {answer}"
    );
    // Plain HTTP on the TLS port is not served.
    assert!(
        r.http
            .get(format!("{}/healthz", r.base))
            .send()
            .await
            .is_err()
    );
    r.server.shutdown().await;
}

#[test]
fn a_missing_certificate_is_a_clear_startup_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = Config::parse_from([
        "whipcast",
        "--http-listen",
        "127.0.0.1:0",
        "--udp-listen",
        "127.0.0.1:0",
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
        "--data-dir",
        std::env::temp_dir().to_str().unwrap(),
    ]);
    let err = rt
        .block_on(Server::start(config))
        .err()
        .expect("must not start");
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_full_reject_answers_503_and_viewer_delete_answers_200() {
    use common::udp_client::Client as MediaClient;
    let r = start(&["--max-viewers", "1", "--when-full", "reject"]).await;
    let (id, view) = create(&r).await;
    let base = r.base.clone();
    let publisher = {
        let (base, id) = (base.clone(), id.clone());
        tokio::task::spawn_blocking(move || MediaClient::publish(&base, &id).unwrap())
            .await
            .unwrap()
    };
    // The place goes to a viewer that connects; a session still connecting holds none.
    let first = {
        let (base, view) = (base.clone(), view.clone());
        tokio::task::spawn_blocking(move || {
            let v = MediaClient::view(&base, &view).unwrap();
            v.wait_for("the first viewer connects", |s| s.connected);
            v
        })
        .await
        .unwrap()
    };
    let post = || {
        r.http
            .post(format!("{}/stream?id={view}", r.base))
            .header(header::CONTENT_TYPE, "application/sdp")
            .body(viewer_offer(false))
            .send()
    };
    let (h, _) = problem(post().await.unwrap(), StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(h.contains_key(header::RETRY_AFTER));
    assert_eq!(
        r.http
            .delete(format!("{}{}", r.base, first.location))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        post().await.unwrap().status(),
        StatusCode::CREATED,
        "the place is free again"
    );
    let stats = r.server.stats().await.unwrap();
    assert_eq!((stats.publishers, stats.viewers), (1, 1));
    tokio::task::spawn_blocking(move || {
        first.stop();
        publisher.stop();
    })
    .await
    .unwrap();
    r.server.shutdown().await;
}

#[tokio::test]
async fn limits_on_bodies_and_broadcasts_are_configurable() {
    let r = start(&["--max-body-bytes", "1000", "--max-broadcasts", "2"]).await;
    let (id, _) = create(&r).await;
    let (_, detail) = problem(
        whip(&r, Some(&id), "application/sdp", obs_offer()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(detail.contains("1000"), "{detail}");
    create(&r).await;
    problem(
        r.http
            .post(format!("{}/api/broadcasts", r.base))
            .send()
            .await
            .unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    r.server.shutdown().await;
}
