//! Headless Chromium through chromedriver (W3C WebDriver over HTTP on loopback). Debian's
//! `chromium` and `chromium-driver` must be installed: tests fail, never skip, without them.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::udp_client::http;

pub struct Browser {
    driver: Child,
    url: String,
    session: String,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fake camera and microphone, allowed
    /// to use loopback for WebRTC.
    pub fn start() -> Self {
        Self::start_in(None)
    }

    /// The same, with chromedriver and Chromium inside a network namespace of the test's
    /// (`ip netns exec`): `(namespace, its own address)`. chromedriver then listens on every
    /// interface of that namespace and the test reaches it at that address.
    pub fn start_in(netns: Option<(&str, std::net::IpAddr)>) -> Self {
        Self::start_with(netns, &[])
    }

    /// The same, with more Chromium flags (e.g. `--ignore-certificate-errors`).
    pub fn start_with(netns: Option<(&str, std::net::IpAddr)>, extra: &[&str]) -> Self {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: apt-get install chromium chromium-driver"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = match netns {
            Some((ns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/bin/chromedriver"]);
                // Remote connections from the root namespace (the test) are allowed.
                c.arg("--allowed-ips=").arg("--allowed-origins=*");
                c
            }
            None => Command::new("/usr/bin/chromedriver"),
        };
        let driver = command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let host = netns.map_or("127.0.0.1".to_owned(), |(_, ip)| ip.to_string());
        let url = format!("http://{host}:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((host.as_str(), port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = TempDir(std::env::temp_dir().join(format!(
            "whipcast-chromium-{}",
            whipcast::secret::random_token()
        )));
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--autoplay-policy=no-user-gesture-required",
            "--window-size=1280,800",
        ];
        let mut args: Vec<String> = args.iter().chain(extra).map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.0.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let mut browser = Self {
            driver,
            url,
            session: String::new(),
            _profile: profile,
        };
        let v = browser.call("POST", "/session", caps);
        browser.session = v["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_owned();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, _, text) = http(
            method,
            &format!("{}{path}", self.url),
            &[("Content-Type", "application/json")],
            &body,
        );
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("chromedriver said {status}: {text}"));
        assert_eq!(status, 200, "WebDriver {path}: {v}");
        v["value"].clone()
    }

    /// A Chromium that publishes its fake camera and microphone over WHIP to broadcast `id`
    /// from the server's home page; `window.publisher` holds its peer connection and session.
    pub fn publishing(base: &str, id: &str) -> Self {
        Self::publishing_video(base, id, json!({ "width": 640, "height": 360 }))
    }

    /// The same, with `video` as the camera's constraints (e.g. a smaller picture, a lower
    /// frame rate: long tests that run many clients at once).
    pub fn publishing_video(base: &str, id: &str, video: Value) -> Self {
        Self::publishing_with(base, id, video, Value::Null)
    }

    /// The same at 640×360, offering only video codec `mime` (e.g. `video/VP9`; with
    /// `RTCRtpTransceiver.setCodecPreferences`, its RTX kept), in `scalability` mode (e.g.
    /// `L3T3_KEY`: spatial layers) if given.
    pub fn publishing_codec(base: &str, id: &str, mime: &str, scalability: Option<&str>) -> Self {
        let video = json!({ "width": 640, "height": 360 });
        Self::publishing_with(base, id, video, json!([mime, scalability]))
    }

    /// `codec`: `[mime, scalability mode]`, or null for the browser's choice.
    fn publishing_with(base: &str, id: &str, video: Value, codec: Value) -> Self {
        let publisher = Self::start();
        publisher.goto(&format!("{base}/"));
        let url = format!("{base}/broadcast?id={id}");
        let result =
            publisher.js_async(PUBLISH_FAKE_CAMERA, json!([url, video, codec[0], codec[1]]));
        assert_eq!(result, "ok", "the Chromium publisher's WHIP");
        publisher
    }

    /// Stops a publisher started here: closes its peer connection and DELETEs its session.
    pub fn unpublish(&self, base: &str) {
        self.js("window.publisher.pc.close()", json!([]));
        let location = self.js("return window.publisher.location", json!([]));
        let location = location.as_str().expect("the publisher's session");
        let (status, _, body) = http("DELETE", &format!("{base}{location}"), &[], "");
        assert_eq!(status, 200, "DELETE of the publisher's session: {body}");
    }

    /// A Chromium publishing its fake camera at 1280×720 as three simulcast layers, named as
    /// browser apps name them and listed smallest first: "q" (320×180, 250 kb/s), "h"
    /// (640×360, 800 kb/s), "f" (1280×720, 2.5 Mb/s).
    pub fn publishing_simulcast(base: &str, id: &str) -> Self {
        Self::publishing_simulcast_with(base, id, &[])
    }

    /// The same from a Chromium started with more flags (e.g. a fake camera playing a file,
    /// `--use-file-for-fake-video-capture`, busy enough that each layer fills its bitrate).
    pub fn publishing_simulcast_with(base: &str, id: &str, flags: &[&str]) -> Self {
        let publisher = Self::start_with(None, flags);
        publisher.goto(&format!("{base}/"));
        let result = publisher.js_async(
            PUBLISH_SIMULCAST,
            json!([format!("{base}/broadcast?id={id}")]),
        );
        assert_eq!(result, "ok", "the Chromium simulcast publisher's WHIP");
        publisher
    }

    pub fn goto(&self, url: &str) {
        self.call(
            "POST",
            &format!("/session/{}/url", self.session),
            json!({ "url": url }),
        );
    }

    /// Opens a new tab and makes it the one the next calls drive; returns its handle.
    pub fn new_tab(&self) -> String {
        let v = self.call(
            "POST",
            &format!("/session/{}/window/new", self.session),
            json!({ "type": "tab" }),
        );
        let handle = v["handle"].as_str().expect("a window handle").to_owned();
        self.switch_to(&handle);
        handle
    }

    /// Makes the tab `handle` the one the next calls drive.
    pub fn switch_to(&self, handle: &str) {
        self.call(
            "POST",
            &format!("/session/{}/window", self.session),
            json!({ "handle": handle }),
        );
    }

    /// How long [`goto`](Self::goto) waits for a page to load before it fails.
    pub fn page_load_timeout(&self, limit: Duration) {
        self.call(
            "POST",
            &format!("/session/{}/timeouts", self.session),
            json!({ "pageLoad": limit.as_millis() as u64 }),
        );
    }

    pub fn current_url(&self) -> String {
        self.call(
            "GET",
            &format!("/session/{}/url", self.session),
            Value::Null,
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Runs `script` in every document this tab loads from now on, before the page's own
    /// scripts (DevTools' `Page.addScriptToEvaluateOnNewDocument`, through chromedriver).
    pub fn before_page_scripts(&self, script: &str) {
        self.call(
            "POST",
            &format!("/session/{}/goog/cdp/execute", self.session),
            json!({ "cmd": "Page.addScriptToEvaluateOnNewDocument", "params": { "source": script } }),
        );
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            json!({ "script": script, "args": args }),
        )
    }

    /// Runs an async script: it must call `arguments[arguments.length - 1](value)`.
    pub fn js_async(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &format!("/session/{}/execute/async", self.session),
            json!({ "script": script, "args": args }),
        )
    }

    /// Runs a Chrome DevTools Protocol command (chromedriver's `goog/cdp/execute`).
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.call(
            "POST",
            &format!("/session/{}/goog/cdp/execute", self.session),
            json!({ "cmd": cmd, "params": params }),
        )
    }

    pub fn click(&self, css: &str) {
        self.js("document.querySelector(arguments[0]).click()", json!([css]));
    }

    pub fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
            json!([css]),
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Saves a screenshot to `target/screenshots/<name>.png` for people to look at.
    pub fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let png = self.call(
            "GET",
            &format!("/session/{}/screenshot", self.session),
            Value::Null,
        );
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    /// Polls `f` until it returns Some (bounded: a guard against "never happened").
    pub fn wait<T>(&self, what: &str, mut f: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "never happened: {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The viewer page's state (`window.whipcast.state`).
    pub fn player_state(&self) -> String {
        self.js(
            "return window.whipcast ? window.whipcast.state : null",
            json!([]),
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Frames decoded so far by the viewer page's peer connection.
    pub fn frames_decoded(&self) -> u64 {
        self.js_async(FRAMES_DECODED, json!([]))
            .as_u64()
            .unwrap_or(0)
    }

    /// The viewer page's audio so far (`inbound-rtp`): (packets received, samples decoded,
    /// i.e. `totalSamplesReceived - concealedSamples`).
    pub fn audio_received(&self) -> (u64, u64) {
        let v = self.js_async(AUDIO_RECEIVED, json!([]));
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        (n("packets"), n("samples"))
    }

    /// Waits until audio packets arrive and decoded samples rise: (packets, samples).
    pub fn wait_audio(&self, what: &str) -> (u64, u64) {
        let (packets, samples) = self.audio_received();
        self.wait(what, |b| {
            let (p, s) = b.audio_received();
            (p > packets && s > samples).then_some((p, s))
        })
    }

    /// The viewer page's audio level so far (`inbound-rtp`): (`totalAudioEnergy`,
    /// `totalSamplesDuration`), both over the audio WebRTC decoded and played out. Chromium
    /// takes the level after the element's volume: a muted page (as it starts, for autoplay)
    /// plays silence, so [`Self::unmute`] it first.
    pub fn audio_energy(&self) -> (f64, f64) {
        let v = self.js_async(AUDIO_RECEIVED, json!([]));
        let n = |k: &str| {
            v[k].as_f64()
                .unwrap_or_else(|| panic!("inbound-rtp audio has no {k}: {v}"))
        };
        (n("energy"), n("duration"))
    }

    /// Unmutes the viewer page as a viewer does, with its Unmute button (the browser is
    /// started with `--autoplay-policy=no-user-gesture-required`, so playback goes on).
    pub fn unmute(&self) {
        let muted = self.js("return document.querySelector('video').muted", json!([]));
        assert!(muted.is_boolean(), "the viewer page has a <video>: {muted}");
        if muted == true {
            self.click("#unmute");
        }
        self.wait("the viewer page is unmuted and playing", |b| {
            let v = b.js(
                "const v = document.querySelector('video'); return !v.muted && !v.paused",
                json!([]),
            );
            (v == true).then_some(())
        });
    }

    /// Waits until the audio played over a second or more, on an unmuted page, is loud
    /// enough to be heard ([`super::opus::audible_energy`]); returns its mean square level.
    /// Fails on silence.
    pub fn wait_audible(&self, what: &str) -> f64 {
        let (e0, d0) = self.audio_energy();
        let mut heard = 0.0;
        self.wait(what, |b| {
            let (e, d) = b.audio_energy();
            heard = super::opus::mean_square(e - e0, d - d0);
            (d - d0 >= 1.0 && super::opus::audible_energy(heard)).then_some(heard)
        });
        heard
    }

    /// Mean luma and its spread over the `<video>` picture, drawn to a canvas.
    pub fn picture(&self) -> (f64, f64) {
        let v = self.js(PICTURE, json!([]));
        (
            v["mean"].as_f64().unwrap_or(0.0),
            v["spread"].as_f64().unwrap_or(0.0),
        )
    }

    /// Waits until the page has decoded more than 10 frames beyond what it had, and then
    /// more again at the next look: decoding goes on, it did not just drain a buffer.
    pub fn wait_decoding(&self, what: &str) -> u64 {
        let start = self.frames_decoded();
        let mut seen: Option<u64> = None;
        self.wait(what, |b| {
            let n = b.frames_decoded();
            let rising = seen.is_some_and(|s| n > s);
            if n > start + 10 && seen.is_none() {
                seen = Some(n);
            }
            rising.then_some(n)
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(
                "DELETE",
                &format!("{}/session/{}", self.url, self.session),
                &[],
                "",
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const FRAMES_DECODED: &str = "
const done = arguments[arguments.length - 1];
const pc = window.whipcast && window.whipcast.pc;
if (!pc) return done(0);
pc.getStats().then(stats => {
  let n = 0;
  stats.forEach(r => { if (r.type === 'inbound-rtp' && r.kind === 'video') n = r.framesDecoded || 0; });
  done(n);
}).catch(() => done(0));";

const AUDIO_RECEIVED: &str = "
const done = arguments[arguments.length - 1];
const pc = window.whipcast && window.whipcast.pc;
if (!pc) return done({});
pc.getStats().then(stats => {
  const n = {};
  stats.forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      n.packets = r.packetsReceived || 0;
      n.samples = (r.totalSamplesReceived || 0) - (r.concealedSamples || 0);
      n.energy = r.totalAudioEnergy;
      n.duration = r.totalSamplesDuration;
    }
  });
  done(n);
}).catch(() => done({}));";

const PICTURE: &str = "
const v = document.querySelector('video');
if (!v || !v.videoWidth) return { mean: 0, spread: 0 };
const c = document.createElement('canvas');
c.width = 64; c.height = 36;
const g = c.getContext('2d');
g.drawImage(v, 0, 0, c.width, c.height);
const d = g.getImageData(0, 0, c.width, c.height).data;
let sum = 0, sq = 0, n = 0;
for (let i = 0; i < d.length; i += 4) { const y = 0.2126 * d[i] + 0.7152 * d[i + 1] + 0.0722 * d[i + 2]; sum += y; sq += y * y; n++; }
const mean = sum / n;
return { mean, spread: Math.sqrt(Math.max(0, sq / n - mean * mean)) };";

/// WebDriver scripts that publish the page's fake camera and microphone over WHIP.
const PUBLISH_SIMULCAST: &str = include_str!("../pages/publish_simulcast.js");
const PUBLISH_FAKE_CAMERA: &str = include_str!("../pages/publish_fake_camera.js");
