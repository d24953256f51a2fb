//! Every client stays connected for as long as it streams (issue 24). Each test keeps one kind
//! of client connected for `WHIPCAST_LONG_SESSION_SECS` (60 s in CI) against its own whipcast
//! process, and then checks that the server never removed a session and listed the broadcast
//! live with its viewer all along, and that the client decoded frames (and audio, where it
//! counts it) in the last 10 s. GStreamer's libnice keeps its ICE pair alive with Binding
//! indications, never requests: those clients are the ones an ICE-lite timeout cuts.
//!
//! The tests run side by side: the first test to start starts every selected client at once,
//! each on its own thread, and every test then waits for its own (`cargo test` runs only as
//! many tests at a time as there are cores, two in CI). So the binary takes one session plus
//! set-up, not five. Each prints frames per minute, freezes, and the server's RSS and fds:
//! `WHIPCAST_LONG_SESSION_SECS=1800 cargo test --release --test long_sessions` is the soak
//! (BENCHMARKS.md). Needs Chromium, Firefox and GStreamer, like tests/interop_matrix.rs.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use common::chromium::Browser;
use common::firefox::firefox_holds;
use common::gst::GstClient;
use common::long_run::{
    Look, Probe, Timeline, Watched, all_span_the_session, failures, hold, now_ms, report,
    session_secs,
};
use common::page_test::watch;
use common::server::create;
use common::udp_client::{Client, set_lifetime};
use serde_json::{Value, json};

/// Declares one test per scenario (its name is the scenario's) and the list they start from.
macro_rules! side_by_side {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                outcome(stringify!($name));
            }
        )*
        const SCENARIOS: &[(&str, fn())] = &[$((stringify!($name), scenario::$name)),*];
    };
}

side_by_side!(
    gstreamer_publisher_and_its_chromium_viewer_stay_connected,
    gstreamer_viewer_of_an_obs_shaped_publisher_stays_connected,
    firefox_viewer_stays_connected,
    chromium_publisher_and_its_viewer_stay_connected,
    viewer_over_ice_tcp_stays_connected,
);

/// A scenario started, by name: its thread until its test takes it.
type Started = (&'static str, Option<JoinHandle<()>>);

/// The scenarios started so far.
static STARTED: Mutex<Vec<Started>> = Mutex::new(Vec::new());

/// Runs scenario `name` (starting, the first time, every scenario this run selected, so that
/// they all run at once) and fails as it failed.
fn outcome(name: &'static str) {
    let handle = {
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        if started.is_empty() {
            set_lifetime(Duration::from_secs(session_secs() + 300));
            for &(n, run) in SCENARIOS.iter().filter(|(n, _)| selected(n)) {
                started.push((n, Some(spawn(n, run))));
            }
        }
        if !started.iter().any(|(n, _)| *n == name) {
            let run = SCENARIOS.iter().find(|(n, _)| *n == name).unwrap().1;
            started.push((name, Some(spawn(name, run))));
        }
        let slot = started.iter_mut().find(|(n, _)| *n == name).unwrap();
        slot.1.take().expect("each test takes its scenario once")
    };
    // The scenario's thread was started by whichever test ran first, so its panic message went
    // to that test's captured output: fail with it here, where libtest shows it.
    if let Err(panic) = handle.join() {
        panic!("{}", panic_text(&*panic));
    }
}

/// What a thread's panic said.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(a panic without a message)")
}

fn spawn(name: &str, run: fn()) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(run)
        .unwrap()
}

/// Whether libtest will run the test `name`: by the filters on the command line (substrings;
/// none means all), so that `cargo test --test long_sessions firefox` starts Firefox only.
fn selected(name: &str) -> bool {
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // Options whose value is the next argument: not a filter (a skipped test is not
            // started; one a stray value leaves out starts when its test asks).
            "--skip" | "--test-threads" | "--logfile" | "--format" | "--color" | "-Z" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            a => filters.push(a.to_owned()),
        }
    }
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

/// Fails with every failure at once, after the report; `printed` is what the client process
/// printed (its progress lines left out), shown with a failure.
fn conclude(
    scenario: &str,
    server: &Watched,
    timelines: &[Timeline],
    viewers: u64,
    more: Vec<String>,
    printed: &str,
) {
    report(scenario, server, timelines);
    let mut failed = failures(server, timelines, viewers);
    failed.extend(more);
    let log = server.save_log(scenario);
    let printed: Vec<&str> = printed
        .lines()
        .filter(|l| !l.starts_with("out: progress "))
        .collect();
    assert!(
        failed.is_empty(),
        "{scenario}: the session did not last {} s (the server's log: {}):\n- {}\n{}",
        session_secs(),
        log.display(),
        failed.join("\n- "),
        if printed.is_empty() {
            String::new()
        } else {
            format!("what the client printed:\n{}", printed.join("\n"))
        }
    );
}

