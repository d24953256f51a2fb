//! Long sessions (tests/long_sessions.rs, and the same code run for 30 minutes as a soak): a
//! whipcast process looked at once a second (its one broadcast in `/api/status`, its RSS and
//! open fds, its log), each client's timeline of what it decoded, the checks a session that
//! lasted must pass, and the per-minute report the soak table is made from.

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::process::{Proc, open_fds, spawn_with};
use super::udp_client::http;

/// How long every client stays connected: `WHIPCAST_LONG_SESSION_SECS`, 60 s by default (CI);
/// the soak sets 1800.
pub fn session_secs() -> u64 {
    std::env::var("WHIPCAST_LONG_SESSION_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("WHIPCAST_LONG_SESSION_SECS is a number of seconds")
        })
        .unwrap_or(60)
}

/// The wall clock in Unix milliseconds: the one time base of the test, the browsers' and
/// GStreamer's looks.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

/// One look at a client: what it had decoded so far.
#[derive(Clone, Debug, Default)]
pub struct Look {
    /// Unix ms.
    pub at: u64,
    pub frames: u64,
    /// Audio decoded so far (samples, buffers or packets: whatever the client counts).
    pub audio: Option<u64>,
    /// Chromium's `freezeCount` so far.
    pub freezes: Option<u64>,
    /// The viewer page's state (`window.whipcast.state`).
    pub state: Option<String>,
}

/// A client's looks, in order.
pub struct Timeline {
    pub client: String,
    pub looks: Vec<Look>,
}

impl Timeline {
    pub fn new(client: &str) -> Self {
        Self {
            client: client.to_owned(),
            looks: Vec::new(),
        }
    }

    /// Milliseconds from its first look to its last.
    pub fn span_ms(&self) -> u64 {
        match (self.looks.first(), self.looks.last()) {
            (Some(a), Some(b)) => b.at - a.at,
            _ => 0,
        }
    }
}

/// One look at the server.
#[derive(Clone, Debug)]
pub struct ServerLook {
    pub at: u64,
    /// The broadcast's state in `/api/status` ("none" when it is not listed).
    pub state: String,
    pub viewers: u64,
    pub rss_kb: u64,
    pub fds: usize,
}

/// A whipcast process with one broadcast, its log kept line by line with the time it came.
pub struct Watched {
    proc: Proc,
    log: Arc<Mutex<Vec<(u64, String)>>>,
    _reader: JoinHandle<()>,
    pub looks: Vec<ServerLook>,
}

impl Watched {
    /// Starts the binary logging at `info` (lifecycle lines: connected, removed and why), or
    /// at `WHIPCAST_LONG_SESSION_LOG` (a `RUST_LOG` filter) to look closer.
    pub fn spawn() -> Self {
        let filter = std::env::var("WHIPCAST_LONG_SESSION_LOG").unwrap_or("info".to_owned());
        let mut proc = spawn_with(&filter, &[], None);
        let stderr = proc.child.stderr.take().expect("the server's log is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        // Read to the end: a pipe nobody drains would stall the server's logging.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push((now_ms(), line));
            }
        });
        Self {
            proc,
            log,
            _reader: reader,
            looks: Vec::new(),
        }
    }

    pub fn base(&self) -> &str {
        &self.proc.base
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Looks at the broadcast, the RSS and the fds once.
    pub fn look(&mut self) {
        let (code, _, body) = http("GET", &format!("{}/api/status", self.base()), &[], "");
        assert_eq!(code, 200, "/api/status: {body}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        let broadcast = &status["broadcasts"][0];
        let pid = self.pid();
        self.looks.push(ServerLook {
            at: now_ms(),
            state: broadcast["state"].as_str().unwrap_or("none").to_owned(),
            viewers: broadcast["viewers"].as_u64().unwrap_or(0),
            rss_kb: rss_kb(pid),
            fds: open_fds(pid),
        });
    }

    /// Writes its whole log so far to `target/long-sessions/<name>.log`, for people to read
    /// after a failure; returns the path.
    pub fn save_log(&self, name: &str) -> std::path::PathBuf {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/long-sessions");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.log"));
        let log = self.log.lock().unwrap();
        let text: String = log.iter().map(|(_, l)| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The log lines that came up to `at` (Unix ms) and contain `what`.
    pub fn logged_until(&self, at: u64, what: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(t, l)| *t <= at && l.contains(what))
            .map(|(_, l)| l.clone())
            .collect()
    }
}

/// The resident set size of `pid` in kB (`VmRSS` in /proc/<pid>/status); a /proc that cannot
/// be read fails the test rather than reading as 0.
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a VmRSS line")
}

/// A client looked at once a second: `None` while it has nothing to show yet.
pub struct Probe<'a> {
    pub client: String,
    pub look: Box<dyn FnMut() -> Option<Look> + 'a>,
}

