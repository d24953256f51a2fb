//! The pages and their assets, compiled into the binary from www/, and the headers every
//! page carries (no referrer, a strict CSP, no framing).

use bytes::Bytes;
use hyper::{Response, StatusCode, header};

use super::{AppState, HttpResponse, full};

/// A static body with its type, never cached without a check.
pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: &'static str,
) -> HttpResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(full(Bytes::from_static(body.as_bytes())))
        .expect("static headers are valid")
}

pub(super) fn page(html: &'static str) -> HttpResponse {
    let mut r = text(StatusCode::OK, "text/html; charset=utf-8", html);
    let h = r.headers_mut();
    // Pages hold capabilities in their URL; never leak it to other origins.
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    // Our scripts only, from our origin; no framing (clickjacking the rotate button).
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    r
}

/// The viewer page. On an origin that redirects viewers, its WHEP requests may end at an
/// edge: the live edges join `connect-src`.
pub(super) fn stream_page(state: &AppState) -> HttpResponse {
    let mut r = page(STREAM_HTML);
    if state.config.redirect_viewers {
        let edges = state.edges.origins().join(" ");
        let csp = PAGE_CSP.replacen(
            "default-src 'self';",
            &format!("default-src 'self'; connect-src 'self' {edges};"),
            1,
        );
        if let Ok(v) = header::HeaderValue::from_str(&csp) {
            r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    r
}

/// What the pages may load: scripts and everything else from this origin only; inline
/// styles (the pages carry a `<style>` block), no plugins, no framing, no `<base>`.
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; media-src 'self' blob: mediastream:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub(super) const INDEX_HTML: &str = include_str!("../../www/index.html");
pub(super) const BROADCAST_HTML: &str = include_str!("../../www/broadcast.html");
pub(super) const BROADCAST_JS: &str = include_str!("../../www/broadcast.js");
pub(super) const RECORDINGS_JS: &str = include_str!("../../www/recordings.js");
pub(super) const STATUS_HTML: &str = include_str!("../../www/status.html");
pub(super) const STATUS_JS: &str = include_str!("../../www/status.js");
const STREAM_HTML: &str = include_str!("../../www/stream.html");
pub(super) const PLAYER_JS: &str = include_str!("../../www/player.js");
pub(super) const EVENTS_JS: &str = include_str!("../../www/events.js");
pub(super) const LINK_JS: &str = include_str!("../../www/link.js");
pub(super) const EVENTS_WORKER_JS: &str = include_str!("../../www/events-worker.js");
pub(super) const STYLE_CSS: &str = include_str!("../../www/style.css");
