//! `whipcast-loadgen`: end-to-end load against an **already running** whipcast, over
//! loopback only (notes/performance.md §4.B).
//!
//! What it does and measures:
//! * creates a broadcast (`POST /api/broadcasts`) and publishes into it over WHIP with one
//!   synthetic str0m publisher on its own thread: 30 fps, ~2.5 Mb/s H.264 (an ~80 KB IDR
//!   every 2 s, ~9 KB P-frames, each frame marked with its number and send time) plus Opus
//!   every 20 ms;
//! * joins `--viewers` WHEP viewers, each with its own UDP socket on 127.0.0.1, as tokio tasks
//!   (32 WHEP requests in flight). Sink viewers complete ICE/DTLS with str0m and then count RTP
//!   from the clear header (delivered packets/s, duplicates) while STUN/RTCP still reach str0m;
//!   `--full-viewers` of them decode everything and check each frame's marker (latency, order,
//!   integrity);
//! * loss over the window, viewer by viewer, against the publisher's own count of packets
//!   sent: a viewer that gets nothing or stalls counts as loss for all it missed
//!   (`window.rs`). Reports viewers requested, joined, failed, playing at the end and playing
//!   the whole window; viewers per core counts only the last;
//! * time to first frame, two figures, from the start of a viewer's join (before its socket
//!   and offer; for Janus before its session `create`) → first video RTP packet
//!   (`ttff_first_packet_*`, every viewer) and → first complete video frame
//!   (`ttff_first_frame_*`, full viewers and the probes);
//! * with `--server-pid`: the server's CPU % of one core over the measured window (from
//!   /proc/<pid>/stat) and its RSS before and after the viewers joined (/proc/<pid>/status);
//!   our own CPU % (`loadgen_cpu_percent`) and the host's UDP buffer drops over the same
//!   window, to tell whether the generator, not the server, was the limit;
//! * `--join-storm N2`: after the window, N2 more viewers join at once (up to
//!   `--full-viewers` of them full); reports completed joins (WHEP + ICE + DTLS) per second,
//!   both times to first frame, and the loss the existing viewers saw meanwhile.
//!
//! It always ends: setup, the window and the storm each have a time limit, and every session
//! it opened gets its DELETE (also on errors and Ctrl-C). One JSON line goes to stdout; the
//! human log goes to stderr.
//!
//! ```text
//! cargo build --release
//! taskset -c 0 target/release/whipcast --http-listen 127.0.0.1:8080 \
//!     --udp-listen 127.0.0.1:8189 --data-dir /tmp/wc --max-viewers 5000 \
//!     --max-pending-viewers-per-ip 5000 &
//! taskset -c 1 target/release/whipcast-loadgen --base http://127.0.0.1:8080 \
//!     --viewers 200 --seconds 10 --server-pid $! [--join-storm 200]
//! ```
//!
//! `--peer janus --janus-url http://127.0.0.1:8088/janus` runs the same against Janus 1.1: a
//! streaming mountpoint fed plain RTP, viewers through Janus's HTTP API (`janus.rs`,
//! `rtp.rs`; `benches/peers/janus/run.sh` runs both servers side by side).
//!
//! `--churn-every S --churn K` replaces K sink viewers every S seconds during the window
//! (the soak test), logs the server's RSS and open file descriptors as it goes, and reports
//! the replacements' joins (`churn_*`); the window's loss then counts the viewers present
//! from start to end that the generator did not replace.

#![forbid(unsafe_code)]
#![allow(clippy::disallowed_methods)] // a load generator is a driver: it reads the clock

mod crowd;
mod http;
mod janus;
mod peer;
mod publisher;
mod rtp;
mod run;
mod stats;
mod viewer;
mod window;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::http::Base;
use crate::peer::Sessions;

