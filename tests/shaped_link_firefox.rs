//! tests/shaped_link.rs with Firefox viewers (issue 26: "the same with a Firefox viewer"): a
//! Chromium publisher sends three simulcast layers (about 2.5 Mb/s, 800 kb/s and 250 kb/s,
//! from a fake camera busy enough to fill them); Debian's headless `firefox-esr` watches from
//! a network namespace of the test's own behind a 1 Mb/s token bucket (Node and the browser
//! run inside it: `ip netns exec`), another Firefox watches uncapped from the root namespace.
//! The capped viewer must settle on a layer that fits and then play smoothly, the uncapped
//! one must stay on the full size, the publisher must not be asked for many more keyframes,
//! and lifting the cap must bring the capped viewer back to the full size. What Firefox
//! presents is read frame by frame (`requestVideoFrameCallback`), as for Chromium. Needs
//! root, iproute2, ffmpeg, Chromium, firefox-esr, Node and tests/js's puppeteer-core.
//!
//! What Firefox (153 ESR) did differently from Chromium here, before the server's reports
//! went four times a second during a probe, the wait before a move down restarted on a
//! climbing estimate and "pinned" went down to 115 % (all three because of what follows),
//! seen with
//! `RUST_LOG=whipcast::engine::layers=debug,whipcast::engine::feedback=trace`:
//! - it sends a receiver report every ~200 ms (Chromium: one a second), but every report
//!   between two of our sender reports (one a second) carries the same round trip: a probe's
//!   queue is seen at most once a second, and a step that fills the cap's 360 ms queue within
//!   that second drops packets before it is stopped (a freeze of ~300 ms);
//! - its estimate (REMB) sits at ~1.2–1.3 times the rate it receives (Chromium's at 1.5
//!   times), barely over what counts as pinned, and hardly falls while a probe queues;
//! - a fresh viewer's estimate starts at ~1.9–2.3 Mb/s and climbs ~8 % a second: under 85 %
//!   of the full layer it is moved down at once, and its estimate then drops to ~0.85 times
//!   the smaller layer's rate, which can move it down once more.
//!
//! Since the server's own estimate from transport-wide feedback (2026-12-05), Firefox sends
//! that feedback and no REMB, as Chromium does; the points above are about its REMB.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::time::{Duration, Instant};

use common::firefox::FirefoxPage;
use common::page_test::blocking;
use common::server::create;
use common::shaped::{
    COUNT_PRESENTED, FREEZE_MS, PRESENTED_SINCE, ShapedLink, busy_simulcast_publisher, full_height,
    height_now, keyframes, metric, page_now, presented, publisher_rates, server_on, since,
    until_settled, within,
};
use serde_json::{Value, json};

/// The capped viewer's link.
const CAP_KBIT: u32 = 1000;
/// How long the capped viewer may take to move to a layer that fits, from opening the page:
/// the issue asks for 5 s; a loaded 2-core machine gets some slack (the figure is printed).
const SETTLE: Duration = Duration::from_secs(10);
/// How long both viewers are watched once it settled.
const WATCHED: Duration = Duration::from_secs(20);
/// How long the capped viewer may take to be back on the full layer once the cap lifts
/// (the 15 s; the figure is printed).
const BACK: Duration = Duration::from_secs(15);

/// What Firefox's own statistics say of the video it receives, for the log: its estimate is
/// not in them, what it loses and asks for is.
const RECEIVED: &str = "
const pc = window.whipcast && window.whipcast.pc;
if (!pc) return null;
return pc.getStats().then((stats) => {
  let v = null;
  stats.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') v = {
      height: r.frameHeight, decoded: r.framesDecoded, dropped: r.framesDropped,
      bytes: r.bytesReceived, lost: r.packetsLost, nacks: r.nackCount, plis: r.pliCount,
      jitter: r.jitter,
    };
  });
  return v;
});";

fn received(page: &FirefoxPage) -> Value {
    page.js(RECEIVED, json!([]))
}

