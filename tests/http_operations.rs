//! Operating the server over HTTP, against the real server on 127.0.0.1:0: full servers,
//! tokens, restarts, what status pages reveal, view-ID rotation, request and connection
//! limits, TLS, and the options that tune them.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use clap::Parser;
use common::http_server::{self, Running, create, problem, start_in, whip};
use common::sim::{obs_offer, viewer_offer};
use reqwest::{StatusCode, header};
use serde_json::Value;
use whipcast::{Config, Server};

async fn start(extra: &[&str]) -> Running {
    http_server::start("http-ops", extra).await
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
        .block_on(common::server::start_config(config))
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
