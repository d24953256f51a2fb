//! `POST /stream/session/<id>/layer`, the WHEP draft's video layer selection, and `GET` on
//! the same URL (the viewer's own layer and link), from the outside: what a player, a
//! stranger and a publisher's session get.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::http_server::{self, Running, create, problem, whip};
use common::sim::{obs_offer, viewer_offer};
use reqwest::{StatusCode, header};

async fn post_layer(r: &Running, path: &str, content_type: &str, body: &str) -> reqwest::Response {
    r.http
        .post(format!("{}{path}/layer", r.base))
        .header(header::CONTENT_TYPE, content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// A broadcast (broadcast ID, view ID) with an OBS-shaped publisher (no media) and a viewer:
/// the publisher's session URL and the viewer's WHEP answer.
async fn publisher_and_viewer(r: &Running) -> ((String, String), String, reqwest::Response) {
    let (id, view) = create(r).await;
    let published = whip(r, Some(&id), "application/sdp", obs_offer()).await;
    assert_eq!(published.status(), StatusCode::CREATED);
    let viewer = r
        .http
        .post(format!("{}/stream?id={view}", r.base))
        .header(header::CONTENT_TYPE, "application/sdp")
        .body(viewer_offer(false))
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), StatusCode::CREATED);
    ((id, view), location(&published), viewer)
}

