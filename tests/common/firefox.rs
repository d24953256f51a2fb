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
    require_driver(&js);
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

/// Checks that Firefox, Node and the driver are installed; panics with the fix if not.
fn require_driver(js: &Path) {
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
}

/// One Firefox with several tabs of a viewer page (`tests/js/firefox-tabs.mjs`), spoken to in
/// lines of JSON: see the script's header.
pub struct FirefoxTabs {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl FirefoxTabs {
    /// Opens the broadcaster page `panel`, then `url` in `tabs` tabs, each running `probe`
    /// before the page's scripts.
    pub fn open(panel: &str, url: &str, tabs: usize, probe: &str) -> Self {
        let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
        require_driver(&js);
        let mut child = Command::new("/usr/bin/node")
            .arg(js.join("firefox-tabs.mjs"))
            .arg(panel)
            .arg(url)
            .arg(tabs.to_string())
            .arg(probe)
            .current_dir(&js)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        Self { child, lines }
    }

    /// The driver's next line of JSON; panics if it ended instead (its stderr says why).
    pub fn next_line(&mut self) -> Value {
        let line = self
            .lines
            .next()
            .and_then(Result::ok)
            .expect("the Firefox driver ended early (see its stderr above)");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("the driver's JSON: {line}"))
    }

    /// Sends the driver one line.
    pub fn say(&mut self, line: &str) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}").unwrap();
    }

    /// Waits for the driver to close Firefox and exit.
    pub fn finish(mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the Firefox driver failed");
    }
}

impl Drop for FirefoxTabs {
    /// A failed assertion must not leave Firefox running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
