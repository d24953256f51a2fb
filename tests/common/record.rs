//! Recording helpers: the files under a `--record-dir`, what `ffprobe` says of one, and the
//! broadcaster API's view of a broadcast's recordings.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::udp_client::{Client, http};

/// A server in a fresh temp dir named `name`, recording into its `rec` directory, with a
/// resume grace of 1 s: the server, its base URL and the recordings' directory.
pub async fn recording_server(name: &str) -> (whipcast::Server, String, PathBuf) {
    let dir = super::server::temp_dir(name);
    let rec = dir.join("rec");
    let rec_arg = rec.to_str().unwrap().to_owned();
    let flags = ["--record", "--record-dir", &rec_arg, "--resume-grace", "1s"];
    let (server, base) = super::server::start_in(&dir, &flags).await;
    (server, base, rec)
}

/// Every `.mp4` under `dir` (one directory per broadcast), sorted by name (= UTC start).
pub fn recordings(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for broadcast in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(broadcast.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "mp4") {
                files.push(f.path());
            }
        }
    }
    files.sort();
    files
}

/// What `ffprobe -v error` says about `file`: its streams' codec names, its duration in
/// seconds, and everything it printed on stderr (nothing, for a good file).
pub fn ffprobe(file: &Path) -> (Vec<String>, f64, String) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(file)
        .output()
        .expect("ffprobe runs (Debian package ffmpeg)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let codecs = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("codec_name="))
        .map(str::to_owned)
        .collect();
    let duration = stdout
        .lines()
        .find_map(|l| l.strip_prefix("duration=")?.parse().ok())
        .unwrap_or_else(|| panic!("no duration from ffprobe: {stdout}"));
    (
        codecs,
        duration,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What FFmpeg makes of `file`'s video: (samples read, pictures decoded and shown). One
/// picture a sample is what a viewer saw; more are frames a player shows that it did not.
pub fn decoded_video(file: &Path) -> (u64, u64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-count_packets",
            "-select_streams",
            "v",
        ])
        .args([
            "-show_entries",
            "stream=nb_read_packets,nb_read_frames",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(file)
        .output()
        .expect("ffprobe runs (Debian package ffmpeg)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let count = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} from ffprobe: {stdout}"))
    };
    (count("nb_read_packets"), count("nb_read_frames"))
}

/// Waits until the publisher has sent `frames` video frames (30 a second).
pub fn wait_sent(publisher: &Client, frames: usize) {
    let deadline = Instant::now() + Duration::from_secs(frames as u64 / 30 + 60);
    while publisher.shared.lock().unwrap().frames.len() < frames {
        assert!(Instant::now() < deadline, "the publisher stalled");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /api/broadcast/recordings` with `token` as the Bearer: (status, JSON body).
pub fn list(base: &str, token: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let (status, _, body) = http(
        "GET",
        &format!("{base}/api/broadcast/recordings"),
        &[("Authorization", &auth)],
        "",
    );
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// The panel's `recording` object (`GET /api/broadcast`).
pub fn panel_recording(base: &str, broadcast_id: &str) -> serde_json::Value {
    let auth = format!("Bearer {broadcast_id}");
    let (status, _, body) = http(
        "GET",
        &format!("{base}/api/broadcast"),
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let panel: serde_json::Value = serde_json::from_str(&body).unwrap();
    panel["recording"].clone()
}

/// Waits until the panel's recording state is `state`; returns the recording object.
pub fn wait_state(base: &str, broadcast_id: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = panel_recording(base, broadcast_id);
        if r["state"] == state {
            return r;
        }
        assert!(Instant::now() < deadline, "never {state}: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sets the Record switch; returns the HTTP status.
pub fn switch(base: &str, broadcast_id: &str, on: bool) -> u16 {
    let auth = format!("Bearer {broadcast_id}");
    http(
        "POST",
        &format!("{base}/api/broadcast/record"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &format!("{{\"on\": {on}}}"),
    )
    .0
}
