//! GStreamer `webrtcbin` clients (tests/gst/*.py) run by Debian's `/usr/bin/python3` with
//! python3-gi: a WHIP publisher and a WHEP viewer, gathering on 127.0.0.1. A test fails, never
//! skips, when Python's GObject bindings or a GStreamer element is missing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3";

/// A running client: what it printed so far (stdout and stderr, one line each) is kept.
pub struct GstClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl GstClient {
    /// Starts `tests/gst/<script>` with `args`.
    pub fn start(script: &str, args: &[&str]) -> Self {
        assert!(
            Path::new(PYTHON).exists(),
            "{PYTHON} is missing: apt-get install python3-gi"
        );
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gst");
        let mut child = Command::new(PYTHON)
            .arg(dir.join(script))
            .args(args)
            .current_dir(&dir)
            // DTLS errors (OpenSSL's reason, e.g. the peer's alert) go to stderr, kept below.
            .env("GST_DEBUG", "dtlsconnection:1")
            .env("GST_DEBUG_NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for (name, out) in [
            (
                "out",
                child
                    .stdout
                    .take()
                    .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            ),
            (
                "err",
                child
                    .stderr
                    .take()
                    .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
            ),
        ] {
            let (lines, out) = (lines.clone(), out.unwrap());
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(format!("{name}: {line}"));
                }
            }));
        }
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
            readers,
        }
    }

    /// A `webrtcbin` WHIP publisher (tests/gst/whip_publisher.py) of broadcast `id`, once its
    /// peer connection is up. It publishes until `finish`.
    pub fn publishing(base: &str, id: &str) -> Self {
        let mut publisher = Self::start(
            "whip_publisher.py",
            &[&format!("{base}/broadcast"), id, "120"],
        );
        publisher.wait_for_line("connected");
        publisher
    }

    /// Whether it has closed its output (it exited, or is about to): nothing more will come.
    pub fn ended(&self) -> bool {
        self.readers.iter().all(JoinHandle::is_finished)
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until it prints `line` on stdout; fails with its output if it exits first or
    /// the (generous) deadline passes.
    pub fn wait_for_line(&mut self, line: &str) {
        let want = format!("out: {line}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.lines.lock().unwrap().contains(&want) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.read_to_end();
                panic!("it exited ({status}) before `{line}`:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "never printed `{line}`:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Once it has exited: waits until everything it printed is kept.
    fn read_to_end(&mut self) {
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
    }

    /// Closes its standard input (a publisher then stops) and waits for it to exit: (whether
    /// it succeeded, its output).
    pub fn finish(mut self) -> (bool, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "never exited:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        self.read_to_end();
        (status.success(), self.output())
    }
}

impl Drop for GstClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