/// A Chromium viewer page: frames decoded and frozen, audio samples decoded, the page's state.
fn page_probe<'a>(client: &str, page: &'a Browser) -> Probe<'a> {
    Probe {
        client: client.to_owned(),
        look: Box::new(move || {
            let v = page.js_async(PAGE_STATS, json!([]));
            Some(Look {
                at: now_ms(),
                frames: v["frames"].as_u64().unwrap_or(0),
                audio: Some(v["samples"].as_u64().unwrap_or(0)),
                freezes: v["freezes"].as_u64(),
                state: Some(v["state"].as_str().unwrap_or("none").to_owned()),
            })
        }),
    }
}

/// A str0m viewer: frames and audio frames received so far. What it keeps of each frame is
/// dropped at every look, so a 30-minute session does not hold every frame in memory.
fn str0m_probe(client: &str, viewer: &Client) -> Probe<'static> {
    let shared = viewer.shared.clone();
    let mut frames = 0;
    Probe {
        client: client.to_owned(),
        look: Box::new(move || {
            let mut s = shared.lock().unwrap();
            frames += s.frames.len() as u64;
            s.frames.clear();
            Some(Look {
                at: now_ms(),
                frames,
                audio: Some(s.audio_frames as u64),
                ..Look::default()
            })
        }),
    }
}

/// The OBS-shaped publisher's frames sent so far are of no interest here: dropped at every
/// look of the server, for the same reason.
fn quiet(publisher: &Client) -> impl FnMut() + use<> {
    let shared = publisher.shared.clone();
    move || shared.lock().unwrap().frames.clear()
}

/// The GStreamer WHEP viewer's `progress <unix ms> <frames> <audio buffers>` lines.
fn gst_timeline(client: &str, output: &str) -> Timeline {
    let mut t = Timeline::new(client);
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("out: progress ") else {
            continue;
        };
        let n: Vec<u64> = rest.split(' ').filter_map(|f| f.parse().ok()).collect();
        if let [at, frames, audio] = n[..]
            && frames > 0
        {
            t.looks.push(Look {
                at,
                frames,
                audio: Some(audio),
                ..Look::default()
            });
        }
    }
    t
}

/// The Firefox driver's `timeline` (see tests/js/firefox-viewer.mjs).
fn firefox_timeline(client: &str, seen: &Value) -> Timeline {
    let mut t = Timeline::new(client);
    for l in seen["timeline"].as_array().into_iter().flatten() {
        t.looks.push(Look {
            at: l["t"].as_u64().unwrap_or(0),
            frames: l["frames"].as_u64().unwrap_or(0),
            audio: Some(l["samples"].as_u64().unwrap_or(0)),
            freezes: None,
            state: Some(l["state"].as_str().unwrap_or("none").to_owned()),
        });
    }
    t
}

/// Frames decoded and frozen, and audio samples decoded (`totalSamplesReceived -
/// concealedSamples`), of the viewer page's peer connection; and the page's state, with the
/// title it shows when not live (which says why: "Connection lost", "Lost the connection to
/// the server", …).
const PAGE_STATS: &str = "
const done = arguments[arguments.length - 1];
const w = window.whipcast;
const title = document.getElementById('title');
const state = w && (w.state === 'live' ? 'live' : `${w.state}: ${title ? title.textContent : ''}`);
if (!w || !w.pc) return done({ state });
w.pc.getStats().then(stats => {
  const n = { state };
  stats.forEach(r => {
    if (r.type !== 'inbound-rtp') return;
    if (r.kind === 'video') { n.frames = r.framesDecoded; n.freezes = r.freezeCount; }
    if (r.kind === 'audio') n.samples = (r.totalSamplesReceived || 0) - (r.concealedSamples || 0);
  });
  done(n);
}).catch(() => done({ state }));";

mod scenario {
    use super::*;

    /// GStreamer `webrtcbin` WHIP publisher → the Chromium viewer page.
    pub fn gstreamer_publisher_and_its_chromium_viewer_stay_connected() {
        let name = "gstreamer_publisher_and_its_chromium_viewer_stay_connected";
        let mut server = Watched::spawn();
        let base = server.base().to_owned();
        let (id, view) = create(&base);
        let deadline = (session_secs() + 240).to_string();
        let mut publisher = GstClient::start(
            "whip_publisher.py",
            &[&format!("{base}/broadcast"), &id, &deadline],
        );
        publisher.wait_for_line("connected");
        let page = watch(&base, &view, "long-session-gstreamer-publisher");
        // Held until the session is over, or the publisher gave up (then its output says why).
        let timelines = hold(
            &mut server,
            &mut [page_probe("Chromium viewer page of GStreamer", &page)],
            |t| all_span_the_session(t) || publisher.ended(),
        );
        drop(page);
        let (stopped, output) = publisher.finish();
        let more = (!stopped)
            .then(|| "the GStreamer publisher did not stop cleanly".to_owned())
            .into_iter()
            .collect();
        conclude(name, &server, &timelines, 1, more, &output);
    }

