//! The JSON API: `POST /api/broadcasts` issues a broadcast.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use serde::Serialize;
use tracing::info;

use super::{ApiError, AppState, HttpResponse, call, origin, read_body};
use crate::clock::unix_now;
use crate::engine::{BroadcastInfo, BroadcastState, Command, Outcome};
use crate::secret;

#[derive(Serialize)]
struct CreatedBroadcast {
    broadcast_id: String,
    view_id: String,
    whip_url: String,
    viewer_url: String,
}

pub(super) async fn create_broadcast(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    if let Some(token) = &state.config.create_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !secret::equal(&secret::digest(given), &secret::digest(token)) {
            return Err(ApiError::CreateTokenRequired);
        }
    }
    state
        .limits
        .creations
        .admit(super::client::client_of(&req), crate::clock::now())
        .map_err(|wait| ApiError::TooManyRequests { retry_after: wait })?;
    let origin = origin(state, &req);
    let _ = read_body(state, req).await?; // empty or `{}`; nothing in it is used yet
    let (created, generation) = {
        let mut registry = state.registry.lock().expect("registry lock");
        registry.expire(
            unix_now(),
            state.config.id_ttl,
            state.config.unpublished_ttl,
        );
        if registry.len() >= state.config.max_broadcasts {
            return Err(ApiError::TooManyBroadcasts);
        }
        let created = registry.create(unix_now());
        (created, registry.generation())
    };
    if let Err(e) = super::persist(state, generation).await {
        // Nobody has seen the IDs yet: forget them rather than hand out a broadcast that
        // would not survive a restart.
        state
            .registry
            .lock()
            .expect("registry lock")
            .forget(created.key);
        return Err(e);
    }
    info!(broadcast = %secret::log_label(&created.broadcast_id), "broadcast created");
    let body = CreatedBroadcast {
        whip_url: format!("{origin}/broadcast?id={}", created.broadcast_id),
        viewer_url: format!("{origin}/stream?id={}", created.view_id),
        broadcast_id: created.broadcast_id,
        view_id: created.view_id,
    };
    Ok(json(StatusCode::CREATED, &body))
}

/// The broadcaster's live panel: `GET /api/broadcasts/<broadcast ID>`.
#[derive(Serialize)]
struct BroadcastPanel {
    state: BroadcastState,
    viewers: usize,
    max_viewers: usize,
    bitrate_kbps: u64,
    video_codec: Option<String>,
    audio_codec: Option<String>,
    resolution: Option<String>,
    h264_profile: Option<&'static str>,
    live_for_s: Option<u64>,
    ingest_loss_percent: Option<f32>,
    fps: Option<f32>,
    keyframe_interval_s: Option<f32>,
    b_frames: bool,
    /// With simulcast, each layer as it arrives, the full-size one first (empty without).
    layers: Vec<PanelLayer>,
    /// The publisher's client, from the User-Agent of its WHIP POST (e.g. "OBS-Studio/31.0.2").
    publisher_agent: Option<String>,
    view_id: String,
    viewer_url: String,
    /// OBS "Server" when the broadcast ID goes in "Bearer Token".
    whip_server: String,
    /// OBS "Server" with an empty Bearer Token.
    whip_url: String,
    slots_used: usize,
    slots_total: usize,
    /// Not live, and no slot free: OBS would get 503 now.
    server_full: bool,
    warnings: Vec<String>,
    /// With `--record`: the Record switch and what the recorder is doing.
    recording: Option<super::recordings::RecordingStatus>,
}

/// One simulcast layer on the broadcaster page.
#[derive(Serialize)]
struct PanelLayer {
    rid: Option<String>,
    bitrate_kbps: u64,
    resolution: Option<String>,
    fps: Option<f32>,
}

