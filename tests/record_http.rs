//! The broadcaster's recordings over HTTP (issue 27): listed, downloaded (whole and in byte
//! ranges, by the signed link a `<video>` follows or with the broadcast ID) and deleted with
//! the broadcast ID only, never with a view ID nor a file name that leaves the broadcast's
//! directory; the Record switch, kept across a restart; and the limits (byte cap, free-space
//! floor, a directory that cannot be written) stopping the recording, never the broadcast.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::record::{
    ffprobe, list, panel_recording, recording_server, recordings, switch, wait_sent, wait_state,
};
use common::server::{create, metric, start_in};
use common::udp_client::{Client, http};
use tokio::task::block_in_place;

/// Publishes `frames` frames (30 a second) and stops; returns once the recording has ended.
fn publish_and_stop(base: &str, id: &str, frames: usize) {
    let publisher = Client::publish(base, id).expect("WHIP accepted");
    wait_sent(&publisher, frames);
    assert_eq!(publisher.stop(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(base, "whipcast_recordings_active") != 0 {
        assert!(Instant::now() < deadline, "the recording never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn get(url: &str, range: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    req.send().await.expect("the server answers")
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn recordings_are_listed_downloaded_in_ranges_and_deleted_with_the_broadcast_id_only() {
    let (server, base, rec) = recording_server("record-http").await;
    let dir = rec.parent().unwrap().to_owned();
    let (id, view) = create(&base);
    block_in_place(|| publish_and_stop(&base, &id, 180));
    let on_disk = recordings(&rec);
    assert_eq!(on_disk.len(), 1, "{on_disk:?}");
    let bytes = std::fs::read(&on_disk[0]).unwrap();
    let len = bytes.len();

    let (status, listed) = block_in_place(|| list(&base, &id));
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["recording"]["state"], "waiting", "{listed}");
    let files = listed["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{listed}");
    let f = &files[0];
    let name = f["name"].as_str().unwrap().to_owned();
    assert_eq!(name, on_disk[0].file_name().unwrap().to_str().unwrap());
    assert_eq!(f["bytes"], len as u64);
    assert_eq!(f["writing"], false);
    let duration = f["duration_s"].as_f64().unwrap();
    assert!(
        (5.0..=7.0).contains(&duration),
        "6 s sent, {duration} s listed"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start = f["start_unix"].as_u64().unwrap();
    assert!(now - start < 60, "started {start}, now {now}");
    // The file itself says when it started (mvhd creation time), as its name does.
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format_tags=creation_time"])
        .args(["-of", "default=nw=1:nk=1"])
        .arg(&on_disk[0])
        .output()
        .unwrap();
    let created = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (days, secs) = (start / 86_400, start % 86_400);
    let hms = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    assert!(
        created.contains(&format!("T{hms}")),
        "{created} vs {start} (day {days})"
    );

    // The signed link: the whole file, then byte ranges as a seeking <video> asks for them.
    let url = format!("{base}{}", f["url"].as_str().unwrap());
    let whole = get(&url, None).await;
    assert_eq!(whole.status(), 200);
    assert_eq!(header(&whole, "accept-ranges"), "bytes");
    assert_eq!(header(&whole, "content-type"), "video/mp4");
    assert_eq!(whole.bytes().await.unwrap(), bytes);
    let part = get(&url, Some("bytes=100-1099")).await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        header(&part, "content-range"),
        format!("bytes 100-1099/{len}")
    );
    assert_eq!(part.bytes().await.unwrap(), bytes[100..1100]);
    let tail = get(&url, Some("bytes=-500")).await;
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap(), bytes[len - 500..]);
    let beyond = get(&url, Some(&format!("bytes={len}-"))).await;
    assert_eq!(beyond.status(), 416);
    assert_eq!(header(&beyond, "content-range"), format!("bytes */{len}"));

    // With the broadcast ID as the Bearer token, as curl would.
    let file_url = format!("{base}/api/broadcast/recordings/{name}");
    let by_id = reqwest::Client::new()
        .get(&file_url)
        .bearer_auth(&id)
        .header("Range", "bytes=0-7")
        .send()
        .await
        .unwrap();
    assert_eq!(by_id.status(), 206);
    assert_eq!(by_id.bytes().await.unwrap(), bytes[..8]);

    let head = reqwest::Client::new().head(&file_url);
    let head = head.bearer_auth(&view).send().await.unwrap();
    assert_eq!(head.status(), 401, "HEAD with a view ID");
    let head = reqwest::Client::new().head(&file_url).bearer_auth(&id);
    let head = head.send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), len.to_string());
    block_in_place(|| {
        // A view ID opens none of it: list, download, delete are refused as on the panel.
        let (status, body) = list(&base, &view);
        assert_eq!(status, 401, "{body}");
        assert!(!body.to_string().contains(&name));
        let view_auth = format!("Bearer {view}");
        for method in ["GET", "DELETE"] {
            let (status, _, _) = http(method, &file_url, &[("Authorization", &view_auth)], "");
            assert_eq!(status, 401, "{method} with a view ID");
        }
        assert!(on_disk[0].exists(), "not deleted with a view ID");

        // Names that leave the broadcast's directory never reach the file system.
        let id_auth = format!("Bearer {id}");
        for path in [
            "/api/broadcast/recordings/../../broadcasts.json",
            "/api/broadcast/recordings/..%2F..%2Fbroadcasts.json",
            "/api/broadcast/recordings/%2E%2E%2Fbroadcasts.json",
            "/api/broadcast/recordings/.mp4",
        ] {
            for method in ["GET", "DELETE"] {
                let (status, _, body) = http(
                    method,
                    &format!("{base}{path}"),
                    &[("Authorization", &id_auth)],
                    "",
                );
                assert_eq!(status, 404, "{method} {path}: {body}");
            }
        }
        assert!(dir.join("broadcasts.json").exists() || dir.join("broadcasts.journal").exists());
        // A signed link opens its own file only, and not once tampered with.
        let label = on_disk[0].parent().unwrap().file_name().unwrap();
        let query = url.split_once('?').unwrap().1;
        for other in [
            format!(
                "{base}/recordings/{}/../../broadcasts.json?{query}",
                label.to_str().unwrap()
            ),
            url.replace(&name, "other.mp4"),
            url.replace("sig=", "sig=A"),
            url.split_once('?').unwrap().0.to_owned(),
        ] {
            let (status, _, body) = http("GET", &other, &[], "");
            assert_eq!(status, 403, "{other}: {body}");
        }

        // Deleted with the broadcast ID.
        let (status, _, body) = http("DELETE", &file_url, &[("Authorization", &id_auth)], "");
        assert_eq!(status, 200, "{body}");
        assert!(!on_disk[0].exists());
        assert_eq!(list(&base, &id).1["files"].as_array().unwrap().len(), 0);
        let (status, _, _) = http("DELETE", &file_url, &[("Authorization", &id_auth)], "");
        assert_eq!(status, 404, "already gone");
    });
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_record_switch_stops_recording_and_survives_a_restart() {
    let dir = common::server::temp_dir("record-switch");
    let rec = dir.join("rec");
    let rec_arg = rec.to_str().unwrap().to_owned();
    let flags = ["--record", "--record-dir", &rec_arg, "--resume-grace", "1s"];
    let (server, base) = start_in(&dir, &flags).await;
    let (id, view) = create(&base);
    block_in_place(|| {
        assert_eq!(panel_recording(&base, &id)["on"], true, "on by default");
        assert_eq!(switch(&base, &view, false), 401, "not with a view ID");
        assert_eq!(switch(&base, &id, false), 200);
        assert_eq!(panel_recording(&base, &id)["state"], "off");
    });
    server.shutdown().await;

    let (server, base) = start_in(&dir, &flags).await;
    block_in_place(|| {
        let r = panel_recording(&base, &id);
        assert_eq!(
            (&r["on"], &r["state"]),
            (&false.into(), &"off".into()),
            "{r}"
        );
        let publisher = Client::publish(&base, &id).expect("WHIP accepted");
        wait_sent(&publisher, 90);
        assert!(
            recordings(&rec).is_empty(),
            "switched off: nothing recorded"
        );
        assert_eq!(switch(&base, &id, true), 200);
        let r = wait_state(&base, &id, "recording");
        let file = r["file"].as_str().unwrap().to_owned();
        let (_, listed) = list(&base, &id);
        assert_eq!(listed["files"][0]["name"], file.as_str());
        assert_eq!(listed["files"][0]["writing"], true);
        std::thread::sleep(Duration::from_secs(3));
        // The file being written cannot be deleted under the recorder.
        let (status, _, _) = http(
            "DELETE",
            &format!("{base}/api/broadcast/recordings/{file}"),
            &[("Authorization", &format!("Bearer {id}"))],
            "",
        );
        assert_eq!(status, 409);
        assert_eq!(switch(&base, &id, false), 200);
        wait_state(&base, &id, "off");
        assert!(publisher.stop() == 200);
        let files = recordings(&rec);
        assert_eq!(files.len(), 1, "{files:?}");
        let (codecs, _, errors) = ffprobe(&files[0]);
        assert_eq!(
            (codecs, errors.as_str()),
            (vec!["h264".into(), "opus".into()], "")
        );
    });
    server.shutdown().await;
}

/// One server whose recording (into `rec`) must stop with `reason` in its status while its
/// viewer keeps receiving.
async fn stops_recording_not_media(name: &str, flags: &[&str], rec: &Path, reason: &str) {
    let dir = common::server::temp_dir(name);
    let mut all = vec!["--resume-grace", "1s"];
    all.extend_from_slice(flags);
    let (server, base) = start_in(&dir, &all).await;
    let (id, view) = create(&base);
    let reason = reason.to_owned();
    let rec = rec.to_owned();
    tokio::task::spawn_blocking(move || {
        let publisher = Client::publish(&base, &id).expect("WHIP accepted");
        let viewer = Client::view(&base, &view).expect("WHEP accepted");
        let r = wait_state(&base, &id, "stopped");
        let why = r["reason"].as_str().unwrap();
        assert!(why.contains(&reason), "{why}");
        let (_, listed) = list(&base, &id);
        assert_eq!(listed["recording"]["reason"], why, "the list says why too");
        // The broadcast goes on: the viewer keeps getting frames, the panel says live.
        let before = viewer.frames().len();
        std::thread::sleep(Duration::from_secs(2));
        let after = viewer.frames().len();
        assert!(after >= before + 40, "{before} → {after} frames in 2 s");
        assert_eq!(
            common::record::panel_recording(&base, &id)["state"],
            "stopped"
        );
        let (_, _, panel) = http(
            "GET",
            &format!("{base}/api/broadcast"),
            &[("Authorization", &format!("Bearer {id}"))],
            "",
        );
        assert!(panel.contains("\"state\":\"live\""), "{panel}");
        // What was written before the stop plays.
        for f in recordings(&rec) {
            let (_, _, errors) = ffprobe(&f);
            assert_eq!(errors, "", "{}", f.display());
        }
        drop(viewer);
        publisher.stop();
    })
    .await
    .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn byte_cap_free_space_floor_and_an_unwritable_dir_stop_recording_not_the_broadcast() {
    let dir = common::server::temp_dir("record-limits");
    std::fs::create_dir_all(&dir).unwrap();
    let (cap, floor) = (dir.join("cap"), dir.join("floor"));
    // A directory under a regular file: creating it fails even for root (ENOTDIR), unlike a
    // chmod-ed directory, which root writes anyway.
    std::fs::write(dir.join("a-file"), b"not a directory").unwrap();
    let unwritable = dir.join("a-file").join("rec");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let (cap_s, floor_s, unwritable_s) = (s(&cap), s(&floor), s(&unwritable));
    let cap_flags = [
        "--record",
        "--record-dir",
        &cap_s,
        "--record-max-bytes",
        "120K",
    ];
    let floor_flags = [
        "--record",
        "--record-dir",
        &floor_s,
        "--record-min-free",
        "1000000T",
    ];
    let unwritable_flags = ["--record", "--record-dir", &unwritable_s];
    tokio::join!(
        stops_recording_not_media("record-cap", &cap_flags, &cap, "--record-max-bytes"),
        stops_recording_not_media("record-floor", &floor_flags, &floor, "--record-min-free"),
        stops_recording_not_media("record-ro", &unwritable_flags, &unwritable, "cannot write"),
    );
    let capped = recordings(&cap);
    assert_eq!(capped.len(), 1, "{capped:?}");
    let size = std::fs::metadata(&capped[0]).unwrap().len();
    // Stopped at the first fragment past the cap, then the samples waiting for the next one
    // are written on close: at most two fragments (2 × 2 s of ~40 kB/s) more.
    assert!(
        (120 << 10..(120 << 10) + 160_000).contains(&size),
        "{size} bytes"
    );
    assert!(
        recordings(&floor).is_empty(),
        "nothing written below the floor"
    );
}
