//! A recording's timeline (issue 27): audio and video aligned by the publisher's sender
//! reports, not by when their packets arrive; a publisher that drops and comes back within
//! `--resume-grace` continues the same recording with the outage as a gap; a new publish
//! starts a new recording.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::annexb::{fixture, nal_units};
use common::record::{ffprobe, list, recording_server, recordings, wait_sent};
use common::server::{create, metric, start_in};
use common::udp_client::Client;
use sha2::{Digest, Sha256};
use tokio::task::block_in_place;

/// A frame (30 fps) and an Opus packet, in ms.
const FRAME_MS: f64 = 1000.0 / 30.0;
const PACKET_MS: f64 = 20.0;

/// Every packet of `file` as ffprobe reads it: (stream index, pts in ms, SHA-256 of its data).
fn packets(file: &Path) -> Vec<(u32, f64, String)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_data_hash", "SHA256", "-show_entries"])
        .args(["packet=stream_index,pts_time,data_hash", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            let stream = f.next()?.parse().ok()?;
            let pts: f64 = f.next()?.parse().ok()?;
            let hash = f.next()?.strip_prefix("SHA256:")?.to_owned();
            Some((stream, pts * 1000.0, hash))
        })
        .collect()
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Which sample of its loop each sample the publisher sends is, by the SHA-256 of the bytes
/// the recorder writes for it: a frame's NAL units behind 4-byte lengths, without its
/// parameter sets (they go into the sample entry); an Opus packet as it is. Bytes that occur
/// more than once in a loop say nothing and are left out. Returns the map and the two loops'
/// lengths (frames, packets).
fn loop_positions() -> (HashMap<String, usize>, usize, usize) {
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    let frames = fixture();
    for (i, unit) in frames.iter().enumerate() {
        let mut avcc = Vec::new();
        for nal in nal_units(&unit.data) {
            if !matches!(nal[0] & 0x1f, 7 | 8 | 9 | 12) {
                avcc.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                avcc.extend_from_slice(nal);
            }
        }
        seen.entry(sha256(&avcc)).or_default().push(i);
    }
    let tone = common::opus::tone();
    for (i, packet) in tone.iter().enumerate() {
        seen.entry(sha256(packet)).or_default().push(i);
    }
    let unique = seen
        .into_iter()
        .filter(|(_, at)| at.len() == 1)
        .map(|(h, at)| (h, at[0]))
        .collect();
    (unique, frames.len(), tone.len())
}

