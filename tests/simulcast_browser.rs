//! Simulcast as a viewer sees it: a Chromium publisher sends three layers (rids "q", "h",
//! "f", listed smallest first as browser apps do), and the Chromium viewer page's quality menu
//! lists them by height (from the server's `layers` event), moves the picture to the layer
//! chosen, and back to the full size with Auto; the broadcaster's page lists the layers.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use common::chromium::Browser;
use common::page_test::{blocking, start};
use common::server::create;
use serde_json::{Value, json};

/// The quality menu: whether it is shown, and its options as (value, label).
fn menu(page: &Browser) -> (bool, Vec<(String, String)>) {
    let v = page.js(
        "const q = document.getElementById('quality');
         return [!q.classList.contains('hidden'), [...q.options].map(o => [o.value, o.textContent])];",
        json!([]),
    );
    let shown = v[0].as_bool().unwrap_or(false);
    let options = (v[1].as_array().into_iter().flatten())
        .map(|o| {
            let s = |i: usize| o[i].as_str().unwrap_or_default().to_owned();
            (s(0), s(1))
        })
        .collect();
    (shown, options)
}

fn choose(page: &Browser, value: &str) {
    page.js(
        "const q = document.getElementById('quality');
         q.value = arguments[0];
         q.dispatchEvent(new Event('change'));",
        json!([value]),
    );
}

/// The height of the picture the viewer presents now.
fn height(page: &Browser) -> u64 {
    page.js(
        "return document.querySelector('video').videoHeight",
        json!([]),
    )
    .as_u64()
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quality_menu_moves_the_picture_to_the_layer_chosen_and_auto_brings_the_full_one() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let publisher = Browser::publishing_simulcast(&base, &id);
        let viewer = Browser::start();
        viewer.goto(&format!("{base}/stream?id={view}"));
        viewer.wait("the viewer page says live", |b| {
            (b.player_state() == "live").then_some(())
        });
        viewer.wait_decoding("frames decoded");
        // Auto, then one entry per layer that arrives, by its height.
        let options = viewer.wait("the menu lists Auto and at least two layers", |b| {
            let (shown, options) = menu(b);
            (shown && options.len() >= 3).then_some(options)
        });
        eprintln!("quality menu: {options:?}");
        assert_eq!(options[0], (String::new(), "Auto".to_owned()));
        let heights: Vec<u64> = options[1..]
            .iter()
            .map(|(_, label)| label.trim_end_matches('p').parse().unwrap_or(0))
            .collect();
        assert!(
            heights.iter().all(|&h| h > 0) && heights.windows(2).all(|w| w[0] > w[1]),
            "layers by height, the full size first: {options:?}"
        );
        let full = viewer.wait("the full-size picture", |b| {
            let h = height(b);
            (h == heights[0]).then_some(h)
        });
        let (small_rid, _) = options.last().unwrap().clone();
        let small = *heights.last().unwrap();
        choose(&viewer, &small_rid);
        viewer.wait("the picture moves to the smallest layer", |b| {
            (height(b) == small).then_some(())
        });
        let decoded = viewer.wait_decoding("frames decoded on the small layer");
        eprintln!("full {full}p, then {small}p: {decoded} frames decoded there");
        // The stats overlay names the layer the server sends, pinned from the menu.
        viewer.click("#statsToggle");
        let stats = viewer.wait("the stats overlay shows the pinned small layer", |b| {
            let text = b.text("#stats");
            (text.contains(&format!("{small}p (layer {small_rid})")) && text.contains("Pinned"))
                .then_some(text)
        });
        eprintln!("stats overlay: {stats}");
        viewer.screenshot("simulcast_smallest_layer");
        viewer.click("#statsToggle");
        choose(&viewer, "");
        viewer.wait("Auto brings the full size back", |b| {
            (height(b) == full).then_some(())
        });
        viewer.wait_decoding("frames decoded on the full layer again");
        let stats: Value = viewer.js("return window.whipcast && window.whipcast.state", json!([]));
        assert_eq!(stats, "live");
        // The broadcaster's page lists the layers as they arrive.
        publisher.new_tab();
        publisher.goto(&format!("{base}/broadcast?id={id}"));
        let layers = publisher.wait("the broadcaster page lists three layers", |b| {
            let v = b.js(
                "const l = document.getElementById('layers');
                 return l.classList.contains('hidden') ? [] : [...l.querySelectorAll('b')].map(b => b.textContent);",
                json!([]),
            );
            let texts: Vec<String> = (v.as_array().into_iter().flatten())
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            (texts.len() == 3 && texts.iter().all(|t| t.contains("kb/s"))).then_some(texts)
        });
        eprintln!("broadcaster page layers: {layers:?}");
        assert!(layers[0].starts_with("1280x720"), "{layers:?}");
        publisher.screenshot("simulcast_broadcaster_page");
    })
    .await;
    r.server.shutdown().await;
}
