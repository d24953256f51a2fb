//! The broadcaster page's recordings: the Record switch, the list (start, duration, size),
//! download and delete. All of it is authorized by the broadcast ID, as the panel is (a view
//! ID opens none of it); downloads also by the signed links the list hands out
//! ([`super::download_link`]), which a `<video>` can follow.
//!
//! `POST /api/broadcast/record` `{"on": bool}`, `GET /api/broadcast/recordings`,
//! `GET|HEAD|DELETE /api/broadcast/recordings/<file>` (Bearer broadcast ID), and
//! `GET|HEAD /recordings/<label>/<file>?exp=…&sig=…`.

use std::path::PathBuf;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode, header};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{ApiError, AppState, HttpResponse, file_body, read_body};
use crate::broadcast_key::BroadcastKey;
use crate::clock::unix_now;
use crate::record::Status;
use crate::record::list::{self, is_file_name};
use crate::secret;

/// A broadcast's recording as the page shows it (`None` without `--record`).
#[derive(Serialize)]
pub(super) struct RecordingStatus {
    /// The Record switch.
    on: bool,
    /// `off` (switched off), `waiting` (on; starts when the publisher's video does),
    /// `recording`, or `stopped` (a limit or an error: see `reason`; the broadcast went on).
    state: &'static str,
    reason: Option<String>,
    /// The file being written.
    file: Option<String>,
}

pub(super) fn status(state: &AppState, key: BroadcastKey) -> Option<RecordingStatus> {
    if !state.config.record {
        return None;
    }
    let board = &state.record_board;
    let on = board.switch(key);
    let (state, reason, file) = match (on, board.status(key)) {
        (false, _) => ("off", None, None),
        (true, None) => ("waiting", None, None),
        (true, Some(Status::Recording { file })) => ("recording", None, Some(file)),
        (true, Some(Status::Stopped(why))) => ("stopped", Some(why.to_string()), None),
    };
    Some(RecordingStatus {
        on,
        state,
        reason,
        file,
    })
}

/// The broadcast a broadcast ID opens, and its label (which names its directory).
fn authorize(state: &AppState, broadcast_id: &str) -> Result<(BroadcastKey, String), ApiError> {
    let registry = state.registry.lock().expect("registry lock");
    let key = registry
        .by_broadcast_id(broadcast_id)
        .ok_or(ApiError::UnknownBroadcast)?;
    let label = registry.label(key).unwrap_or_default().to_owned();
    Ok((key, label))
}

#[derive(Serialize)]
struct Listed {
    recording: Option<RecordingStatus>,
    files: Vec<ListedFile>,
}

#[derive(Serialize)]
struct ListedFile {
    name: String,
    start_unix: Option<u64>,
    duration_s: f64,
    bytes: u64,
    /// Being written now: it grows, and cannot be deleted.
    writing: bool,
    /// A signed link that downloads (and, in a `<video>`, plays and seeks) the file.
    url: String,
}

pub(super) async fn list(state: &AppState, broadcast_id: &str) -> Result<HttpResponse, ApiError> {
    let (key, label) = authorize(state, broadcast_id)?;
    let dir = state.config.record_dir.join(&label);
    let files = tokio::task::spawn_blocking(move || list::list(&dir))
        .await
        .map_err(|_| ApiError::ShuttingDown)?
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot list recordings");
            ApiError::RecordingsUnreadable
        })?;
    let writing = state.record_board.writing(key);
    let now = unix_now();
    let files = files
        .into_iter()
        .map(|f| ListedFile {
            url: state.download_links.sign(&label, &f.name, now),
            writing: writing.as_deref() == Some(f.name.as_str()),
            name: f.name,
            start_unix: f.start_unix,
            duration_s: (f.duration_s * 10.0).round() / 10.0,
            bytes: f.bytes,
        })
        .collect();
    let body = Listed {
        recording: status(state, key),
        files,
    };
    Ok(super::api::json(StatusCode::OK, &body))
}

