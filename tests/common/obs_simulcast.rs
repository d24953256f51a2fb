//! An OBS 32.1-shaped simulcast publisher over real UDP whose layers a browser decodes: WHIP
//! with rids "0", "1", "2" (the full size first, `a=simulcast:send 0;1;2`), H.264 Constrained
//! Baseline announced as `42e01f` at PT 96, Opus at 111, no RTX, no candidates in the offer,
//! CRLF, `a=group:LS`. Each layer is a real H.264 stream made at test time by ffmpeg (libx264,
//! zerolatency, keyframe every 2 s, SPS/PPS before each IDR as OBS's WHIP output forces) from
//! a busy moving test picture, sent in a loop at 30 fps with the Opus tone fixture. A keyframe
//! request (PLI/FIR) for a layer is answered at its next frame with the next IDR of its file
//! (skipping ahead), and counted. Needs ffmpeg.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Simulcast, SimulcastLayer};
use str0m::net::Receive;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::annexb::{AccessUnit, access_units};
use super::http_client::{header, http};
use super::link::Link;
use super::sim::obs_shape;

/// One simulcast layer: its rid, its size and the bitrate its encoder is given.
#[derive(Clone, Copy, Debug)]
pub struct Layer {
    pub rid: &'static str,
    pub width: u32,
    pub height: u32,
    pub kbps: u32,
}

/// OBS's three layers of a 1280×720 output: sizes 100/66/33 % as OBS computes them
/// (`WHIPSimulcastEncoders`: 1280/3 = 426 per step, even). OBS would give the bitrates the
/// same ratios (2500/1666/833); with those no layer but the smallest fits a 1 Mb/s link, so
/// the lower two get what Chromium gives its 360p and 180p layers (800 and 250 kb/s).
pub const OBS_LAYERS: [Layer; 3] = [
    Layer {
        rid: "0",
        width: 1280,
        height: 720,
        kbps: 2500,
    },
    Layer {
        rid: "1",
        width: 852,
        height: 480,
        kbps: 800,
    },
    Layer {
        rid: "2",
        width: 426,
        height: 240,
        kbps: 250,
    },
];

/// Frames per second, and the keyframe interval of the files (2 s).
const FPS: u64 = 30;
const GOP: u64 = 60;
/// How long each file lasts before it loops.
const SECONDS: u64 = 10;

/// What one layer sent and was asked for so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerCounts {
    pub frames: u64,
    pub bytes: u64,
    /// Keyframes sent, those of the file's own GOP included.
    pub keyframes: u64,
    /// Keyframe requests (PLI or FIR) received for this layer.
    pub requests: u64,
    /// Keyframes sent early, to answer a request.
    pub forced: u64,
}

#[derive(Default)]
struct Shared {
    connected: bool,
    layers: [LayerCounts; 3],
    audio_packets: u64,
    /// Frames written over 50 ms after their time (the thread was starved): when, how late.
    late: Vec<(Instant, Duration)>,
}