#[derive(Parser, Clone)]
#[command(
    name = "whipcast-loadgen",
    about = "Loopback load test for a running whipcast"
)]
pub(crate) struct Args {
    /// The server's base URL; loopback only (127.0.0.1, localhost, [::1]).
    #[arg(long, required_if_eq("peer", "whipcast"))]
    pub(crate) base: Option<String>,
    /// The server under test: whipcast, or Janus for the side-by-side run (BENCHMARKS.md §6).
    #[arg(long, value_enum, default_value_t = Peer::Whipcast)]
    pub(crate) peer: Peer,
    /// Janus's HTTP API (with --peer janus); loopback only.
    #[arg(long, default_value = "http://127.0.0.1:8088/janus")]
    pub(crate) janus_url: String,
    /// The loopback address our UDP sockets bind to (default 127.0.0.1, or ::1 for an IPv6
    /// server). The Janus run uses 127.0.0.2 on an interface of its own (run.sh says why).
    #[arg(long)]
    pub(crate) local_ip: Option<std::net::IpAddr>,
    /// Where the viewers join, if not at --base: an edge of --base (`--origin`), so the
    /// publisher is on the origin and the viewers one hop further (BENCHMARKS.md, edges).
    #[arg(long)]
    pub(crate) view_base: Option<String>,
    /// Viewers watching during the measured window.
    #[arg(long, default_value_t = 50)]
    pub(crate) viewers: usize,
    /// Length of the measured window in seconds (the publisher's sending time; at both ends
    /// it is held back for half a second while what it sent arrives, window.rs).
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// The server's PID: its CPU and memory from /proc.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Viewers (of --viewers) that decode everything and check frames; the rest are sinks.
    #[arg(long, default_value_t = 4)]
    pub(crate) full_viewers: usize,
    /// After the window, this many more viewers join at once.
    #[arg(long, default_value_t = 0)]
    pub(crate) join_storm: usize,
    /// Seconds of warm-up between everyone playing and the start of the measured window. A
    /// new viewer gets the cached keyframe and then nothing of the video until the next live
    /// one (the frames between reference pictures it never got): up to a GOP (2 s) that its
    /// count would show as loss. 3 s covers the GOP and the last viewer's copy of that
    /// keyframe at high N; less is allowed (with a warning) for quick runs.
    #[arg(long, default_value_t = 3)]
    pub(crate) warmup: u64,
    /// After the window, this many full viewers join one at a time on the loaded server, for
    /// a time to first complete frame without the mass join's queueing.
    #[arg(long, default_value_t = 10)]
    pub(crate) probes: usize,
    /// Soak: replace --churn sink viewers every this many seconds during the window.
    #[arg(long, default_value_t = 0)]
    pub(crate) churn_every: u64,
    /// Soak: how many viewers --churn-every replaces each time.
    #[arg(long, default_value_t = 0)]
    pub(crate) churn: usize,
    /// Viewers' sockets enable UDP GRO and take the server's GSO runs whole. On loopback the
    /// receivers' kernel work runs on the sender's core; this leaves less of it there, closer
    /// to a server whose viewers are on other machines (BENCHMARKS.md §3).
    #[arg(long)]
    pub(crate) receiver_gro: bool,
}

/// The servers the load generator can drive.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Peer {
    Whipcast,
    /// Janus 1.1: a streaming mountpoint fed plain RTP, viewers over its HTTP API.
    Janus,
}

impl Peer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Peer::Whipcast => "whipcast",
            Peer::Janus => "janus",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let url = match args.peer {
        Peer::Whipcast => args.base.clone().unwrap_or_default(),
        Peer::Janus => args.janus_url.clone(),
    };
    let base = match Base::parse(&url).and_then(|b| match args.local_ip {
        Some(ip) => b.with_local(ip),
        None => Ok(b),
    }) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("whipcast-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("whipcast-loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let sessions = match args.peer {
            Peer::Whipcast => Sessions::default(),
            Peer::Janus => Sessions::janus(),
        };
        let budget = budget(&args);
        // A task of its own, so that a panic, the time limit or Ctrl-C still get the cleanup.
        let task = tokio::spawn({
            let (args, base, sessions) = (args.clone(), base.clone(), sessions.clone());
            async move { run::run(&args, &base, &sessions).await }
        });
        let abort = task.abort_handle();
        let outcome = tokio::select! {
            r = tokio::time::timeout(budget, task) => match r {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(format!("the run failed: {e}")),
                Err(_) => Err(format!("gave up after {budget:?}")),
            },
            why = interrupted() => Err(why.to_owned()),
        };
        abort.abort();
        // Whatever the run did not close itself (errors, timeout, Ctrl-C).
        let left = sessions.delete_all(&base).await;
        if left > 0 {
            eprintln!("deleted {left} session(s) left open");
        }
        match outcome {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("whipcast-loadgen: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM (e.g. from `timeout`).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "interrupted";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

/// Time limits: setup, joining (20 s + 50 ms per viewer), the window, the storm, cleanup.
pub(crate) fn join_limit(n: usize) -> Duration {
    Duration::from_secs(20) + Duration::from_millis(50) * n as u32
}

fn budget(a: &Args) -> Duration {
    Duration::from_secs(60 + a.warmup + a.seconds + 6 * a.probes as u64)
        + join_limit(a.viewers)
        + if a.join_storm > 0 {
            join_limit(a.join_storm)
        } else {
            Duration::ZERO
        }
}
