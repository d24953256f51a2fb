//! Time to the first picture in the viewer page: whipcast on loopback with an OBS-shaped
//! publisher (720p H.264, an IDR every 2 s, Opus), and the real viewer page loaded, each load
//! at a random point of the publisher's GOP:
//! - **warm**: N loads one after the other in one headless Chromium (after one load not
//!   counted);
//! - **fresh Chromium** and **fresh Firefox**: first visits, each a newly started browser
//!   process with a new profile loading the page once (Firefox through node and
//!   `tests/js/firefox-first-frame.mjs`).
//!
//! For each load, times from the page's first script (`tests/js/first-frame-probe.js`, run at
//! the start of every document before the page's own) to:
//! - **post**: the page's WHEP POST is sent (its `fetch` is called);
//! - **answer**: the `201` answer arrived;
//! - **frame**: the first video frame was presented (`requestVideoFrameCallback`);
//! - **motion**: 10 frames were decoded (`getStats`), i.e. the picture moves;
//!
//! and whether the viewer is at the live edge a second after its first frame: over the next
//! second, the mean jitter-buffer delay of the frames it emitted and (Chromium) the median
//! time from a frame's arrival to its presentation. Each load's line also has when `getStats`
//! (polled) first showed a video packet received and a frame decoded, the decoder's counts at
//! the first frame, and its NACK, PLI, loss and dropped-frame counts: where a slow load
//! waited.
//!
//! The page is not changed for the measurement, so the same bench measures any version of
//! `www/player.js`. It reports p50, p95 and max of each, the loads that missed the first-visit
//! goals (a picture within 600 ms, motion within 1 s), and those with no frame within
//! [`FRAME_LIMIT`]. A benchmark, not a test: the figures depend on the machine and its load.
//!
//! ```text
//! cargo bench --bench first_frame      # 50 warm loads, 20 fresh Chromium, 10 fresh Firefox
//! cargo bench --bench first_frame -- --loads 20 --fresh-chromium 20 --fresh-firefox 0
//! cargo bench --bench first_frame -- --base http://127.0.0.1:8080   # a running whipcast
//! ```
//!
//! With `--base` the server is one already running on loopback (e.g. another version's
//! binary, for a before/after comparison).
//!
//! Needs Debian's `chromium`, `chromium-driver`, `firefox-esr`, node with the Firefox driver
//! (`(cd tests/js && npm ci)`) and GStreamer's `openh264enc` (`gstreamer1.0-plugins-bad`),
//! which makes the publisher's stream once into `target/bench-fixtures/`.

#![allow(clippy::disallowed_methods)] // a benchmark is a driver: it owns the clock

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)] // its unit tests do not run in a bench
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::annexb::{AccessUnit, access_units};
use common::chromium::Browser;
use common::server::{create, start_in, temp_dir};
use common::udp_client::Client;
use serde_json::{Value, json};

/// A load whose first frame has not come by then counts as failed.
const FRAME_LIMIT: Duration = Duration::from_secs(8);
/// The test client publishes for two minutes; it is replaced before then.
const PUBLISHER_LIFE: Duration = Duration::from_secs(90);
/// The issue's goals for a first visit, counted per run: the first picture within this of
/// the page's first script, and motion (frames decoded rising) within [`MOTION_GOAL_MS`].
const FIRST_PICTURE_GOAL_MS: f64 = 600.0;
const MOTION_GOAL_MS: f64 = 1000.0;
/// Loads start at a random point of this span after the previous page is gone: the GOP, so
/// every distance to the publisher's next IDR is sampled.
const GOP: Duration = Duration::from_secs(2);

/// Run at the start of every document, before the page's scripts: the time origin of the
/// load and what follows from it (see the script's header).
const PROBE: &str = include_str!("../tests/js/first-frame-probe.js");

