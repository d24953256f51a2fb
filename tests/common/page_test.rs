//! What every browser test file shares: a server to point the pages at, one test with
//! browsers at a time, and watching the viewer page until it plays.

use std::sync::Mutex;

use whipcast::Server;

use super::chromium::Browser;

/// One browser test at a time: each runs two or more Chromiums on a 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Running {
    pub server: Server,
    pub base: String,
}

pub async fn start(extra: &[&str]) -> Running {
    start_in(&super::server::temp_dir("browser"), extra).await
}

pub async fn start_in(dir: &std::path::Path, extra: &[&str]) -> Running {
    let (server, base) = super::server::start_in(dir, extra).await;
    Running { server, base }
}

pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(move || {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        f()
    })
    .await
    .unwrap()
}

/// Opens the viewer page and waits until it plays a picture that is not black.
pub fn watch(base: &str, view: &str, name: &str) -> Browser {
    let b = Browser::start();
    b.goto(&format!("{base}/stream?id={view}"));
    b.wait("the viewer page says live", |b| {
        (b.player_state() == "live").then_some(())
    });
    b.wait_decoding("frames decoded");
    let (mean, spread) = b.picture();
    assert!(
        mean > 20.0 && spread > 5.0,
        "the picture is not black or flat: mean {mean}, spread {spread}"
    );
    b.screenshot(name);
    b
}
