//! Firefox, an independent WebRTC stack: Debian's headless `firefox-esr` plays a broadcast from
//! an OBS-shaped publisher through the real viewer page. Driven over WebDriver BiDi by
//! `tests/js/firefox-viewer.mjs` (puppeteer-core; `.ci/run` installs it with `npm ci`). The
//! test fails, never skips, when Firefox, Node or the driver is missing. The screenshot lands in
//! `target/screenshots/`.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::page_test::{blocking, start};
use common::server::create;
use common::udp_client::Client;
use serde_json::Value;

/// What the driver saw: its one line of JSON.
fn firefox_plays(url: &str, name: &str) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let js = root.join("tests/js");
    for (path, fix) in [
        (
            PathBuf::from("/usr/bin/firefox-esr"),
            "apt-get install firefox-esr",
        ),
        (PathBuf::from("/usr/bin/node"), "apt-get install nodejs npm"),
        (
            js.join("node_modules/puppeteer-core"),
            "(cd tests/js && npm ci)",
        ),
    ] {
        assert!(path.exists(), "{} is missing: {fix}", path.display());
    }
    let dir = root.join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&png);
    let out = Command::new("/usr/bin/node")
        .arg(js.join("firefox-viewer.mjs"))
        .arg(url)
        .arg(&png)
        .current_dir(&js)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Firefox did not play {url}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(png.exists(), "the screenshot was saved");
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| panic!("the driver's JSON: {stdout}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn obs_shaped_publisher_reaches_firefox_viewer_page() {
    let r = start(&[]).await;
    let base = r.base.clone();
    let seen = blocking(move || {
        let (id, view) = create(&base);
        let _obs = Client::publish(&base, &id).expect("OBS-shaped WHIP accepted");
        firefox_plays(
            &format!("{base}/stream?id={view}"),
            "obs_shaped_publisher_reaches_firefox_viewer_page",
        )
    })
    .await;
    r.server.shutdown().await;
    eprintln!("Firefox saw {seen}");
    assert_eq!(seen["state"], "live");
    assert_eq!(
        seen["size"],
        serde_json::json!([320, 240]),
        "the fixture's size"
    );
    let (at_live, later) = (
        seen["framesAtLive"].as_u64().unwrap(),
        seen["framesLater"].as_u64().unwrap(),
    );
    assert!(
        later > at_live,
        "frames decoded rise: {at_live} then {later}"
    );
    let (mean, spread) = (
        seen["screenshot"]["mean"].as_f64().unwrap(),
        seen["screenshot"]["spread"].as_f64().unwrap(),
    );
    assert!(
        mean > 20.0 && spread > 5.0,
        "the screenshot of the video is not black or flat: mean {mean}, spread {spread}"
    );
}