/// Waits (in the page) until the probe is done or the limit; returns the probe's record.
const WAIT: &str = r#"
const [limit, done] = [arguments[0], arguments[arguments.length - 1]];
const start = performance.now();
(function poll() {
  const ff = window.__firstFrame;
  if ((ff && ff.done) || performance.now() - start > limit) return done(ff || null);
  setTimeout(poll, 20);
})();
"#;

fn main() {
    let args = Args::parse();
    let script = access_units(&std::fs::read(obs_fixture()).expect("fixture"))
        .into_iter()
        .enumerate()
        .map(|(i, u)| (u, i as u64))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, base) = match args.base.clone() {
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
    let mut publisher = Publisher::start(&base, &id, script);
    let url = format!("{base}/stream?id={view}");
    let mut pause = Pause(0x9e37_79b9_7f4a_7c15);

    let mut runs = Vec::new();
    if args.warm > 0 {
        let browser = Browser::start();
        browser.before_page_scripts(PROBE);
        // The first WebRTC page of a freshly started browser is what the fresh runs measure:
        // here one load first, reported but not counted.
        let warm_up = browser_load(&browser, &url);
        eprintln!("warm-up load (not counted): {warm_up}");
        let mut loads = Vec::new();
        for i in 0..args.warm {
            browser.goto("about:blank");
            publisher.keep_on();
            pause.sleep();
            loads.push(report("warm", i, browser_load(&browser, &url)));
        }
        browser.goto("about:blank");
        runs.push((
            format!("warm Chromium, {} loads in one browser", args.warm),
            loads,
        ));
    }
    if args.fresh_chromium > 0 {
        let mut loads = Vec::new();
        for i in 0..args.fresh_chromium {
            publisher.keep_on();
            pause.sleep();
            let browser = Browser::start();
            browser.before_page_scripts(PROBE);
            loads.push(report("fresh chromium", i, browser_load(&browser, &url)));
        }
        let n = args.fresh_chromium;
        runs.push((
            format!("fresh Chromium, {n} processes, one load each"),
            loads,
        ));
    }
    if args.fresh_firefox > 0 {
        let mut loads = Vec::new();
        for i in 0..args.fresh_firefox {
            publisher.keep_on();
            pause.sleep();
            loads.push(report("fresh firefox", i, firefox_load(&url)));
        }
        let n = args.fresh_firefox;
        runs.push((
            format!("fresh Firefox, {n} processes, one load each"),
            loads,
        ));
    }
    drop(publisher);
    if let Some(server) = server {
        rt.block_on(server.shutdown());
    }

    println!("first_frame: ms from the page's first script");
    for (name, loads) in runs {
        print_run(&name, &loads);
    }
}

/// One load's record from the probe, its fields by name.
struct Load(Value);

impl Load {
    fn ms(&self, path: &str) -> Option<f64> {
        path.split('.')
            .try_fold(&self.0, |v, k| v.get(k))
            .and_then(Value::as_f64)
    }
}

fn report(what: &str, i: usize, r: Value) -> Load {
    let load = Load(r);
    let ms = |k: &str| load.ms(k).unwrap_or(f64::NAN);
    eprintln!(
        "{what} load {i:>3}: post {:>6.1} answer {:>6.1} frame {:>7.1} motion {:>7.1} ms \
         (first video packet {:>6.1}, decoded {:>6.1}; at the frame {}; live {}; {}; element {}{})",
        ms("post"),
        ms("answer"),
        ms("frame"),
        ms("motion"),
        ms("received"),
        ms("decoded"),
        load.0.get("atFrame").unwrap_or(&Value::Null),
        load.0.get("live").unwrap_or(&Value::Null),
        load.0.get("stats").unwrap_or(&Value::Null),
        load.0.get("events").unwrap_or(&Value::Null),
        load.0
            .get("refused")
            .map_or(String::new(), |r| format!("; POST answered {r}")),
    );
    load
}

