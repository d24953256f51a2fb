//! `--record`: an OBS-shaped broadcast written as fragmented MP4 that Debian's `ffprobe`
//! (package `ffmpeg`) reads without a complaint, and a file that survives `kill -9` of the
//! server up to its last complete fragment.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::time::{Duration, Instant};

use common::record::{ffprobe, recordings, wait_sent};
use common::server::{create, metric};
use common::udp_client::Client;

#[tokio::test(flavor = "multi_thread")]
async fn obs_broadcast_of_30_s_is_recorded_as_h264_and_opus_that_ffprobe_accepts() {
    let dir = common::server::temp_dir("record");
    let rec = dir.join("rec");
    let rec_arg = rec.to_str().unwrap().to_owned();
    // A 1 s grace: the recording ends (and its file is complete) 3 s after the last packet.
    let (server, base) = common::server::start_in(
        &dir,
        &["--record", "--record-dir", &rec_arg, "--resume-grace", "1s"],
    )
    .await;
    let files = tokio::task::spawn_blocking(move || {
        let (id, _view) = create(&base);
        let publisher = Client::publish(&base, &id).expect("WHIP accepted");
        wait_sent(&publisher, 900);
        assert_eq!(publisher.stop(), 200);
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(&base, "whipcast_recordings_active") != 0 {
            assert!(Instant::now() < deadline, "the recording never ended");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(metric(&base, "whipcast_record_queue_drops_total"), 0);
        recordings(&rec)
    })
    .await
    .unwrap();
    server.shutdown().await;
    assert_eq!(files.len(), 1, "one segment: {files:?}");
    let (codecs, duration, errors) = ffprobe(&files[0]);
    println!("{}: {codecs:?}, {duration} s", files[0].display());
    assert_eq!(errors, "", "ffprobe -v error printed nothing");
    assert_eq!(codecs, ["h264", "opus"]);
    assert!(
        (duration - 30.0).abs() <= 1.0,
        "30 s sent, {duration} s recorded"
    );
}

#[test]
fn kill_9_leaves_a_file_playable_up_to_its_last_fragment() {
    let dir = common::server::temp_dir("record-kill");
    let rec = dir.join("rec");
    let mut server = common::process::spawn_in(
        "info",
        &dir,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--record", "--record-dir", rec.to_str().unwrap()],
    );
    let (id, _view) = create(&server.base);
    let publisher = Client::publish(&server.base, &id).expect("WHIP accepted");
    // 8 s sent: whatever the moment of the kill, fragments of at most 2 s cover 5 s of it.
    wait_sent(&publisher, 240);
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    drop(publisher);
    let files = recordings(&rec);
    assert_eq!(files.len(), 1, "one segment: {files:?}");
    let (codecs, duration, errors) = ffprobe(&files[0]);
    println!("{}: {codecs:?}, {duration} s", files[0].display());
    assert_eq!(errors, "", "ffprobe -v error printed nothing");
    assert_eq!(codecs, ["h264", "opus"]);
    assert!(duration >= 5.0, "8 s sent, {duration} s kept");
}