pub(super) async fn broadcast_panel(
    state: &AppState,
    req: Request<Incoming>,
    broadcast_id: &str,
) -> Result<HttpResponse, ApiError> {
    let (key, view_id) = {
        let registry = state.registry.lock().expect("registry lock");
        let key = registry
            .by_broadcast_id(broadcast_id)
            .ok_or(ApiError::UnknownBroadcast)?;
        (key, registry.view_id(key).unwrap_or_default().to_owned())
    };
    let info = match call(state, Command::Info(key)).await? {
        Outcome::Info(i) => i,
        _ => unreachable!("Info is answered with Info"),
    };
    let slots_used = match call(state, Command::Status).await? {
        Outcome::Status(s) => s.len(),
        _ => unreachable!("Status is answered with Status"),
    };
    let slots_total = state.config.max_live_broadcasts;
    let origin = origin(state, &req);
    let panel = BroadcastPanel {
        warnings: warnings(&info),
        state: info.state,
        viewers: info.viewers,
        max_viewers: state.config.max_viewers,
        bitrate_kbps: info.bitrate_bps / 1000,
        video_codec: info.video_codec,
        audio_codec: info.audio_codec,
        resolution: info.sps.map(|s| format!("{}x{}", s.width, s.height)),
        h264_profile: info.sps.map(|s| s.profile_name()),
        live_for_s: info.live_for.map(|d| d.as_secs()),
        ingest_loss_percent: info.ingest_loss.map(|l| l * 100.0),
        fps: info.fps.map(|f| (f * 10.0).round() / 10.0),
        keyframe_interval_s: info
            .keyframe_interval
            .map(|d| (d.as_secs_f32() * 10.0).round() / 10.0),
        b_frames: info.b_frames,
        layers: match info.layers.len() {
            0 | 1 => Vec::new(),
            _ => (info.layers.iter())
                .map(|l| PanelLayer {
                    rid: l.rid.clone(),
                    bitrate_kbps: l.bitrate_bps / 1000,
                    resolution: l.size.map(|(w, h)| format!("{w}x{h}")),
                    fps: l.fps.map(|f| (f * 10.0).round() / 10.0),
                })
                .collect(),
        },
        publisher_agent: state.agents.lock().expect("agents lock").get(&key).cloned(),
        viewer_url: format!("{origin}/stream?id={view_id}"),
        view_id,
        whip_server: format!("{origin}/broadcast"),
        whip_url: format!("{origin}/broadcast?id={broadcast_id}"),
        slots_used,
        slots_total,
        server_full: info.state == BroadcastState::Idle && slots_used >= slots_total,
        recording: super::recordings::status(state, key),
    };
    Ok(json(StatusCode::OK, &panel))
}

/// One-line fixes for what the publisher sends, shown on the broadcaster page.
fn warnings(info: &BroadcastInfo) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(sps) = info.sps
        && sps.profile_idc != 66
    {
        w.push(format!(
                "OBS sends H.264 {} profile but announces Baseline; some browsers may not play it. In OBS set Output → Profile to \"baseline\".",
                sps.profile_name()
            ));
    }
    if let Some(interval) = info.keyframe_interval.filter(|d| d.as_secs_f32() > 4.5) {
        w.push(format!(
            "Keyframes come every {:.0} s; new viewers and reconnects wait for one. In OBS set Output → Keyframe Interval to 1 s.",
            interval.as_secs_f32()
        ));
    }
    if info.b_frames {
        w.push("The stream has B-frames, which add delay and stutter in browsers. In OBS set B-frames to 0 (or use the x264 tune \"zerolatency\").".into());
    }
    if info.ingest_loss.is_some_and(|l| l > 0.02) {
        w.push(
            "More than 2 % of OBS's packets are lost on the way here; lower the bitrate in OBS."
                .into(),
        );
    }
    // One layer is all a slow viewer can get: simulcast would give it a smaller one. (With
    // simulcast a slow viewer is on the smallest layer already, its own link's problem.)
    if info.slow_viewers > 0 && info.layers.len() <= 1 {
        let who = match info.slow_viewers {
            1 => "1 viewer has a connection".to_owned(),
            n => format!("{n} viewers have connections"),
        };
        w.push(format!(
            "{who} slower than this broadcast's {} kb/s: turn on simulcast in OBS (Settings → Stream → Simulcast, Total Layers 2 or more; OBS 32.1+) or lower the bitrate.",
            info.bitrate_bps / 1000,
        ));
    }
    w
}

