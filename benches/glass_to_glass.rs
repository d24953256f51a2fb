//! Glass-to-glass latency in the viewer page: a Chromium publisher page paints its clock
//! (ms, as black/white blocks) into a canvas and publishes it over WHIP; a second Chromium
//! loads the server's real viewer page `/stream?id=…` and, for every frame its `<video>`
//! presents (`requestVideoFrameCallback`), decodes the blocks and compares them with the
//! moment the frame is expected on screen. Both browsers read this machine's clock. The same
//! canvas is also sent straight from one peer connection to another inside the publisher's
//! page, in the same run: the floor without any server (tests/common/av.rs,
//! tests/pages/av_source.js and av_probe.js).
//!
//! It prints p50, p95 and max of the age of each presented frame, through whipcast and
//! direct, and the offset of sound against picture (the canvas flashes and a tone sounds on
//! the same tick once a second) as a by-product. A benchmark, not a test: the figures depend
//! on the machine and its load (printed before and after).
//!
//! ```text
//! cargo bench --bench glass_to_glass                  # 30 s measured, whipcast in-process
//! cargo bench --bench glass_to_glass -- --seconds 60
//! cargo bench --bench glass_to_glass -- --base http://127.0.0.1:8080   # a running whipcast
//! ```
//!
//! Needs Debian's `chromium` and `chromium-driver`.

#![allow(clippy::disallowed_methods)] // a benchmark is a driver: it owns the clock

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)] // its unit tests do not run in a bench
mod common;

use std::time::{Duration, SystemTime};

use common::av::{Record, Run, quantile};
use common::server::{create, start_in, temp_dir};

/// Left out at the start: the jitter buffers and the encoders' rate control settle.
const WARM_UP: Duration = Duration::from_secs(5);

fn main() {
    let (seconds, external) = args();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, base) = match external {
        Some(base) => {
            assert!(
                base.starts_with("http://127.0.0.1:") || base.starts_with("http://[::1]:"),
                "loopback only"
            );
            (None, base)
        }
        None => {
            let (s, base) = rt.block_on(start_in(&temp_dir("glass-to-glass-bench"), &[]));
            (Some(s), base)
        }
    };
    println!("glass_to_glass: host load before: {}", load_average());
    let (id, view) = create(&base);
    let run = Run::start(&base, &id, &view);
    std::thread::sleep(WARM_UP);
    let from = ms_now();
    std::thread::sleep(Duration::from_secs(seconds));
    let (whipcast, direct) = run.records();
    let until = ms_now();
    println!(
        "glass_to_glass: {seconds} s measured after {} s of warm-up, video {}; host load \
         after: {}",
        WARM_UP.as_secs(),
        run.codec,
        load_average()
    );
    for (name, r) in [("through whipcast", &whipcast), ("direct", &direct)] {
        report(name, r, from, until);
    }
    drop(run);
    if let Some(server) = server {
        rt.block_on(server.shutdown());
    }
}

/// Prints one side's latency and A/V offset over the frames presented in `from..until`.
fn report(name: &str, r: &Record, from: f64, until: f64) {
    let window = |at: f64| (from..until).contains(&at);
    let presented = r.frames.iter().filter(|f| window(f.0)).count();
    let ages: Vec<f64> = r
        .frames
        .iter()
        .filter(|f| window(f.0))
        .filter_map(|f| f.1)
        .collect();
    let q = |v: &[f64], x| quantile(v, x).unwrap_or(f64::NAN);
    println!(
        "  {name:<17} glass-to-glass ms: n={:<5} p50 {:>6.1}  p95 {:>6.1}  max {:>6.1}  \
         ({presented} frames presented, {} undecodable)",
        ages.len(),
        q(&ages, 0.5),
        q(&ages, 0.95),
        q(&ages, 1.0),
        presented - ages.len()
    );
    let flashes = r.flashes();
    let offsets: Vec<f64> = r
        .av_offsets()
        .into_iter()
        .filter(|(second, _)| flashes.get(second).is_some_and(|&at| window(at)))
        .map(|(_, off)| off)
        .collect();
    println!(
        "  {name:<17} sound after picture ms: n={:<3} p50 {:>6.1}  min {:>6.1}  max {:>6.1}",
        offsets.len(),
        q(&offsets, 0.5),
        q(&offsets, 0.0),
        q(&offsets, 1.0)
    );
}

/// This machine's clock in ms since the epoch, as the pages' `performance.timeOrigin +
/// performance.now()`.
fn ms_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `--seconds N` (default 30) and `--base URL` (default: a whipcast of our own).
fn args() -> (u64, Option<String>) {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seconds = value("--seconds").map_or(30, |n| n.parse().expect("--seconds N"));
    (seconds, value("--base"))
}