/// Looks at the server and every probe once a second until `enough` (given the timelines so
/// far) says so, or a guard of the session plus three minutes passes; returns the timelines.
pub fn hold(
    server: &mut Watched,
    probes: &mut [Probe],
    mut enough: impl FnMut(&[Timeline]) -> bool,
) -> Vec<Timeline> {
    let mut timelines: Vec<Timeline> = probes.iter().map(|p| Timeline::new(&p.client)).collect();
    let guard = now_ms() + (session_secs() + 180) * 1000;
    loop {
        server.look();
        for (probe, timeline) in probes.iter_mut().zip(&mut timelines) {
            timeline.looks.extend((probe.look)());
        }
        if enough(&timelines) || now_ms() > guard {
            return timelines;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Whether every timeline spans the whole session.
pub fn all_span_the_session(timelines: &[Timeline]) -> bool {
    timelines
        .iter()
        .all(|t| t.span_ms() >= session_secs() * 1000)
}

/// What a session that lasted must show, as one message per thing that went wrong: every
/// client looked at for the whole session, with the viewer page live at every look and frames
/// (and audio, where counted) decoded in the last 10 s; the server never removed a session,
/// and listed the broadcast live with `viewers` viewers at every look of that time.
pub fn failures(server: &Watched, timelines: &[Timeline], viewers: u64) -> Vec<String> {
    let mut failed = Vec::new();
    let secs = session_secs();
    for t in timelines {
        let (Some(first), Some(last)) = (t.looks.first(), t.looks.last()) else {
            failed.push(format!("{}: never looked at (nothing decoded)", t.client));
            continue;
        };
        if t.span_ms() < secs * 1000 {
            failed.push(format!(
                "{}: looked at for {:.1} s of {secs} s (it stopped or ended)",
                t.client,
                t.span_ms() as f64 / 1000.0
            ));
        }
        if let Some(bad) = t
            .looks
            .iter()
            .find(|l| l.state.as_deref().is_some_and(|s| s != "live"))
        {
            failed.push(format!(
                "{}: the page said {:?} {:.1} s in",
                t.client,
                bad.state,
                (bad.at - first.at) as f64 / 1000.0
            ));
        }
        let before = t.looks.iter().rev().find(|l| l.at + 10_000 <= last.at);
        match before {
            None => failed.push(format!("{}: no look 10 s before its last", t.client)),
            Some(b) => {
                if last.frames <= b.frames {
                    failed.push(format!(
                        "{}: no frames decoded in the last 10 s ({} then {})",
                        t.client, b.frames, last.frames
                    ));
                }
                if let (Some(a0), Some(a1)) = (b.audio, last.audio)
                    && a1 <= a0
                {
                    failed.push(format!(
                        "{}: no audio decoded in the last 10 s ({a0} then {a1})",
                        t.client
                    ));
                }
            }
        }
    }
    let from = timelines
        .iter()
        .filter_map(|t| t.looks.first())
        .map(|l| l.at)
        .min();
    let to = timelines
        .iter()
        .filter_map(|t| t.looks.last())
        .map(|l| l.at)
        .max();
    if let (Some(from), Some(to)) = (from, to) {
        for l in server.looks.iter().filter(|l| l.at >= from && l.at <= to) {
            if l.state != "live" || l.viewers != viewers {
                failed.push(format!(
                    "/api/status {:.1} s in: broadcast {}, {} viewers (want live, {viewers})",
                    (l.at - from) as f64 / 1000.0,
                    l.state,
                    l.viewers
                ));
                break;
            }
        }
        // The server's start-up self-test (README: it checks media answers on its UDP
        // addresses) is a session of its own that ends at once: not a client's.
        let self_test: Vec<String> = server
            .logged_until(to, "connectivity test connected")
            .iter()
            .filter_map(|l| peer_of(l).map(str::to_owned))
            .collect();
        let removed: Vec<String> = server
            .logged_until(to, "session removed")
            .into_iter()
            .filter(|l| peer_of(l).is_none_or(|p| !self_test.iter().any(|s| s == p)))
            .collect();
        if !removed.is_empty() {
            let connected = server.logged_until(to, " connected");
            failed.push(format!(
                "the server removed sessions while clients streamed:\n  {}\n(connected:\n  {})",
                removed.join("\n  "),
                connected.join("\n  ")
            ));
        }
    }
    failed
}

/// The `peer=…` field of a log line.
fn peer_of(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("peer="))
}

/// Prints what the soak table is made of: per client, frames decoded per whole minute, the
/// seconds with no new frame, freezes, audio in the last 10 s; the server's RSS and fds at the
/// first and last look.
pub fn report(scenario: &str, server: &Watched, timelines: &[Timeline]) {
    let mut out = format!("long session `{scenario}` ({} s):\n", session_secs());
    for t in timelines {
        let per_minute = per_minute(&t.looks);
        let stalled = t
            .looks
            .windows(2)
            .filter(|w| w[1].frames <= w[0].frames)
            .count();
        let freezes = t.looks.last().and_then(|l| l.freezes);
        out.push_str(&format!(
            "  {}: {:.0} s looked at, frames per minute {:?}, looks with no new frame {stalled} of {}, freezes {}\n",
            t.client,
            t.span_ms() as f64 / 1000.0,
            per_minute,
            t.looks.len().saturating_sub(1),
            freezes.map_or("n/a".to_owned(), |f| f.to_string()),
        ));
    }
    if let (Some(a), Some(b)) = (server.looks.first(), server.looks.last()) {
        out.push_str(&format!(
            "  server: RSS {:.1} → {:.1} MB, fds {} → {}\n",
            a.rss_kb as f64 / 1024.0,
            b.rss_kb as f64 / 1024.0,
            a.fds,
            b.fds
        ));
    }
    eprint!("{out}");
}

/// Frames decoded in each whole minute after the first look.
fn per_minute(looks: &[Look]) -> Vec<u64> {
    let Some(first) = looks.first() else {
        return Vec::new();
    };
    let frames_at = |t: u64| {
        looks
            .iter()
            .rev()
            .find(|l| l.at <= t)
            .map_or(0, |l| l.frames)
    };
    let last = looks.last().map_or(first.at, |l| l.at);
    (0..)
        .map(|m| first.at + m * 60_000)
        .take_while(|start| start + 60_000 <= last)
        // A page that made a new peer connection counts from 0 again: never below 0 here.
        .map(|start| frames_at(start + 60_000).saturating_sub(frames_at(start)))
        .collect()
}
