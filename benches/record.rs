//! What recording costs (issue 27), side by side in one run: the same 6 Mb/s OBS-shaped
//! broadcast (synthetic H.264 at 30 fps: a 60 kB IDR with SPS/PPS every second, 24 kB
//! P-frames; a 160-byte Opus packet every 20 ms) with 2 viewers, into a server without
//! `--record` and then into one with it, each for [`WINDOW`]. Per run: the CPU time of the
//! server's media thread (`--workers 1`) and of its recorder thread, read from
//! `/proc/self/task/*/schedstat` (nanoseconds on the CPU) over the window, as % of one core;
//! and what the recorder wrote. The publisher and viewers are str0m clients on threads of
//! their own, not counted.
//!
//! Not criterion: a broadcast has to run for seconds. `cargo bench --bench record`
//! (BENCHMARKS.md §12 has the latest figures). `RECORD_BENCH_WINDOW=<s>` changes the window.

#![allow(clippy::disallowed_methods)] // a benchmark is a driver: it owns the clock

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)] // the helpers' unit tests are not built into a bench without harness
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::annexb::AccessUnit;
use common::record::recordings;
use common::server::{create, start_in, temp_dir};
use common::udp_client::Client;

/// Long enough that 10 ms of scheduler granularity and a keyframe more or less are noise.
const WINDOW: Duration = Duration::from_secs(20);
const VIEWERS: usize = 2;

/// One second of a 6 Mb/s stream: 30 access units, the first an IDR with SPS and PPS.
fn six_megabit_script() -> Vec<(AccessUnit, u64)> {
    const SPS: &[u8] = &[
        0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0xa4, 0x80,
    ];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
    let nal = |header: u8, len: usize, n: usize| {
        let mut v = vec![0, 0, 0, 1, header];
        // Filler without zero bytes, so no start code appears inside.
        v.extend((0..len).map(|i| 1 + ((i * 7 + n * 13) % 250) as u8));
        v
    };
    (0..30)
        .map(|n| {
            let data = match n {
                0 => [
                    &[0, 0, 0, 1][..],
                    SPS,
                    &[0, 0, 0, 1],
                    PPS,
                    &nal(0x65, 60_000, n),
                ]
                .concat(),
                _ => nal(0x41, 23_800, n),
            };
            let keyframe = n == 0;
            (AccessUnit { data, keyframe }, n as u64)
        })
        .collect()
}

/// Nanoseconds on the CPU so far, per thread name, of this process's threads.
fn thread_cpu() -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        *out.entry(comm.trim().to_owned()).or_default() += ns;
    }
    out
}

struct Run {
    media_ns: u64,
    recorder_ns: u64,
    wall: Duration,
    written: u64,
    received: usize,
}

async fn run(record: bool, window: Duration) -> Run {
    let dir = temp_dir("bench-record");
    let rec = dir.join("rec");
    let rec_arg = rec.to_str().unwrap().to_owned();
    let rec = rec.clone();
    let mut flags = vec!["--workers", "1", "--resume-grace", "1s"];
    if record {
        flags.extend(["--record", "--record-dir", &rec_arg]);
    }
    let (server, base) = start_in(&dir, &flags).await;
    let result = tokio::task::spawn_blocking(move || {
        let (id, view) = create(&base);
        let publisher =
            Client::publish_script(&base, &id, six_megabit_script()).expect("WHIP accepted");
        let viewers: Vec<Client> = (0..VIEWERS)
            .map(|_| Client::view(&base, &view).expect("WHEP accepted"))
            .collect();
        // Warm up: connected, the first keyframe through, the recording's file open.
        std::thread::sleep(Duration::from_secs(3));
        let bytes = || -> u64 {
            (recordings(&rec).iter())
                .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
                .sum()
        };
        let written_before = bytes();
        let (before, start) = (thread_cpu(), Instant::now());
        let received_before: usize = viewers.iter().map(|v| v.frames().len()).sum();
        std::thread::sleep(window);
        let (after, wall) = (thread_cpu(), start.elapsed());
        let written = bytes() - written_before;
        let received = viewers.iter().map(|v| v.frames().len()).sum::<usize>() - received_before;
        let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
        let media_ns = after
            .keys()
            .filter(|n| n.starts_with("whipcast-"))
            .map(|n| delta(n))
            .sum();
        let recorder_ns = delta("recorder");
        drop(viewers);
        publisher.stop();
        (media_ns, recorder_ns, wall, received, written)
    })
    .await
    .unwrap();
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let (media_ns, recorder_ns, wall, received, written) = result;
    Run {
        media_ns,
        recorder_ns,
        wall,
        written,
        received,
    }
}

fn percent(ns: u64, wall: Duration) -> f64 {
    ns as f64 / wall.as_nanos() as f64 * 100.0
}

fn main() {
    let window = std::env::var("RECORD_BENCH_WINDOW")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(WINDOW, Duration::from_secs);
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "6 Mb/s broadcast, {VIEWERS} viewers, {} s window each",
        window.as_secs()
    );
    println!("run          media thread   recorder thread   written      frames to viewers");
    for record in [false, true] {
        let r = rt.block_on(run(record, window));
        let mbps = r.written as f64 * 8.0 / r.wall.as_secs_f64() / 1e6;
        println!(
            "{:<12} {:>9.2} %    {:>9.2} %        {:>6.1} MB ({:.2} Mb/s)   {}",
            if record { "--record" } else { "no --record" },
            percent(r.media_ns, r.wall),
            percent(r.recorder_ns, r.wall),
            r.written as f64 / 1e6,
            mbps,
            r.received,
        );
    }
}
