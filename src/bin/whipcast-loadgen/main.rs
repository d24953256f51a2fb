//! `whipcast-loadgen`: load against an already running whipcast, over loopback only.
//!
//! One synthetic WHIP publisher (30 fps, ~2.5 Mb/s H.264 with an IDR every 2 s, Opus) and N
//! WHEP viewers, each on its own UDP socket. Most viewers are "sink" viewers: after ICE and
//! DTLS they count RTP from the clear header (SSRC, sequence) without decrypting, so the
//! generator costs far less than the server; `--full-viewers` of them decode everything and
//! check the marker each frame carries (frame number, send time) for latency and integrity.
//! Prints one JSON line at the end; progress goes to stderr.
//!
//! ```text
//! whipcast --http-listen 127.0.0.1:8080 --udp-listen 127.0.0.1:8189 --max-viewers 2000 &
//! whipcast-loadgen --base http://127.0.0.1:8080 --viewers 200 --seconds 20 --server-pid $!
//! ```
//!
//! `--churn-every S --churn K` replaces K viewers every S seconds (the soak test), printing
//! the server's RSS and open file descriptors as it goes.

#![forbid(unsafe_code)]
#![allow(clippy::disallowed_methods)] // a load generator is a driver: it reads the clock

mod client;
mod http;
mod stats;

use std::time::{Duration, Instant};

use clap::Parser;
use client::Peer;
use stats::{Tally, cpu_seconds, open_fds, percentile, rss_mb};

#[derive(Parser)]
#[command(
    name = "whipcast-loadgen",
    about = "Loopback load for a running whipcast"
)]
struct Args {
    /// The server's base URL; loopback only (127.0.0.1, localhost, [::1]).
    #[arg(long)]
    base: String,
    #[arg(long, default_value_t = 50)]
    viewers: usize,
    /// Length of the measured window.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The server's PID, for its CPU and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Viewers that decode everything (latency, integrity); the rest are sinks.
    #[arg(long, default_value_t = 4)]
    full_viewers: usize,
    /// After the window, this many viewers join at once; reports joins per second.
    #[arg(long, default_value_t = 0)]
    join_storm: usize,
    /// Soak: replace `--churn` viewers every this many seconds during the window.
    #[arg(long, default_value_t = 0)]
    churn_every: u64,
    #[arg(long, default_value_t = 0)]
    churn: usize,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let host = args
        .base
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or("");
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        eprintln!("whipcast-loadgen: --base must be a loopback address, not {host}");
        return std::process::ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("whipcast-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<String, String> {
    let epoch = Instant::now();
    let base = args.base.trim_end_matches('/').to_owned();
    let created = http::request(&base, "POST", "/api/broadcasts", &[], "").await?;
    let v: serde_json::Value = serde_json::from_str(&created.body)
        .map_err(|e| format!("create: {e}: {}", created.body))?;
    let (id, view) = (
        v["broadcast_id"]
            .as_str()
            .ok_or("no broadcast_id")?
            .to_owned(),
        v["view_id"].as_str().ok_or("no view_id")?.to_owned(),
    );
    let pid = args.server_pid;
    let rss_idle = pid.and_then(rss_mb);
    let fds_start = pid.and_then(open_fds);

    let publisher = Peer::publish(&base, &id, epoch).await?;
    wait(
        || publisher.report.lock().unwrap().connected,
        Duration::from_secs(10),
    )
    .await
    .ok_or("the publisher never connected")?;
    eprintln!("publisher connected; {} viewers joining", args.viewers);

    let mut viewers = join(&base, &view, args.viewers, args.full_viewers, epoch).await?;
    let all_playing = || {
        viewers
            .iter()
            .all(|v| v.report.lock().unwrap().first_video.is_some())
    };
    wait(all_playing, Duration::from_secs(60))
        .await
        .ok_or("not every viewer got video")?;
    let mut ttff: Vec<f64> = viewers
        .iter()
        .filter_map(|v| ttff_ms(&v.report.lock().unwrap()))
        .collect();
    eprintln!("all viewers playing; warming up");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The measured window.
    let (t0, cpu0, tally0) = (
        Instant::now(),
        pid.and_then(cpu_seconds),
        snapshot(&viewers),
    );
    let mut next_churn = Instant::now() + Duration::from_secs(args.churn_every.max(1));
    let mut replaced = 0;
    while t0.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if args.churn_every > 0 && Instant::now() >= next_churn {
            for old in viewers
                .drain(..args.churn.min(viewers.len()))
                .collect::<Vec<_>>()
            {
                old.leave(&base).await;
            }
            viewers.extend(join(&base, &view, args.churn, 0, epoch).await?);
            replaced += args.churn;
            next_churn += Duration::from_secs(args.churn_every);
            eprintln!(
                "t={:>5.0}s replaced {replaced} viewers; server rss {:.1} MB, fds {}",
                t0.elapsed().as_secs_f64(),
                pid.and_then(rss_mb).unwrap_or(f64::NAN),
                pid.and_then(open_fds).unwrap_or(0)
            );
        }
    }
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(cpu_seconds);
    let rss_loaded = pid.and_then(rss_mb);
    let tally1 = snapshot(&viewers);
    let delivered = tally1.packets().saturating_sub(tally0.packets()) as f64 / window;
    let expected = tally1.expected().saturating_sub(tally0.expected()) as f64;
    let got = tally1.packets().saturating_sub(tally0.packets()) as f64;
    let loss = if expected > 0.0 && args.churn_every == 0 {
        (1.0 - got / expected).max(0.0)
    } else {
        f64::NAN
    };
    let mut latencies: Vec<f64> = viewers
        .iter()
        .flat_map(|v| v.report.lock().unwrap().latencies_ms.clone())
        .collect();
    let bad: u64 = viewers
        .iter()
        .map(|v| v.report.lock().unwrap().bad_frames)
        .sum();

