//! Time to the first picture in the viewer page: whipcast on loopback with an OBS-shaped
//! publisher (720p H.264, an IDR every 2 s, Opus), and the real viewer page loaded N times in
//! headless Chromium, each load at a random point of the publisher's GOP.
//!
//! For each load, times from the page's first script (a script Chromium runs at the start of
//! every document, before the page's own) to:
//! - **post**: the page's WHEP POST is sent (its `fetch` is called);
//! - **answer**: the `201` answer arrived;
//! - **frame**: the first video frame was presented (`requestVideoFrameCallback`).
//!
//! Each load's line also has when `getStats` (polled) first showed a video packet received
//! and a frame decoded, and its NACK, PLI, loss and dropped-frame counts: where a slow load
//! waited.
//!
//! The page is not changed for the measurement, so the same bench measures any version of
//! `www/player.js`. One load before the measured ones warms the freshly started browser up. It reports p50, p95 and max of each over the loads that showed a frame,
//! and the loads that did not within [`FRAME_LIMIT`]. A benchmark, not a test: the figures
//! depend on the machine and its load.
//!
//! ```text
//! cargo bench --bench first_frame               # 50 loads, whipcast started in-process
//! cargo bench --bench first_frame -- --loads 20
//! cargo bench --bench first_frame -- --base http://127.0.0.1:8080   # a running whipcast
//! ```
//!
//! With `--base` the server is one already running on loopback (e.g. another version's
//! binary, for a before/after comparison).
//!
//! Needs Debian's `chromium`, `chromium-driver` and GStreamer's `openh264enc` (`gstreamer1.0-
//! plugins-bad`), which makes the publisher's stream once into `target/bench-fixtures/`.

#![allow(clippy::disallowed_methods)] // a benchmark is a driver: it owns the clock

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)] // its unit tests do not run in a bench
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::annexb::access_units;
use common::chromium::Browser;
use common::server::{create, start_in, temp_dir};
use common::udp_client::Client;
use serde_json::{Value, json};

/// A load whose first frame has not come by then counts as failed.
const FRAME_LIMIT: Duration = Duration::from_secs(8);
/// Loads start at a random point of this span after the previous page is gone: the GOP, so
/// every distance to the publisher's next IDR is sampled.
const GOP: Duration = Duration::from_secs(2);

/// Run at the start of every document, before the page's scripts: the time origin of the
/// load, the WHEP POST and its answer (by wrapping `fetch`), and the first presented frame.
const PROBE: &str = r#"
(() => {
  const t0 = performance.now();
  const ff = window.__firstFrame = { post: null, answer: null, frame: null };
  const since = () => performance.now() - t0;
  const fetch = window.fetch;
  window.fetch = function (input, init) {
    const url = String((input && input.url) || input);
    const offer = init && init.method === 'POST' && /\/stream\?id=/.test(url);
    if (offer && ff.post === null) ff.post = since();
    const res = fetch.apply(this, arguments);
    if (offer) res.then((r) => { if (r.status === 201 && ff.answer === null) ff.answer = since(); }, () => {});
    return res;
  };
  document.addEventListener('DOMContentLoaded', () => {
    const v = document.querySelector('video');
    if (v) v.requestVideoFrameCallback((_, meta) => { ff.frame = meta.presentationTime - t0; });
  });
  // Where a slow first frame waited: the first video packet received, the first decoded.
  const poll = () => {
    const pc = window.whipcast && window.whipcast.pc;
    if (ff.frame !== null && ff.decoded !== null) return;
    if (!pc) return setTimeout(poll, 10);
    pc.getStats().then((stats) => {
      stats.forEach((r) => {
        if (r.type !== 'inbound-rtp' || r.kind !== 'video') return;
        if (ff.received === null && r.packetsReceived > 0) ff.received = since();
        if (ff.decoded === null && r.framesDecoded > 0) ff.decoded = since();
        ff.stats = { nacks: r.nackCount, plis: r.pliCount, lost: r.packetsLost, dropped: r.framesDropped };
      });
      setTimeout(poll, 10);
    }, () => setTimeout(poll, 10));
  };
  ff.received = null;
  ff.decoded = null;
  poll();
})();
"#;

/// Waits (in the page) for the first frame or the limit; returns the probe's record.
const WAIT: &str = r#"
const [limit, done] = [arguments[0], arguments[arguments.length - 1]];
const start = performance.now();
(function poll() {
  const ff = window.__firstFrame;
  if ((ff && ff.frame !== null) || performance.now() - start > limit) return done(ff || null);
  setTimeout(poll, 20);
})();
"#;