fn location(res: &reqwest::Response) -> String {
    res.headers()[header::LOCATION].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_viewer_session_takes_layer_requests_and_bad_ones_get_a_clear_4xx() {
    let r = http_server::start("http_layer", &[]).await;
    let (_, publisher, viewer) = publisher_and_viewer(&r).await;
    let session = location(&viewer);
    assert!(session.starts_with("/stream/session/"), "{session}");
    let links: Vec<String> = (viewer.headers().get_all(header::LINK).iter())
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        links.iter().any(
            |l| l == &format!("<{session}/layer>; rel=\"urn:ietf:params:whep:ext:core:layer\"")
        ),
        "the answer names the layer URL: {links:?}"
    );
    assert!(
        links
            .iter()
            .any(|l| l.contains("server-sent-events") && l.contains("layers")),
        "and the layers event the draft requires with it: {links:?}"
    );

    // The server's choice back: this broadcast has one layer, so that is all there is.
    let ok = post_layer(&r, &session, "application/json", r#"{"mediaId":"0"}"#).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let (_, detail) = problem(
        post_layer(
            &r,
            &session,
            "application/json",
            r#"{"mediaId":"0","rid":"1"}"#,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(detail.contains("no such layer"), "{detail}");
    // Broadcast Box's players name the rid `encodingId`.
    problem(
        post_layer(&r, &session, "application/json", r#"{"encodingId":"1"}"#).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    for bad in [
        "not json",
        r#"{"rid":"a b"}"#,
        r#"{"rid":""}"#,
        r#"{"rid":1}"#,
        r#"{"mediaId":"0","bogus":true}"#,
    ] {
        let (_, detail) = problem(
            post_layer(&r, &session, "application/json", bad).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(detail.contains("mediaId"), "{bad}: {detail}");
    }
    problem(
        post_layer(&r, &session, "text/plain", r#"{"mediaId":"0"}"#).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;

    // A stranger's guess, and the publisher's own session under the viewers' URL space.
    problem(
        post_layer(
            &r,
            "/stream/session/AAAAAAAAAAAAAAAAAAAAAA",
            "application/json",
            "{}",
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let publisher_id = publisher.rsplit('/').next().unwrap();
    problem(
        post_layer(
            &r,
            &format!("/stream/session/{publisher_id}"),
            "application/json",
            r#"{"rid":"0"}"#,
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;

    let put = r
        .http
        .put(format!("{}{session}/layer", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    let preflight = r
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}{session}/layer", r.base),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        preflight.headers()[header::ACCESS_CONTROL_ALLOW_METHODS],
        "GET, POST, OPTIONS"
    );
    r.server.shutdown().await;
}

async fn get_layer(r: &Running, path: &str) -> reqwest::Response {
    (r.http.get(format!("{}{path}/layer", r.base)))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_viewer_is_told_its_layer_and_link_and_nobody_else_is() {
    let r = http_server::start("http_layer_get", &[]).await;
    let ((id, view), publisher, viewer) = publisher_and_viewer(&r).await;
    let session = location(&viewer);

    let got = get_layer(&r, &session).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(got.headers()[header::CACHE_CONTROL], "no-store");
    let body: serde_json::Value = got.json().await.unwrap();
    // One layer, no media yet, no estimate yet: every field there, in its plain state.
    assert_eq!(
        body,
        serde_json::json!({
            "rid": null,
            "height": null,
            "target": null,
            "auto": true,
            "estimate_bps": null,
            "needed_bps": 0,
            "slow": false,
        })
    );

    // A stranger's guess, something that is no session ID, and the publisher's own session
    // under the viewers' URL space: all as unknown.
    for path in [
        "/stream/session/AAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        "/stream/session/not-an-id".to_owned(),
        format!("/stream/session/{}", publisher.rsplit('/').next().unwrap()),
    ] {
        problem(get_layer(&r, &path).await, StatusCode::NOT_FOUND).await;
    }
    // A session that ended is unknown too.
    let deleted = (r.http.delete(format!("{}{session}", r.base)))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    problem(get_layer(&r, &session).await, StatusCode::NOT_FOUND).await;

    // /metrics: the layer series, with no broadcast in any label.
    let metrics = (r.http.get(format!("{}/metrics", r.base)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "# TYPE whipcast_simulcast_viewers gauge",
        "whipcast_simulcast_viewers{layer=\"0\"} 0",
        "whipcast_simulcast_viewers{layer=\"3\"} 0",
        "# TYPE whipcast_simulcast_ingest_bits_per_second gauge",
        "whipcast_simulcast_ingest_bits_per_second{layer=\"3\"} 0",
        "# TYPE whipcast_simulcast_layer_height_pixels gauge",
        "whipcast_simulcast_layer_height_pixels{layer=\"3\"} 0",
        "# TYPE whipcast_layer_switches_total counter",
        "whipcast_layer_switches_total 0",
        "# TYPE whipcast_viewers_slow gauge",
        "whipcast_viewers_slow 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    assert!(!metrics.contains(&id) && !metrics.contains(&view));
    r.server.shutdown().await;
}

/// With two workers the broadcast's viewers are spread over both: the one on the worker that
/// only mirrors the broadcast is told its layer's size and what it is sent as well as the one
/// on the publisher's worker (the mirror measures what is relayed to it).
#[tokio::test(flavor = "multi_thread")]
async fn viewers_on_either_worker_are_told_their_pictures_size_and_bitrate() {
    use common::server::{metric, start_in, temp_dir};
    use common::udp_client::{Client, http};
    let (server, base) = start_in(&temp_dir("http_layer_workers"), &["--workers", "2"]).await;
    tokio::task::spawn_blocking(move || {
        let (id, view) = common::server::create(&base);
        let _publisher = Client::publish(&base, &id).expect("publish");
        let viewers: Vec<Client> = (0..2)
            .map(|_| {
                let v = Client::view(&base, &view).expect("viewer accepted");
                v.wait_for("60 frames", |s| s.frames.len() >= 60);
                v
            })
            .collect();
        for w in 0..2 {
            let on = format!("whipcast_worker_viewers{{worker=\"{w}\"}}");
            assert_eq!(metric(&base, &on), 1, "one viewer on worker {w}");
        }
        // A mirror measures over about a second from its first relayed packet: look until
        // each has a measure.
        for v in &viewers {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let layer = loop {
                let (status, _, body) =
                    http("GET", &format!("{base}{}/layer", v.location), &[], "");
                assert_eq!(status, 200, "{body}");
                let layer: serde_json::Value = serde_json::from_str(&body).unwrap();
                let needed = layer["needed_bps"].as_u64().unwrap_or(0);
                if (150_000..1_000_000).contains(&needed) || std::time::Instant::now() > deadline {
                    break layer;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            };
            assert_eq!(layer["height"], 240, "the fixture's size: {layer}");
            let needed = layer["needed_bps"].as_u64().unwrap();
            assert!(
                (150_000..1_000_000).contains(&needed),
                "the fixture's ~300 kb/s and the tone: {layer}"
            );
        }
    })
    .await
    .expect("no panic");
    server.shutdown().await;
}
