//! Debian's headless `firefox-esr` playing a viewer page, driven over WebDriver BiDi by
//! `tests/js/firefox-viewer.mjs` (puppeteer-core; `.ci/run` installs it with `npm ci`). A test
//! fails, never skips, when Firefox, Node or the driver is missing. The screenshot lands in
//! `target/screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Plays `url` until video frames and audio samples are decoded and rising; returns what the
/// driver saw: its one line of JSON (see the script's header).
pub fn firefox_plays(url: &str, name: &str) -> Value {
    firefox_run(url, name, None)
}

/// The same, then stays on the page for `hold` seconds: the JSON also has the `timeline` of
/// one look a second (see the script's header).
pub fn firefox_holds(url: &str, name: &str, hold: u64) -> Value {
    firefox_run(url, name, Some(hold))
}

fn firefox_run(url: &str, name: &str, hold: Option<u64>) -> Value {
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
        .args(hold.map(|s| s.to_string()))
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