/// The heights a page presented since `from` (its own clock): (lowest, highest), for the log.
fn heights(page: &FirefoxPage, from: u64) -> (u64, u64) {
    let (_, frames) = presented(&page.js(PRESENTED_SINCE, json!([from])));
    let hs = frames.iter().map(|f| f.1);
    (hs.clone().min().unwrap_or(0), hs.max().unwrap_or(0))
}

/// The freezes a page showed since `from` (its own clock), as (time of day when the picture
/// moved again, how long it stood still), for the log: set beside the other viewer's and the
/// server's log lines, they tell a slow link from a busy machine.
fn freezes(page: &FirefoxPage, from: u64) -> Vec<(String, u64)> {
    let (_, frames) = presented(&page.js(PRESENTED_SINCE, json!([from])));
    let origin = page.js("return performance.timeOrigin", json!([]));
    let origin = origin.as_f64().unwrap_or(0.0) as u64;
    (frames.windows(2))
        .filter(|w| w[1].0 - w[0].0 > FREEZE_MS)
        .map(|w| (clock_at(origin + w[1].0), w[1].0 - w[0].0))
        .collect()
}

/// The time of day (UTC), to read the figures printed beside the server's log lines.
fn clock() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    clock_at(now.unwrap().as_millis() as u64)
}