/// Each identified sample's place in the file less its capture time since the publisher's
/// first write (ms), with its place: `(pts, pts − capture)`. The content gives the position
/// in the loop; the loop number comes from the file time (the first identified sample is in
/// the first loop), which a misalignment far below a loop's length cannot get wrong.
fn offsets(packets: &[(f64, usize)], period_ms: f64, loop_len: usize) -> Vec<(f64, f64)> {
    let loop_ms = period_ms * loop_len as f64;
    let Some(&(pts0, p0)) = packets.first() else {
        return Vec::new();
    };
    let shift = pts0 - p0 as f64 * period_ms;
    packets
        .iter()
        .map(|&(pts, p)| {
            let in_loop = p as f64 * period_ms;
            let n = ((pts - shift - in_loop) / loop_ms).round();
            (pts, pts - (n * loop_ms + in_loop))
        })
        .collect()
}
fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
async fn audio_and_video_are_aligned_by_sender_reports_when_the_video_leaves_150_ms_late() {
    let (server, base, rec) = recording_server("record-av").await;
    block_in_place(|| {
        let (id, _) = create(&base);
        let late = Duration::from_millis(150);
        let publisher = Client::publish_late_video(&base, &id, late).expect("WHIP accepted");
        wait_sent(&publisher, 300);
        assert_eq!(publisher.stop(), 200);
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&base, "whipcast_recordings_active") != 0 {
            assert!(Instant::now() < deadline, "the recording never ended");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    server.shutdown().await;
    let files = recordings(&rec);
    assert_eq!(files.len(), 1, "{files:?}");
    let (positions, frames, tone) = loop_positions();
    let (mut video, mut audio) = (Vec::new(), Vec::new());
    for (stream, pts, hash) in packets(&files[0]) {
        if let Some(&p) = positions.get(&hash) {
            match stream {
                0 => video.push((pts, p)),
                _ => audio.push((pts, p)),
            }
        }
    }
    let video = offsets(&video, FRAME_MS, frames);
    let audio = offsets(&audio, PACKET_MS, tone);
    // From 5.5 s on the sender reports have come for both (str0m's publisher sends its first
    // audio report about 5 s in; until then the audio is placed by arrival).
    let after = |v: &[(f64, f64)], from: f64, to: f64| -> Vec<f64> {
        v.iter()
            .filter(|(pts, _)| (from..to).contains(pts))
            .map(|x| x.1)
            .collect()
    };
    let (v, a) = (after(&video, 5500.0, 1e9), after(&audio, 5500.0, 1e9));
    println!(
        "{} video, {} audio samples identified after 5.5 s",
        v.len(),
        a.len()
    );
    assert!(v.len() > 60 && a.len() > 100);
    let mid = median(v);
    let skew = mid - median(a.clone());
    // Every audio sample, not just the middle one: the worst against the video.
    let worst =
        (a.iter().map(|x| mid - x)).fold(0.0_f64, |w, d| if d.abs() > w.abs() { d } else { w });
    let early = after(&audio, 0.0, 500.0);
    let early_skew = match early.is_empty() {
        true => f64::NAN,
        false => median(after(&video, 0.0, 500.0)) - median(early),
    };
    println!(
        "audio vs video from 5.5 s on: {skew:.1} ms (worst sample {worst:.1} ms); in the first 0.5 s: {early_skew:.1} ms"
    );
    assert!(
        skew.abs() <= 20.0 && worst.abs() <= 20.0,
        "the audio of an instant is {skew:.1} ms from its video (sent 150 ms apart)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drop_and_resume_is_one_recording_with_a_gap_and_a_new_publish_starts_another() {
    let dir = common::server::temp_dir("record-resume");
    let rec = dir.join("rec");
    let rec_arg = rec.to_str().unwrap().to_owned();
    let (server, base) = start_in(
        &dir,
        &["--record", "--record-dir", &rec_arg, "--resume-grace", "4s"],
    )
    .await;
    let listed = block_in_place(|| {
        let (id, _) = create(&base);
        let first = Client::publish(&base, &id).expect("WHIP accepted");
        wait_sent(&first, 120);
        first.vanish(); // no DELETE: a crash or a lost network
        std::thread::sleep(Duration::from_secs(2));
        let resumed = Client::publish(&base, &id).expect("WHIP accepted");
        wait_sent(&resumed, 120);
        assert_eq!(resumed.stop(), 200);
        let again = Client::publish(&base, &id).expect("WHIP accepted");
        wait_sent(&again, 90);
        assert_eq!(again.stop(), 200);
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&base, "whipcast_recordings_active") != 0 {
            assert!(Instant::now() < deadline, "the recording never ended");
            std::thread::sleep(Duration::from_millis(100));
        }
        list(&base, &id).1
    });
    server.shutdown().await;
    let files = recordings(&rec);
    assert_eq!(files.len(), 2, "a recording per publish: {files:?}");
    assert_eq!(listed["files"].as_array().unwrap().len(), 2, "{listed}");
    let gaps = |f: &Path| {
        let video: Vec<f64> = (packets(f).into_iter())
            .filter(|p| p.0 == 0)
            .map(|p| p.1)
            .collect();
        video
            .windows(2)
            .map(|w| w[1] - w[0])
            .filter(|d| *d > 500.0)
            .collect::<Vec<_>>()
    };
    let (codecs, duration, errors) = ffprobe(&files[0]);
    println!("resumed: {duration} s, gaps {:?} ms", gaps(&files[0]));
    assert_eq!(
        (codecs, errors.as_str()),
        (vec!["h264".into(), "opus".into()], "")
    );
    // 4 s, an outage of 2 s and the time the resume took to connect, 4 s.
    assert!((9.0..=12.5).contains(&duration), "{duration} s");
    let resumed_gaps = gaps(&files[0]);
    assert_eq!(resumed_gaps.len(), 1, "one gap: {resumed_gaps:?}");
    assert!(
        (1500.0..=4000.0).contains(&resumed_gaps[0]),
        "{resumed_gaps:?}"
    );
    let (_, duration, errors) = ffprobe(&files[1]);
    println!("new publish: {duration} s, gaps {:?}", gaps(&files[1]));
    assert_eq!(errors, "");
    assert!((2.0..=3.5).contains(&duration), "{duration} s");
    assert!(gaps(&files[1]).is_empty());
}