fn print_run(name: &str, loads: &[Load]) {
    println!("{name}:");
    for (label, key) in [
        ("post", "post"),
        ("answer", "answer"),
        ("frame", "frame"),
        ("motion", "motion"),
        ("jitter buffer", "live.jitterBufferMs"),
        ("recv→present", "live.receiveToPresentMs"),
    ] {
        let v = loads.iter().filter_map(|l| l.ms(key)).collect();
        println!("  {label:<13} {}", summary(v));
    }
    let over = |key: &str, limit: f64| {
        loads
            .iter()
            .filter(|l| l.ms(key).is_none_or(|t| t > limit))
            .count()
    };
    println!(
        "  loads with no frame within {FIRST_PICTURE_GOAL_MS} ms: {}, no motion within \
         {MOTION_GOAL_MS} ms: {}, no frame at all within {} s: {}",
        over("frame", FIRST_PICTURE_GOAL_MS),
        over("motion", MOTION_GOAL_MS),
        FRAME_LIMIT.as_secs(),
        loads.iter().filter(|l| l.ms("frame").is_none()).count()
    );
}

/// Loads the viewer page and returns the probe's record once it is done (or gave up).
fn browser_load(browser: &Browser, url: &str) -> Value {
    browser.goto(url);
    browser.js_async(WAIT, json!([FRAME_LIMIT.as_millis() as u64]))
}

/// A freshly started Firefox loads the viewer page once (tests/js/firefox-first-frame.mjs).
fn firefox_load(url: &str) -> Value {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/puppeteer-core").exists(),
        "the Firefox driver is missing: (cd tests/js && npm ci)"
    );
    let out = Command::new("/usr/bin/node")
        .arg(js.join("firefox-first-frame.mjs"))
        .arg(url)
        .arg(FRAME_LIMIT.as_millis().to_string())
        .current_dir(&js)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Firefox driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or(Value::Null)
}

/// The OBS-shaped publisher, published again (a publisher resume) before its client's
/// two-minute life ends: a run of all three kinds of loads takes several minutes.
struct Publisher {
    base: String,
    id: String,
    script: Vec<(AccessUnit, u64)>,
    client: Option<Client>,
    since: Instant,
}

impl Publisher {
    fn start(base: &str, id: &str, script: Vec<(AccessUnit, u64)>) -> Self {
        let mut p = Self {
            base: base.to_owned(),
            id: id.to_owned(),
            script,
            client: None,
            since: Instant::now(),
        };
        p.publish();
        p
    }

    fn publish(&mut self) {
        drop(self.client.take());
        let client = Client::publish_script(&self.base, &self.id, self.script.clone())
            .expect("WHIP accepted");
        client.wait_for("publisher connected", |s| s.connected);
        self.client = Some(client);
        self.since = Instant::now();
        // Two GOPs: the keyframe cache holds a whole IDR.
        std::thread::sleep(GOP * 2);
    }

    /// Publishes again if the client has less than a load's time left.
    fn keep_on(&mut self) {
        if self.since.elapsed() > PUBLISHER_LIFE {
            self.publish();
        }
    }
}

/// Waits a random part of a GOP before a load, so every distance to the publisher's next
/// IDR is sampled (xorshift: the same sequence every run).
struct Pause(u64);

impl Pause {
    fn sleep(&mut self) {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        std::thread::sleep(GOP.mul_f64((self.0 % 1000) as f64 / 1000.0));
    }
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

struct Args {
    warm: usize,
    fresh_chromium: usize,
    fresh_firefox: usize,
    base: Option<String>,
}

impl Args {
    /// `--loads N` warm loads (default 50), `--fresh-chromium N` (default 20) and
    /// `--fresh-firefox N` (default 10) first visits, `--base URL` (default: a whipcast of
    /// our own).
    fn parse() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let count = |name: &str, default: usize| {
            value(name).map_or(default, |n| n.parse().expect("a count"))
        };
        Self {
            warm: count("--loads", 50),
            fresh_chromium: count("--fresh-chromium", 20),
            fresh_firefox: count("--fresh-firefox", 10),
            base: value("--base"),
        }
    }
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
