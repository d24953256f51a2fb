//! The viewer cap across a cluster: `--max-viewers` on the origin counts the viewers of a
//! broadcast on the origin and on every edge, and the oldest goes wherever it watches
//! (src/http/cluster.rs, src/edge/beat.rs, src/engine/cluster.rs).

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::edges::{
    blocking, edge, follow_events, origin, playing_viewer, wait_for_edges, wait_until,
};
use common::server::create;
use common::udp_client::Client;

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_cap_evicts_the_oldest_viewer_even_on_another_edge() {
    let (origin, obase) = origin(&["--max-viewers", "2"]).await;
    // The edges' URLs are only their names at the origin here: nothing is redirected.
    let (edge1, e1) = edge(&obase, &["--edge-url", "http://127.0.0.1:1"]).await;
    let (edge2, e2) = edge(&obase, &["--edge-url", "http://127.0.0.1:2"]).await;
    let (o, e1b) = (obase.clone(), e1.clone());
    let (view, publisher, a) = blocking(move || {
        wait_for_edges(&o, 2);
        let (id, view) = create(&o);
        let publisher = Client::publish(&o, &id).unwrap();
        let a = playing_viewer(&e1b, &view);
        (view, publisher, a)
    })
    .await;
    let a_events = follow_events(&e1, &a.location).await;
    let (o, e2b, v, ev) = (obase.clone(), e2.clone(), view.clone(), a_events.clone());
    let (b, c) = blocking(move || {
        let b = playing_viewer(&e2b, &v);
        // Two viewers in the cluster: the cap is not reached, nobody goes.
        std::thread::sleep(std::time::Duration::from_secs(3));
        assert!(
            !ev.lock().unwrap().contains("evicted"),
            "{}",
            ev.lock().unwrap()
        );
        let c = playing_viewer(&o, &v);
        wait_until("the oldest viewer, on edge 1, is evicted", || {
            ev.lock().unwrap().contains("event: evicted")
        });
        (b, c)
    })
    .await;
    let evictions = |s: Option<whipcast::engine::Stats>| s.unwrap().evictions;
    assert_eq!(evictions(edge1.stats().await), 1, "edge 1 evicted A");
    assert_eq!(evictions(edge2.stats().await), 0, "B stays");
    assert_eq!(evictions(origin.stats().await), 0, "C stays");
    blocking(move || {
        for (name, viewer) in [("B", &b), ("C", &c)] {
            let before = viewer.frames().len();
            viewer.wait_for(&format!("{name} keeps playing"), |s| {
                s.frames.len() > before + 30
            });
        }
        for client in [a, b, c, publisher] {
            client.stop();
        }
    })
    .await;
    for server in [edge1, edge2, origin] {
        server.shutdown().await;
    }
}
