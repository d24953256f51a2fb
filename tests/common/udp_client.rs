//! str0m clients over real loopback UDP (or ICE-TCP, see `link.rs`), each on its own thread:
//! an OBS-shaped WHIP publisher streaming the H.264 fixture and the Opus tone fixture, and a
//! WHEP viewer that keeps what it receives. HTTP is `http_client`'s blocking client.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::annexb::{AccessUnit, fixture};
use super::http_client::header;
pub use super::http_client::http;
use super::link::Link;
use super::sim::obs_shape;

/// A decoded video frame as a viewer got it.
#[derive(Clone, Debug)]
pub struct Received {
    pub data: Vec<u8>,
    pub keyframe: bool,
    pub at: Instant,
}

#[derive(Default)]
pub struct Shared {
    pub connected: bool,
    /// Video frames sent (publisher) or received (viewer), in order.
    pub frames: Vec<Received>,
    pub audio_frames: usize,
    /// Opus payloads sent (publisher) or received (viewer), in order.
    pub audio: Vec<Vec<u8>>,
}

/// One client: its thread and what it shares with the test.
pub struct Client {
    pub location: String,
    /// The server's SDP answer.
    pub answer: String,
    pub shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    base: String,
}

/// Why a viewer could not join: the HTTP status and body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl Client {
    /// An OBS-shaped publisher (Opus 111, H264 96 `42e01f`, no RTX, no candidates in the offer,
    /// `a=group:LS`) streaming the H.264 fixture in a loop at 30 fps and the Opus tone fixture
    /// in a loop, a packet every 20 ms.
    pub fn publish(base: &str, broadcast_id: &str) -> Result<Self, Refused> {
        let script = fixture()
            .into_iter()
            .enumerate()
            .map(|(i, u)| (u, i as u64));
        Self::publish_script(base, broadcast_id, script.collect())
    }

    /// The same publisher streaming `script` in a loop at 30 fps (and the tone): each access
    /// unit with its presentation time in frames (out of order for B-frames), counted from the
    /// loop's start.
    pub fn publish_script(
        base: &str,
        broadcast_id: &str,
        script: Vec<(AccessUnit, u64)>,
    ) -> Result<Self, Refused> {
        Self::publish_with(base, broadcast_id, script, None)
    }

    /// The fixture publisher whose video leaves it `video_late` after the audio of the same
    /// instant, as an encoder's does; its sender reports say when each was captured (each
    /// frame's and packet's scheduled instant, not when this thread got round to it).
    pub fn publish_late_video(
        base: &str,
        broadcast_id: &str,
        video_late: Duration,
    ) -> Result<Self, Refused> {
        let script = fixture()
            .into_iter()
            .enumerate()
            .map(|(i, u)| (u, i as u64));
        Self::publish_with(base, broadcast_id, script.collect(), Some(video_late))
    }

    fn publish_with(
        base: &str,
        broadcast_id: &str,
        script: Vec<(AccessUnit, u64)>,
        video_late: Option<Duration>,
    ) -> Result<Self, Refused> {
        let mut cfg = RtcConfig::new().clear_codecs();
        cfg.codec_config().add_h264(96.into(), None, true, 0x42e01f);
        cfg.codec_config().enable_opus(true, false);
        let (rtc, link, audio, video, pending_offer) = offer(
            base,
            cfg,
            Direction::SendOnly,
            [MediaKind::Audio, MediaKind::Video],
        );
        let (sdp, pending) = pending_offer;
        let auth = format!("Bearer {broadcast_id}");
        let headers = [
            ("Content-Type", "application/sdp"),
            ("Authorization", auth.as_str()),
            (
                "User-Agent",
                "Mozilla/5.0 (OBS-Studio/31.0.2; Linux x86_64; en-US)",
            ),
        ];
        let url = format!("{base}/broadcast");
        let (rtc, location, body) = post_offer(&url, &headers, rtc, (obs_shape(&sdp), pending))?;
        Ok(Self::spawn(
            base,
            &location,
            &body,
            rtc,
            link,
            Role::Publisher(Box::new(Sender {
                audio,
                video,
                script,
                video_late,
                tone: super::opus::tone(),
                frames: 0,
                packets: 0,
                next_frame: None,
                next_packet: None,
            })),
        ))
    }

    /// A browser-shaped viewer (H264 and VP8 with RTX, Opus).
    pub fn view(base: &str, view_id: &str) -> Result<Self, Refused> {
        let (rtc, link, video, audio, offer) =
            offer(base, viewer_config(), Direction::RecvOnly, VIEWER_MEDIA);
        let (rtc, location, answer) = whep(base, view_id, rtc, offer)?;
        Ok(Self::spawn(
            base,
            &location,
            &answer,
            rtc,
            link,
            Role::Viewer { video, audio },
        ))
    }

    /// A viewer that cannot use UDP at all: no UDP candidate, and media over one ICE-TCP
    /// connection to the server's passive TCP candidate, as a browser behind a UDP-blocking
    /// firewall does. Fails if the answer has no TCP candidate.
    pub fn view_over_tcp(base: &str, view_id: &str) -> Result<Self, Refused> {
        let mut rtc = viewer_config().build(Instant::now());
        let (video, audio, offer) = add_media(&mut rtc, Direction::RecvOnly, VIEWER_MEDIA);
        let (mut rtc, location, answer) = whep(base, view_id, rtc, offer)?;
        let server = tcp_candidate(&answer).ok_or(Refused {
            status: 201,
            body: format!("the answer has no passive TCP candidate:\n{answer}"),
        })?;
        let link = Link::tcp(server);
        let local = Candidate::builder()
            .tcp()
            .host(link.local_addr())
            .tcptype(TcpType::Active)
            .build()
            .unwrap();
        rtc.add_local_candidate(local);
        Ok(Self::spawn(
            base,
            &location,
            &answer,
            rtc,
            link,
            Role::Viewer { video, audio },
        ))
    }

    fn spawn(base: &str, location: &str, answer: &str, rtc: Rtc, link: Link, role: Role) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || run(rtc, link, role, &shared, &stop))
        };
        Self {
            location: location.to_owned(),
            answer: answer.to_owned(),
            shared,
            stop,
            thread: Some(thread),
            base: base.to_owned(),
        }
    }

    pub fn frames(&self) -> Vec<Received> {
        self.shared.lock().unwrap().frames.clone()
    }

    pub fn audio_frames(&self) -> usize {
        self.shared.lock().unwrap().audio_frames
    }

    /// Waits (bounded: a guard against "never happened", not a speed check) until `f` holds.
    pub fn wait_for(&self, what: &str, f: impl Fn(&Shared) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f(&self.shared.lock().unwrap()) {
            assert!(Instant::now() < deadline, "never happened: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops and sends DELETE to the session URL; returns the DELETE status.
    pub fn stop(mut self) -> u16 {
        self.halt();
        http(
            "DELETE",
            &format!("{}{}", self.base, self.location),
            &[],
            "",
        )
        .0
    }

    /// Stops without DELETE, as a crashed OBS or a closed laptop.
    pub fn vanish(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.halt();
    }
}

const VIEWER_MEDIA: [MediaKind; 2] = [MediaKind::Video, MediaKind::Audio];

fn viewer_config() -> RtcConfig {
    RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .enable_vp8(true)
        .enable_opus(true, false)
}

/// POSTs a WHEP offer and applies the answer: (rtc, session URL, answer SDP).
fn whep(
    base: &str,
    view_id: &str,
    rtc: Rtc,
    offer: Offer,
) -> Result<(Rtc, String, String), Refused> {
    let url = format!("{base}/stream?id={view_id}");
    post_offer(&url, &[("Content-Type", "application/sdp")], rtc, offer)
}

/// POSTs an offer (WHIP or WHEP) and applies the answer: (rtc, session URL, answer SDP).
fn post_offer(
    url: &str,
    headers: &[(&str, &str)],
    mut rtc: Rtc,
    offer: Offer,
) -> Result<(Rtc, String, String), Refused> {
    let (sdp, pending) = offer;
    let (status, headers, body) = http("POST", url, headers, &sdp);
    if status != 201 {
        return Err(Refused { status, body });
    }
    rtc.sdp_api()
        .accept_answer(
            pending,
            SdpAnswer::from_sdp_string(&body).expect("answer parses"),
        )
        .expect("answer accepted");
    let location = header(&headers, "location").unwrap_or_default().to_owned();
    Ok((rtc, location, body))
}

/// The address of the first `tcp ... typ host tcptype passive` candidate in an SDP.
pub fn tcp_candidate(sdp: &str) -> Option<SocketAddr> {
    sdp.lines()
        .filter(|l| l.starts_with("a=candidate:") && l.contains(" tcptype passive"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2)?.eq_ignore_ascii_case("tcp"))
                .then(|| format!("{}:{}", f.get(4)?, f.get(5)?).parse().ok())?
        })
}

