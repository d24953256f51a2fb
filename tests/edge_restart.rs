//! An origin that restarts (a crash, then a graceful stop) on the same data directory and
//! ports, with an edge and its viewers running throughout: broadcast IDs persist, the
//! publisher publishes again, and the edge's viewers play again without a reload. Real
//! processes (tests/common/process.rs).
//!
//! - A crash: the edge's pull goes silent, its viewers see "reconnecting" (as when OBS
//!   drops) and the edge pulls again until the origin is back and live; the stream
//!   continues in the viewers' same sessions.
//! - A graceful stop: the origin closes every session, so the edge's viewers see the
//!   broadcast end ("inactive"); their page polls and plays again by itself once the
//!   publisher is back, through a new session on the edge.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use common::edges::{SECRET, blocking, follow_events, live_at_edge, wait_until};
use common::process::{Proc, sigterm, spawn_in, spawn_with};
use common::server::temp_dir;
use common::sse::in_order;
use common::udp_client::Client;

/// Free loopback addresses for HTTP and UDP, to start the origin on twice.
fn free_addrs() -> (String, String) {
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    (
        http.local_addr().unwrap().to_string(),
        udp.local_addr().unwrap().to_string(),
    )
}

/// A viewer on `base` once the broadcast plays there again (409 while it is not live yet).
fn viewer_when_live(base: &str, view: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::view(base, view) {
            Ok(v) => {
                v.wait_for("the viewer gets frames", |s| s.frames.len() >= 5);
                return v;
            }
            Err(refused) => assert!(
                Instant::now() < deadline,
                "the broadcast never played again: {refused:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_viewers_play_again_after_the_origin_crashes_and_after_it_restarts() {
    let dir = temp_dir("origin-restart");
    let (http, udp) = free_addrs();
    // ICE-TCP off: its default port (the UDP one, on TCP) was not reserved.
    let flags = [
        "--edge-secret",
        SECRET,
        "--resume-grace",
        "60s",
        "--ice-tcp-listen",
        "off",
    ];
    let start_origin = move || spawn_in("info", &dir, &http, &udp, &flags);
    let mut origin: Proc = start_origin();
    let obase = origin.base.clone();
    let edge = spawn_with(
        "info",
        &[
            "--origin",
            &obase,
            "--edge-secret",
            SECRET,
            "--resume-grace",
            "60s",
        ],
        None,
    );
    let ebase = edge.base.clone();
    let (id, view, publisher, viewer) = live_at_edge(&obase, &ebase).await;
    let events = follow_events(&ebase, &viewer.location).await;
    blocking(move || {
        // A crash: nobody is told anything.
        origin.child.kill().unwrap();
        origin.child.wait().unwrap();
        publisher.vanish();
        wait_until("the edge's viewer sees reconnecting", || {
            events.lock().unwrap().contains("event: reconnecting")
        });
        let mut origin = start_origin();
        assert_eq!(origin.base, obase, "the origin is back on its address");
        let publisher =
            Client::publish(&obase, &id).expect("the broadcast ID survived the restart");
        let before = viewer.frames().len();
        viewer.wait_for("the edge's viewer plays again in its session", |s| {
            s.frames.len() > before + 30
        });
        assert!(
            in_order(&events, "event: reconnecting", "event: active"),
            "{}",
            events.lock().unwrap()
        );
        assert!(!events.lock().unwrap().contains("event: inactive"));

        // A graceful stop (a service restart): every session is closed, edges' pulls too.
        assert!(sigterm(&mut origin).success());
        publisher.vanish();
        wait_until("the edge's viewer sees the broadcast end", || {
            events.lock().unwrap().contains("event: inactive")
        });
        let _origin = start_origin();
        let publisher = Client::publish(&obase, &id).unwrap();
        // What the viewer page does after "inactive": it POSTs again until it plays.
        let again = viewer_when_live(&ebase, &view);
        assert!(again.frames()[0].keyframe, "playback starts on a keyframe");
        for client in [again, publisher] {
            client.stop();
        }
        viewer.vanish();
        drop(edge);
    })
    .await;
}
