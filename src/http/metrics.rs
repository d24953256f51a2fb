//! `GET /metrics`: the engine's counters, the recorder's and each worker's, in the
//! Prometheus text format.

use hyper::{Response, StatusCode, header};

use super::{ApiError, AppState, HttpResponse, call};
use crate::engine::{Command, Outcome};

/// `GET /metrics` in the Prometheus text format.
pub(super) async fn metrics(state: &AppState) -> Result<HttpResponse, ApiError> {
    let stats = match call(state, Command::Stats).await? {
        Outcome::Stats(s) => s,
        _ => unreachable!("Stats is answered with Stats"),
    };
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!("# HELP whipcast_{name} {help}\n# TYPE whipcast_{name} {kind}\nwhipcast_{name} {value}\n"));
    };
    metric(
        "broadcasts_live",
        "gauge",
        "Broadcasts with a publisher.",
        stats.live_broadcasts as u64,
    );
    metric(
        "broadcast_slots",
        "gauge",
        "Configured live-broadcast slots.",
        state.config.max_live_broadcasts as u64,
    );
    metric(
        "publishers",
        "gauge",
        "Publisher sessions.",
        stats.publishers as u64,
    );
    metric("viewers", "gauge", "Viewer sessions.", stats.viewers as u64);
    metric(
        "viewers_sealed",
        "gauge",
        "Viewer sessions whose media whipcast encrypts itself (AES-GCM); the others go through str0m.",
        stats.viewers_sealed as u64,
    );
    metric(
        "packets_in_total",
        "counter",
        "RTP packets received from publishers.",
        stats.packets_in,
    );
    metric(
        "bytes_in_total",
        "counter",
        "RTP payload bytes received from publishers.",
        stats.bytes_in,
    );
    metric(
        "packets_out_total",
        "counter",
        "Datagrams sent.",
        stats.packets_out,
    );
    metric("bytes_out_total", "counter", "Bytes sent.", stats.bytes_out);
    metric(
        "nacks_sent_total",
        "counter",
        "NACKs sent to publishers.",
        stats.nacks_sent,
    );
    metric(
        "nacks_received_total",
        "counter",
        "NACKs received from viewers.",
        stats.nacks_received,
    );
    metric(
        "viewer_rembs_total",
        "counter",
        "Viewers' estimates of their links (REMB) received.",
        stats.rembs_received,
    );
    metric(
        "viewer_transport_feedback_total",
        "counter",
        "Viewers' transport-wide feedback read into the server's estimates of their links.",
        stats.transport_feedbacks,
    );
    metric(
        "viewer_probe_packets_total",
        "counter",
        "RTX copies sent to probe viewers' links for a larger simulcast layer.",
        stats.probe_packets,
    );
    metric(
        "retransmissions_total",
        "counter",
        "Packets resent to viewers that reported them lost.",
        stats.retransmissions,
    );
    metric(
        "late_packets_dropped_total",
        "counter",
        "Packets from before a viewer's sync point, dropped so no number is sealed twice.",
        stats.late_packets_dropped,
    );
    metric(
        "plis_sent_total",
        "counter",
        "Keyframe requests sent to publishers.",
        stats.plis_sent,
    );
    metric(
        "plis_received_total",
        "counter",
        "Keyframe requests received from viewers.",
        stats.plis_received,
    );
    metric(
        "evictions_total",
        "counter",
        "Viewers evicted to make room for a newer one.",
        stats.evictions,
    );
    metric(
        "datagrams_dropped_total",
        "counter",
        "Datagrams dropped (unknown source or rejected).",
        stats.datagrams_dropped,
    );
    metric(
        "layer_switches_total",
        "counter",
        "Viewers moved from one simulcast layer to another.",
        stats.layer_switches,
    );
    metric(
        "viewers_slow",
        "gauge",
        "Viewers whose estimate stayed below what they are sent (10 s) with no smaller layer left.",
        stats.viewers_slow as u64,
    );
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    metric(
        "connectivity_tests_total",
        "counter",
        "Connectivity tests started.",
        load(&state.limits.probes_started),
    );
    metric(
        "connectivity_tests_refused_total",
        "counter",
        "Connectivity tests refused by the per-address or total bound.",
        load(&state.limits.probes_refused),
    );
    metric(
        "connectivity_tests_running",
        "gauge",
        "Connectivity tests waiting to connect.",
        stats.peers.saturating_sub(stats.publishers + stats.viewers) as u64,
    );
    if let Some(tap) = &state.recorder {
        metric(
            "record_queue_drops_total",
            "counter",
            "Packets left out of recordings because the recorder's queue was full.",
            tap.drops(),
        );
        metric(
            "recordings_active",
            "gauge",
            "Recordings with a file open.",
            tap.active(),
        );
    }
    let workers = state
        .engine
        .worker_loads()
        .await
        .map_err(|_| ApiError::ShuttingDown)?;
    worker_metrics(&mut out, &workers);
    layer_metrics(&mut out, &stats);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(super::full(out))
        .expect("valid headers"))
}

