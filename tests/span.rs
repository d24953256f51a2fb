//! One broadcast across workers (`--workers 2`): its viewers are spread over both, the
//! publisher's worker relays to the other, and the broadcast rules hold across them: the
//! cap evicts the oldest viewer wherever it is, a publisher's loss and resume reach every
//! viewer in place, a stop ends them all. Real server, loopback UDP, str0m clients.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::server::{create, metric, start_in, temp_dir};
use common::sse::{follow_events, in_order};
use common::udp_client::{Client, http};

fn viewers_on(base: &str, worker: usize) -> u64 {
    metric(
        base,
        &format!("whipcast_worker_viewers{{worker=\"{worker}\"}}"),
    )
}

/// A viewer that has decoded frames: it is connected (and holds a place).
fn playing(base: &str, view: &str) -> Client {
    let v = Client::view(base, view).expect("viewer accepted");
    v.wait_for("5 frames", |s| s.frames.len() >= 5);
    v
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("no panic")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_broadcasts_viewers_play_on_both_workers() {
    let (server, base) = start_in(&temp_dir("span"), &["--workers", "2"]).await;
    blocking(move || {
        let (id, view) = create(&base);
        let _publisher = Client::publish(&base, &id).expect("publish");
        let viewers: Vec<Client> = (0..4).map(|_| playing(&base, &view)).collect();
        // The publisher's worker took half the audience; the other worker the rest.
        assert_eq!((viewers_on(&base, 0), viewers_on(&base, 1)), (2, 2));
        for v in &viewers {
            v.wait_for("30 frames and audio", |s| {
                s.frames.len() >= 30 && s.audio_frames > 20
            });
            // The other worker's viewers start on its own keyframe cache, as the home's do.
            assert!(v.frames()[0].keyframe, "the first frame is a keyframe");
        }
        for w in 0..2 {
            let drops = format!("whipcast_worker_relay_drops_total{{worker=\"{w}\"}}");
            assert_eq!(metric(&base, &drops), 0, "worker {w}");
        }
        let (status, _, body) = http("GET", &format!("{base}/api/status"), &[], "");
        assert_eq!(status, 200);
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            status["broadcasts"][0]["viewers"], 4,
            "one broadcast, counted once, with every worker's viewers: {status}"
        );
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cap_evicts_the_oldest_viewer_even_on_the_other_worker() {
    let extra = ["--workers", "2", "--max-viewers", "2"];
    let (server, base) = start_in(&temp_dir("span"), &extra).await;
    let b = base.clone();
    let (a, b_viewer, oldest, view_a) = blocking(move || {
        let (a, view_a) = create(&b);
        let (other, view_other) = create(&b);
        let a = Client::publish(&b, &a).expect("a on worker 0");
        let other = Client::publish(&b, &other).expect("the other on worker 1");
        // Placement by fewest viewers (the home on a tie): a's first viewer on worker 0,
        // the other broadcast's on worker 1, a's second on worker 0 again.
        let oldest = playing(&b, &view_a);
        let b_viewer = playing(&b, &view_other);
        (vec![a, other], b_viewer, oldest, view_a)
    })
    .await;
    let events = follow_events(&base, &oldest.location, r#"["evicted"]"#).await;
    let b = base.clone();
    let (second, newest) = blocking(move || {
        let second = playing(&b, &view_a);
        assert_eq!((viewers_on(&b, 0), viewers_on(&b, 1)), (2, 1));
        // The third viewer of a lands on worker 1 and, connecting, takes the oldest's
        // place on worker 0.
        let newest = playing(&b, &view_a);
        (second, newest)
    })
    .await;
    let b = base.clone();
    blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !events.lock().unwrap().contains("event: evicted") {
            assert!(
                std::time::Instant::now() < deadline,
                "the oldest viewer was never evicted"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(metric(&b, "whipcast_evictions_total"), 1);
        assert_eq!((viewers_on(&b, 0), viewers_on(&b, 1)), (1, 2));
        for v in [&second, &newest] {
            let before = v.frames().len();
            v.wait_for("frames after the eviction", |s| {
                s.frames.len() >= before + 10
            });
        }
        drop((a, b_viewer, oldest));
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn loss_resume_and_stop_reach_the_viewers_on_both_workers() {
    // A 60 s resume grace: "inactive" within the test can only come from the DELETE.
    let extra = ["--workers", "2", "--resume-grace", "60s"];
    let (server, base) = start_in(&temp_dir("span"), &extra).await;
    let b = base.clone();
    let (id, first, viewers) = blocking(move || {
        let (id, view) = create(&b);
        let first = Client::publish(&b, &id).expect("publish");
        let viewers: Vec<Client> = (0..2).map(|_| playing(&b, &view)).collect();
        assert_eq!((viewers_on(&b, 0), viewers_on(&b, 1)), (1, 1));
        (id, first, viewers)
    })
    .await;
    let names = r#"["active","inactive","reconnecting"]"#;
    let mut events = Vec::new();
    for v in &viewers {
        events.push(follow_events(&base, &v.location, names).await);
    }
    let b = base.clone();
    blocking(move || {
        let wait = |what: &str, f: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !f() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never happened: {what}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        };
        first.vanish();
        for e in &events {
            wait("reconnecting on every viewer", &|| {
                e.lock().unwrap().contains("event: reconnecting")
            });
        }
        let second = Client::publish(&b, &id).expect("the publisher resumes");
        for (v, e) in viewers.iter().zip(&events) {
            wait("active again", &|| {
                in_order(e, "reconnecting", "event: active")
            });
            let before = v.frames().len();
            // The same sessions play on: spliced in place on both workers.
            v.wait_for("frames after the resume", |s| s.frames.len() >= before + 20);
        }
        assert_eq!(second.stop(), 200);
        for e in &events {
            wait("ended on every viewer", &|| {
                in_order(e, "reconnecting", "event: inactive")
            });
        }
        assert_eq!(metric(&b, "whipcast_worker_viewers{worker=\"0\"}"), 0);
        assert_eq!(metric(&b, "whipcast_worker_viewers{worker=\"1\"}"), 0);
        drop(viewers);
    })
    .await;
    server.shutdown().await;
}
