//! The real server in the test process with a reqwest client beside it, and the HTTP calls
//! most tests against it make.

use std::path::PathBuf;

use reqwest::{Client, StatusCode, header};
use serde_json::Value;
use whipcast::Server;

pub struct Running {
    pub server: Server,
    pub base: String,
    pub http: Client,
    pub dir: PathBuf,
}

/// Starts the server in a fresh data directory named after `prefix`, with `extra` flags.
pub async fn start(prefix: &str, extra: &[&str]) -> Running {
    start_in(super::server::temp_dir(prefix), extra).await
}

/// Starts the server with `dir` as its data directory and `extra` flags.
pub async fn start_in(dir: PathBuf, extra: &[&str]) -> Running {
    let (server, base) = super::server::start_in(&dir, extra).await;
    Running {
        server,
        base,
        http: Client::new(),
        dir,
    }
}

/// `POST /api/broadcasts` with these extra headers.
pub async fn create_with(r: &Running, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = r.http.post(format!("{}/api/broadcasts", r.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// Creates a broadcast: (broadcast ID, view ID).
pub async fn create(r: &Running) -> (String, String) {
    let res = create_with(r, &[]).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let v: Value = res.json().await.unwrap();
    (
        v["broadcast_id"].as_str().unwrap().to_owned(),
        v["view_id"].as_str().unwrap().to_owned(),
    )
}

/// POSTs an SDP offer to `path`.
pub async fn post_sdp(r: &Running, path: &str, sdp: String) -> reqwest::Response {
    r.http
        .post(format!("{}{path}", r.base))
        .header(header::CONTENT_TYPE, "application/sdp")
        .body(sdp)
        .send()
        .await
        .unwrap()
}

/// Asserts a problem+json answer with this status and a human sentence; returns the response
/// headers.
pub async fn problem(res: reqwest::Response, status: StatusCode) -> (header::HeaderMap, String) {
    assert_eq!(res.status(), status);
    let headers = res.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["status"], status.as_u16());
    let detail = v["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.len() > 10,
        "a sentence a person can act on: {detail}"
    );
    (headers, detail)
}

/// `POST /broadcast` (WHIP), with the ID in the query or not.
pub async fn whip(
    r: &Running,
    query_id: Option<&str>,
    ctype: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let url = match query_id {
        Some(id) => format!("{}/broadcast?id={id}", r.base),
        None => format!("{}/broadcast", r.base),
    };
    r.http
        .post(url)
        .header(header::CONTENT_TYPE, ctype)
        .body(body)
        .send()
        .await
        .unwrap()
}