/// `POST /api/broadcasts/<broadcast ID>/view-id`: a new viewer link; current viewers are
/// disconnected and told why.
pub(super) async fn rotate_view_id(
    state: &AppState,
    req: Request<Incoming>,
    broadcast_id: &str,
) -> Result<HttpResponse, ApiError> {
    let origin = origin(state, &req);
    let (key, view_id, old, generation) = {
        let mut registry = state.registry.lock().expect("registry lock");
        let key = registry
            .by_broadcast_id(broadcast_id)
            .ok_or(ApiError::UnknownBroadcast)?;
        let (fresh, old) = registry
            .rotate_view_id(key)
            .ok_or(ApiError::UnknownBroadcast)?;
        (key, fresh, old, registry.generation())
    };
    if let Err(e) = super::persist(state, generation).await {
        // The old link keeps working, as the file on disk says.
        let mut registry = state.registry.lock().expect("registry lock");
        if registry.view_id(key) == Some(view_id.as_str()) {
            registry.set_view_id(key, old);
        }
        return Err(e);
    }
    let _ = call(state, Command::RevokeViewers(key)).await?;
    info!(broadcast = %secret::log_label(broadcast_id), "view ID rotated");
    #[derive(Serialize)]
    struct Rotated {
        view_id: String,
        viewer_url: String,
    }
    Ok(json(
        StatusCode::OK,
        &Rotated {
            viewer_url: format!("{origin}/stream?id={view_id}"),
            view_id,
        },
    ))
}

/// `GET /api/status`: slots and live broadcasts, with opaque labels and no IDs.
#[derive(Serialize)]
struct ServerStatus {
    slots_used: usize,
    slots_total: usize,
    broadcasts: Vec<LiveBroadcast>,
    /// On an origin: the edges that beat lately, and their load (`crate::cluster`).
    edges: Vec<crate::cluster::EdgeLoad>,
}

#[derive(Serialize)]
struct LiveBroadcast {
    label: String,
    state: BroadcastState,
    viewers: usize,
    max_viewers: usize,
    bitrate_kbps: u64,
    uptime_s: u64,
}

pub(super) async fn server_status(state: &AppState) -> Result<HttpResponse, ApiError> {
    let live = match call(state, Command::Status).await? {
        Outcome::Status(s) => s,
        _ => unreachable!("Status is answered with Status"),
    };
    let registry = state.registry.lock().expect("registry lock");
    let mut broadcasts: Vec<LiveBroadcast> = live
        .into_iter()
        .map(|(key, i)| LiveBroadcast {
            label: registry.label(key).unwrap_or("broadcast").to_owned(),
            state: i.state,
            viewers: i.viewers,
            max_viewers: state.config.max_viewers,
            bitrate_kbps: i.bitrate_bps / 1000,
            uptime_s: i.live_for.map_or(0, |d| d.as_secs()),
        })
        .collect();
    broadcasts.sort_by_key(|b| std::cmp::Reverse(b.uptime_s));
    let status = ServerStatus {
        slots_used: broadcasts.len(),
        slots_total: state.config.max_live_broadcasts,
        broadcasts,
        edges: state.edges.list(),
    };
    Ok(json(StatusCode::OK, &status))
}

pub(super) fn json<T: Serialize>(status: StatusCode, body: &T) -> HttpResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(super::full(serde_json::to_vec(body).expect("serialises")))
        .expect("valid headers")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LayerInfo;

    fn live(slow_viewers: usize, layers: usize) -> BroadcastInfo {
        let layer = LayerInfo {
            rid: None,
            bitrate_bps: 2_500_000,
            size: None,
            fps: None,
        };
        BroadcastInfo {
            state: BroadcastState::Live,
            viewers: 3,
            bitrate_bps: 2_600_000,
            video_codec: None,
            audio_codec: None,
            sps: None,
            live_for: None,
            ingest_loss: None,
            fps: None,
            keyframe_interval: None,
            b_frames: false,
            connected_for: Vec::new(),
            layers: vec![layer; layers],
            slow_viewers,
        }
    }

    #[test]
    fn slow_viewers_of_a_single_layer_broadcast_bring_the_simulcast_suggestion() {
        assert!(warnings(&live(0, 1)).is_empty());
        let one = warnings(&live(1, 1));
        assert_eq!(
            one,
            [
                "1 viewer has a connection slower than this broadcast's 2600 kb/s: turn on simulcast in OBS (Settings → Stream → Simulcast, Total Layers 2 or more; OBS 32.1+) or lower the bitrate."
            ]
        );
        assert!(warnings(&live(2, 1))[0].starts_with("2 viewers have connections slower"));
        // With simulcast they are on the smallest layer already: nothing OBS can turn on.
        assert!(warnings(&live(2, 3)).is_empty());
    }
}
