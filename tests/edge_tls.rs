//! An edge of an HTTPS origin (`--origin https://…`): with the origin's certificate given by
//! `--origin-ca` it pulls and its viewers play; without it, a viewer gets a clear 502 that
//! names the untrusted certificate, at once.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::edges::{SECRET, blocking, edge, playing_viewer};
use common::server::{create, start_in, temp_dir};
use common::tls_client::self_signed;
use common::udp_client::Client;

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_pulls_from_an_https_origin_it_trusts_and_says_when_it_does_not() {
    let dir = temp_dir("tls-origin");
    let (cert, key) = self_signed(&dir);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let tls = [
        "--edge-secret",
        SECRET,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    let (origin, _) = start_in(&dir, &tls).await;
    let obase = format!("https://{}", origin.http_addr);
    let (trusting, tbase) = edge(&obase, &["--origin-ca", cert]).await;
    let (doubting, dbase) = edge(&obase, &[]).await;
    blocking(move || {
        let (id, view) = create(&obase);
        let publisher = Client::publish(&obase, &id).unwrap();
        let viewer = playing_viewer(&tbase, &view);
        let refused = Client::view(&dbase, &view)
            .err()
            .expect("an edge that does not trust the origin serves no one");
        assert_eq!(refused.status, 502, "{}", refused.body);
        let problem: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("TLS certificate") && detail.contains("--origin-ca"),
            "the answer says what is wrong and what to do: {detail}"
        );
        viewer.stop();
        publisher.stop();
    })
    .await;
    for server in [trusting, doubting, origin] {
        server.shutdown().await;
    }
}
