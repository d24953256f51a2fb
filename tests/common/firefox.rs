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

/// One viewer page kept open in Firefox for as long as a test looks at it
/// (`tests/js/firefox-page.mjs`), optionally inside a network namespace; asked in lines of
/// JSON, as a WebDriver session would be.
pub struct FirefoxPage {
    child: std::process::Child,
    talk: std::sync::Mutex<(
        Option<std::process::ChildStdin>,
        std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    )>,
}

impl FirefoxPage {
    /// Starts Firefox with one tab that runs `before` ahead of every page's scripts, in the
    /// root namespace or inside `netns` (`ip netns exec`: the browser's traffic then goes
    /// through that namespace's links).
    pub fn start(netns: Option<&str>, before: &str) -> Self {
        let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
        require_driver(&js);
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/bin/node"]);
                c
            }
            None => Command::new("/usr/bin/node"),
        };
        let mut child = command
            .arg(js.join("firefox-page.mjs"))
            .arg(before)
            .current_dir(&js)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let page = Self {
            child,
            talk: std::sync::Mutex::new((Some(stdin), lines)),
        };
        let first = page.next_line();
        assert_eq!(first["ready"], true, "Firefox runs: {first}");
        page
    }

    /// Opens `url` in the tab; returns once the page says live and decodes frames.
    pub fn goto(&self, url: &str) {
        let answer = self.ask(serde_json::json!({ "goto": url }));
        assert_eq!(answer["live"], true, "Firefox's page is live: {answer}");
    }

    fn next_line(&self) -> Value {
        let mut talk = self.talk.lock().unwrap();
        let line = (talk.1.next())
            .and_then(Result::ok)
            .expect("the Firefox driver ended early (see its stderr above)");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("the driver's JSON: {line}"))
    }

    fn ask(&self, question: Value) -> Value {
        {
            use std::io::Write as _;
            let mut talk = self.talk.lock().unwrap();
            let stdin = talk.0.as_mut().expect("the driver's stdin is open");
            writeln!(stdin, "{question}").expect("the Firefox driver reads");
        }
        let answer = self.next_line();
        assert!(
            answer.get("error").is_none(),
            "Firefox's page: {answer} (asked {question})"
        );
        answer
    }

    /// Runs `script` (a function body; `arguments` holds `args`; a promise is awaited) and
    /// returns its value.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.ask(serde_json::json!({ "js": script, "args": args }))["value"].clone()
    }

    /// Saves the `<video>` to `target/screenshots/<name>.png` for people to look at.
    pub fn screenshot(&self, name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = dir.join(format!("{name}.png"));
        self.ask(serde_json::json!({ "screenshot": png }));
    }
}

impl Drop for FirefoxPage {
    /// Closes stdin (the driver then closes Firefox); a driver that does not end soon is
    /// told to (SIGTERM: puppeteer then closes Firefox), then killed, so that a failed
    /// assertion leaves no Firefox running.
    fn drop(&mut self) {
        if let Ok(talk) = self.talk.get_mut() {
            talk.0.take();
        }
        let ended = |child: &mut std::process::Child, secs: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            while std::time::Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            false
        };
        if !ended(&mut self.child, 10) {
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            if !ended(&mut self.child, 5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}
