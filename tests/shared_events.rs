//! The shared event stream a browser's viewer tabs use instead of one SSE connection each
//! (`GET /stream/events`, `POST /stream/events/<name>` with a session ID): it carries the
//! events of the sessions attached to it, each tagged with its session ID, and nothing of any
//! other session. The WHEP SSE extension per session is tested in http.rs.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http_server::{self, Running, create, post_sdp};
use common::sim::{obs_offer, viewer_offer};
use reqwest::{StatusCode, header};

/// A viewer session of `view` (no media ever flows): its session ID.
async fn viewer(r: &Running, view: &str) -> String {
    let res = post_sdp(r, &format!("/stream?id={view}"), viewer_offer(false)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()[header::LOCATION].to_str().unwrap();
    location.rsplit('/').next().unwrap().to_owned()
}

/// Opens a shared stream: (its name, its text as it arrives).
async fn open_shared(r: &Running) -> (String, Arc<Mutex<String>>) {
    let mut stream = r
        .http
        .get(format!("{}/stream/events", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let text = Arc::new(Mutex::new(String::new()));
    let seen = text.clone();
    tokio::spawn(async move {
        while let Ok(Some(chunk)) = stream.chunk().await {
            seen.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk));
        }
    });
    let name = wait_for(&text, |t| {
        let at = t.find("\"channel\":\"")? + "\"channel\":\"".len();
        Some(t[at..].split('"').next()?.to_owned())
    })
    .await;
    (name, text)
}

async fn attach(r: &Running, name: &str, session: &str) -> StatusCode {
    r.http
        .post(format!("{}/stream/events/{name}", r.base))
        .body(session.to_owned())
        .send()
        .await
        .unwrap()
        .status()
}

/// Polls the stream's text until `f` finds something (generous deadline).
async fn wait_for<T>(text: &Mutex<String>, f: impl Fn(&str) -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = f(&text.lock().unwrap()) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never arrived; the stream said:\n{}", text.lock().unwrap());
}

fn tagged(event: &str, session: &str) -> String {
    format!("event: {event}\ndata: {{\"session\":\"{session}\"")
}

#[tokio::test]
async fn a_shared_stream_carries_the_events_of_its_sessions_only_each_tagged() {
    let r = http_server::start("shared-events", &[]).await;
    let (id, view) = create(&r).await;
    let publisher = post_sdp(&r, &format!("/broadcast?id={id}"), obs_offer()).await;
    assert_eq!(publisher.status(), StatusCode::CREATED);
    let publisher = publisher.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let (a, b, other) = (
        viewer(&r, &view).await,
        viewer(&r, &view).await,
        viewer(&r, &view).await,
    );
    let (name, text) = open_shared(&r).await;
    assert_eq!(attach(&r, &name, &a).await, StatusCode::NO_CONTENT);
    assert_eq!(attach(&r, &name, &b).await, StatusCode::NO_CONTENT);
    // Each starts with its broadcast's state.
    for s in [&a, &b] {
        wait_for(&text, |t| t.contains(&tagged("active", s)).then_some(())).await;
    }
    let deleted = r
        .http
        .delete(format!("{}{publisher}", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    for s in [&a, &b] {
        wait_for(&text, |t| t.contains(&tagged("inactive", s)).then_some(())).await;
    }
    let all = text.lock().unwrap().clone();
    assert!(!all.contains(&other), "a session never attached: {all}");
    assert!(!all.contains(&id), "the broadcast ID: {all}");
    r.server.shutdown().await;
}

#[tokio::test]
async fn attaching_needs_an_open_stream_and_a_live_session() {
    let r = http_server::start("shared-events", &[]).await;
    let (id, view) = create(&r).await;
    let publisher = post_sdp(&r, &format!("/broadcast?id={id}"), obs_offer()).await;
    assert_eq!(publisher.status(), StatusCode::CREATED);
    let session = viewer(&r, &view).await;
    let (name, _text) = open_shared(&r).await;
    assert_eq!(
        attach(&r, "AAAAAAAAAAAAAAAAAAAAAA", &session).await,
        StatusCode::NOT_FOUND,
        "an unknown stream"
    );
    assert_eq!(
        attach(&r, &name, "AAAAAAAAAAAAAAAAAAAAAA").await,
        StatusCode::NOT_FOUND,
        "an unknown session"
    );
    assert_eq!(attach(&r, &name, &session).await, StatusCode::NO_CONTENT);
    r.server.shutdown().await;
}