/// The time of day (UTC) of a time in Unix milliseconds.
fn clock_at(unix_ms: u64) -> String {
    let ms = unix_ms % 86_400_000;
    let (s, ms) = (ms / 1000, ms % 1000);
    format!("{:02}:{:02}:{:02}.{ms:03}", s / 3600, s / 60 % 60, s % 60)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capped_firefox_viewer_settles_on_a_layer_that_fits_and_comes_back_when_the_cap_lifts() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    // 10.237 is tests/shaped_link.rs's: both can run at once.
    let link = ShapedLink::new(238);
    let (server, base) = server_on(&link, "shaped-ff").await;
    let ns = link.ns.name.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let (publisher, rates, alone) = busy_simulcast_publisher(&base, &id, CAP_KBIT);
        let url = format!("{base}/stream?id={view}");
        eprintln!("{} the uncapped Firefox starts", clock());
        let uncapped = FirefoxPage::start(None, COUNT_PRESENTED);
        uncapped.goto(&url);
        link.cap(CAP_KBIT);
        // Firefox, and so its WebRTC, inside the viewer's namespace: what it is sent goes
        // through the cap.
        let capped = FirefoxPage::start(Some(&ns), COUNT_PRESENTED);
        eprintln!("{} the capped Firefox opens the page", clock());
        let joined = Instant::now();
        capped.goto(&url);
        eprintln!(
            "{} the capped Firefox plays, {:?} after it opened the page: {}",
            clock(),
            joined.elapsed(),
            received(&capped)
        );
        // Settled: presenting a layer smaller than the full one, which does not fit.
        let mut looked = Instant::now();
        let settle = within("the capped Firefox moves to a layer that fits", SETTLE, || {
            let h = height_now(&capped);
            if looked.elapsed() >= Duration::from_secs(1) {
                looked = Instant::now();
                eprintln!(
                    "{} {:>5.1}s capped Firefox presents {h}p; {}; the cap passed/dropped {:?}",
                    clock(),
                    joined.elapsed().as_secs_f64(),
                    received(&capped),
                    link.cap_counters()
                );
            }
            h > 0 && h < full_height(&publisher)
        });
        let settled = joined.elapsed();
        eprintln!(
            "{} the capped Firefox settled in {settled:?} ({settle:?} of polling) at {}p",
            clock(),
            height_now(&capped)
        );
        // Counted from opening the page (its load, ICE and DTLS through the cap included).
        assert!(
            settled <= SETTLE,
            "the capped Firefox settled within {SETTLE:?} of opening the page: {settled:?}"
        );
        // Then 20 s of both, side by side, from the 5 s after it joined.
        until_settled(joined);
        let (k0, plis0) = (keyframes(&publisher), metric(&base, "plis_sent_total"));
        let (c0, u0) = (page_now(&capped), page_now(&uncapped));
        let (bytes0, drops0) = link.cap_counters();
        let r0 = received(&capped);
        // The cap's queue, looked at every 50 ms: a probe that overfills it shows there.
        let looking = std::sync::atomic::AtomicBool::new(true);
        let peak = std::thread::scope(|s| {
            let queue = s.spawn(|| {
                let mut peak = (0, clock());
                while looking.load(std::sync::atomic::Ordering::Relaxed) {
                    let bytes = link.cap_backlog();
                    if bytes > peak.0 {
                        peak = (bytes, clock());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                peak
            });
            std::thread::sleep(WATCHED);
            looking.store(false, std::sync::atomic::Ordering::Relaxed);
            queue.join().unwrap()
        });
        let (c, u) = (since(&capped, c0), since(&uncapped, u0));
        let (bytes, drops) = link.cap_counters();
        let added = (keyframes(&publisher) - k0) as f64 - alone * WATCHED.as_secs_f64();
        eprintln!(
            "over {WATCHED:?}: capped Firefox {c:?}, uncapped Firefox {u:?}; the cap passed {} kb/s and dropped {} packets; \
             keyframes {added:+.1} over the publisher's own rate, {} keyframe requests sent; {} probe packets in all",
            (bytes - bytes0) * 8 / 1000 / WATCHED.as_secs(),
            drops - drops0,
            metric(&base, "plis_sent_total") - plis0,
            metric(&base, "viewer_probe_packets_total"),
        );
        eprintln!(
            "the capped Firefox's own statistics: {r0} then {}; heights presented (lowest, highest): capped {:?}, uncapped {:?}",
            received(&capped),
            heights(&capped, c0),
            heights(&uncapped, u0),
        );
        eprintln!(
            "freezes (when, ms): capped {:?}, uncapped {:?}; the cap's queue peaked at {} ms at {}; load average {}",
            freezes(&capped, c0),
            freezes(&uncapped, u0),
            peak.0 * 8 / u64::from(CAP_KBIT),
            peak.1,
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        );
        assert!(
            c.fps >= 25.0 && c.freezes == 0,
            "the capped Firefox plays smoothly: {c:?}"
        );
        let full = full_height(&publisher);
        assert!(c.last_height < full, "and stays on a layer that fits: {c:?}");
        assert!(
            u.fps >= 25.0 && u.freezes == 0,
            "the uncapped Firefox plays smoothly: {u:?}"
        );
        assert_eq!(u.last_height, full, "on the full layer: {u:?}");
        assert!(
            added <= WATCHED.as_secs_f64() / 2.0,
            "at most one more keyframe per 2 s: {added:+.1} in {WATCHED:?}"
        );
        capped.screenshot("shaped_link_capped_firefox");
        // The cap lifts: back to the full size.
        link.lift();
        eprintln!("{} the cap is lifted", clock());
        let lifted = Instant::now();
        let mut looked = Instant::now();
        let back = within("the capped Firefox is back on the full layer", BACK, || {
            let h = height_now(&capped);
            if looked.elapsed() >= Duration::from_secs(1) {
                looked = Instant::now();
                eprintln!(
                    "{} {:>5.1}s after the lift Firefox presents {h}p; {}; {} probe packets",
                    clock(),
                    lifted.elapsed().as_secs_f64(),
                    received(&capped),
                    metric(&base, "viewer_probe_packets_total"),
                );
            }
            h == full_height(&publisher)
        });
        eprintln!(
            "with the cap lifted, the Firefox viewer was back on the full layer in {back:?}; {} probe packets in all",
            metric(&base, "viewer_probe_packets_total")
        );
        let from = page_now(&capped);
        std::thread::sleep(Duration::from_secs(5));
        let after = since(&capped, from);
        let full = full_height(&publisher);
        assert!(
            after.fps >= 25.0 && after.last_height == full,
            "and plays it: {after:?}"
        );
        eprintln!(
            "publisher at first {rates:?}, at the end {:?}",
            publisher_rates(&publisher)
        );
    })
    .await;
    server.shutdown().await;
}