/// `POST /api/broadcast/record` `{"on": bool}`: the Record switch, kept in the registry so it
/// survives a restart.
pub(super) async fn set_switch(
    state: &AppState,
    req: Request<Incoming>,
    broadcast_id: &str,
) -> Result<HttpResponse, ApiError> {
    if !state.config.record {
        return Err(ApiError::RecordingOff);
    }
    #[derive(Deserialize)]
    struct Switch {
        on: bool,
    }
    let (key, _) = authorize(state, broadcast_id)?;
    let body = read_body(state, req).await?;
    let Switch { on } = serde_json::from_slice(&body).map_err(|_| ApiError::BadRecordSwitch)?;
    let (old, generation) = {
        let mut registry = state.registry.lock().expect("registry lock");
        let old = registry
            .set_record(key, on)
            .ok_or(ApiError::UnknownBroadcast)?;
        (old, registry.generation())
    };
    if let Err(e) = super::persist(state, generation).await {
        // The switch stays as the file on disk says.
        state
            .registry
            .lock()
            .expect("registry lock")
            .set_record(key, old);
        return Err(e);
    }
    state.record_board.set_switch(key, on);
    info!(broadcast = %secret::log_label(broadcast_id), on, "record switch set");
    Ok(super::api::json(StatusCode::OK, &status(state, key)))
}

/// `GET`/`HEAD`/`DELETE /api/broadcast/recordings/<file>` with the broadcast ID.
pub(super) async fn file(
    state: &AppState,
    req: Request<Incoming>,
    broadcast_id: &str,
    name: &str,
) -> Result<HttpResponse, ApiError> {
    let (key, label) = authorize(state, broadcast_id)?;
    let path = path_of(state, &label, name)?;
    match *req.method() {
        Method::GET | Method::HEAD => download(req, path).await,
        Method::DELETE => {
            if state.record_board.writing(key).as_deref() == Some(name) {
                return Err(ApiError::RecordingInProgress);
            }
            tokio::task::spawn_blocking(move || std::fs::remove_file(path))
                .await
                .map_err(|_| ApiError::ShuttingDown)?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => ApiError::NoSuchRecording,
                    _ => ApiError::RecordingsUnreadable,
                })?;
            info!(broadcast = %secret::log_label(broadcast_id), file = name, "recording deleted");
            Ok(super::api::json(StatusCode::OK, &serde_json::json!({})))
        }
        _ => Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            allow: "GET, HEAD, DELETE, OPTIONS",
        }),
    }
}

/// `GET`/`HEAD /recordings/<label>/<file>?exp=…&sig=…`: a signed download link.
pub(super) async fn signed(
    state: &AppState,
    req: Request<Incoming>,
    rest: &str,
) -> Result<HttpResponse, ApiError> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            allow: "GET, HEAD, OPTIONS",
        });
    }
    let (label, name) = rest.split_once('/').ok_or(ApiError::BadDownloadLink)?;
    let exp = super::query_param(&req, "exp").unwrap_or_default();
    let sig = super::query_param(&req, "sig").unwrap_or_default();
    if !state
        .download_links
        .verify(label, name, exp, sig, unix_now())
    {
        return Err(ApiError::BadDownloadLink);
    }
    let path = path_of(state, label, name)?;
    download(req, path).await
}

async fn download(req: Request<Incoming>, path: PathBuf) -> Result<HttpResponse, ApiError> {
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let head = req.method() == Method::HEAD;
    file_body::serve(path, range, head, "video/mp4").await
}

/// `<record-dir>/<label>/<name>`, for a name that can only be a recording in that directory
/// (no separators, no `..`: see [`is_file_name`]).
fn path_of(state: &AppState, label: &str, name: &str) -> Result<PathBuf, ApiError> {
    let label_ok = !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !label_ok || !is_file_name(name) {
        return Err(ApiError::NoSuchRecording);
    }
    Ok(state.config.record_dir.join(label).join(name))
}