enum Role {
    Publisher(Box<Sender>),
    Viewer { video: Mid, audio: Mid },
}

type Offer = (String, str0m::change::SdpPendingOffer);

fn offer(
    base: &str,
    cfg: RtcConfig,
    dir: Direction,
    kinds: [MediaKind; 2],
) -> (Rtc, Link, Mid, Mid, Offer) {
    let socket = UdpSocket::bind((local_ip_towards(base), 0)).unwrap();
    let mut rtc = cfg.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(socket.local_addr().unwrap(), "udp").unwrap());
    let (a, b, offer) = add_media(&mut rtc, dir, kinds);
    (rtc, Link::udp(socket), a, b, offer)
}

fn add_media(rtc: &mut Rtc, dir: Direction, kinds: [MediaKind; 2]) -> (Mid, Mid, Offer) {
    let mut api = rtc.sdp_api();
    let a = api.add_media(kinds[0], dir, None, None, None);
    let b = api.add_media(kinds[1], dir, None, None, None);
    let (offer, pending) = api.apply().expect("an offer");
    (a, b, (offer.to_sdp_string(), pending))
}

/// How long a client runs at most, in seconds, if the test never stops it.
static LIFETIME_SECS: AtomicU64 = AtomicU64::new(120);

/// Clients started from now on run for at most `lifetime` instead of 120 s (long sessions).
pub fn set_lifetime(lifetime: Duration) {
    LIFETIME_SECS.store(lifetime.as_secs(), Ordering::Relaxed);
}

