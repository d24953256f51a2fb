//! A viewer behind a link of limited bandwidth, as a phone or a busy home line is: a network
//! namespace of the test's own joined to the root namespace (where whipcast listens) by a veth
//! pair, whose root end sends towards the viewer through a token bucket (`tc qdisc … tbf`:
//! this machine's kernel has tbf and htb, no netem). The cap can be set, changed and lifted
//! while the viewer watches. Also: a fake camera busy enough that each simulcast layer fills
//! its bitrate, and what a page presents, frame by frame, as a person would see it.
//! Needs root, iproute2, ffmpeg; a test fails, never skips, without them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::chromium::Browser;
use super::firefox::FirefoxPage;

use super::netns::{Netns, link};

/// The viewer's namespace and the veth end that carries what whipcast sends it.
pub struct ShapedLink {
    pub ns: Netns,
    /// Where whipcast listens (the root namespace's end).
    pub server: IpAddr,
    /// The viewer's address, in its namespace.
    pub viewer: IpAddr,
    towards_viewer: String,
}

impl ShapedLink {
    /// A viewer namespace on `10.<subnet>.0.2`, the root namespace's end `10.<subnet>.0.1`,
    /// with nothing capped yet.
    pub fn new(subnet: u8) -> Self {
        let ns = Netns::new();
        let (root_end, _) = link(
            None,
            &format!("10.{subnet}.0.1/24"),
            Some(&ns),
            &format!("10.{subnet}.0.2/24"),
        );
        Self {
            ns,
            server: [10, subnet, 0, 1].into(),
            viewer: [10, subnet, 0, 2].into(),
            towards_viewer: root_end,
        }
    }

    /// Caps what reaches the viewer at `kbit_s`: a token bucket with a queue of at most
    /// 200 ms (a home router's buffer; what overflows it is dropped). A cap already there
    /// changes, its queue kept.
    pub fn cap(&self, kbit_s: u32) {
        self.shape(&format!("{kbit_s}kbit"), "20kb");
    }

    /// Lifts the cap: the bucket's rate goes up to 10 Gb/s, what is queued in it still goes
    /// (deleting it would drop its queue, which a link that gets faster does not do).
    pub fn lift(&self) {
        if self.cap_stats().is_some() {
            self.shape("10gbit", "4mb");
        }
    }

    fn shape(&self, rate: &str, burst: &str) {
        let verb = if self.cap_stats().is_some() {
            "change"
        } else {
            "add"
        };
        ip_tc(&[
            "qdisc",
            verb,
            "dev",
            &self.towards_viewer,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            burst,
            "latency",
            "200ms",
        ]);
    }

    /// (bytes sent, packets dropped) by the cap so far; zeros when there is none.
    pub fn cap_counters(&self) -> (u64, u64) {
        self.cap_stats().map_or((0, 0), |q| {
            (
                q["bytes"].as_u64().unwrap_or(0),
                q["drops"].as_u64().unwrap_or(0),
            )
        })
    }

    /// Bytes waiting in the cap's queue now (zero when there is no cap).
    pub fn cap_backlog(&self) -> u64 {
        self.cap_stats()
            .and_then(|q| q["backlog"].as_u64())
            .unwrap_or(0)
    }

    fn cap_stats(&self) -> Option<Value> {
        let out = Command::new("tc")
            .args(["-s", "-j", "qdisc", "show", "dev", &self.towards_viewer])
            .output()
            .expect("tc runs");
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (listed.as_array().into_iter().flatten())
            .find(|q| q["kind"] == "tbf")
            .cloned()
    }
}

