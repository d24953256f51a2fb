//! Audio/video timing as a viewer sees and hears it (tests/lip_sync.rs,
//! benches/glass_to_glass.rs). A Chromium publisher page (`tests/pages/av_source.js`) paints
//! its clock into a canvas and flashes a region of it with a tone on the same tick once a
//! second; it publishes that over WHIP and, as the floor, also sends it straight to a second
//! peer connection in the same page. A second Chromium loads the server's viewer page (the
//! real `www/player.js`). `tests/pages/av_probe.js` records, on both receiving sides, each
//! presented frame (when it is on screen, the sender's clock in it, whether it flashes) and
//! each tone onset in the played audio. Both browsers read one clock (this machine's), so
//! the age of a frame is glass-to-glass latency.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::chromium::Browser;

const SOURCE: &str = include_str!("../pages/av_source.js");
const PROBE: &str = include_str!("../pages/av_probe.js");

/// Starts the source, publishes it to `whip_url`, sends it straight to a peer in the page
/// with the video codec whipcast negotiated, and watches that peer's `<video>`.
const PUBLISH_AND_DIRECT: &str = "
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  // Chromium gathers a loopback candidate only once the page was granted a device.
  const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
  mic.getTracks().forEach((t) => t.stop());
  const source = window.avSource.start();
  const pc = await window.avSource.whip(url, source.stream);
  let codec = null;
  for (let i = 0; i < 100 && !codec; i++) {
    await new Promise((r) => setTimeout(r, 100));
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video' && s.codecId) codec = s.codecId;
    });
  }
  if (!codec) return done('the WHIP peer connection never sent video');
  const mime = (await pc.getStats()).get(codec).mimeType;
  const direct = await window.avSource.direct(source.stream, mime);
  window.avRecord = await window.avProbe.watch(direct.video, direct.stream);
  window.avPublisher = pc;
  done('ok ' + mime);
})().catch((e) => done('error ' + e));";

/// Waits until the viewer page plays a stream with audio and video, then watches its
/// `<video>`.
const WATCH_PLAYER: &str = "
const done = arguments[arguments.length - 1];
(async () => {
  const video = document.querySelector('video');
  const playing = () => window.whipcast && window.whipcast.state === 'live'
    && video.srcObject && video.srcObject.getTracks().length === 2;
  for (let i = 0; i < 600 && !playing(); i++) await new Promise((r) => setTimeout(r, 50));
  if (!playing()) return done('the viewer page never played audio and video');
  window.avRecord = await window.avProbe.watch(video, video.srcObject);
  done('ok');
})().catch((e) => done('error ' + e));";

const READ: &str = "const r = window.avRecord; return { frames: r.frames, onsets: r.onsets };";

/// The two browsers of a run: the publisher (with the direct floor) and the viewer.
pub struct Run {
    pub publisher: Browser,
    pub viewer: Browser,
    /// The video codec whipcast negotiated with the publisher (and the floor used).
    pub codec: String,
}

impl Run {
    /// Publishes to broadcast `id` of the server at `base` and watches view ID `view`.
    pub fn start(base: &str, id: &str, view: &str) -> Self {
        let publisher = page(&format!("{base}/"));
        let started = publisher.js_async(
            PUBLISH_AND_DIRECT,
            json!([format!("{base}/broadcast?id={id}")]),
        );
        let codec = started
            .as_str()
            .and_then(|s| s.strip_prefix("ok "))
            .unwrap_or_else(|| panic!("the publisher page: {started}"))
            .to_owned();
        let viewer = page(&format!("{base}/stream?id={view}"));
        let watching = viewer.js_async(WATCH_PLAYER, json!([]));
        assert_eq!(watching, "ok", "the viewer page");
        Self {
            publisher,
            viewer,
            codec,
        }
    }

    /// What each side recorded so far: (through whipcast, direct).
    pub fn records(&self) -> (Record, Record) {
        let read = |b: &Browser| Record::from_json(&b.js(READ, json!([])));
        (read(&self.viewer), read(&self.publisher))
    }

    /// Polls the records every second until `f` gives a value, for at most `limit`.
    pub fn wait<T>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut(&Record, &Record) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            let (whipcast, direct) = self.records();
            if let Some(v) = f(&whipcast, &direct) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "never happened: {what} (through whipcast: {} frames, {} tone onsets; \
                 direct: {} frames, {} tone onsets)",
                whipcast.frames.len(),
                whipcast.onsets.len(),
                direct.frames.len(),
                direct.onsets.len()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// A Chromium on `url` with the probe (and source) loaded. The server's pages forbid inline
/// and blob scripts (CSP), which the probe's AudioWorklet needs: CSP is bypassed for the
/// test's own scripts, as DevTools allows.
fn page(url: &str) -> Browser {
    let b = Browser::start();
    b.cdp("Page.setBypassCSP", json!({ "enabled": true }));
    b.goto(url);
    b.js(SOURCE, json!([]));
    b.js(PROBE, json!([]));
    b
}

/// One receiving side's record.
#[derive(Debug, Default)]
pub struct Record {
    /// Per presented frame: when it was on screen (ms, the machine's clock), its age (ms since
    /// the sender painted it; `None` when its clock blocks did not decode), whether it flashes.
    pub frames: Vec<(f64, Option<f64>, bool)>,
    /// When each tone onset reached the audio output (ms, the same clock).
    pub onsets: Vec<f64>,
}

impl Record {
    fn from_json(v: &Value) -> Self {
        let frames = v["frames"]
            .as_array()
            .expect("frames recorded")
            .iter()
            .map(|f| (f[0].as_f64().unwrap(), f[1].as_f64(), f[2] == true))
            .collect();
        let onsets = v["onsets"]
            .as_array()
            .expect("onsets recorded")
            .iter()
            .map(|t| t.as_f64().unwrap())
            .collect();
        Self { frames, onsets }
    }

    /// The ages of the frames whose clock decoded (glass-to-glass latency, ms).
    pub fn ages(&self) -> Vec<f64> {
        self.frames.iter().filter_map(|f| f.1).collect()
    }

    /// Per flash, keyed by the sender's second it marks: when it reached the screen.
    /// A flash is the first lit frame after an unlit one; its second is read from its
    /// clock blocks (so both sides' flashes pair up), else from the previous frame's.
    pub fn flashes(&self) -> BTreeMap<i64, f64> {
        let mut out = BTreeMap::new();
        let mut lit_before = true;
        let mut sent_before = None;
        for &(at, age, lit) in &self.frames {
            let sent = age.map(|a| at - a);
            if lit
                && !lit_before
                && let Some(sent) = sent.or(sent_before)
            {
                // The flash is painted in the first 100 ms of its second.
                out.insert(((sent + 500.0) / 1000.0).floor() as i64, at);
            }
            lit_before = lit;
            sent_before = sent.or(sent_before);
        }
        out
    }

    /// Per flash: how much later its tone reached the output than its picture the screen
    /// (ms; negative when the sound came first). Flashes without a tone onset within
    /// half a second are left out.
    pub fn av_offsets(&self) -> BTreeMap<i64, f64> {
        self.flashes()
            .into_iter()
            .filter_map(|(second, at)| {
                let onset = self
                    .onsets
                    .iter()
                    .copied()
                    .min_by(|a, b| (a - at).abs().total_cmp(&(b - at).abs()))?;
                ((onset - at).abs() < 500.0).then_some((second, onset - at))
            })
            .collect()
    }
}

/// The `q` quantile (0..=1) of `v`, nearest rank; `None` when empty.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied()
}
