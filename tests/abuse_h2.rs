//! Abuse over HTTP/2 (HTTPS, ALPN h2) against the real server on 127.0.0.1:0: more streams
//! than a connection may have, a body that never ends, oversized headers, a rapid-reset flood
//! and an idle connection. Each limit is in src/http/conn.rs; HTTP/1.1 has its own tests in
//! abuse.rs and abuse_connections.rs. Bounded in count and time, loopback only.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::h2_frames::{self as f, Frame};
use common::tls_client::{h2_client, h2_tls, self_signed};
use hyper::{Request, StatusCode};

/// The streams the server allows per connection (src/http/conn.rs MAX_STREAMS).
const MAX_STREAMS: u32 = 64;
/// A generous bound on "it eventually happens".
const DEADLINE: Duration = Duration::from_secs(30);

/// The server over HTTPS with a self-signed certificate this process trusts, and `extra`.
async fn start(extra: &[&str]) -> whipcast::Server {
    let dir = common::server::temp_dir("abuse-h2");
    let (cert, key) = self_signed(&dir.join("tls"));
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::server::start_in(&dir, &args).await.0
}

/// Sends one request over HTTP/2 with an empty body: its status.
async fn status(
    send: &mut h2::client::SendRequest<Bytes>,
    req: Request<()>,
) -> Result<StatusCode, h2::Error> {
    let mut ready = send.clone().ready().await?;
    let (response, _) = ready.send_request(req, true)?;
    Ok(tokio::time::timeout(DEADLINE, response)
        .await
        .expect("an answer in time")?
        .status())
}

/// A new broadcast's ID, created over HTTP/2.
async fn create(server: &whipcast::Server) -> String {
    let (mut send, _conn) = h2_client(server.http_addr).await;
    let req = Request::post("https://127.0.0.1/api/broadcasts")
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (response, _) = ready.send_request(req, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let _ = &mut send;
    v["broadcast_id"].as_str().unwrap().to_owned()
}

async fn healthz_over_a_new_connection(server: &whipcast::Server) -> StatusCode {
    let (mut send, _conn) = h2_client(server.http_addr).await;
    let req = Request::get("https://127.0.0.1/healthz").body(()).unwrap();
    status(&mut send, req)
        .await
        .expect("a fresh connection is served")
}

#[tokio::test]
async fn browsers_get_http2_and_other_clients_keep_http1() {
    let server = start(&[]).await;
    assert_eq!(healthz_over_a_new_connection(&server).await, StatusCode::OK);
    // No ALPN (OBS's and FFmpeg's TLS without HTTP/2): HTTP/1.1, as before.
    let addr = server.http_addr;
    let head = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        let mut tls = common::tls_client::stream(&addr.to_string(), tcp);
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = String::new();
        let _ = tls.read_to_string(&mut got);
        got
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn streams_over_the_per_connection_cap_are_refused() {
    let server = start(&["--http-header-timeout", "30s"]).await;
    let id = create(&server).await;
    let mut tls = h2_tls(server.http_addr).await;
    // Offers whose bodies never come: each holds its stream open for the body deadline.
    let extra = 8;
    let mut bytes = f::preface();
    let head = f::post(&format!("/broadcast?id={id}"), "application/sdp");
    for i in 0..MAX_STREAMS + extra {
        bytes.extend(f::frame(f::HEADERS, f::END_HEADERS, 1 + 2 * i, &head));
    }
    f::send(&mut tls, &bytes).await;
    let mut refused = Vec::new();
    let read = f::read_until(&mut tls, |frame: &Frame| {
        if frame.kind == f::RST_STREAM && frame.error_code() == Some(f::REFUSED_STREAM) {
            refused.push(frame.stream);
        }
        refused.len() == extra as usize
    });
    let frames = tokio::time::timeout(Duration::from_secs(10), read).await;
    assert!(
        frames.is_ok(),
        "only {} of the {extra} streams over the cap of {MAX_STREAMS} were refused: {refused:?}",
        refused.len()
    );
    let first_refused = 1 + 2 * MAX_STREAMS;
    assert!(
        refused.iter().all(|s| *s >= first_refused),
        "a stream within the cap was refused: {refused:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_http2_body_that_never_ends_gets_408() {
    let server = start(&["--http-header-timeout", "1s"]).await;
    let id = create(&server).await;
    let (send, _conn) = h2_client(server.http_addr).await;
    let req = Request::post(format!("https://127.0.0.1/broadcast?id={id}"))
        .header("content-type", "application/sdp")
        .body(())
        .unwrap();
    let mut ready = send.ready().await.unwrap();
    let (response, mut body) = ready.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"v=0\r\n"), false)
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("an answer before the test's own deadline")
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    drop(body); // held until here: the body never ended
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_http2_headers_are_refused() {
    let server = start(&[]).await;
    let (mut send, _conn) = h2_client(server.http_addr).await;
    let req = Request::get("https://127.0.0.1/healthz")
        .header("x-padding", "a".repeat(32 * 1024))
        .body(())
        .unwrap();
    match status(&mut send, req).await {
        Ok(s) => assert_eq!(s, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}"),
    }
    assert_eq!(healthz_over_a_new_connection(&server).await, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test]
async fn a_rapid_reset_flood_gets_goaway_and_others_are_still_served() {
    let server = start(&[]).await;
    let mut tls = h2_tls(server.http_addr).await;
    let mut bytes = f::preface();
    let head = f::get("/healthz");
    for i in 0..500u32 {
        let stream = 1 + 2 * i;
        bytes.extend(f::frame(
            f::HEADERS,
            f::END_HEADERS | f::END_STREAM,
            stream,
            &head,
        ));
        bytes.extend(f::frame(f::RST_STREAM, 0, stream, &f::CANCEL.to_be_bytes()));
    }
    // The server may close the connection before it has read it all.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut tls, &bytes).await;
    let read = f::read_until(&mut tls, |frame| frame.kind == f::GOAWAY);
    let frames = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the connection ends or sends GOAWAY in time");
    let goaway = frames.iter().find(|frame| frame.kind == f::GOAWAY);
    assert_eq!(
        goaway.and_then(Frame::error_code),
        Some(f::ENHANCE_YOUR_CALM),
        "GOAWAY (ENHANCE_YOUR_CALM) after 500 streams opened and reset; got {} frames",
        frames.len()
    );
    assert_eq!(healthz_over_a_new_connection(&server).await, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway() {
    let server = start(&["--http-header-timeout", "1s"]).await;
    let mut tls = h2_tls(server.http_addr).await;
    let mut bytes = f::preface();
    bytes.extend(f::frame(
        f::HEADERS,
        f::END_HEADERS | f::END_STREAM,
        1,
        &f::get("/healthz"),
    ));
    f::send(&mut tls, &bytes).await;
    // The answer comes, then nothing happens on the connection for a second: GOAWAY. Well
    // before hyper's keep-alive ping would give up on a client that does not answer it (40 s).
    let read = f::read_until(&mut tls, |frame| frame.kind == f::GOAWAY);
    let frames = tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("GOAWAY on the idle connection in time");
    assert!(
        frames
            .iter()
            .any(|frame| frame.kind == f::HEADERS && frame.stream == 1),
        "the request was answered first"
    );
    assert!(frames.iter().any(|frame| frame.kind == f::GOAWAY));
    server.shutdown().await;
}