fn ip_tc(args: &[&str]) {
    let out = Command::new("tc")
        .args(args)
        .output()
        .expect("`tc` runs: the tests need iproute2 and root");
    assert!(
        out.status.success(),
        "tc {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Y4M file for Chromium's fake camera (`--use-file-for-fake-video-capture`): 1280×720 at
/// 30 fps, two seconds of ffmpeg's moving test picture with grain on it that changes every
/// frame, so that an encoder needs its whole bitrate at every size (the plain fake camera is
/// so easy that a 2.5 Mb/s layer sends ~500 kb/s). Made once per test process.
pub fn busy_camera() -> PathBuf {
    let path = std::env::temp_dir().join(format!("whipcast-busy-{}.y4m", std::process::id()));
    if path.exists() {
        return path;
    }
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", "testsrc2=size=1280x720:rate=30:duration=2"])
        .args(["-vf", "noise=alls=24:allf=t", "-pix_fmt", "yuv420p"])
        .arg(&path)
        .output()
        .expect("ffmpeg runs: apt-get install ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg made no Y4M: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Installed in a viewer page: keeps, for every frame the `<video>` presents, when it was
/// presented and at what height (`requestVideoFrameCallback`, in Chromium and Firefox), in
/// `window.presented`.
pub const COUNT_PRESENTED: &str = "
window.presented = [];
const watch = () => {
  const v = document.querySelector('video');
  if (!v || !v.requestVideoFrameCallback) return setTimeout(watch, 100);
  const each = (now, meta) => {
    window.presented.push([Math.round(now), meta.height]);
    v.requestVideoFrameCallback(each);
  };
  v.requestVideoFrameCallback(each);
};
watch();";

/// Frames presented from `from` on (page milliseconds), as (time, height).
pub const PRESENTED_SINCE: &str = "
const from = arguments[0];
return [Math.round(performance.now()), (window.presented || []).filter(([t]) => t >= from)];";

/// What a person watching would notice over a stretch of presented frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watched {
    /// Frames presented per second.
    pub fps: f64,
    /// Pauses between two frames longer than [`FREEZE_MS`]: a picture that stops.
    pub freezes: usize,
    /// The longest pause, in ms.
    pub longest_ms: u64,
    /// The heights seen, the last one last.
    pub last_height: u64,
}

/// A pause between frames that a viewer sees as a freeze. WebRTC's own stats call a freeze a
/// pause over three frames' time and over 150 ms more than the mean: at 30 fps, ~183 ms.
pub const FREEZE_MS: u64 = 200;

/// Reads `frames` ((ms, height) pairs) presented over `span_ms`.
pub fn watched(frames: &[(u64, u64)], span_ms: u64) -> Watched {
    let gaps = frames.windows(2).map(|w| w[1].0.saturating_sub(w[0].0));
    let (mut freezes, mut longest) = (0, 0);
    for g in gaps {
        longest = longest.max(g);
        if g > FREEZE_MS {
            freezes += 1;
        }
    }
    Watched {
        fps: frames.len() as f64 * 1000.0 / span_ms.max(1) as f64,
        freezes,
        longest_ms: longest,
        last_height: frames.last().map_or(0, |f| f.1),
    }
}

/// The (ms, height) pairs of a [`PRESENTED_SINCE`] answer, and the page's time then.
pub fn presented(answer: &Value) -> (u64, Vec<(u64, u64)>) {
    let now = answer[0].as_u64().unwrap_or(0);
    let frames = (answer[1].as_array().into_iter().flatten())
        .map(|f| (f[0].as_u64().unwrap_or(0), f[1].as_u64().unwrap_or(0)))
        .collect();
    (now, frames)
}

/// The publisher's outbound video per layer: rid → (bytes sent, keyframes encoded, height).
pub const PUBLISHER_LAYERS: &str = "
const done = arguments[arguments.length - 1];
window.publisher.pc.getStats().then((stats) => {
  const out = {};
  stats.forEach((r) => { if (r.type === 'outbound-rtp' && r.kind === 'video') out[r.rid] = [r.bytesSent || 0, r.keyFramesEncoded || 0, r.frameHeight || 0]; });
  done(out);
}).catch((e) => done(String(e)));";

/// A viewer page in a browser a test drives: Chromium (WebDriver) or Firefox
/// ([`FirefoxPage`]).
pub trait Page {
    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    fn js(&self, script: &str, args: Value) -> Value;
}

impl Page for Browser {
    fn js(&self, script: &str, args: Value) -> Value {
        Browser::js(self, script, args)
    }
}

impl Page for FirefoxPage {
    fn js(&self, script: &str, args: Value) -> Value {
        FirefoxPage::js(self, script, args)
    }
}

/// A page's presented-frames clock now (page milliseconds).
pub fn page_now(page: &impl Page) -> u64 {
    page.js(PRESENTED_SINCE, json!([u64::MAX]))[0]
        .as_u64()
        .unwrap_or(0)
}

/// What a page presented since `from` (its own clock).
pub fn since(page: &impl Page, from: u64) -> Watched {
    let (now, frames) = presented(&page.js(PRESENTED_SINCE, json!([from])));
    watched(&frames, now.saturating_sub(from))
}

/// The height a page presents now (its last frame's).
pub fn height_now(page: &impl Page) -> u64 {
    let from = page_now(page).saturating_sub(500);
    since(page, from).last_height
}

/// A counter of the server's /metrics.
pub fn metric(base: &str, name: &str) -> u64 {
    let (_, _, text) = super::udp_client::http("GET", &format!("{base}/metrics"), &[], "");
    (text.lines())
        .find_map(|l| l.strip_prefix(&format!("whipcast_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// The height of the publisher's full layer now (Chromium lowers its layers' sizes when its
/// CPU is short: 720p may become 540p).
pub fn full_height(publisher: &Browser) -> u64 {
    let v = publisher.js_async(PUBLISHER_LAYERS, json!([]));
    (v.as_object().into_iter().flatten())
        .map(|(_, l)| l[2].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0)
}

/// Keyframes the publisher encoded so far, all layers.
pub fn keyframes(publisher: &Browser) -> u64 {
    let v = publisher.js_async(PUBLISHER_LAYERS, json!([]));
    (v.as_object().into_iter().flatten())
        .map(|(_, l)| l[1].as_u64().unwrap_or(0))
        .sum()
}

/// The publisher's layers over a second, the largest first: (rid, kb/s, height).
pub fn publisher_rates(publisher: &Browser) -> Vec<(String, u64, u64)> {
    let a = publisher.js_async(PUBLISHER_LAYERS, json!([]));
    std::thread::sleep(Duration::from_secs(1));
    let b = publisher.js_async(PUBLISHER_LAYERS, json!([]));
    let mut rates: Vec<(String, u64, u64)> = (b.as_object().into_iter().flatten())
        .map(|(rid, l)| {
            let bytes = l[0].as_u64().unwrap_or(0) - a[rid][0].as_u64().unwrap_or(0);
            (rid.clone(), bytes * 8 / 1000, l[2].as_u64().unwrap_or(0))
        })
        .collect();
    rates.sort_by_key(|r| std::cmp::Reverse(r.2));
    rates
}

pub fn viewer_page(page: &Browser, url: &str) {
    page.before_page_scripts(COUNT_PRESENTED);
    page.goto(url);
    page.wait("the viewer page says live", |b| {
        (b.player_state() == "live").then_some(())
    });
    page.wait_decoding("frames decoded");
}

/// The issue's limit for a capped viewer to settle on a layer that fits ("within 5 s, and
/// then … no new freeze for 20 s"). What a viewer shows before then is settling: its start
/// burst draining through the capped link's queue, a move down.
pub const SETTLED_BY: Duration = Duration::from_secs(5);

/// Waits until [`SETTLED_BY`] after `joined` (at once if that is past: a viewer that
/// settled later, on a loaded machine, is watched from then).
pub fn until_settled(joined: Instant) {
    if let Some(left) = (joined + SETTLED_BY).checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

/// Waits up to `limit` for `f`; how long it took.
pub fn within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
    t0.elapsed()
}

/// whipcast on the root end of `link`, its data in a fresh temp dir named `name`: the server
/// and its base URL.
pub async fn server_on(link: &ShapedLink, name: &str) -> (whipcast::Server, String) {
    use clap::Parser;
    let data = super::server::temp_dir(name);
    let listen = format!("{}:0", link.server);
    let args = [
        "whipcast",
        "--http-listen",
        &listen,
        "--udp-listen",
        &listen,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let server = super::server::start_config(whipcast::Config::parse_from(args))
        .await
        .expect("server starts");
    let base = format!("http://{}", server.http_addr);
    (server, base)
}

/// A Chromium publishing three simulcast layers of [`busy_camera`] to broadcast `id`, once
/// its own estimate has ramped up so that the layers fill their bitrates (the full one well
/// over `cap_kbit`): the publisher, its layers ((rid, kb/s, height), the largest first) and
/// the keyframes a second its encoder makes on its own (when it resizes a layer for CPU),
/// over which what viewers add is counted.
pub fn busy_simulcast_publisher(
    base: &str,
    id: &str,
    cap_kbit: u32,
) -> (Browser, Vec<(String, u64, u64)>, f64) {
    let flag = format!(
        "--use-file-for-fake-video-capture={}",
        busy_camera().display()
    );
    // The camera is for secure pages: loopback's, or one named so.
    let secure = format!("--unsafely-treat-insecure-origin-as-secure={base}");
    let publisher = Browser::publishing_simulcast_with(base, id, &[&flag, &secure]);
    let t0 = Instant::now();
    let rates = loop {
        let rates = publisher_rates(&publisher);
        eprintln!(
            "{:>5.1}s publisher layers: {rates:?}",
            t0.elapsed().as_secs_f64()
        );
        let filled = rates.len() == 3 && rates[0].1 >= 1500 && rates[1].1 >= 600;
        if filled || t0.elapsed() > Duration::from_secs(30) {
            break rates;
        }
    };
    assert!(
        rates.len() == 3 && rates[0].1 > u64::from(cap_kbit) * 3 / 2,
        "three layers, the full one well over the cap: {rates:?}"
    );
    let k = keyframes(&publisher);
    std::thread::sleep(Duration::from_secs(10));
    let alone = (keyframes(&publisher) - k) as f64 / 10.0;
    eprintln!("publisher {rates:?}: {alone:.1} keyframes a second on its own");
    (publisher, rates, alone)
}
