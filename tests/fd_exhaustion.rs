//! The binary out of file descriptors: it waits for connections to end instead of retrying
//! `accept` in a busy loop, and serves again once they have. Loopback only, bounded.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::process::{cpu_time, open_fds, spawn_with};
use common::raw_http::{raw, read_head};

/// The server's descriptor limit: enough to start, soon exhausted by idle connections.
const NOFILE: usize = 64;

#[test]
fn out_of_descriptors_the_server_idles_and_then_recovers() {
    let p = spawn_with(
        "warn",
        &[
            "--max-connections-per-ip",
            "1000",
            "--http-header-timeout",
            "120s",
        ],
        Some(NOFILE),
    );
    let pid = p.child.id();
    let addr: SocketAddr = p.base.strip_prefix("http://").unwrap().parse().unwrap();
    // Twice the limit: the server accepts until it has no descriptor left; the rest wait in
    // the listen backlog, so the listener stays readable and every accept fails (EMFILE).
    let held: Vec<TcpStream> = (0..2 * NOFILE)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_fds(pid) < NOFILE && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // At least: descriptors inherited above the limit (a jobserver's) count too.
    let fds = open_fds(pid);
    assert!(
        fds >= NOFILE,
        "the server ran out of descriptors: {fds} open"
    );

    // A loop retrying accept at once burns a whole core; one that pauses uses next to none.
    // The bound is loose on purpose: a fifth of one core, against the busy loop's all of it.
    let (cpu_before, wall_before) = (cpu_time(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (cpu, wall) = (cpu_time(pid) - cpu_before, wall_before.elapsed());
    assert!(
        cpu < wall / 5,
        "the server used {cpu:?} of CPU in {wall:?} while out of descriptors"
    );

    drop(held);
    let mut s = raw(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let head = read_head(&mut s);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "served again once connections ended: {head:?}"
    );
}