/// The client loop: drive the `Rtc` by the str0m contract, send media if publishing.
fn run(mut rtc: Rtc, mut link: Link, mut role: Role, shared: &Mutex<Shared>, stop: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(LIFETIME_SECS.load(Ordering::Relaxed));
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut wake = Instant::now() + Duration::from_millis(50);
        loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    wake = wake.min(t);
                    break;
                }
                Ok(Output::Transmit(t)) => link.send(&t),
                Ok(Output::Event(e)) => on_event(e, &role, shared),
                Err(_) => return,
            }
        }
        let connected = shared.lock().unwrap().connected;
        if let (Role::Publisher(sender), true) = (&mut role, connected) {
            match sender.send_due(&mut rtc, shared) {
                Some(next) => wake = wake.min(next),
                None => continue,
            }
        }
        let wait = wake
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match link.recv(wait) {
            Some((proto, src, local, data)) => {
                if let Ok(r) = Receive::new(proto, src, local, &data)
                    && rtc.handle_input(Input::Receive(Instant::now(), r)).is_err()
                {
                    return;
                }
            }
            None => {
                if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    return;
                }
            }
        }
    }
}

/// What a publisher sends and when: a video frame every 33.3 ms (30 fps), an Opus packet
/// every 20 ms, each on its own clock from the first write after connecting.
struct Sender {
    audio: Mid,
    video: Mid,
    script: Vec<(AccessUnit, u64)>,
    /// How much later than its capture each video frame is sent (the audio: at once); with
    /// it, the instants written (and so the sender reports) are the scheduled ones. Without,
    /// each write is stamped with the moment it happens.
    video_late: Option<Duration>,
    tone: Vec<Vec<u8>>,
    /// Video frames and audio packets written so far.
    frames: u64,
    packets: u64,
    next_frame: Option<Instant>,
    next_packet: Option<Instant>,
}

