//! One run, phase by phase: create a broadcast, publish, join the viewers, warm up, measure
//! the window (optionally replacing viewers), probe single joins, run the join storm, close
//! every session, and put the numbers into one JSON line.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::crowd::{self, Crowd};
use crate::http::{self, Base};
use crate::peer::{Sessions, wait_until};
use crate::publisher::Publisher;
use crate::stats::{self, Sample, percentile};
use crate::{Args, join_limit};

pub async fn run(a: &Args, base: &Base, sessions: &Sessions) -> Result<String, String> {
    let epoch = Instant::now();
    let ticks = stats::clock_ticks();
    let pid = a.server_pid;

    let created = http::post_created(
        base,
        &base.path("/api/broadcasts"),
        "application/json",
        "{}",
    )
    .await?
    .0;
    let v: serde_json::Value = serde_json::from_str(&created.body)
        .map_err(|e| format!("create: {e}: {}", created.body))?;
    let id = v["broadcast_id"].as_str().ok_or("no broadcast_id")?;
    let view = v["view_id"].as_str().ok_or("no view_id")?;

    let mut publisher = Publisher::start(base, id, epoch, sessions).await?;
    if !wait_until(
        || publisher.connected.load(Relaxed),
        Duration::from_secs(10),
    )
    .await
    {
        return Err("the publisher did not connect within 10 s".into());
    }
    let sample = || Sample::take(pid, publisher.server_port, ticks);
    // Let the server see a keyframe (the first frame is one) before anyone joins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = sample();
    let fds_idle = pid.and_then(stats::open_fds);
    eprintln!("publisher live; {} viewers joining", a.viewers);

    let mut crowd = Crowd::new(base, view, epoch, sessions, a.receiver_gro);
    let joined = crowd
        .join(a.viewers, a.full_viewers, join_limit(a.viewers))
        .await;
    eprintln!(
        "{} joined, {} connected, {} playing ({} failed) in {:.1} s; warming up",
        joined.joined,
        joined.connected,
        joined.playing,
        crowd.failures,
        epoch.elapsed().as_secs_f64()
    );
    if joined.playing == 0 {
        return Err("no viewer got video".into());
    }
    tokio::time::sleep(Duration::from_secs(a.warmup)).await;

    // The measured window.
    let (s0, t0) = (sample(), crowd.totals());
    crowd.take_latencies();
    let window = Duration::from_secs(a.seconds);
    let mut next_log = Instant::now() + Duration::from_secs(5);
    let mut next_churn = Instant::now() + Duration::from_secs(a.churn_every.max(1));
    let mut replaced = 0;
    while s0.at.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100).min(window.saturating_sub(s0.at.elapsed())))
            .await;
        if a.churn_every > 0 && a.churn > 0 && Instant::now() >= next_churn {
            replaced += crowd.churn(a.churn, join_limit(a.churn)).await.joined;
            next_churn += Duration::from_secs(a.churn_every);
        }
        if Instant::now() >= next_log {
            next_log += Duration::from_secs(5);
            let (s, t) = (sample(), crowd.totals().since(&t0));
            let secs = s.at.duration_since(s0.at).as_secs_f64();
            eprintln!(
                "t={secs:>4.0}s {:>8.0} pkt/s loss {:.5} server {:.1}% cpu {:.1} MB, fds {}, loadgen {:.1}% cpu, {} replaced, {} ended",
                t.received as f64 / secs,
                t.loss(),
                s.cpu_percent_since(&s0).0,
                s.server_rss_mb.unwrap_or(f64::NAN),
                pid.and_then(stats::open_fds).unwrap_or(0),
                s.cpu_percent_since(&s0).1,
                replaced,
                crowd.ended(),
            );
        }
    }
    let (s1, t1) = (sample(), crowd.totals());
    let mut latencies = crowd.take_latencies();
    let (server_cpu, own_cpu) = s1.cpu_percent_since(&s0);
    let secs = s1.at.duration_since(s0.at).as_secs_f64();
    let w = t1.since(&t0);
    let fds_loaded = pid.and_then(stats::open_fds);
    let ended = crowd.ended();
    if ended > 0 {
        eprintln!(
            "warning: the server closed {ended} viewer session(s); is its --max-viewers below {}?",
            a.viewers + a.join_storm
        );
    }

    // Probes: single joins on the loaded server, one after another.
    let mut probe_ttff = Vec::with_capacity(a.probes);
    for _ in 0..a.probes {
        probe_ttff.extend(crowd.probe().await);
    }

    // Join storm: N2 at once while the others keep watching.
    let storm = if a.join_storm > 0 {
        let existing = crowd.viewers.len();
        let before = crowd.totals_of_first(existing);
        let start = sample();
        eprintln!("join storm: {} viewers", a.join_storm);
        let r = crowd.join(a.join_storm, 0, join_limit(a.join_storm)).await;
        let loss = crowd.totals_of_first(existing).since(&before).loss();
        let after = sample();
        let cpu = after.cpu_percent_since(&start).0;
        let drops = after
            .server_socket_drops
            .zip(start.server_socket_drops)
            .map(|(y, x)| y.saturating_sub(x));
        eprintln!(
            "storm: {} joined, {} connected, {} playing, {:.0} joins/s, existing viewers' loss {:.5}, server {cpu:.0}% cpu",
            r.joined, r.connected, r.playing, r.joins_per_s, loss
        );
        Some(Storm {
            joins: r,
            loss,
            server_cpu: cpu,
            server_socket_drops: drops,
        })
    } else {
        None
    };

    crowd.stop_all();
    sessions.delete_all(base).await;
    publisher.stop();
    let rss_end = pid.and_then(stats::rss_mb);

    let rss_per_viewer = match (idle.server_rss_mb, s1.server_rss_mb) {
        (Some(a0), Some(a1)) if joined.joined > 0 => (a1 - a0) / joined.joined as f64,
        _ => f64::NAN,
    };
    let drops = |f: fn(&Sample) -> Option<u64>| match (f(&s0), f(&s1)) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x)),
        _ => None,
    };
    let loss = if a.churn_every > 0 {
        f64::NAN
    } else {
        w.loss()
    };
    let viewers_per_core = a.viewers as f64 / (server_cpu / 100.0);
    if own_cpu > 80.0 * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64) {
        eprintln!("warning: the load generator used {own_cpu:.0}% CPU; it may be the limit");
    }
    let core_busy: Vec<_> = s1
        .core_busy_since(&s0)
        .into_iter()
        .map(|b| round(b, 1))
        .collect();
    let mut line = serde_json::json!({
        "viewers": a.viewers,
        "seconds": a.seconds,
        "receiver_gro": a.receiver_gro,
        "server_cpu_percent": round(server_cpu, 1),
        "delivered_pps": round(w.received as f64 / secs, 0),
        "loss_ratio": round(loss, 6),
        "ttff_p50_ms": round(joined.ttff(0.5), 1),
        "ttff_p95_ms": round(joined.ttff(0.95), 1),
        "probe_ttff_p50_ms": round(percentile(&mut probe_ttff, 0.5), 1),
        "probe_ttff_p95_ms": round(percentile(&mut probe_ttff, 0.95), 1),
        "latency_p99_ms": round(percentile(&mut latencies, 0.99), 1),
        "rss_mb_per_viewer": round(rss_per_viewer, 3),
        "joins_per_s": storm.as_ref().map(|s| round(s.joins.joins_per_s, 1)),
        "join_storm_loss_ratio": storm.as_ref().map(|s| round(s.loss, 6)),
        "join_storm_ttff_p95_ms": storm.as_ref().map(|s| round(s.joins.ttff(0.95), 1)),
        "join_storm_connected": storm.as_ref().map(|s| s.joins.connected),
        "join_storm_server_cpu_percent": storm.as_ref().map(|s| round(s.server_cpu, 1)),
        "join_storm_server_socket_drops": storm.as_ref().map(|s| s.server_socket_drops),
    });
    // The diagnostics (one json! would exceed the macro recursion limit).
    let more = serde_json::json!({
        "latency_p50_ms": round(percentile(&mut latencies, 0.5), 1),
        "answer_p50_ms": round(joined.answer(0.5), 1),
        "connect_p50_ms": round(joined.connect(0.5), 1),
        "connect_p95_ms": round(joined.connect(0.95), 1),
        "viewers_per_core": round(viewers_per_core, 0),
        "server_cpu_us_per_pkt": round(server_cpu / 100.0 * 1e6 / (w.received as f64 / secs), 2),
        "viewers_connected": joined.connected,
        "viewers_playing": joined.playing,
        "viewers_ended": ended,
        "join_failures": crowd.failures,
        "duplicates": w.duplicates,
        "rtx_packets": w.rtx,
        "frames_ok": w.frames_ok,
        "frames_bad": w.frames_bad,
        "frames_missing": w.frames_missing,
        "publisher_frames": publisher.frames.load(Relaxed),
        "publisher_late_frames": publisher.late_frames.load(Relaxed),
        "loadgen_cpu_percent": round(own_cpu, 1),
        "host_core_busy_percent": core_busy,
        "udp_rcvbuf_errors": drops(|s| s.udp_rcvbuf_errors),
        "udp_sndbuf_errors": drops(|s| s.udp_sndbuf_errors),
        "server_socket_drops": drops(|s| s.server_socket_drops),
        "loadgen_socket_drops": drops(|s| s.other_socket_drops),
        "replaced_viewers": replaced,
        "server_rss_mb_start": idle.server_rss_mb.map(|x| round(x, 1)),
        "server_rss_mb_loaded": s1.server_rss_mb.map(|x| round(x, 1)),
        "server_rss_mb_end": rss_end.map(|x| round(x, 1)),
        "server_fds_start": fds_idle,
        "server_fds_loaded": fds_loaded,
        "server_fds_end": pid.and_then(stats::open_fds),
    });
    if let (Some(line), serde_json::Value::Object(more)) = (line.as_object_mut(), more) {
        line.extend(more);
    }
    Ok(line.to_string())
}

struct Storm {
    joins: crowd::JoinReport,
    /// Loss the viewers already watching saw meanwhile.
    loss: f64,
    server_cpu: f64,
    server_socket_drops: Option<u64>,
}

/// Rounds to `digits` decimals; NaN and infinities become JSON null.
fn round(x: f64, digits: i32) -> Option<f64> {
    let m = 10f64.powi(digits);
    x.is_finite().then(|| (x * m).round() / m)
}
