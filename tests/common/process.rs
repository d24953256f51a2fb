//! The real `whipcast` binary as a child process on free loopback ports.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Proc {
    pub child: Child,
    pub base: String,
}

impl Drop for Proc {
    /// A failed assertion must not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on free loopback ports and waits for its "open http://…" line.
pub fn spawn(log: &str) -> Proc {
    spawn_with(log, &[], None)
}

/// Like [`spawn`], with more options, and with `nofile` as its file descriptor limit if given
/// (through `prlimit` from util-linux, which sets the limit and then runs the binary itself,
/// so the child's pid is the server's).
pub fn spawn_with(log: &str, extra: &[&str], nofile: Option<usize>) -> Proc {
    let dir = std::env::temp_dir().join(format!(
        "whipcast-proc-{}",
        whipcast::secret::random_token()
    ));
    launch(log, &dir, ("127.0.0.1:0", "127.0.0.1:0"), extra, nofile)
}

/// Like [`spawn`], on this data directory and these HTTP and UDP addresses: a server
/// restarted where it ran before.
pub fn spawn_in(log: &str, dir: &Path, http: &str, udp: &str, extra: &[&str]) -> Proc {
    launch(log, dir, (http, udp), extra, None)
}

fn launch(
    log: &str,
    dir: &Path,
    (http, udp): (&str, &str),
    extra: &[&str],
    nofile: Option<usize>,
) -> Proc {
    let server = env!("CARGO_BIN_EXE_whipcast");
    let mut command = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(server);
            c
        }
        None => Command::new(server),
    };
    let mut child = command
        .args([
            "--http-listen",
            http,
            "--udp-listen",
            udp,
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .args(extra)
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts (prlimit is in util-linux)");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    if stdout.read_line(&mut line).is_err() || line.is_empty() {
        let _ = child.kill();
        panic!("the server printed no address");
    }
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    child.stdout = Some(stdout.into_inner());
    Proc {
        child,
        base: format!("http://{addr}"),
    }
}

/// Stops the server with SIGTERM (a graceful stop) and waits for it to exit.
pub fn sigterm(p: &mut Proc) -> ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server's open file descriptors; a /proc that cannot be read fails the test rather than
/// reading as 0 (which would make every comparison pass).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// CPU time the process has used so far (user + system), from /proc/<pid>/stat.
pub fn cpu_time(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks = fields[11] + fields[12];
    std::time::Duration::from_millis(ticks * 1000 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK is a number")
}