/// The running publisher: its thread and what it counted.
pub struct ObsSimulcast {
    pub location: String,
    /// The server's SDP answer, as it came.
    pub answer: String,
    /// The offer as it was POSTed.
    pub offer: String,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ObsSimulcast {
    /// POSTs an OBS-shaped simulcast offer for `layers` (the full size first) to `base`'s
    /// WHIP endpoint with `broadcast_id` as Bearer token, and streams once connected. Panics
    /// unless the server answers as OBS requires: 201, a Location, an answer accepting every
    /// layer on a CRLF-terminated `a=simulcast:recv` line.
    pub fn publish(base: &str, broadcast_id: &str, layers: &[Layer; 3]) -> Self {
        let files: Vec<Vec<AccessUnit>> = layers.iter().map(|l| access_units(&encode(l))).collect();
        let mut cfg = RtcConfig::new().clear_codecs();
        cfg.codec_config().add_h264(96.into(), None, true, 0x42e01f);
        cfg.codec_config().enable_opus(true, false);
        let socket = UdpSocket::bind((local_ip_towards(base), 0)).unwrap();
        let mut rtc = cfg.build(Instant::now());
        rtc.add_local_candidate(Candidate::host(socket.local_addr().unwrap(), "udp").unwrap());
        let mut simulcast = Simulcast::new();
        for l in layers {
            simulcast.add_send_layer(SimulcastLayer::new(l.rid));
        }
        let mut api = rtc.sdp_api();
        let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let video = api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            None,
            None,
            Some(simulcast),
        );
        let (offer, pending) = api.apply().expect("an offer");
        let offer = obs_shape(&offer.to_sdp_string());
        let auth = format!("Bearer {broadcast_id}");
        let headers = [
            ("Content-Type", "application/sdp"),
            ("Authorization", auth.as_str()),
            (
                "User-Agent",
                "Mozilla/5.0 (OBS-Studio/32.1.0; Linux x86_64; en-US)",
            ),
        ];
        let (status, got, answer) = http("POST", &format!("{base}/broadcast"), &headers, &offer);
        assert_eq!(status, 201, "OBS needs 201: {answer}");
        let location = header(&got, "location")
            .expect("OBS needs a Location")
            .to_owned();
        let rids: Vec<&str> = layers.iter().map(|l| l.rid).collect();
        let wanted = format!("a=simulcast:recv {}\r\n", rids.join(";"));
        assert!(
            answer.contains(&wanted),
            "OBS counts the layers on the answer's a=simulcast line (CRLF): {answer}"
        );
        let parsed = SdpAnswer::from_sdp_string(&answer).expect("the answer parses");
        rtc.sdp_api()
            .accept_answer(pending, parsed)
            .expect("answer accepted");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let sender = Sender {
            audio,
            video,
            rids: layers.map(|l| l.rid),
            files,
            at: [0; 3],
            key_wanted: [false; 3],
            tone: super::opus::tone(),
            frames: 0,
            packets: 0,
            next_frame: None,
            next_packet: None,
        };
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || run(rtc, Link::udp(socket), sender, &shared, &stop))
        };
        Self {
            location,
            answer,
            offer,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub fn connected(&self) -> bool {
        self.shared.lock().unwrap().connected
    }

    /// Each layer's counts, in the order of the layers given.
    pub fn counts(&self) -> [LayerCounts; 3] {
        self.shared.lock().unwrap().layers
    }

    /// Keyframe requests received so far, all layers.
    pub fn requests(&self) -> u64 {
        self.counts().iter().map(|c| c.requests).sum()
    }

    /// Keyframes sent early to answer requests, all layers.
    pub fn forced(&self) -> u64 {
        self.counts().iter().map(|c| c.forced).sum()
    }

    /// Frames written over 50 ms late since `from`: (ms after `from`, ms late).
    pub fn late_since(&self, from: Instant) -> Vec<(u64, u64)> {
        (self.shared.lock().unwrap().late.iter())
            .filter(|(at, _)| *at >= from)
            .map(|(at, late)| ((*at - from).as_millis() as u64, late.as_millis() as u64))
            .collect()
    }

    pub fn audio_packets(&self) -> u64 {
        self.shared.lock().unwrap().audio_packets
    }
}

impl Drop for ObsSimulcast {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The layer's H.264 Annex B file, made once per test process in the temp dir.
fn encode(l: &Layer) -> Vec<u8> {
    let name = format!(
        "whipcast-obs-{}-{}x{}-{}k.h264",
        std::process::id(),
        l.width,
        l.height,
        l.kbps
    );
    let path: PathBuf = std::env::temp_dir().join(name);
    if !path.exists() {
        let (rate, buffer) = (format!("{}k", l.kbps), format!("{}k", l.kbps / 2));
        let source = format!(
            "testsrc2=size={}x{}:rate={FPS}:duration={SECONDS}",
            l.width, l.height
        );
        let gop = GOP.to_string();
        let partial = path.with_extension("part");
        let out = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
            .args(["-i", &source, "-vf", "noise=alls=20:allf=t"])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-tune",
                "zerolatency",
            ])
            .args([
                "-profile:v",
                "baseline",
                "-level",
                "3.1",
                "-pix_fmt",
                "yuv420p",
            ])
            .args(["-g", &gop, "-keyint_min", &gop, "-sc_threshold", "0"])
            .args(["-b:v", &rate, "-maxrate", &rate, "-bufsize", &buffer])
            .args(["-x264-params", "repeat-headers=1", "-threads", "1"])
            .args(["-f", "h264"])
            .arg(&partial)
            .output()
            .expect("ffmpeg runs: apt-get install ffmpeg");
        assert!(
            out.status.success(),
            "ffmpeg made no H.264: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&partial, &path).unwrap();
    }
    let data = std::fs::read(&path).unwrap();
    let units = access_units(&data);
    assert_eq!(units.len() as u64, FPS * SECONDS, "{}", path.display());
    assert!(units[0].keyframe, "{} starts with an IDR", path.display());
    data
}

/// The client loop, by the str0m contract: poll, send what is due, wait for a datagram or
/// the next timeout.
fn run(
    mut rtc: Rtc,
    mut link: Link,
    mut sender: Sender,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut wake = Instant::now() + Duration::from_millis(50);
        loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    wake = wake.min(t);
                    break;
                }
                Ok(Output::Transmit(t)) => link.send(&t),
                Ok(Output::Event(e)) => sender.on_event(e, shared),
                Err(_) => return,
            }
        }
        if shared.lock().unwrap().connected {
            match sender.send_due(&mut rtc, shared) {
                Some(next) => wake = wake.min(next),
                None => continue,
            }
        }
        let wait = (wake.saturating_duration_since(Instant::now())).max(Duration::from_millis(1));
        let arrived = link.recv(wait);
        let input = match &arrived {
            Some((proto, src, local, data)) => match Receive::new(*proto, *src, *local, data) {
                Ok(r) => Input::Receive(Instant::now(), r),
                Err(_) => continue,
            },
            None => Input::Timeout(Instant::now()),
        };
        if rtc.handle_input(input).is_err() {
            return;
        }
    }
}

