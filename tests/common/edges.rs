//! An origin and its edges on loopback ports for the edge tests, and what those tests watch:
//! `/api/status`, playing viewers, a viewer session's SSE events.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use whipcast::Server;

use super::server::{start_in, temp_dir};
use super::udp_client::{Client, http};

pub const SECRET: &str = "edge-test-secret";

/// Runs blocking client code (the media clients have their own threads) off the runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("no panic")
}

/// An origin (it knows the edge secret) with `extra` flags.
pub async fn origin(extra: &[&str]) -> (Server, String) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut args = vec!["--edge-secret", SECRET];
    args.extend_from_slice(extra);
    start_in(&temp_dir("origin"), &args).await
}

/// An edge of `origin` with `extra` flags (it registers only with `--edge-url`).
pub async fn edge(origin: &str, extra: &[&str]) -> (Server, String) {
    let mut args = vec!["--origin", origin, "--edge-secret", SECRET];
    args.extend_from_slice(extra);
    start_in(&temp_dir("edge"), &args).await
}

/// An edge of `origin` that registers with its real base URL, so the origin can redirect
/// viewers to it.
pub async fn registered_edge(origin: &str, extra: &[&str]) -> (Server, String) {
    // The edge's HTTP port is known only once it listens: it registers with that URL.
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let (listen, base) = (addr.to_string(), format!("http://{addr}"));
    let dir = temp_dir("edge");
    let mut args = vec![
        "whipcast",
        "--http-listen",
        &listen,
        "--udp-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--origin",
        origin,
        "--edge-secret",
        SECRET,
        "--edge-url",
        &base,
    ];
    args.extend_from_slice(extra);
    let config = <whipcast::Config as clap::Parser>::parse_from(args);
    let server = (super::server::start_config(config).await).expect("the edge starts");
    (server, base)
}

pub fn status(base: &str) -> serde_json::Value {
    let (code, _, body) = http("GET", &format!("{base}/api/status"), &[], "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until the origin at `base` lists `n` live edges.
pub fn wait_for_edges(base: &str, n: usize) {
    wait_until("the edges register with the origin", || {
        status(base)["edges"]
            .as_array()
            .is_some_and(|e| e.len() == n)
    });
}

/// A viewer on `base` that has decoded a few frames, the first of them a keyframe, and half a
/// second of the OBS-shaped publisher's tone, its Opus packets as sent.
pub fn playing_viewer(base: &str, view: &str) -> Client {
    let v = Client::view(base, view).unwrap_or_else(|r| panic!("viewer refused: {r:?}"));
    v.wait_for("the viewer gets frames", |s| s.frames.len() >= 5);
    assert!(v.frames()[0].keyframe, "playback starts on a keyframe");
    v.wait_for("the viewer gets audio", |s| s.audio.len() >= HEARD);
    // The publisher sends the tone in a loop: twice over holds every run of it.
    let tone = super::opus::tone();
    let looped: Vec<Vec<u8>> = tone.iter().chain(&tone).cloned().collect();
    let got = v.shared.lock().unwrap().audio.clone();
    if let Err(e) = super::as_sent::audio_as_sent(&looped, &got, HEARD) {
        panic!("the viewer hears the tone as sent: {e}");
    }
    v
}

/// Opus packets a playing viewer must have got: half a second.
const HEARD: usize = 25;

/// A broadcast created and published at `origin`, and one viewer playing it at `edge`:
/// its broadcast ID, view ID, publisher and viewer.
pub async fn live_at_edge(origin: &str, edge: &str) -> (String, String, Client, Client) {
    let (o, e) = (origin.to_owned(), edge.to_owned());
    blocking(move || {
        let (id, view) = super::server::create(&o);
        let publisher = Client::publish(&o, &id).unwrap();
        let viewer = playing_viewer(&e, &view);
        (id, view, publisher, viewer)
    })
    .await
}

/// Waits (bounded: a guard against "never happened", not a speed check) until `f` holds.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The named events of a viewer session's SSE stream on `base`, as they arrive.
pub async fn follow_events(base: &str, location: &str) -> Arc<Mutex<String>> {
    let names = r#"["active","inactive","reconnecting","evicted"]"#;
    super::sse::follow_events(base, location, names).await
}
