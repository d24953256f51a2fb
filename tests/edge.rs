//! Origin → edge relaying, with real servers on loopback ports: an OBS-shaped publisher on
//! the origin, str0m WHEP viewers on an edge (see src/edge/ and src/engine/upstream.rs).

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::edges::{
    SECRET, blocking, edge, follow_events, live_at_edge, origin, playing_viewer, status, wait_until,
};
use common::server::create;
use common::sse::in_order;
use common::udp_client::{Client, http};

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_serves_its_viewers_from_one_session_at_the_origin() {
    let (origin, obase) = origin(&[]).await;
    let (edge, ebase) = edge(&obase, &[]).await;
    let (o, e) = (obase.clone(), ebase.clone());
    let (publisher, v1, v2) = blocking(move || {
        let (id, view) = create(&o);
        let publisher = Client::publish(&o, &id).unwrap();
        let v1 = playing_viewer(&e, &view);
        let v2 = playing_viewer(&e, &view);
        (publisher, v1, v2)
    })
    .await;
    let (o, e) = (obase.clone(), ebase.clone());
    let (at_origin, at_edge) = blocking(move || (status(&o), status(&e))).await;
    assert_eq!(
        at_origin["broadcasts"][0]["viewers"], 1,
        "the origin serves the edge's one pull, not its viewers: {at_origin}"
    );
    assert_eq!(at_edge["broadcasts"][0]["viewers"], 2, "{at_edge}");
    let stats = origin.stats().await.unwrap();
    assert_eq!((stats.publishers, stats.viewers), (1, 1), "{stats:?}");
    blocking(move || {
        v1.stop();
        v2.stop();
        publisher.stop();
    })
    .await;
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_drop_resume_and_stop_at_the_origin_reach_edge_viewers() {
    // Resume graces of 60 s: "inactive" within the test can only come from the DELETE.
    let (origin, obase) = origin(&["--resume-grace", "60s"]).await;
    let (edge, ebase) = edge(&obase, &["--resume-grace", "60s"]).await;
    let (o, e) = (obase.clone(), ebase.clone());
    let (id, p1, viewer) = blocking(move || {
        let (id, view) = create(&o);
        let p1 = Client::publish(&o, &id).unwrap();
        (id, p1, playing_viewer(&e, &view))
    })
    .await;
    let events = follow_events(&ebase, &viewer.location).await;
    let (o, ev) = (obase.clone(), events.clone());
    let (viewer, p2) = blocking(move || {
        p1.vanish();
        wait_until(
            "the edge's viewer is told the publisher is reconnecting",
            || ev.lock().unwrap().contains("event: reconnecting"),
        );
        let before = viewer.frames().len();
        let p2 = Client::publish(&o, &id).unwrap();
        viewer.wait_for("frames continue in the same session", |s| {
            s.frames.len() > before + 10
        });
        assert!(
            viewer.frames()[before].keyframe,
            "the resumed stream starts on a keyframe"
        );
        wait_until("the broadcast is live again on the edge", || {
            in_order(&ev, "event: reconnecting", "event: active")
        });
        (viewer, p2)
    })
    .await;
    let stats = edge.stats().await.unwrap();
    assert_eq!(
        stats.viewers, 1,
        "no new viewer session on the edge: {stats:?}"
    );
    assert!(
        !events.lock().unwrap().contains("event: inactive"),
        "the broadcast did not end on the edge"
    );
    let ev = events.clone();
    blocking(move || {
        assert_eq!(p2.stop(), 200);
        wait_until("the edge's viewer is told the broadcast ended", || {
            in_order(&ev, "event: active", "event: inactive")
        });
        let text = ev.lock().unwrap().clone();
        let since_resume = &text[text.rfind("event: active").unwrap()..];
        assert!(
            !since_resume.contains("event: reconnecting"),
            "the origin's close ends the edge's broadcast at once, with no wait for a resume"
        );
        viewer.vanish();
    })
    .await;
    let stats = edge.stats().await.unwrap();
    assert_eq!((stats.publishers, stats.viewers), (0, 0), "{stats:?}");
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_origin_redirects_viewers_to_a_registered_edge_but_never_an_edges_pull() {
    let (origin, obase) = origin(&["--redirect-viewers"]).await;
    let o = obase.clone();
    let view = blocking(move || create(&o).1).await;
    let o = obase.clone();
    // Before any edge registers, the origin serves viewers itself (409: not live).
    let (o1, v1) = (o.clone(), view.clone());
    let (code, _, _) = blocking(move || {
        http(
            "POST",
            &format!("{o1}/stream?id={v1}"),
            &[("Content-Type", "application/sdp")],
            "v=0\r\n",
        )
    })
    .await;
    assert_eq!(code, 409, "no edge: served here");
    let edge_url = "http://127.0.0.1:1"; // never contacted: the test only reads the 307
    let (edge, _ebase) = edge(&obase, &["--edge-url", edge_url]).await;
    let v = view.clone();
    let (o2, o3) = (o.clone(), o.clone());
    blocking(move || {
        wait_until("the edge registers with the origin", || {
            status(&o2)["edges"]
                .as_array()
                .is_some_and(|e| e.len() == 1)
        });
        let listed = status(&o2);
        assert_eq!(listed["edges"][0]["url"], edge_url, "{listed}");
        assert_eq!(listed["edges"][0]["viewers"], 0, "{listed}");
        let (code, headers, _) = http(
            "POST",
            &format!("{o3}/stream?id={v}"),
            &[("Content-Type", "application/sdp")],
            "v=0\r\n",
        );
        assert_eq!(code, 307);
        let location = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("location"))
            .map(|(_, v)| v.clone());
        assert_eq!(location, Some(format!("{edge_url}/stream?id={v}")));
        let (code, _, _) = http(
            "POST",
            &format!("{o3}/stream?id={v}"),
            &[
                ("Content-Type", "application/sdp"),
                ("x-whipcast-edge-secret", SECRET),
            ],
            "v=0\r\n",
        );
        assert_eq!(code, 409, "an edge's own pull is served, not redirected");
        let (code, _, _) = http(
            "POST",
            &format!("{o3}/api/edges"),
            &[("x-whipcast-edge-secret", "wrong")],
            r#"{"url":"http://127.0.0.1:2","viewers":0,"capacity":8}"#,
        );
        assert_eq!(code, 403, "registration needs the edge secret");
    })
    .await;
    // An edge that stops beating is dropped, and viewers are served here again.
    edge.shutdown().await;
    let o4 = o.clone();
    blocking(move || {
        wait_until("the silent edge is dropped", || {
            status(&o4)["edges"]
                .as_array()
                .is_some_and(|e| e.is_empty())
        });
        let (code, _, _) = http(
            "POST",
            &format!("{o4}/stream?id={view}"),
            &[("Content-Type", "application/sdp")],
            "v=0\r\n",
        );
        assert_eq!(code, 409, "served here again");
    })
    .await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_of_an_edge_plays_and_each_hop_carries_one_session() {
    let (origin, obase) = origin(&[]).await;
    let (edge1, e1) = edge(&obase, &[]).await;
    let (edge2, e2) = edge(&e1, &[]).await;
    let (o, e1b, e2b) = (obase.clone(), e1.clone(), e2.clone());
    let (publisher, viewer) = blocking(move || {
        let (id, view) = create(&o);
        let publisher = Client::publish(&o, &id).unwrap();
        let viewer = playing_viewer(&e2b, &view);
        assert_eq!(status(&o)["broadcasts"][0]["viewers"], 1, "edge1's pull");
        assert_eq!(status(&e1b)["broadcasts"][0]["viewers"], 1, "edge2's pull");
        assert_eq!(status(&e2b)["broadcasts"][0]["viewers"], 1, "the viewer");
        (publisher, viewer)
    })
    .await;
    blocking(move || {
        viewer.stop();
        publisher.stop();
    })
    .await;
    for server in [edge2, edge1, origin] {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_view_id_at_the_origin_ends_edge_viewers_and_the_old_link_stops_working() {
    let (origin, obase) = origin(&["--resume-grace", "60s"]).await;
    let (edge, ebase) = edge(&obase, &["--resume-grace", "60s"]).await;
    let (id, view, publisher, viewer) = live_at_edge(&obase, &ebase).await;
    let events = follow_events(&ebase, &viewer.location).await;
    let (o, e, ev) = (obase.clone(), ebase.clone(), events.clone());
    blocking(move || {
        let (code, _, body) = http("POST", &format!("{o}/api/broadcasts/{id}/view-id"), &[], "");
        assert_eq!(code, 200, "{body}");
        wait_until("the edge's viewer is told the broadcast ended", || {
            ev.lock().unwrap().contains("event: inactive")
        });
        assert!(
            !ev.lock().unwrap().contains("event: reconnecting"),
            "a revoked pull ends the edge's broadcast at once, with no wait for a resume"
        );
        let refused = Client::view(&e, &view)
            .err()
            .expect("the old link is refused");
        assert_eq!(refused.status, 404, "{}", refused.body);
        viewer.vanish();
        publisher.stop();
    })
    .await;
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pull_ends_after_the_edges_last_viewer_leaves() {
    let (origin, obase) = origin(&[]).await;
    let (edge, ebase) = edge(&obase, &[]).await;
    let (o, e) = (obase.clone(), ebase.clone());
    let publisher = blocking(move || {
        let (id, view) = create(&o);
        let publisher = Client::publish(&o, &id).unwrap();
        let viewer = playing_viewer(&e, &view);
        assert_eq!(status(&o)["broadcasts"][0]["viewers"], 1, "the pull");
        assert_eq!(viewer.stop(), 200);
        publisher
    })
    .await;
    let stats = origin.stats().await.unwrap();
    assert_eq!(stats.viewers, 1, "the pull lingers a moment: {stats:?}");
    let o = obase.clone();
    blocking(move || {
        wait_until("the origin no longer serves the edge", || {
            status(&o)["broadcasts"][0]["viewers"] == 0
        });
        publisher.stop();
    })
    .await;
    let stats = edge.stats().await.unwrap();
    assert_eq!((stats.publishers, stats.viewers), (0, 0), "{stats:?}");
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edges_pull_takes_no_viewers_place_at_the_origin() {
    let (origin, obase) = origin(&["--max-viewers", "1"]).await;
    let (edge, ebase) = edge(&obase, &[]).await;
    let (o, e) = (obase.clone(), ebase.clone());
    blocking(move || {
        let (id, view) = create(&o);
        let publisher = Client::publish(&o, &id).unwrap();
        let at_edge = playing_viewer(&e, &view);
        // With a cap of one, this viewer would evict the oldest: the pull, if it counted.
        let direct = playing_viewer(&o, &view);
        let before = at_edge.frames().len();
        at_edge.wait_for("the edge's viewer keeps playing", |s| {
            s.frames.len() > before + 10
        });
        assert_eq!(
            status(&o)["broadcasts"][0]["viewers"],
            2,
            "the pull and the viewer"
        );
        for c in [at_edge, direct, publisher] {
            c.stop();
        }
    })
    .await;
    edge.shutdown().await;
    origin.shutdown().await;
}