/// What is sent and when: a frame of every layer every 33.3 ms, an Opus packet every 20 ms.
struct Sender {
    audio: Mid,
    video: Mid,
    rids: [&'static str; 3],
    files: Vec<Vec<AccessUnit>>,
    /// Each layer's next access unit in its file.
    at: [usize; 3],
    /// A keyframe was asked for on the layer and not yet sent.
    key_wanted: [bool; 3],
    tone: Vec<Vec<u8>>,
    frames: u64,
    packets: u64,
    next_frame: Option<Instant>,
    next_packet: Option<Instant>,
}

const FRAME: Duration = Duration::from_micros(33_333);
const PACKET: Duration = Duration::from_millis(20);

impl Sender {
    fn on_event(&mut self, e: Event, shared: &Mutex<Shared>) {
        let mut s = shared.lock().unwrap();
        match e {
            Event::Connected => s.connected = true,
            Event::KeyframeRequest(r) if r.mid == self.video => {
                let rid = r.rid.as_deref().map(str::to_owned);
                // Without a rid (a request by SSRC str0m could not map) the full layer.
                let i = (self.rids.iter())
                    .position(|x| rid.as_deref() == Some(*x))
                    .unwrap_or(0);
                s.layers[i].requests += 1;
                self.key_wanted[i] = true;
            }
            _ => {}
        }
    }

    /// Writes a video frame (every layer) or an audio packet if one is due and returns
    /// `None` (poll the `Rtc` again), else returns when the next one is due.
    fn send_due(&mut self, rtc: &mut Rtc, shared: &Mutex<Shared>) -> Option<Instant> {
        let now = Instant::now();
        let pt = |mid| rtc.media(mid).and_then(|m| m.remote_pts().first().copied());
        let (Some(vpt), Some(apt)) = (pt(self.video), pt(self.audio)) else {
            return Some(now + PACKET);
        };
        let next_frame = *self.next_frame.get_or_insert(now);
        let next_packet = *self.next_packet.get_or_insert(now);
        if now >= next_frame {
            let time = MediaTime::from_90khz(self.frames * 90_000 / FPS);
            let mut s = shared.lock().unwrap();
            if now - next_frame > Duration::from_millis(50) {
                s.late.push((now, now - next_frame));
            }
            for i in 0..3 {
                let file = &self.files[i];
                if self.key_wanted[i] && !file[self.at[i]].keyframe {
                    // The next IDR of the loop, as an encoder's forced keyframe.
                    let ahead =
                        (1..file.len()).find(|k| file[(self.at[i] + k) % file.len()].keyframe);
                    self.at[i] = (self.at[i] + ahead.unwrap_or(0)) % file.len();
                    s.layers[i].forced += 1;
                }
                self.key_wanted[i] = false;
                let unit = &file[self.at[i]];
                let written = rtc.writer(self.video).map(|w| {
                    w.rid(self.rids[i].into())
                        .write(vpt, now, time, unit.data.clone())
                });
                if matches!(written, Some(Ok(()))) {
                    let c = &mut s.layers[i];
                    c.frames += 1;
                    c.bytes += unit.data.len() as u64;
                    c.keyframes += u64::from(unit.keyframe);
                }
                self.at[i] = (self.at[i] + 1) % file.len();
            }
            self.frames += 1;
            self.next_frame = Some(next_frame + FRAME);
            return None;
        }
        if now >= next_packet {
            let packet = &self.tone[(self.packets % self.tone.len() as u64) as usize];
            // 20 ms at 48 kHz is 960 samples.
            let time = MediaTime::new(self.packets * 960, Frequency::FORTY_EIGHT_KHZ);
            let written = (rtc.writer(self.audio)).map(|w| w.write(apt, now, time, packet.clone()));
            if matches!(written, Some(Ok(()))) {
                shared.lock().unwrap().audio_packets += 1;
            }
            self.packets += 1;
            self.next_packet = Some(next_packet + PACKET);
            return None;
        }
        Some(next_frame.min(next_packet))
    }
}

/// Our address on the route to the server of `base`.
fn local_ip_towards(base: &str) -> std::net::IpAddr {
    let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect(super::udp_client::addr_of(base)).unwrap(); // looks the route up, sends nothing
    probe.local_addr().unwrap().ip()
}