    // Join storm: many viewers at once while the others keep watching.
    let (mut joins_per_s, mut storm_loss) = (f64::NAN, f64::NAN);
    if args.join_storm > 0 {
        let before = snapshot(&viewers);
        let t = Instant::now();
        let storm = join(&base, &view, args.join_storm, 0, epoch).await?;
        let ok = wait(
            || {
                storm
                    .iter()
                    .all(|v| v.report.lock().unwrap().first_video.is_some())
            },
            Duration::from_secs(60),
        )
        .await;
        let elapsed = t.elapsed().as_secs_f64();
        joins_per_s = if ok.is_some() {
            args.join_storm as f64 / elapsed
        } else {
            f64::NAN
        };
        ttff.extend(
            storm
                .iter()
                .filter_map(|v| ttff_ms(&v.report.lock().unwrap())),
        );
        let after = snapshot(&viewers);
        let (g, e) = (
            (after.packets() - before.packets()) as f64,
            (after.expected() - before.expected()) as f64,
        );
        storm_loss = if e > 0.0 {
            (1.0 - g / e).max(0.0)
        } else {
            f64::NAN
        };
        viewers.extend(storm);
    }
    let fds_end_loaded = pid.and_then(open_fds);
    for v in viewers {
        v.leave(&base).await;
    }
    publisher.leave(&base).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_percent = match (cpu0, cpu1) {
        (Some(a), Some(b)) => (b - a) / window * 100.0,
        _ => f64::NAN,
    };
    let per_viewer = match (rss_idle, rss_loaded) {
        (Some(a), Some(b)) => (b - a) / args.viewers as f64,
        _ => f64::NAN,
    };
    let line = serde_json::json!({
        "viewers": args.viewers,
        "seconds": args.seconds,
        "server_cpu_percent": round(cpu_percent),
        "delivered_pps": round(delivered),
        "loss_ratio": loss,
        "ttff_p50_ms": round(percentile(&mut ttff, 0.5)),
        "ttff_p95_ms": round(percentile(&mut ttff, 0.95)),
        "latency_p99_ms": round(percentile(&mut latencies, 0.99)),
        "rss_mb_per_viewer": per_viewer,
        "joins_per_s": round(joins_per_s),
        "join_storm_loss_ratio": storm_loss,
        "bad_frames": bad,
        "replaced_viewers": replaced,
        "server_rss_mb_start": rss_idle,
        "server_rss_mb_end": pid.and_then(rss_mb),
        "server_fds_start": fds_start,
        "server_fds_loaded": fds_end_loaded,
        "server_fds_end": pid.and_then(open_fds),
    });
    Ok(line.to_string())
}

/// Joins `n` viewers, 32 requests at a time; the first `full` decode everything.
async fn join(
    base: &str,
    view: &str,
    n: usize,
    full: usize,
    epoch: Instant,
) -> Result<Vec<Peer>, String> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..n.min(i + 32))
            .map(|k| {
                let (base, view) = (base.to_owned(), view.to_owned());
                async move { Peer::view(&base, &view, k < full, epoch).await }
            })
            .collect();
        for r in futures_join(batch).await {
            out.push(r?);
        }
        i += 32;
    }
    Ok(out)
}

/// Awaits every future concurrently (no extra dependency for a join-all).
async fn futures_join<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("join task"));
    }
    out
}

fn snapshot(viewers: &[Peer]) -> Tally {
    let mut t = Tally::default();
    for (i, v) in viewers.iter().enumerate() {
        for (ssrc, c) in &v.report.lock().unwrap().tally.by_ssrc {
            // SSRCs are per viewer; key by (viewer, ssrc) so they never merge.
            t.by_ssrc
                .insert(ssrc ^ ((i as u32) << 20).rotate_left(7), c.clone());
        }
    }
    t
}

fn ttff_ms(r: &client::Report) -> Option<f64> {
    Some(r.first_video?.duration_since(r.joined_at?).as_secs_f64() * 1000.0)
}

async fn wait(mut f: impl FnMut() -> bool, limit: Duration) -> Option<()> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
