//! Many viewer tabs of one server in one browser: Chromium with the broadcaster page and 12
//! viewer tabs, Firefox with 8, over plain HTTP and over HTTPS (HTTP/2). Browsers give a
//! server six HTTP/1.1 connections; a page that held one for its events locked the seventh
//! tab out. Every tab must load and play, and every tab must say "ended" within a second of
//! the publisher's DELETE. The first-frame time of each tab is printed.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::chromium::Browser;
use common::firefox::FirefoxTabs;
use common::page_test::blocking;
use common::server::create;
use common::udp_client::Client;
use serde_json::{Value, json};

/// How long after the DESIGN's promise (`inactive` within a second) a tab may say "ended".
const ENDED_WITHIN: Duration = Duration::from_secs(1);

/// Records, in each viewer page, when its first frame was ready (ms since navigation) and
/// when its badge first said "ended" (ms since the epoch, comparable with the test's clock).
const PROBE: &str = "
window.__probe = {};
document.addEventListener('DOMContentLoaded', () => {
  const v = document.getElementById('video');
  const first = () => { if (!window.__probe.firstFrame) window.__probe.firstFrame = performance.now(); };
  if (v.requestVideoFrameCallback) v.requestVideoFrameCallback(first);
  v.addEventListener('loadeddata', first, { once: true });
  const badge = document.getElementById('state');
  new MutationObserver(() => {
    if (badge.textContent === 'ended' && !window.__probe.ended) window.__probe.ended = Date.now();
  }).observe(badge, { childList: true, characterData: true, subtree: true });
});";

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The server over `scheme` with room for every tab: (server, base URL).
async fn start(scheme: &str, viewers: usize) -> common::page_test::Running {
    let dir = common::server::temp_dir("tabs");
    let max = viewers.to_string();
    let mut args = vec!["--max-viewers".to_owned(), max];
    if scheme == "https" {
        let (cert, key) = common::tls_client::self_signed(&dir.join("tls"));
        args.extend([
            "--tls-cert".to_owned(),
            cert.display().to_string(),
            "--tls-key".to_owned(),
            key.display().to_string(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut r = common::page_test::start_in(&dir, &args).await;
    r.base = r.base.replacen("http://", &format!("{scheme}://"), 1);
    r
}

/// Chromium: the broadcaster page, then `tabs` viewer tabs opened one after another.
fn chromium_tabs(base: &str, tabs: usize) {
    let (id, view) = create(base);
    let obs = Client::publish(base, &id).expect("OBS-shaped WHIP accepted");
    let browser = Browser::start_with(None, &["--ignore-certificate-errors"]);
    browser.page_load_timeout(Duration::from_secs(20));
    browser.goto(&format!("{base}/broadcast?id={id}"));
    browser.wait("the broadcaster page says live", |b| {
        (b.text("#state") == "live").then_some(())
    });
    let mut handles = Vec::new();
    for i in 0..tabs {
        handles.push(browser.new_tab());
        browser.before_page_scripts(PROBE);
        // A page that cannot get a connection fails here (the page-load timeout).
        browser.goto(&format!("{base}/stream?id={view}"));
        println!("tab {}: loaded", i + 1);
    }
    let mut first_frames = Vec::new();
    for (i, handle) in handles.iter().enumerate() {
        browser.switch_to(handle);
        browser.wait("the viewer tab says live", |b| {
            (b.player_state() == "live").then_some(())
        });
        let frames = browser.wait_decoding("the viewer tab decodes frames");
        let probe = browser.js("return window.__probe", json!([]));
        let protocol = browser.js(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol",
            json!([]),
        );
        let ms = probe["firstFrame"].as_f64().expect("a first frame time");
        println!(
            "chromium tab {}: first frame {ms:.0} ms, {frames} frames, {protocol}",
            i + 1
        );
        let expected = if base.starts_with("https") {
            "h2"
        } else {
            "http/1.1"
        };
        assert_eq!(protocol, json!(expected), "tab {} protocol", i + 1);
        first_frames.push(ms);
    }
    let stopped = epoch_ms();
    assert_eq!(obs.stop(), 200, "the publisher's DELETE");
    for (i, handle) in handles.iter().enumerate() {
        browser.switch_to(handle);
        let ended: u64 = browser.wait("the viewer tab says ended", |b| {
            b.js("return window.__probe.ended || null", json!([]))
                .as_u64()
        });
        let after = ended.saturating_sub(stopped);
        println!("chromium tab {}: ended {after} ms after DELETE", i + 1);
        assert!(
            after <= ENDED_WITHIN.as_millis() as u64,
            "tab {} said ended {after} ms after the DELETE",
            i + 1
        );
    }
    browser.screenshot(&format!("browser_tabs_chromium_{}", scheme_of(base)));
    println!(
        "chromium {}: first frames {first_frames:.0?} ms",
        scheme_of(base)
    );
}

fn scheme_of(base: &str) -> &str {
    base.split(':').next().unwrap_or_default()
}

/// Firefox: the broadcaster page and `tabs` viewer tabs, each checked as the Chromium ones.
fn firefox_tabs(base: &str, tabs: usize) {
    let (id, view) = create(base);
    let obs = Client::publish(base, &id).expect("OBS-shaped WHIP accepted");
    let mut firefox = FirefoxTabs::open(
        &format!("{base}/broadcast?id={id}"),
        &format!("{base}/stream?id={view}"),
        tabs,
        PROBE,
    );
    let playing: Value = firefox.next_line();
    let expected = if base.starts_with("https") {
        "h2"
    } else {
        "http/1.1"
    };
    let tabs_seen = playing["tabs"].as_array().expect("the tabs").clone();
    assert_eq!(tabs_seen.len(), tabs);
    for (i, tab) in tabs_seen.iter().enumerate() {
        let ms = tab["firstFrame"].as_f64().expect("a first frame time");
        println!(
            "firefox tab {}: first frame {ms:.0} ms, {} frames, {}",
            i + 1,
            tab["frames"],
            tab["protocol"]
        );
        assert!(
            tab["frames"].as_u64().unwrap_or(0) > 10,
            "tab {} decodes",
            i + 1
        );
        assert_eq!(tab["protocol"], json!(expected), "tab {} protocol", i + 1);
    }
    let stopped = epoch_ms();
    assert_eq!(obs.stop(), 200, "the publisher's DELETE");
    firefox.say("stopped");
    let ended: Value = firefox.next_line();
    for (i, at) in ended["ended"]
        .as_array()
        .expect("the ended times")
        .iter()
        .enumerate()
    {
        let at = at
            .as_u64()
            .unwrap_or_else(|| panic!("tab {} never said ended", i + 1));
        let after = at.saturating_sub(stopped);
        println!("firefox tab {}: ended {after} ms after DELETE", i + 1);
        assert!(
            after <= ENDED_WITHIN.as_millis() as u64,
            "tab {} said ended {after} ms after the DELETE",
            i + 1
        );
    }
    firefox.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn twelve_chromium_tabs_and_the_broadcaster_page_all_play_and_end_over_http() {
    let r = start("http", 16).await;
    let base = r.base.clone();
    blocking(move || chromium_tabs(&base, 12)).await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twelve_chromium_tabs_and_the_broadcaster_page_all_play_and_end_over_https() {
    let r = start("https", 16).await;
    let base = r.base.clone();
    blocking(move || chromium_tabs(&base, 12)).await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_firefox_tabs_and_the_broadcaster_page_all_play_and_end_over_http() {
    let r = start("http", 12).await;
    let base = r.base.clone();
    blocking(move || firefox_tabs(&base, 8)).await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_firefox_tabs_and_the_broadcaster_page_all_play_and_end_over_https() {
    let r = start("https", 12).await;
    let base = r.base.clone();
    blocking(move || firefox_tabs(&base, 8)).await;
    r.server.shutdown().await;
}
