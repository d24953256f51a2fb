//! The real `whipcast` binary as a process: signals, exit codes, and what it writes to its logs.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{open_fds, sigterm, spawn};
use common::sim::{obs_offer, viewer_offer};

#[test]
fn sigterm_closes_sessions_and_exits_0() {
    let mut p = spawn("info");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let created: serde_json::Value = http
            .post(format!("{}/api/broadcasts", p.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["broadcast_id"].as_str().unwrap();
        let res = http
            .post(format!("{}/broadcast?id={id}", p.base))
            .header("content-type", "application/sdp")
            .body(obs_offer())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    });
    let status = sigterm(&mut p);
    assert!(status.success(), "exit status {status:?}");
    let mut logs = String::new();
    p.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("all sessions closed for shutdown"), "{logs}");
    assert!(
        logs.contains("connectivity self-test passed"),
        "the start-up self-test ran: {logs}"
    );
}

#[test]
fn logs_never_contain_a_broadcast_id() {
    let mut p = spawn("trace");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(async {
        let http = reqwest::Client::new();
        let created: serde_json::Value = http
            .post(format!("{}/api/broadcasts", p.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["broadcast_id"].as_str().unwrap().to_owned();
        let view = created["view_id"].as_str().unwrap().to_owned();
        let sdp = |body: String| {
            http.post(format!("{}/broadcast", p.base))
                .header("content-type", "application/sdp")
                .bearer_auth(&id)
                .body(body)
        };
        assert_eq!(sdp(obs_offer()).send().await.unwrap().status(), 201);
        let res = http
            .post(format!("{}/broadcast?id={id}", p.base))
            .header("content-type", "application/sdp")
            .body(obs_offer())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let res = http
            .post(format!("{}/stream?id={view}", p.base))
            .header("content-type", "application/sdp")
            .body(viewer_offer(false))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(
            http.get(format!("{}/api/broadcasts/{id}", p.base))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            http.post(format!("{}/api/broadcasts/{id}/view-id", p.base))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        id
    });
    sigterm(&mut p);
    let mut logs = String::new();
    p.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    p.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        logs.contains("publisher session started"),
        "the log was captured: {}",
        &logs[..logs.len().min(2000)]
    );
    assert!(!logs.contains(&id), "a broadcast ID appeared in the logs");
}

#[test]
fn check_config_validates_files_and_exits() {
    let dir = std::env::temp_dir().join(format!(
        "whipcast-check-{}",
        whipcast::secret::random_token()
    ));
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_whipcast"))
            .args([
                "--check-config",
                "--http-listen",
                "127.0.0.1:0",
                "--udp-listen",
                "127.0.0.1:0",
                "--data-dir",
                dir.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = run(&[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration ok"));
    std::fs::write(dir.join("broadcasts.json"), "{ corrupt").unwrap();
    let bad = run(&[]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn sessions_leave_no_file_descriptors_or_peers_behind() {
    use common::udp_client::{Client, http};
    let p = spawn("warn");
    let pid = p.child.id();
    let (status, _, body) = http("POST", &format!("{}/api/broadcasts", p.base), &[], "");
    assert_eq!(status, 201);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (id, view) = (
        v["broadcast_id"].as_str().unwrap(),
        v["view_id"].as_str().unwrap(),
    );
    // Warm up once (lazy allocations, thread pools), then measure a second full round.
    for round in 0..2 {
        let fds_before = open_fds(pid);
        let publisher = Client::publish(&p.base, id).unwrap();
        let viewers: Vec<Client> = (0..3)
            .map(|_| Client::view(&p.base, view).unwrap())
            .collect();
        for v in &viewers {
            v.wait_for("playing", |s| s.frames.len() >= 5);
        }
        for v in viewers {
            assert_eq!(v.stop(), 200);
        }
        assert_eq!(publisher.stop(), 200);
        let metrics = http("GET", &format!("{}/metrics", p.base), &[], "").2;
        for line in [
            "whipcast_publishers 0",
            "whipcast_viewers 0",
            "whipcast_broadcasts_live 0",
        ] {
            assert!(
                metrics.contains(line),
                "round {round}: {line} in\n{metrics}"
            );
        }
        // HTTP connections close asynchronously; give them a moment (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        while open_fds(pid) > fds_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if round == 1 {
            assert!(
                open_fds(pid) <= fds_before,
                "file descriptors leaked: {} > {fds_before}",
                open_fds(pid)
            );
        }
    }
}

#[test]
fn an_advertised_address_off_this_machine_is_reported_as_unverified() {
    // 192.0.2.1 (TEST-NET-1) is only advertised: the self-test sends nothing there.
    let dir =
        std::env::temp_dir().join(format!("whipcast-nat-{}", whipcast::secret::random_token()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_whipcast"))
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--udp-listen",
            "127.0.0.1:0",
            "--public-ip",
            "192.0.2.1",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut line = String::new();
    while Instant::now() < deadline && stderr.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if line.contains("self-test") {
            break;
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains("192.0.2.1") && seen.contains("cannot be checked from here"),
        "{seen}"
    );
}

/// `whipcast-loadgen` (issue 5's load generator) against the real binary, with plain
/// receiving sockets and with UDP GRO on them: every viewer plays the whole window, nothing
/// is lost against what the publisher sent, the full viewers' frames check out and none is
/// missing, and the server's CPU and memory are read from /proc.
#[test]
fn the_load_generator_measures_a_clean_run_against_the_binary() {
    for gro in [false, true] {
        let p = spawn("warn");
        let pid = p.child.id().to_string();
        let mut args = vec![
            "--base",
            &p.base,
            "--viewers",
            "6",
            "--full-viewers",
            "2",
            "--seconds",
            "2",
            // A GOP and more: until its first live keyframe a new viewer gets no video.
            "--warmup",
            "3",
            "--probes",
            "1",
            "--server-pid",
            &pid,
        ];
        if gro {
            args.push("--receiver-gro");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_whipcast-loadgen"))
            .args(&args)
            .output()
            .expect("the load generator runs");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "gro {gro}: {log}");
        let line = String::from_utf8_lossy(&out.stdout);
        let r: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("gro {gro}: one JSON line ({e}): {line}"));
        assert_eq!(r["receiver_gro"], gro);
        // Every viewer joined, played the whole window and was still playing at its end.
        let want = serde_json::json!({
            "viewers_requested": 6, "viewers_joined": 6, "viewers_failed": 0, "viewers_ended": 0,
            "viewers_playing_at_end": 6, "viewers_played_whole_window": 6, "window_viewers": 6,
            "frames_bad": 0, "frames_missing": 0, "window_excess_packets": 0,
        });
        for (field, want) in want.as_object().expect("an object") {
            assert_eq!(&r[field], want, "gro {gro}: {field}: {r}");
        }
        // Loss counts against what the publisher sent, so a silent viewer is 1/6 of it and a
        // stall of 0.1 s of the 2 s window is 0.8 %; the bound leaves room only for packets in
        // flight at the window's ends.
        assert!(
            r["loss_ratio"].as_f64().is_some_and(|loss| loss < 0.005),
            "gro {gro}: loss_ratio: {r}"
        );
        let positive = "window_packets_sent frames_ok delivered_pps server_cpu_percent \
            loadgen_cpu_percent server_rss_mb_start server_rss_mb_loaded server_rss_mb_end \
            ttff_first_packet_p50_ms ttff_first_frame_p50_ms probe_ttff_first_frame_p50_ms";
        for field in positive.split_whitespace() {
            assert!(
                r[field].as_f64().is_some_and(|x| x > 0.0),
                "gro {gro}: {field}: {r}"
            );
        }
    }
}
