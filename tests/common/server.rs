//! The real server, started in the test process on free loopback ports.

use std::path::{Path, PathBuf};

use clap::Parser;
use whipcast::{Config, Server, StartError};

use super::udp_client::http;

/// A fresh data directory under the system temp dir.
pub fn temp_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "whipcast-{prefix}-{}",
        whipcast::secret::random_token()
    ))
}

/// Starts whipcast on 127.0.0.1:0 (HTTP and UDP) with `dir` as its data directory and
/// `extra` flags; returns it with its base URL. `WHIPCAST_*` variables apply as for the
/// binary: `.ci/run` runs six suites again with `WHIPCAST_WORKERS=1`.
pub async fn start_in(dir: &Path, extra: &[&str]) -> (Server, String) {
    let d = dir.to_str().unwrap().to_owned();
    let mut args = vec![
        "whipcast",
        "--http-listen",
        "127.0.0.1:0",
        "--udp-listen",
        "127.0.0.1:0",
        "--data-dir",
        &d,
    ];
    args.extend_from_slice(extra);
    let server = start_config(Config::parse_from(args))
        .await
        .expect("server starts");
    let base = format!("http://{}", server.http_addr);
    (server, base)
}

/// Starts a server on `config` through [`Server::spawn`]: awaiting `Server::start` here would
/// compile the whole HTTP stack into every test binary again (CI time).
pub async fn start_config(config: Config) -> Result<Server, StartError> {
    Server::spawn(config).await.expect("the start task")
}

/// Creates a broadcast (blocking): (broadcast ID, view ID).
pub fn create(base: &str) -> (String, String) {
    let (status, _, body) = http("POST", &format!("{base}/api/broadcasts"), &[], "");
    assert_eq!(status, 201);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        v["broadcast_id"].as_str().unwrap().to_owned(),
        v["view_id"].as_str().unwrap().to_owned(),
    )
}

/// One `/metrics` line's value, e.g. `whipcast_worker_viewers{worker="1"}`.
pub fn metric(base: &str, series: &str) -> u64 {
    let (status, _, body) = http("GET", &format!("{base}/metrics"), &[], "");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
}