    /// OBS-shaped str0m publisher → GStreamer `webrtcbin` WHEP viewer.
    pub fn gstreamer_viewer_of_an_obs_shaped_publisher_stays_connected() {
        let name = "gstreamer_viewer_of_an_obs_shaped_publisher_stays_connected";
        let mut server = Watched::spawn();
        let base = server.base().to_owned();
        let (id, view) = create(&base);
        let obs = Client::publish(&base, &id).expect("OBS-shaped WHIP accepted");
        let deadline = (session_secs() + 240).to_string();
        let url = format!("{base}/stream?id={view}");
        let mut viewer =
            GstClient::start("whep_viewer.py", &["--hold", &url, "30", &deadline, "50"]);
        viewer.wait_for_line("connected");
        let mut drop_sent = quiet(&obs);
        let client = "GStreamer WHEP viewer";
        let mut probe = Probe {
            client: client.to_owned(),
            look: Box::new(|| {
                drop_sent();
                gst_timeline(client, &viewer.output()).looks.pop()
            }),
        };
        // Held until the session is over, or the viewer gave up (then its output says why).
        hold(&mut server, std::slice::from_mut(&mut probe), |t| {
            all_span_the_session(t) || viewer.ended()
        });
        drop(probe);
        let (decoded, output) = viewer.finish();
        let more = (!decoded)
            .then(|| "the GStreamer viewer ended with a failure".to_owned())
            .into_iter()
            .collect();
        // Every line it printed, with its own times (the looks above took its latest only).
        let timelines = [gst_timeline(client, &output)];
        conclude(name, &server, &timelines, 1, more, &output);
    }

    /// OBS-shaped str0m publisher → the Firefox viewer page.
    pub fn firefox_viewer_stays_connected() {
        let name = "firefox_viewer_stays_connected";
        let mut server = Watched::spawn();
        let base = server.base().to_owned();
        let (id, view) = create(&base);
        let obs = Client::publish(&base, &id).expect("OBS-shaped WHIP accepted");
        let url = format!("{base}/stream?id={view}");
        let firefox =
            std::thread::spawn(move || firefox_holds(&url, "long-session-firefox", session_secs()));
        let mut drop_sent = quiet(&obs);
        hold(&mut server, &mut [], |_| {
            drop_sent();
            firefox.is_finished()
        });
        let seen = firefox.join().unwrap_or_else(|p| {
            panic!("Firefox did not play the page: {}", super::panic_text(&*p))
        });
        let timelines = [firefox_timeline("Firefox viewer page", &seen)];
        conclude(name, &server, &timelines, 1, Vec::new(), "");
    }

    /// Chromium publishing its fake camera (320×240, 15 fps) → a str0m WHEP viewer.
    pub fn chromium_publisher_and_its_viewer_stay_connected() {
        let name = "chromium_publisher_and_its_viewer_stay_connected";
        let mut server = Watched::spawn();
        let base = server.base().to_owned();
        let (id, view) = create(&base);
        let small = json!({ "width": 320, "height": 240, "frameRate": 15 });
        let _publisher = Browser::publishing_video(&base, &id, small);
        let viewer = Client::view(&base, &view).expect("WHEP accepted");
        viewer.wait_for("the viewer gets frames of Chromium", |s| {
            s.frames.len() >= 5
        });
        let timelines = hold(
            &mut server,
            &mut [str0m_probe("str0m viewer of Chromium", &viewer)],
            all_span_the_session,
        );
        conclude(name, &server, &timelines, 1, Vec::new(), "");
    }

    /// OBS-shaped str0m publisher → a str0m viewer with no UDP, over ICE-TCP.
    pub fn viewer_over_ice_tcp_stays_connected() {
        let name = "viewer_over_ice_tcp_stays_connected";
        let mut server = Watched::spawn();
        let base = server.base().to_owned();
        let (id, view) = create(&base);
        let obs = Client::publish(&base, &id).expect("OBS-shaped WHIP accepted");
        let viewer = Client::view_over_tcp(&base, &view).expect("WHEP accepted over TCP");
        viewer.wait_for("frames over TCP", |s| s.frames.len() >= 5);
        let mut drop_sent = quiet(&obs);
        let mut probe = str0m_probe("str0m viewer over ICE-TCP", &viewer);
        let mut look = probe.look;
        probe.look = Box::new(move || {
            drop_sent();
            look()
        });
        let timelines = hold(
            &mut server,
            std::slice::from_mut(&mut probe),
            all_span_the_session,
        );
        conclude(name, &server, &timelines, 1, Vec::new(), "");
    }
}