/// Viewers of simulcast broadcasts by the layer they are sent, and what the publishers send on
/// each layer (bitrate, picture height), labelled by the layer's rank (0 is the full size):
/// how many viewers the smaller layers serve, and what they cost. Never labelled by
/// broadcast: its IDs are secrets.
fn layer_metrics(out: &mut String, stats: &crate::engine::Stats) {
    out.push_str("# HELP whipcast_simulcast_viewers Viewers of simulcast broadcasts per layer sent, by rank (0: full size).\n# TYPE whipcast_simulcast_viewers gauge\n");
    for (rank, n) in stats.simulcast_viewers.iter().enumerate() {
        out.push_str(&format!(
            "whipcast_simulcast_viewers{{layer=\"{rank}\"}} {n}\n"
        ));
    }
    out.push_str("# HELP whipcast_simulcast_ingest_bits_per_second What publishers of simulcast broadcasts send per layer, added up, by rank (0: full size).\n# TYPE whipcast_simulcast_ingest_bits_per_second gauge\n");
    for (rank, l) in stats.simulcast_ingest.iter().enumerate() {
        out.push_str(&format!(
            "whipcast_simulcast_ingest_bits_per_second{{layer=\"{rank}\"}} {}\n",
            l.bits_per_second
        ));
    }
    out.push_str("# HELP whipcast_simulcast_layer_height_pixels The largest picture height publishers of simulcast broadcasts send per layer, by rank (0 if unknown).\n# TYPE whipcast_simulcast_layer_height_pixels gauge\n");
    for (rank, l) in stats.simulcast_ingest.iter().enumerate() {
        out.push_str(&format!(
            "whipcast_simulcast_layer_height_pixels{{layer=\"{rank}\"}} {}\n",
            l.height
        ));
    }
}

/// Each media worker's share (`--workers`), labelled by its index: whether the load is
/// spread, and whether a worker falls behind (its queue drops).
fn worker_metrics(out: &mut String, workers: &[crate::handle::WorkerLoad]) {
    type Value = fn(&crate::handle::WorkerLoad) -> u64;
    let series: [(&str, &str, &str, Value); 5] = [
        (
            "worker_publishers",
            "gauge",
            "Publisher sessions per media worker.",
            |w| w.stats.publishers as u64,
        ),
        (
            "worker_viewers",
            "gauge",
            "Viewer sessions per media worker.",
            |w| w.stats.viewers as u64,
        ),
        (
            "worker_packets_out_total",
            "counter",
            "Datagrams sent per media worker.",
            |w| w.stats.packets_out,
        ),
        (
            "worker_queue_drops_total",
            "counter",
            "Datagrams lost because a media worker's receive queue was full.",
            |w| w.queue_drops,
        ),
        (
            "worker_relay_drops_total",
            "counter",
            "Packets of a broadcast relayed from another worker that this one was too far behind to take.",
            |w| w.relay_drops,
        ),
    ];
    for (name, kind, help, value) in series {
        out.push_str(&format!(
            "# HELP whipcast_{name} {help}\n# TYPE whipcast_{name} {kind}\n"
        ));
        for (i, w) in workers.iter().enumerate() {
            out.push_str(&format!("whipcast_{name}{{worker=\"{i}\"}} {}\n", value(w)));
        }
    }
}
