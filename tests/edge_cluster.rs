//! The viewer cap across a cluster: `--max-viewers` on the origin counts the viewers of a
//! broadcast on the origin and on every edge, and the oldest goes wherever it watches, or
//! with `--when-full reject` the newest (src/http/cluster.rs, src/edge/beat.rs,
//! src/engine/cluster.rs).

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::edges::{
    blocking, edge, follow_events, origin, playing_viewer, registered_edge, wait_for_edges,
    wait_until,
};
use common::server::create;
use common::udp_client::Client;
use whipcast::Server;

/// An origin with a cap of two viewers and `extra` flags, two registered edges, and a
/// publisher on the origin.
struct Cluster {
    servers: [(Server, String); 3],
    view: String,
    publisher: Client,
}

impl Cluster {
    async fn start(extra: &[&str]) -> Self {
        let mut flags = vec!["--max-viewers", "2"];
        flags.extend_from_slice(extra);
        let origin = origin(&flags).await;
        // The edges' URLs are only their names at the origin here: nothing is redirected.
        let edge1 = edge(&origin.1, &["--edge-url", "http://127.0.0.1:1"]).await;
        let edge2 = edge(&origin.1, &["--edge-url", "http://127.0.0.1:2"]).await;
        let o = origin.1.clone();
        let (view, publisher) = blocking(move || {
            wait_for_edges(&o, 2);
            let (id, view) = create(&o);
            (view, Client::publish(&o, &id).unwrap())
        })
        .await;
        Self {
            servers: [origin, edge1, edge2],
            view,
            publisher,
        }
    }

    /// A viewer playing on server `i` (0 the origin, 1 and 2 the edges), and its events.
    async fn viewer(&self, i: usize) -> (Client, Arc<Mutex<String>>) {
        let (base, view) = (self.servers[i].1.clone(), self.view.clone());
        let viewer = blocking(move || playing_viewer(&base, &view)).await;
        let events = follow_events(&self.servers[i].1, &viewer.location).await;
        (viewer, events)
    }

    async fn evictions(&self) -> [u64; 3] {
        let mut n = [0; 3];
        for (i, (server, _)) in self.servers.iter().enumerate() {
            n[i] = server.stats().await.unwrap().evictions;
        }
        n
    }

    async fn stop(self, viewers: Vec<Client>) {
        let publisher = self.publisher;
        blocking(move || {
            for client in viewers.into_iter().chain([publisher]) {
                client.stop();
            }
        })
        .await;
        for (server, _) in self.servers.into_iter().rev() {
            server.shutdown().await;
        }
    }
}

fn evicted(events: &Mutex<String>) -> bool {
    events.lock().unwrap().contains("event: evicted")
}

/// Waits until `going` is evicted, then checks that `staying` play on.
async fn only_this_one_goes(going: &Arc<Mutex<String>>, staying: Vec<Client>) -> Vec<Client> {
    let going = going.clone();
    blocking(move || {
        wait_until("the viewer is evicted", || evicted(&going));
        for viewer in &staying {
            let before = viewer.frames().len();
            viewer.wait_for("the others keep playing", |s| s.frames.len() > before + 30);
        }
        staying
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_cap_evicts_the_oldest_viewer_even_on_another_edge() {
    let cluster = Cluster::start(&[]).await;
    let (a, a_events) = cluster.viewer(1).await;
    let (b, b_events) = cluster.viewer(2).await;
    // Two viewers in the cluster: the cap is reached, not passed; nobody goes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!evicted(&a_events) && !evicted(&b_events));
    let (c, c_events) = cluster.viewer(0).await;
    let mut playing = only_this_one_goes(&a_events, vec![b, c]).await;
    assert!(!evicted(&b_events) && !evicted(&c_events));
    assert_eq!(cluster.evictions().await, [0, 1, 0], "edge 1 evicted A");
    playing.push(a);
    cluster.stop(playing).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_reject_the_cluster_cap_turns_away_the_newest_viewer() {
    let cluster = Cluster::start(&["--when-full", "reject"]).await;
    let (a, a_events) = cluster.viewer(1).await;
    let (b, b_events) = cluster.viewer(2).await;
    let (o, e2, v) = (
        cluster.servers[0].1.clone(),
        cluster.servers[2].1.clone(),
        cluster.view.clone(),
    );
    let d = blocking(move || {
        let refused = Client::view(&o, &v)
            .err()
            .expect("the full cluster refuses C");
        assert_eq!(
            refused.status, 503,
            "before connecting, the WHEP way: {}",
            refused.body
        );
        // Edge 2 does not know the cluster is full: D connects there, then is turned away.
        // D may go before its first frames: no waiting for them.
        Client::view(&e2, &v).unwrap()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.evictions().await != [0, 0, 1] {
        assert!(Instant::now() < deadline, "edge 2 never turned D away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (a, b) = blocking(move || {
        for viewer in [&a, &b] {
            let before = viewer.frames().len();
            viewer.wait_for("A and B keep playing", |s| s.frames.len() > before + 30);
        }
        assert_eq!(d.stop(), 404, "D's session is gone");
        (a, b)
    })
    .await;
    assert!(!evicted(&a_events) && !evicted(&b_events));
    cluster.stop(vec![a, b]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_cap_reaches_down_a_chain_of_edges() {
    // origin (cap 1) ← edge 1 ← edge 2: edge 2's viewers are counted through edge 1's
    // heartbeat, and an eviction the origin names passes down to edge 2.
    let origin = origin(&["--max-viewers", "1"]).await;
    let middle = registered_edge(&origin.1, &[]).await;
    let last = registered_edge(&middle.1, &[]).await;
    let (o, m) = (origin.1.clone(), middle.1.clone());
    let (view, publisher) = blocking(move || {
        wait_for_edges(&o, 1);
        wait_for_edges(&m, 1);
        let (id, view) = create(&o);
        (view, Client::publish(&o, &id).unwrap())
    })
    .await;
    let (base, v) = (last.1.clone(), view.clone());
    let oldest = blocking(move || playing_viewer(&base, &v)).await;
    let oldest_events = follow_events(&last.1, &oldest.location).await;
    // Whichever comes first, the newcomer or the middle edge's beat listing the last edge's
    // viewer, the origin checks the cap again on the next beat.
    let (o, v) = (origin.1.clone(), view.clone());
    let newest = blocking(move || playing_viewer(&o, &v)).await;
    let staying = only_this_one_goes(&oldest_events, vec![newest]).await;
    assert_eq!(
        last.0.stats().await.unwrap().evictions,
        1,
        "the last edge evicted"
    );
    assert_eq!(origin.0.stats().await.unwrap().evictions, 0);
    blocking(move || {
        for c in staying.into_iter().chain([oldest, publisher]) {
            c.stop();
        }
    })
    .await;
    for (server, _) in [last, middle, origin] {
        server.shutdown().await;
    }
}