fn main() {
    let (loads, external) = args();
    let script = access_units(&std::fs::read(obs_fixture()).expect("fixture"))
        .into_iter()
        .enumerate()
        .map(|(i, u)| (u, i as u64))
        .collect();
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
            let (s, base) = rt.block_on(start_in(&temp_dir("first-frame-bench"), &[]));
            (Some(s), base)
        }
    };
    let (id, view) = create(&base);
    let publisher = Client::publish_script(&base, &id, script).expect("WHIP accepted");
    publisher.wait_for("publisher connected", |s| s.connected);
    // Two GOPs: the keyframe cache holds a whole IDR.
    std::thread::sleep(GOP * 2);

    let browser = Browser::start();
    browser.cdp("Page.enable", json!({}));
    browser.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": PROBE }),
    );
    let url = format!("{base}/stream?id={view}");
    // The first WebRTC page of a freshly started Chromium waits about a second more for
    // its first picture, whichever server or page version (browser start-up, not what is
    // measured here): one load first, reported but not counted.
    let warm_up = browser_load(&browser, &url);
    eprintln!("warm-up load (not counted): {warm_up}");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let (mut post, mut answer, mut frame, mut failed) = (vec![], vec![], vec![], 0);
    for i in 0..loads {
        browser.goto("about:blank");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(GOP.mul_f64((rng % 1000) as f64 / 1000.0));
        let r = browser_load(&browser, &url);
        let ms = |k: &str| r.get(k).and_then(Value::as_f64);
        eprintln!(
            "load {i:>3}: post {:>6.1} answer {:>6.1} frame {:>7.1} ms \
             (first video packet {:>6.1}, decoded {:>6.1}; {})",
            ms("post").unwrap_or(f64::NAN),
            ms("answer").unwrap_or(f64::NAN),
            ms("frame").unwrap_or(f64::NAN),
            ms("received").unwrap_or(f64::NAN),
            ms("decoded").unwrap_or(f64::NAN),
            r.get("stats").unwrap_or(&Value::Null)
        );
        match ms("frame") {
            Some(f) => frame.push(f),
            None => failed += 1,
        }
        post.extend(ms("post"));
        answer.extend(ms("answer"));
    }
    browser.goto("about:blank");
    drop(browser);
    drop(publisher);
    if let Some(server) = server {
        rt.block_on(server.shutdown());
    }

    println!("first_frame: {loads} loads of the viewer page, ms from the page's first script");
    for (name, v) in [("post", post), ("answer", answer), ("frame", frame)] {
        println!("  {name:<6} {}", summary(v));
    }
    println!(
        "  loads without a frame within {} s: {failed}",
        FRAME_LIMIT.as_secs()
    );
}

/// Loads the viewer page and returns the probe's record once it has a frame (or gave up).
fn browser_load(browser: &Browser, url: &str) -> Value {
    browser.goto(url);
    browser.js_async(WAIT, json!([FRAME_LIMIT.as_millis() as u64]))
}

/// `n`, p50, p95 and max of `v`.
fn summary(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "n=0".into();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "n={:<3} p50 {:>6.1}  p95 {:>6.1}  max {:>6.1}",
        v.len(),
        at(0.5),
        at(0.95),
        v[v.len() - 1]
    )
}

/// `--loads N` (default 50) and `--base URL` (default: a whipcast of our own).
fn args() -> (usize, Option<String>) {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let loads = value("--loads").map_or(50, |n| n.parse().expect("--loads N"));
    (loads, value("--base"))
}

/// 4 s of 1280x720 at 30 fps, H.264 Constrained Baseline with an IDR (SPS and PPS before it)
/// every 60 frames, as OBS sends with a 2 s keyframe interval; made once with GStreamer.
fn obs_fixture() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-fixtures");
    let path = dir.join("obs-720p30-gop60.h264");
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = format!(
        "videotestsrc num-buffers=120 pattern=ball ! \
         video/x-raw,width=1280,height=720,framerate=30/1 ! timeoverlay font-desc=\"Sans 48\" ! \
         openh264enc gop-size=60 bitrate=2500000 ! h264parse config-interval=-1 ! \
         video/x-h264,stream-format=byte-stream,alignment=au ! filesink location={}",
        path.display()
    );
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("gst-launch-1.0 -q {pipeline}"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok && path.exists(),
        "gst-launch-1.0 with openh264enc is needed: apt-get install gstreamer1.0-tools \
         gstreamer1.0-plugins-bad"
    );
    path
}
