//! The HTTP surface against the real server on 127.0.0.1:0: status codes, headers and
//! problem+json bodies for every class of request, good and bad.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::http_server::{self, Running, create, problem, whip};
use common::sim::{obs_offer, viewer_offer};
use reqwest::{StatusCode, header};
use serde_json::Value;

async fn start(extra: &[&str]) -> Running {
    http_server::start("http", extra).await
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