const FRAME: Duration = Duration::from_micros(33_333);
const PACKET: Duration = Duration::from_millis(20);

impl Sender {
    /// Writes one video frame or audio packet if one is due and returns `None` (poll the
    /// `Rtc` again), else returns when the next one is due.
    fn send_due(&mut self, rtc: &mut Rtc, shared: &Mutex<Shared>) -> Option<Instant> {
        let now = Instant::now();
        let pt = |mid| rtc.media(mid).and_then(|m| m.remote_pts().first().copied());
        let (vpt, apt) = (pt(self.video), pt(self.audio));
        let (Some(vpt), Some(apt)) = (vpt, apt) else {
            return Some(now + PACKET);
        };
        let late = self.video_late.unwrap_or_default();
        let next_frame = *self.next_frame.get_or_insert(now + late);
        let next_packet = *self.next_packet.get_or_insert(now);
        if now >= next_frame {
            let len = self.script.len() as u64;
            let (unit, pts) = &self.script[(self.frames % len) as usize];
            let pts = self.frames / len * len + pts;
            let time = MediaTime::from_90khz(pts * 3000);
            let _ = rtc.writer(self.video).map(|w| {
                let captured = self.video_late.map_or(now, |late| next_frame - late);
                w.write(vpt, captured, time, unit.data.clone())
            });
            shared.lock().unwrap().frames.push(Received {
                data: unit.data.clone(),
                keyframe: unit.keyframe,
                at: now,
            });
            self.frames += 1;
            self.next_frame = Some(next_frame + FRAME);
            return None;
        }
        if now >= next_packet {
            let packet = &self.tone[(self.packets % self.tone.len() as u64) as usize];
            // 20 ms at 48 kHz is 960 samples.
            let time = MediaTime::new(self.packets * 960, Frequency::FORTY_EIGHT_KHZ);
            let _ = rtc.writer(self.audio).map(|w| {
                let captured = self.video_late.map_or(now, |_| next_packet);
                w.write(apt, captured, time, packet.clone())
            });
            shared.lock().unwrap().audio.push(packet.clone());
            self.packets += 1;
            self.next_packet = Some(next_packet + PACKET);
            return None;
        }
        Some(next_frame.min(next_packet))
    }
}

fn on_event(e: Event, role: &Role, shared: &Mutex<Shared>) {
    let mut s = shared.lock().unwrap();
    match (e, role) {
        (Event::Connected, _) => s.connected = true,
        (Event::MediaData(d), Role::Viewer { video, audio }) => {
            if d.mid == *video && d.params.spec().codec == Codec::H264 {
                let keyframe = super::annexb::nal_units(&d.data)
                    .iter()
                    .any(|n| n.first().is_some_and(|b| b & 0x1f == 5));
                s.frames.push(Received {
                    data: d.data.to_vec(),
                    keyframe,
                    at: Instant::now(),
                });
            } else if d.mid == *audio {
                s.audio_frames += 1;
                s.audio.push(d.data.to_vec());
            }
        }
        _ => {}
    }
}

/// The server's address for a base URL.
pub fn addr_of(base: &str) -> SocketAddr {
    let authority = base.strip_prefix("https://").unwrap_or(base);
    authority.trim_start_matches("http://").parse().unwrap()
}

/// Our address on the route to the server of `base`: 127.0.0.1 on loopback, the veth
/// address when the server is in a network namespace of the test's.
fn local_ip_towards(base: &str) -> std::net::IpAddr {
    let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect(addr_of(base)).unwrap(); // no datagram is sent: only the route is looked up
    probe.local_addr().unwrap().ip()
}
