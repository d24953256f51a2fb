//! A real Chromium viewer behind a shaped link to a single-layer broadcast: its link carries
//! far less than the broadcast's bitrate, so after its estimate has stayed below for 10 s its
//! page says so ("your connection is slower than this broadcast") instead of freezing
//! silently, the broadcaster's doctor suggests simulcast, and an uncapped viewer of the same
//! broadcast is told nothing. Lifting the cap takes the notice away.
//!
//! viewer namespace (10.236.0.2, Chromium) ── veth ── root (10.236.0.1: whipcast, the
//! publishing Chromium and the uncapped viewer). The root end of the veth is shaped with
//! `tc … tbf rate 150kbit`: the server → capped viewer direction. Needs root, iproute2, tc
//! and Chromium.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::chromium::Browser;
use common::netns::{Netns, link};
use common::process::spawn_in;
use common::server::{create, temp_dir};
use common::udp_client::http;
use serde_json::{Value, json};

/// The capped viewer's link: well under what the publisher sends (checked below). Chromium's
/// fake camera at 1280x720 settles at about 500 kb/s here (its encoder ramps up over ~20 s).
const CAP_KBPS: u64 = 150;
const NOTICE: &str = "Your connection is slower than this broadcast";

/// The root namespace's interface holding `addr` (the root end of the veth).
fn interface_of(addr: &str) -> String {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "to", addr])
        .output()
        .expect("ip runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let name = text.split_whitespace().nth(1).unwrap_or_default();
    assert!(!name.is_empty(), "no interface has {addr}: {text}");
    name.to_owned()
}

fn tc(args: &[&str]) {
    let ok = Command::new("tc").args(args).status().expect("tc runs");
    assert!(ok.success(), "tc {}", args.join(" "));
}

