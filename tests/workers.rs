//! `--workers 2`: one UDP port, a receive thread that routes each datagram to the worker that
//! owns its session, broadcasts spread over the workers, the server's limits kept across
//! them. Real server, real loopback UDP, str0m clients.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::process::{Command, Stdio};

use common::server::{create, metric, start_in, temp_dir};
use common::udp_client::Client;

#[tokio::test(flavor = "multi_thread")]
async fn broadcasts_spread_over_workers_and_share_the_slot_limit() {
    let extra = ["--workers", "2", "--max-live-broadcasts", "2"];
    let (server, base) = start_in(&temp_dir("workers"), &extra).await;
    tokio::task::spawn_blocking(move || {
        let (a, view_a) = create(&base);
        let (b, view_b) = create(&base);
        let (c, _) = create(&base);
        let pa = Client::publish(&base, &a).expect("first broadcast accepted");
        let pb = Client::publish(&base, &b).expect("second broadcast accepted");
        // Each worker holds one broadcast: the second went to the emptier worker.
        for w in 0..2 {
            let series = format!("whipcast_worker_publishers{{worker=\"{w}\"}}");
            assert_eq!(metric(&base, &series), 1, "worker {w}");
        }
        // Both workers deliver: their viewers' datagrams reach the worker of their session
        // through the one port, and come back from it.
        let va = Client::view(&base, &view_a).expect("viewer of a");
        let vb = Client::view(&base, &view_b).expect("viewer of b");
        for v in [&va, &vb] {
            v.wait_for("20 frames decoded", |s| s.frames.len() >= 20);
            v.wait_for("audio", |s| s.audio_frames > 10);
        }
        for w in 0..2 {
            let series = format!("whipcast_worker_viewers{{worker=\"{w}\"}}");
            assert_eq!(metric(&base, &series), 1, "worker {w}");
        }
        // Two slots in the whole server, not per worker.
        let refused = Client::publish(&base, &c).err().expect("no third slot");
        assert_eq!(refused.status, 503, "{}", refused.body);
        // A DELETE finds the publisher's worker; the freed slot takes the third broadcast.
        assert_eq!(pa.stop(), 200);
        let pc = Client::publish(&base, &c).expect("the freed slot is taken");
        assert_eq!(metric(&base, "whipcast_broadcasts_live"), 2);
        assert_eq!(
            metric(&base, "whipcast_worker_queue_drops_total{worker=\"0\"}")
                + metric(&base, "whipcast_worker_queue_drops_total{worker=\"1\"}"),
            0
        );
        drop((pb, pc, va, vb));
    })
    .await
    .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_publisher_returns_to_its_broadcasts_worker_and_viewers_keep_playing() {
    let extra = ["--workers", "2", "--max-live-broadcasts", "4"];
    let (server, base) = start_in(&temp_dir("workers"), &extra).await;
    tokio::task::spawn_blocking(move || {
        let (other, _) = create(&base);
        let (id, view) = create(&base);
        let _other = Client::publish(&base, &other).expect("worker 0 gets a broadcast");
        let first = Client::publish(&base, &id).expect("worker 1 gets this one");
        let viewer = Client::view(&base, &view).expect("viewer");
        viewer.wait_for("10 frames", |s| s.frames.len() >= 10);
        first.vanish();
        // A new session for the same broadcast: placed where the broadcast (and its waiting
        // viewer) is, whatever the load, so the viewer's session is spliced, not ended.
        let _second = Client::publish(&base, &id).expect("resume accepted");
        let before = viewer.frames().len();
        // The same session (the same client object) plays on.
        viewer.wait_for("frames after the resume", |s| s.frames.len() >= before + 20);
        let series = "whipcast_worker_publishers{worker=\"1\"}";
        assert_eq!(metric(&base, series), 1);
    })
    .await
    .unwrap();
    server.shutdown().await;
}

/// The load generator against the binary with `--workers 2`: 50 viewers through the receive
/// thread's queues and the workers' send handles, none losing anything.
#[test]
fn fifty_viewers_on_two_workers_lose_nothing() {
    let dir = temp_dir("workers-load");
    let mut child = Command::new(env!("CARGO_BIN_EXE_whipcast"))
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--udp-listen",
            "127.0.0.1:0",
        ])
        .args(["--workers", "2", "--max-viewers", "100"])
        // Every viewer comes from 127.0.0.1 and 32 join at once.
        .args(["--max-pending-viewers-per-ip", "5000"])
        .args(["--data-dir", dir.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("the address line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let base = format!("http://{addr}");
    let pid = child.id().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_whipcast-loadgen"))
        .args(["--base", &base, "--viewers", "50", "--full-viewers", "2"])
        .args(["--seconds", "3", "--warmup", "3", "--probes", "1"])
        .args(["--server-pid", &pid])
        .output()
        .expect("the load generator runs");
    let _ = child.kill();
    let _ = child.wait();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let line = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("one JSON line ({e}): {line}"));
    let want = serde_json::json!({
        "viewers_joined": 50, "viewers_failed": 0, "viewers_ended": 0,
        "viewers_played_whole_window": 50, "frames_bad": 0, "frames_missing": 0, "window_excess_packets": 0,
    });
    for (field, want) in want.as_object().expect("an object") {
        assert_eq!(&r[field], want, "{field}: {r}");
    }
    // As in process.rs: loss counts against what the publisher sent, so only packets in
    // flight at the window's ends may be missing; the full viewers missed no frame at all.
    assert!(
        r["loss_ratio"].as_f64().is_some_and(|loss| loss < 0.005),
        "loss_ratio: {r}"
    );
    // No bad or missing frame means something only when frames were checked at all.
    assert!(
        r["frames_ok"].as_u64().is_some_and(|n| n > 0),
        "frames_ok: {r}"
    );
}
