//! One run, phase by phase: create a broadcast (or a Janus mountpoint), publish, join the viewers, warm up, measure
//! the window (optionally replacing viewers), probe single joins, run the join storm, close
//! every session, and put the numbers into one JSON line.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::crowd::{self, Crowd, JoinReport};
use crate::http::{self, Base};
use crate::peer::{self, Sessions, wait_until};
use crate::publisher::Publisher;
use crate::stats::{self, Sample, percentile};
use crate::viewer::Target;
use crate::window::{self, Window};
use crate::{Args, Peer, janus, join_limit, rtp};

pub async fn run(a: &Args, base: &Base, sessions: &Sessions) -> Result<String, String> {
    let epoch = Instant::now();
    let ticks = stats::clock_ticks();
    let pid = a.server_pid;

    let (mut publisher, target, mountpoint) = broadcast(a, base, sessions, epoch).await?;
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

    let view_base = match &a.view_base {
        Some(url) => Base::parse(url)?,
        None => base.clone(),
    };
    let mut crowd = Crowd::new(&view_base, target, epoch, sessions, a.receiver_gro);
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
    if a.warmup < 3 {
        eprintln!(
            "warning: --warmup {} is shorter than a GOP and its fan-out: viewers still waiting \
             for their first live keyframe show as loss",
            a.warmup
        );
    }
    tokio::time::sleep(Duration::from_secs(a.warmup)).await;

    // The measured window, opened and closed with nothing on its way (window.rs).
    let now_us = || peer::micros_since(epoch, Instant::now());
    let sent = || publisher.rtp_sent.load(Relaxed);
    let held = window::hold(&publisher.hold).await;
    let (s0, t0) = (sample(), crowd.totals());
    let window = Window::open(now_us(), sent(), crowd.counters());
    crowd.take_latencies();
    drop(held);
    let length = Duration::from_secs(a.seconds);
    let mut next_log = Instant::now() + Duration::from_secs(5);
    let mut next_churn = Instant::now() + Duration::from_secs(a.churn_every.max(1));
    let mut churned = JoinReport::default();
    while s0.at.elapsed() < length {
        tokio::time::sleep(Duration::from_millis(100).min(length.saturating_sub(s0.at.elapsed())))
            .await;
        if a.churn_every > 0 && a.churn > 0 && Instant::now() >= next_churn {
            let r = crowd.churn(a.churn, join_limit(a.churn)).await;
            eprintln!(
                "churn: {} of {} joined, {} playing, first packet p95 {:.0} ms",
                r.joined,
                r.requested,
                r.playing,
                r.first_packet(0.95)
            );
            churned.absorb(r);
            next_churn += Duration::from_secs(a.churn_every);
        }
        if Instant::now() >= next_log {
            next_log += Duration::from_secs(5);
            let (s, t) = (sample(), crowd.totals().since(&t0));
            let w = window.report(now_us(), sent());
            let secs = s.at.duration_since(s0.at).as_secs_f64();
            eprintln!(
                "t={secs:>4.0}s {:>8.0} pkt/s loss {:.5} server {:.1}% cpu {:.1} MB, fds {}, loadgen {:.1}% cpu, {} replaced, {} ended",
                t.received as f64 / secs,
                w.loss,
                s.cpu_percent_since(&s0).0,
                s.server_rss_mb.unwrap_or(f64::NAN),
                pid.and_then(stats::open_fds)
                    .map_or("?".into(), |n| n.to_string()),
                s.cpu_percent_since(&s0).1,
                churned.joined,
                crowd.ended(),
            );
        }
    }
    // The server's CPU over the time the publisher sent; the packets over the time they took.
    let s1 = sample();
    let held = window::hold(&publisher.hold).await;
    let (t1, end_us) = (crowd.totals(), now_us());
    let w = window.report(end_us, sent());
    let playing_at_end = window::playing_at(end_us, crowd.counters().map(|c| &**c));
    let mut latencies = crowd.take_latencies();
    drop(held);
    let (server_cpu, own_cpu) = s1.cpu_percent_since(&s0);
    let secs = s1.at.duration_since(s0.at).as_secs_f64();
    let t = t1.since(&t0);
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

    // Join storm: N2 at once (some of them full viewers) while the others keep watching.
    let storm = if a.join_storm > 0 {
        // Opened and read with nothing on its way, as the measured window (window.rs).
        let held = window::hold(&publisher.hold).await;
        let start = sample();
        let watching = Window::open(now_us(), sent(), crowd.counters());
        drop(held);
        eprintln!("join storm: {} viewers", a.join_storm);
        let full = a.full_viewers.min(a.join_storm);
        let r = crowd
            .join(a.join_storm, full, join_limit(a.join_storm))
            .await;
        let held = window::hold(&publisher.hold).await;
        let seen = watching.report(now_us(), sent());
        drop(held);
        let after = sample();
        let (cpu, own_cpu) = after.cpu_percent_since(&start);
        let drops = after
            .server_socket_drops
            .zip(start.server_socket_drops)
            .map(|(y, x)| y.saturating_sub(x));
        eprintln!(
            "storm: {} of {} joined, {} connected, {} playing, {:.0} joins/s, existing viewers' loss {:.5}, server {cpu:.0}% cpu, loadgen {own_cpu:.0}% cpu",
            r.joined, r.requested, r.connected, r.playing, r.joins_per_s, seen.loss
        );
        Some(Storm {
            joins: r,
            loss: seen.loss,
            excess: seen.excess,
            server_cpu: cpu,
            own_cpu,
            server_socket_drops: drops,
        })
    } else {
        None
    };

    crowd.stop_all();
    if let Some((handle, id)) = &mountpoint {
        // Stop feeding it first: its closed ports would answer with ICMP errors.
        publisher.stop();
        if let Err(e) = janus::destroy_mountpoint(base, handle, *id).await {
            eprintln!("destroying the mountpoint: {e}");
        }
    }
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
    // Only viewers that played the whole window count: a server that sheds viewers must not
    // look cheaper per viewer for it.
    let viewers_per_core = w.played_whole as f64 / (server_cpu / 100.0);
    if own_cpu > 80.0 * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64) {
        eprintln!("warning: the load generator used {own_cpu:.0}% CPU; it may be the limit");
    }
    let core_busy: Vec<_> = s1
        .core_busy_since(&s0)
        .into_iter()
        .map(|b| round(b, 1))
        .collect();
    let st = storm.as_ref();
    let mut line = serde_json::json!({
        "viewers_requested": a.viewers,
        "viewers_joined": joined.joined,
        "viewers_failed": a.viewers - joined.joined,
        "viewers_playing_at_end": playing_at_end,
        "viewers_played_whole_window": w.played_whole,
        "seconds": a.seconds,
        "receiver_gro": a.receiver_gro,
        "server_cpu_percent": round(server_cpu, 1),
        "loadgen_cpu_percent": round(own_cpu, 1),
        "delivered_pps": round(t.received as f64 / secs, 0),
        "loss_ratio": round(w.loss, 6),
        "ttff_first_packet_p50_ms": round(joined.first_packet(0.5), 1),
        "ttff_first_packet_p95_ms": round(joined.first_packet(0.95), 1),
        "ttff_first_frame_p50_ms": round(joined.first_frame(0.5), 1),
        "ttff_first_frame_p95_ms": round(joined.first_frame(0.95), 1),
        "probe_ttff_first_frame_p50_ms": round(percentile(&mut probe_ttff, 0.5), 1),
        "probe_ttff_first_frame_p95_ms": round(percentile(&mut probe_ttff, 0.95), 1),
        "latency_p99_ms": round(percentile(&mut latencies, 0.99), 1),
        "rss_mb_per_viewer": round(rss_per_viewer, 3),
        "viewers_per_core": round(viewers_per_core, 0),
    });
    // The rest (one json! would exceed the macro recursion limit).
    let storm_line = serde_json::json!({
        "join_storm_requested": st.map(|s| s.joins.requested),
        "join_storm_joined": st.map(|s| s.joins.joined),
        "join_storm_connected": st.map(|s| s.joins.connected),
        "join_storm_playing": st.map(|s| s.joins.playing),
        "joins_per_s": st.map(|s| round(s.joins.joins_per_s, 1)),
        "join_storm_loss_ratio": st.map(|s| round(s.loss, 6)),
        "join_storm_excess_packets": st.map(|s| s.excess),
        "join_storm_ttff_first_packet_p50_ms": st.map(|s| round(s.joins.first_packet(0.5), 1)),
        "join_storm_ttff_first_packet_p95_ms": st.map(|s| round(s.joins.first_packet(0.95), 1)),
        "join_storm_ttff_first_frame_p50_ms": st.map(|s| round(s.joins.first_frame(0.5), 1)),
        "join_storm_ttff_first_frame_p95_ms": st.map(|s| round(s.joins.first_frame(0.95), 1)),
        "join_storm_server_cpu_percent": st.map(|s| round(s.server_cpu, 1)),
        "join_storm_loadgen_cpu_percent": st.map(|s| round(s.own_cpu, 1)),
        "join_storm_server_socket_drops": st.map(|s| s.server_socket_drops),
    });
    let churn = (a.churn_every > 0).then_some(&churned);
    let churn_line = serde_json::json!({
        "churn_requested": churn.map(|c| c.requested),
        "churn_joined": churn.map(|c| c.joined),
        "churn_playing": churn.map(|c| c.playing),
        "churn_ttff_first_packet_p50_ms": churn.map(|c| round(c.first_packet(0.5), 1)),
        "churn_ttff_first_packet_p95_ms": churn.map(|c| round(c.first_packet(0.95), 1)),
        "churn_connect_p95_ms": churn.map(|c| round(c.connect(0.95), 1)),
    });
    let more = serde_json::json!({
        "server": a.peer.name(),
        "latency_p50_ms": round(percentile(&mut latencies, 0.5), 1),
        "answer_p50_ms": round(joined.answer(0.5), 1),
        "connect_p50_ms": round(joined.connect(0.5), 1),
        "connect_p95_ms": round(joined.connect(0.95), 1),
        "server_cpu_us_per_pkt": round(server_cpu / 100.0 * 1e6 / (t.received as f64 / secs), 2),
        "viewers_connected": joined.connected,
        "viewers_playing": joined.playing,
        "viewers_ended": ended,
        "window_viewers": w.viewers,
        "window_packets_sent": w.sent,
        "window_excess_packets": w.excess,
        "join_failures": crowd.failures,
        "duplicates": t.duplicates,
        "rtx_packets": t.rtx,
        "frames_ok": t.frames_ok,
        "frames_bad": t.frames_bad,
        "frames_missing": t.frames_missing,
        "publisher_frames": publisher.frames.load(Relaxed),
        "publisher_late_frames": publisher.late_frames.load(Relaxed),
        "publisher_rtp_send_drops": publisher.rtp_send_drops.load(Relaxed),
        "host_core_busy_percent": core_busy,
        "udp_rcvbuf_errors": drops(|s| s.udp_rcvbuf_errors),
        "udp_sndbuf_errors": drops(|s| s.udp_sndbuf_errors),
        "server_socket_drops": drops(|s| s.server_socket_drops),
        "loadgen_socket_drops": drops(|s| s.other_socket_drops),
        "server_rss_mb_start": idle.server_rss_mb.map(|x| round(x, 1)),
        "server_rss_mb_loaded": s1.server_rss_mb.map(|x| round(x, 1)),
        "server_rss_mb_end": rss_end.map(|x| round(x, 1)),
        "server_fds_start": fds_idle,
        "server_fds_loaded": fds_loaded,
        "server_fds_end": pid.and_then(stats::open_fds),
    });
    if let Some(line) = line.as_object_mut() {
        for part in [storm_line, churn_line, more] {
            if let serde_json::Value::Object(part) = part {
                line.extend(part);
            }
        }
    }
    Ok(line.to_string())
}