/// The broadcaster page's panel (`GET /api/broadcast`).
fn panel(base: &str, id: &str) -> Value {
    let bearer = format!("Bearer {id}");
    let (status, _, body) = http(
        "GET",
        &format!("{base}/api/broadcast"),
        &[("Authorization", bearer.as_str())],
        "",
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The viewer page's notice, if it shows.
fn notice(page: &Browser) -> Option<String> {
    let v = page.js(
        "const n = document.getElementById('slow');
         return n && !n.classList.contains('hidden') ? n.textContent : null;",
        json!([]),
    );
    v.as_str().map(str::to_owned)
}

/// What the page was last told by `GET …/layer`.
fn told(page: &Browser) -> Value {
    page.js(
        "return window.whipcast && window.whipcast.link ? window.whipcast.link() : null",
        json!([]),
    )
}

/// Forwards TCP connections from a loopback port to `to`, and returns that port's address:
/// Chromium lets a page use the camera only from a secure origin, and `http://127.0.0.1` is
/// one where `http://10.236.0.1` is not, so the publisher opens its page through this.
fn loopback_to(to: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = listener.local_addr().unwrap();
    let to = to.to_owned();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&to) else {
                continue;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    format!("http://{local}")
}

/// Polls `f` every 500 ms until it gives a value, or fails after `limit`.
fn within<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_viewer_on_a_link_slower_than_the_broadcast_is_told_and_an_uncapped_one_is_not() {
    let ns = Netns::new();
    link(None, "10.236.0.1/24", Some(&ns), "10.236.0.2/24");
    let veth = interface_of("10.236.0.1/32");
    let rate = format!("{CAP_KBPS}kbit");
    let shape = ["qdisc", "add", "dev", &veth, "root", "tbf", "rate", &rate];
    tc(&[&shape[..], &["burst", "16kbit", "latency", "300ms"]].concat());

    let server = spawn_in(
        "slow_viewer",
        &temp_dir("slow_viewer"),
        "10.236.0.1:0",
        "10.236.0.1:0",
        &[],
    );
    let base = server.base.clone();
    let (id, view) = create(&base);
    let secure = loopback_to(base.trim_start_matches("http://"));
    let publisher =
        Browser::publishing_video(&secure, &id, json!({ "width": 1280, "height": 720 }));
    // The broadcast's own bitrate, once Chromium's encoder has ramped up: well above the cap.
    let (kbps, after) = within(
        Duration::from_secs(60),
        "the publisher sends 2.5x the cap",
        || {
            let kbps = panel(&base, &id)["bitrate_kbps"].as_u64().unwrap_or(0);
            (kbps * 2 >= 5 * CAP_KBPS).then_some(kbps)
        },
    );
    eprintln!("publisher: {kbps} kb/s after {after:?}; the capped link: {CAP_KBPS} kb/s");

    let url = format!("{base}/stream?id={view}");
    let capped = Browser::start_in(Some((&ns.name, [10, 236, 0, 2].into())));
    capped.goto(&url);
    let uncapped = Browser::start();
    uncapped.goto(&url);
    let (text, took) = within(
        Duration::from_secs(40),
        "the capped viewer's notice",
        || notice(&capped),
    );
    let link = told(&capped);
    eprintln!("capped viewer's notice after {took:?}: {text:?}; its layer answer: {link}");
    assert!(text.starts_with(NOTICE), "{text}");
    assert!(text.contains("kb/s needed") && text.contains("the picture may freeze"));
    assert_eq!(link["slow"], true);
    let estimate = link["estimate_bps"].as_u64().expect("an estimate");
    let needed = link["needed_bps"].as_u64().expect("what it is sent");
    assert!(
        estimate < CAP_KBPS * 1000 * 3 / 2 && estimate < needed,
        "the capped viewer's estimate, {estimate} b/s, is about its link and under {needed} b/s"
    );

    // The broadcaster hears of it, and /metrics counts it.
    let warnings = panel(&base, &id)["warnings"].clone();
    eprintln!("broadcaster warnings: {warnings}");
    assert!(
        (warnings.as_array().unwrap().iter())
            .filter_map(Value::as_str)
            .any(
                |w| w.starts_with("1 viewer has a connection slower than this broadcast's")
                    && w.contains("turn on simulcast in OBS")
            ),
        "{warnings}"
    );
    let (_, _, metrics) = http("GET", &format!("{base}/metrics"), &[], "");
    assert!(
        metrics.lines().any(|l| l == "whipcast_viewers_slow 1"),
        "{metrics}"
    );

    // The uncapped viewer plays and is told nothing, now and for ten seconds more.
    uncapped.wait_decoding("the uncapped viewer plays");
    for _ in 0..20 {
        assert_eq!(
            notice(&uncapped),
            None,
            "the uncapped viewer: {}",
            told(&uncapped)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let fine = told(&uncapped);
    eprintln!("uncapped viewer's layer answer: {fine}");
    assert_eq!(fine["slow"], false);
    assert!(
        fine["needed_bps"].as_u64().unwrap_or(0) > 0,
        "judged against what it is sent, wherever it is served from: {fine}"
    );
    assert!(
        fine["estimate_bps"].as_u64().is_some(),
        "it has an estimate: {fine}"
    );

    for page in [&capped, &uncapped] {
        page.click("#statsToggle");
    }
    std::thread::sleep(Duration::from_secs(5));
    capped.screenshot("slow_viewer_capped");
    uncapped.screenshot("slow_viewer_uncapped");
    publisher.new_tab();
    publisher.goto(&format!("{secure}/broadcast?id={id}"));
    publisher.wait("the doctor's suggestion on the broadcaster page", |b| {
        b.text("body").contains("turn on simulcast").then_some(())
    });
    publisher.screenshot("slow_viewer_broadcaster_page");

    // Lifting the cap: the estimate climbs back, and the notice goes.
    tc(&["qdisc", "del", "dev", &veth, "root"]);
    let ((), gone) = within(
        Duration::from_secs(90),
        "the notice goes once the cap is lifted",
        || notice(&capped).is_none().then_some(()),
    );
    eprintln!(
        "notice gone {gone:?} after lifting the cap: {}",
        told(&capped)
    );
}
