//! A session's SSE event stream (`<session URL>/sse`), followed in the background.

use std::sync::{Arc, Mutex};

/// The text of a viewer session's SSE stream on `base`, as it arrives, subscribed to
/// `events` (a JSON array of event names).
pub async fn follow_events(base: &str, location: &str, events: &str) -> Arc<Mutex<String>> {
    let http = reqwest::Client::new();
    let url = format!("{base}{location}/sse");
    let created = http
        .post(&url)
        .header("content-type", "application/json")
        .body(events.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let mut stream = http.get(&url).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let text = Arc::new(Mutex::new(String::new()));
    let seen = text.clone();
    tokio::spawn(async move {
        while let Ok(Some(chunk)) = stream.chunk().await {
            seen.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk));
        }
    });
    text
}

/// Whether `events` holds `first` and, after it, `then`.
pub fn in_order(events: &Mutex<String>, first: &str, then: &str) -> bool {
    let text = events.lock().unwrap();
    text.find(first)
        .is_some_and(|i| text[i + first.len()..].contains(then))
}