/// The broadcast and its publisher: a whipcast broadcast fed over WHIP, or a Janus
/// streaming mountpoint fed plain RTP (then also its managing handle and id, to destroy it).
async fn broadcast(
    a: &Args,
    base: &Base,
    sessions: &Sessions,
    epoch: Instant,
) -> Result<(Publisher, Target, Option<(String, u64)>), String> {
    if a.peer == Peer::Janus {
        janus::keep_alive(base, sessions);
        let (mp, handle) = janus::create_mountpoint(base, sessions).await?;
        let publisher = rtp::start(mp.video, mp.audio, epoch)?;
        return Ok((publisher, Target::Janus(mp.id), Some((handle, mp.id))));
    }
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
    let publisher = Publisher::start(base, id, epoch, sessions).await?;
    Ok((publisher, Target::Whep(view.to_owned()), None))
}

struct Storm {
    joins: crowd::JoinReport,
    /// Loss the viewers already watching saw meanwhile, and packets counted beyond those sent.
    loss: f64,
    excess: u64,
    server_cpu: f64,
    own_cpu: f64,
    server_socket_drops: Option<u64>,
}

/// Rounds to `digits` decimals; NaN and infinities become JSON null.
fn round(x: f64, digits: i32) -> Option<f64> {
    let m = 10f64.powi(digits);
    x.is_finite().then(|| (x * m).round() / m)
}
