//! A simulated network with a virtual clock: the real [`Engine`] on one side, str0m `Rtc`s as
//! OBS and browser clients on the other, datagrams carried in memory with optional loss and
//! delay. Deterministic apart from the random IDs and keys str0m and whipcast draw.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::{Codec, CodecConfig};
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::rtcp::SenderInfo;
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use whipcast::config::WhenFull;
use whipcast::engine::{
    BroadcastKey, Command, Engine, EngineConfig, EngineEvent, NewPeer, Outcome, SessionId,
};
use whipcast::offer::SessionSetup;
use whipcast::srtp::KeySlot;

pub const SERVER: &str = "10.0.0.1:8189";

/// A received video frame, as the viewer's depacketiser produced it.
#[derive(Clone, Debug)]
pub struct Frame {
    pub data: Vec<u8>,
    pub keyframe: bool,
    pub rtp_time: u64,
    pub seq_start: u64,
    pub seq_end: u64,
    /// The newest sender report of the frame's stream when it arrived (RTP ↔ NTP time).
    pub sender_info: Option<SenderInfo>,
    /// When it was complete at the viewer (the simulation's clock).
    pub at: Instant,
}

pub struct Client {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub session: Option<SessionId>,
    /// The ufrag the server gave this session (what its STUN USERNAME starts with).
    pub server_ufrag: String,
    pub connected: bool,
    pub video_mid: Option<Mid>,
    pub audio_mid: Option<Mid>,
    pub frames: Vec<Frame>,
    /// Video packets (sequence number, payload) of a viewer in RTP mode (`rtp_mode_viewers`),
    /// retransmissions unwrapped, in arrival order.
    pub video_rtp: Vec<(u64, Vec<u8>)>,
    pub audio_frames: usize,
    /// Each audio frame's payload, RTP time and its stream's newest sender report.
    pub audio: Vec<(Vec<u8>, u64, Option<SenderInfo>)>,
    pub keyframe_requests: usize,
    /// Drop every datagram to or from this client while set (a crash or a cut cable).
    pub unplugged: bool,
    /// A viewer's SRTP keys as the server holds them (to read what it seals).
    pub server_keys: Option<KeySlot>,
    /// The server's ICE password for this session, from its answer.
    pub server_pwd: String,
}

/// Chooses datagrams to lose, by sender, receiver and contents (see [`Sim::drop_if`]).
pub type DropFilter = Box<dyn FnMut(SocketAddr, SocketAddr, &[u8]) -> bool>;
/// Changes a datagram on the wire: `(from, to, contents)`.
pub type Rewrite = Box<dyn FnMut(SocketAddr, SocketAddr, &mut Vec<u8>)>;

struct InFlight {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

/// What the simulation needs of a server: whipcast's `Engine`, or a baseline to compare it
/// with (benches/fanout.rs has a naive str0m SFU).
pub trait Sfu {
    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, data: &[u8]);
    fn handle_timeout(&mut self, now: Instant);
    fn handle_command(&mut self, now: Instant, command: Command) -> Outcome;
    fn poll_transmit(&mut self) -> Option<whipcast::engine::Transmit<'_>>;
    fn poll_event(&mut self) -> Option<EngineEvent>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn stats(&self) -> whipcast::engine::Stats;
}

impl Sfu for Engine {
    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        Engine::handle_datagram(self, now, src, dst, data)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Engine::handle_timeout(self, now)
    }
    fn handle_command(&mut self, now: Instant, command: Command) -> Outcome {
        Engine::handle_command(self, now, command)
    }
    fn poll_transmit(&mut self) -> Option<whipcast::engine::Transmit<'_>> {
        Engine::poll_transmit(self)
    }
    fn poll_event(&mut self) -> Option<EngineEvent> {
        Engine::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Engine::poll_timeout(self)
    }
    fn stats(&self) -> whipcast::engine::Stats {
        Engine::stats(self)
    }
}

pub struct Sim<S: Sfu = Engine> {
    pub engine: S,
    pub setup: SessionSetup,
    pub now: Instant,
    pub clients: Vec<Client>,
    pub events: Vec<EngineEvent>,
    pub latency: Duration,
    /// Drop every n-th datagram in each direction (0: no loss).
    pub drop_every: usize,
    /// With `drop_every`, only datagrams to or from this address are dropped.
    pub drop_only_at: Option<SocketAddr>,
    /// New viewers get their media from str0m's send path, as sessions whose SRTP profile
    /// whipcast does not seal itself do.
    pub str0m_seals_viewers: bool,
    /// Viewers offer transport-wide numbers, so they send transport-wide feedback (str0m
    /// does, as browsers do) and whipcast's estimate follows it; otherwise (the default) a
    /// viewer's estimate is the REMB a test sends for it.
    pub transport_cc_viewers: bool,
    /// Extra per-datagram delay, uniformly up to this much (reorders packets).
    pub jitter: Duration,
    /// What the server sends this address goes through a link of this many bits/s with a
    /// queue of [`CAP_QUEUE`]: what would wait longer is dropped (counted in `cap_drops`).
    pub cap: Option<(SocketAddr, u64)>,
    pub cap_drops: usize,
    /// When the capped link is done sending what it was given.
    cap_busy: Instant,
    /// Deliver every n-th datagram twice (0: never).
    pub duplicate_every: usize,
    /// Datagrams the server sends to this address are kept in `tapped`, with when.
    pub tap: Option<SocketAddr>,
    pub tapped: Vec<(Instant, Vec<u8>)>,
    /// Datagrams the server sent, per destination (delivered or not).
    pub sent_to: std::collections::HashMap<SocketAddr, usize>,
    /// Drops each datagram for which it returns true: `(from, to, contents)`.
    pub drop_if: Option<DropFilter>,
    /// Rewrites each datagram before it goes on the wire (a client stack's own quirks).
    pub rewrite: Option<Rewrite>,
    /// New viewers run str0m in RTP mode and record their video packets instead of frames.
    pub rtp_mode_viewers: bool,
    rng: u64,
    counter: usize,
    wire: VecDeque<InFlight>,
    next_port: u16,
}

/// The queue of a capped link ([`Sim::cap`]): a home router's.
pub const CAP_QUEUE: Duration = Duration::from_millis(200);

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        candidates: vec![SERVER.parse().unwrap()],
        tcp_candidates: Vec::new(),
        max_live_broadcasts: 2,
        max_viewers: 3,
        when_full: WhenFull::EvictOldest,
        resume_grace: Duration::from_secs(30),
        handshake_timeout: Duration::from_secs(20),
        test_seq_start: None,
        worker: 0,
    }
}

impl Sim<Engine> {
    pub fn new(config: EngineConfig) -> Self {
        let setup = SessionSetup::new(config.candidates.clone());
        Sim::with_server(Engine::new(config), setup)
    }
}

impl<S: Sfu> Sim<S> {
    /// A simulation around any server.
    pub fn with_server(engine: S, setup: SessionSetup) -> Self {
        if std::env::var("SIMDEBUG").is_ok() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        Self {
            engine,
            setup,
            now: Instant::now(),
            clients: Vec::new(),
            events: Vec::new(),
            latency: Duration::from_millis(5),
            drop_every: 0,
            drop_only_at: None,
            str0m_seals_viewers: false,
            transport_cc_viewers: false,
            jitter: Duration::ZERO,
            cap: None,
            cap_drops: 0,
            cap_busy: Instant::now(),
            duplicate_every: 0,
            tap: None,
            tapped: Vec::new(),
            sent_to: Default::default(),
            drop_if: None,
            rewrite: None,
            rtp_mode_viewers: false,
            rng: 0x2545_f491_4f6c_dd1d,
            counter: 0,
            wire: VecDeque::new(),
            next_port: 40_000,
        }
    }

    /// An OBS-shaped publisher: H264 PT 96 `42e01f` and Opus PT 111, no RTX, no candidates in
    /// the offer, `a=group:LS`. Returns the client index.
    #[allow(clippy::result_large_err)] // test helper: the Outcome is what tests assert on
    pub fn publish(&mut self, broadcast: BroadcastKey) -> Result<usize, Outcome> {
        self.publish_with(broadcast, |c| c.add_h264(96.into(), None, true, 0x42e01f))
    }

    /// Like [`publish`](Self::publish), with the video codec(s) `video` adds (OBS uses PT 96
    /// for H.264, AV1 and HEVC alike).
    #[allow(clippy::result_large_err)] // test helper: the Outcome is what tests assert on
    pub fn publish_with(
        &mut self,
        broadcast: BroadcastKey,
        video: impl FnOnce(&mut CodecConfig),
    ) -> Result<usize, Outcome> {
        self.publish_configured(broadcast, RtcConfig::new(), video)
    }

    /// Like [`publish`](Self::publish), from a publisher that sends no sender reports (so
    /// the server can only go by when its packets arrive).
    #[allow(clippy::result_large_err)] // test helper: the Outcome is what tests assert on
    pub fn publish_without_reports(&mut self, broadcast: BroadcastKey) -> Result<usize, Outcome> {
        let never = Duration::from_secs(24 * 3600);
        let cfg = RtcConfig::new()
            .set_rtcp_report_interval_audio(never)
            .set_rtcp_report_interval_video(never);
        self.publish_configured(broadcast, cfg, |c| {
            c.add_h264(96.into(), None, true, 0x42e01f)
        })
    }

    #[allow(clippy::result_large_err)] // test helper: the Outcome is what tests assert on
    fn publish_configured(
        &mut self,
        broadcast: BroadcastKey,
        cfg: RtcConfig,
        video: impl FnOnce(&mut CodecConfig),
    ) -> Result<usize, Outcome> {
        let mut cfg = cfg.clear_codecs();
        video(cfg.codec_config());
        cfg.codec_config().enable_opus(true, false);
        let mut client = self.new_client(cfg);
        let mut api = client.rtc.sdp_api();
        let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        client.audio_mid = Some(audio);
        client.video_mid = Some(video);
        let sdp = obs_shape(&offer.to_sdp_string());
        let accepted = self
            .setup
            .accept_publisher(self.now, &sdp)
            .expect("OBS offer accepted");
        let session = SessionId::random();
        client.server_ufrag = accepted.ufrag.clone();
        client.server_keys = Some(accepted.keys.clone());
        client.server_pwd = ice_pwd(&accepted.answer);
        let peer = NewPeer {
            broadcast,
            session: session.clone(),
            ufrag: accepted.ufrag,
            rtc: accepted.rtc,
            keys: accepted.keys,
            transport_cc: accepted.transport_cc,
        };
        match self
            .engine
            .handle_command(self.now, Command::Publish(peer, accepted.tracks))
        {
            Outcome::Published(Ok(())) => {}
            other => return Err(other),
        }
        let answer = SdpAnswer::from_sdp_string(&accepted.answer).unwrap();
        client.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        client.session = Some(session);
        Ok(self.add(client))
    }

    /// An OBS 32.1-shaped simulcast publisher: H264 with layers "0" (full), "1", "2".
    #[allow(clippy::result_large_err)] // test helper: the Outcome is what tests assert on
    pub fn publish_simulcast(&mut self, broadcast: BroadcastKey) -> Result<usize, Outcome> {
        let mut cfg = RtcConfig::new().clear_codecs();
        cfg.codec_config().add_h264(96.into(), None, true, 0x42e01f);
        cfg.codec_config().enable_opus(true, false);
        let mut client = self.new_client(cfg);
        let mut layers = str0m::media::Simulcast::new();
        for rid in ["0", "1", "2"] {
            layers.add_send_layer(str0m::media::SimulcastLayer::new(rid));
        }
        let mut api = client.rtc.sdp_api();
        let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let video = api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            None,
            None,
            Some(layers),
        );
        let (offer, pending) = api.apply().expect("an offer");
        client.audio_mid = Some(audio);
        client.video_mid = Some(video);
        let accepted = self
            .setup
            .accept_publisher(self.now, &obs_shape(&offer.to_sdp_string()))
            .expect("simulcast offer accepted");
        assert!(
            accepted.answer.contains("a=simulcast:recv 0;1;2"),
            "every layer accepted: {}",
            accepted.answer
        );
        let session = SessionId::random();
        client.server_ufrag = accepted.ufrag.clone();
        client.server_keys = Some(accepted.keys.clone());
        client.server_pwd = ice_pwd(&accepted.answer);
        let peer = NewPeer {
            broadcast,
            session: session.clone(),
            ufrag: accepted.ufrag,
            rtc: accepted.rtc,
            keys: accepted.keys,
            transport_cc: accepted.transport_cc,
        };
        match self
            .engine
            .handle_command(self.now, Command::Publish(peer, accepted.tracks))
        {
            Outcome::Published(Ok(())) => {}
            other => return Err(other),
        }
        client
            .rtc
            .sdp_api()
            .accept_answer(
                pending,
                SdpAnswer::from_sdp_string(&accepted.answer).unwrap(),
            )
            .unwrap();
        client.session = Some(session);
        Ok(self.add(client))
    }

    /// Sends frame `n` on every simulcast layer; each layer's bytes say which layer it is.
    pub fn send_simulcast_frame(
        &mut self,
        publisher: usize,
        n: u64,
        keyframe: bool,
    ) -> Vec<Vec<u8>> {
        self.send_simulcast_layers(publisher, n, keyframe, 3)
    }

    /// Sends frame `n` on the first `layers` simulcast layers (from the full size down; the
    /// others send nothing), smallest first; `[layer]` is each one's bytes.
    pub fn send_simulcast_layers(
        &mut self,
        publisher: usize,
        n: u64,
        keyframe: bool,
        layers: usize,
    ) -> Vec<Vec<u8>> {
        // Each layer its own size, as a simulcast encoder's (about 480, 170 and 50 kb/s).
        self.send_simulcast_sized(publisher, n, keyframe, layers, [2000, 700, 200])
    }

    /// Sends frame `n` as [`send_simulcast_layers`](Self::send_simulcast_layers), each layer
    /// `sizes[layer]` bytes past its SPS.
    pub fn send_simulcast_sized(
        &mut self,
        publisher: usize,
        n: u64,
        keyframe: bool,
        layers: usize,
        sizes: [usize; 3],
    ) -> Vec<Vec<u8>> {
        let now = self.now;
        let c = &mut self.clients[publisher];
        let video = c.video_mid.unwrap();
        let pt = c.rtc.media(video).unwrap().remote_pts()[0];
        let mut frames = vec![Vec::new(); 3];
        // Smallest layer first, so a server that forwarded every layer would hand viewers the
        // wrong one before the full one.
        for (i, rid) in [(2usize, "2"), (1, "1"), (0, "0")] {
            if i >= layers {
                continue;
            }
            let mut frame = frame_with_sps(n, keyframe, BASELINE_SPS);
            frame.extend(std::iter::repeat_n(b'a' + i as u8, sizes[i]));
            c.rtc
                .writer(video)
                .unwrap()
                .rid(rid.into())
                .write(pt, now, MediaTime::from_90khz(n * 3000), frame.clone())
                .unwrap();
            frames[i] = frame;
        }
        frames
    }

    /// A browser-shaped viewer (H264 with RTX, VP8, Opus; recvonly video then audio).
    #[allow(clippy::result_large_err)] // test helper: the Outcome is what tests assert on
    pub fn view(&mut self, broadcast: BroadcastKey) -> Result<usize, Outcome> {
        let mut cfg = RtcConfig::new()
            .set_rtp_mode(self.rtp_mode_viewers)
            .clear_codecs()
            .enable_h264(true)
            .enable_vp8(true)
            .enable_opus(true, false);
        if !self.transport_cc_viewers {
            let mut exts = ExtensionMap::empty();
            for (id, ext) in ExtensionMap::standard().iter() {
                if *ext != Extension::TransportSequenceNumber {
                    exts.set(id, ext.clone());
                }
            }
            cfg = cfg.set_extension_map(exts);
        }
        let mut client = self.new_client(cfg);
        let mut api = client.rtc.sdp_api();
        let video = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let audio = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        client.video_mid = Some(video);
        client.audio_mid = Some(audio);
        let tracks = match self
            .engine
            .handle_command(self.now, Command::Describe(broadcast))
        {
            Outcome::Described(Some(t)) => t,
            other => return Err(other),
        };
        let accepted = self
            .setup
            .accept_viewer(self.now, &offer.to_sdp_string(), &tracks)
            .expect("viewer offer accepted");
        let session = SessionId::random();
        client.server_ufrag = accepted.ufrag.clone();
        client.server_keys = Some(accepted.keys.clone());
        client.server_pwd = ice_pwd(&accepted.answer);
        let peer = NewPeer {
            broadcast,
            session: session.clone(),
            ufrag: accepted.ufrag,
            rtc: accepted.rtc,
            // An empty slot stands for keys whipcast cannot seal with (AES-CM sessions).
            keys: if self.str0m_seals_viewers {
                KeySlot::default()
            } else {
                accepted.keys
            },
            transport_cc: accepted.transport_cc,
        };
        match self
            .engine
            .handle_command(self.now, Command::Subscribe(peer, accepted.tracks))
        {
            Outcome::Subscribed(Ok(())) => {}
            other => return Err(other),
        }
        let answer = SdpAnswer::from_sdp_string(&accepted.answer).unwrap();
        client.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        client.session = Some(session);
        Ok(self.add(client))
    }

    pub fn close(&mut self, client: usize, publisher: bool) -> bool {
        let session = self.clients[client].session.clone().unwrap();
        matches!(
            self.engine
                .handle_command(self.now, Command::Close { session, publisher }),
            Outcome::Closed(true)
        )
    }

    pub fn stats(&mut self) -> whipcast::engine::Stats {
        self.engine.stats()
    }

    /// Sends one synthetic H264 access unit (SPS+PPS+IDR when `keyframe`) and one Opus frame
    /// from a publisher. `n` numbers the frame (30 fps media time).
    pub fn send_frame(&mut self, publisher: usize, n: u64, keyframe: bool) -> Vec<u8> {
        self.send_frame_with(publisher, n, n, keyframe, BASELINE_SPS)
    }

    /// Sends frame `n` stamped with media time `t` (frames), with `sps` in keyframes.
    pub fn send_frame_with(
        &mut self,
        publisher: usize,
        n: u64,
        t: u64,
        keyframe: bool,
        sps: &[u8],
    ) -> Vec<u8> {
        let now = self.now;
        self.send_frame_captured(publisher, (n, t), keyframe, sps, now)
    }

    /// Sends frame `n` stamped with media time `t` (frames), whose video the publisher's
    /// sender reports say was current at `captured` (its audio: now).
    pub fn send_frame_captured(
        &mut self,
        publisher: usize,
        (n, t): (u64, u64),
        keyframe: bool,
        sps: &[u8],
        captured: Instant,
    ) -> Vec<u8> {
        let frame = frame_with_sps(n, keyframe, sps);
        let now = self.now;
        let c = &mut self.clients[publisher];
        let video = c.video_mid.unwrap();
        let audio = c.audio_mid.unwrap();
        let pt = c.rtc.media(video).unwrap().remote_pts()[0];
        c.rtc
            .writer(video)
            .unwrap()
            .write(pt, captured, MediaTime::from_90khz(t * 3000), frame.clone())
            .unwrap();
        let apt = c.rtc.media(audio).unwrap().remote_pts()[0];
        c.rtc
            .writer(audio)
            .unwrap()
            .write(
                apt,
                now,
                MediaTime::new(n * 1600, str0m::media::Frequency::FORTY_EIGHT_KHZ),
                vec![0xf8, 0xff, 0xfe],
            )
            .unwrap();
        frame
    }

    /// Has the publisher packetise one small P-frame (one RTP packet of about `size` bytes) and
    /// returns its encrypted datagrams without delivering them: for benchmarks that time only
    /// the server's part.
    pub fn capture_publisher_packet(
        &mut self,
        publisher: usize,
        n: u64,
        size: usize,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut frame = vec![0, 0, 0, 1, 0x41];
        frame.extend((0..size).map(|i| ((n as usize + i) % 251) as u8 | 1));
        let now = self.now;
        let c = &mut self.clients[publisher];
        let video = c.video_mid.unwrap();
        let pt = c.rtc.media(video).unwrap().remote_pts()[0];
        c.rtc
            .writer(video)
            .unwrap()
            .write(pt, now, MediaTime::from_90khz(n * 3000), frame)
            .unwrap();
        let _ = c.rtc.handle_input(Input::Timeout(now));
        let mut out = Vec::new();
        while let Ok(o) = c.rtc.poll_output() {
            match o {
                Output::Transmit(t) => out.push((c.addr, t.contents.to_vec())),
                Output::Timeout(_) => break,
                Output::Event(_) => {}
            }
        }
        out
    }

    /// Hands a datagram from the server straight to a client (for benchmarks that drain the
    /// engine themselves).
    pub fn deliver(&mut self, to: SocketAddr, data: &[u8]) {
        let server: SocketAddr = SERVER.parse().unwrap();
        if let Some(i) = self.clients.iter().position(|c| c.addr == to)
            && let Ok(r) = Receive::new(Protocol::Udp, server, to, data)
            && self.clients[i]
                .rtc
                .handle_input(Input::Receive(self.now, r))
                .is_ok()
        {
            self.drain_client(i);
        }
    }

    /// Runs the simulation for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        let mut steps = 0;
        while self.now < end {
            self.step(end);
            steps += 1;
            assert!(steps < 1_000_000, "simulation livelock");
        }
    }

    /// One step: drain everyone, deliver what is due, move the clock to the next event.
    fn step(&mut self, limit: Instant) {
        let now = self.now;
        let mut next = limit;
        for i in 0..self.clients.len() {
            let t = self.drain_client(i);
            next = next.min(t);
        }
        while let Some(t) = self.engine.poll_transmit() {
            let (to, data) = (t.destination, t.contents.to_vec());
            self.send(SERVER.parse().unwrap(), to, data);
        }
        while let Some(e) = self.engine.poll_event() {
            self.events.push(e);
        }
        if let Some(t) = self.engine.poll_timeout() {
            next = next.min(t);
        }
        if let Some(f) = self.wire.iter().map(|f| f.at).min() {
            next = next.min(f);
        }
        self.now = next.max(now);
        let due: Vec<InFlight> = {
            let (due, later): (Vec<_>, Vec<_>) =
                self.wire.drain(..).partition(|f| f.at <= self.now);
            self.wire = later.into();
            due
        };
        let server: SocketAddr = SERVER.parse().unwrap();
        for f in due {
            if f.to == server {
                self.engine
                    .handle_datagram(self.now, f.from, server, &f.data);
            } else if let Some(i) = self.clients.iter().position(|c| c.addr == f.to)
                && let Ok(r) = Receive::new(Protocol::Udp, f.from, f.to, &f.data)
                // str0m's contract: drain after every input, before the next one.
                && self.clients[i].rtc.handle_input(Input::Receive(self.now, r)).is_ok()
            {
                self.drain_client(i);
            }
        }
        self.engine.handle_timeout(self.now);
        for i in 0..self.clients.len() {
            if self.clients[i]
                .rtc
                .handle_input(Input::Timeout(self.now))
                .is_ok()
            {
                self.drain_client(i);
            }
        }
    }

    fn drain_client(&mut self, i: usize) -> Instant {
        loop {
            let out = self.clients[i].rtc.poll_output();
            match out {
                Ok(Output::Timeout(t)) => return t,
                Ok(Output::Transmit(t)) => {
                    // A client's extra local candidates send from their own address.
                    self.send(t.source, t.destination, t.contents.to_vec());
                }
                Ok(Output::Event(e)) => {
                    let c = &mut self.clients[i];
                    match e {
                        Event::Connected => c.connected = true,
                        Event::MediaData(d) if Some(d.mid) == c.video_mid => c.frames.push(Frame {
                            keyframe: is_keyframe(&d.data),
                            data: d.data.to_vec(),
                            rtp_time: d.time.numer(),
                            seq_start: **d.seq_range.start(),
                            seq_end: **d.seq_range.end(),
                            sender_info: d.last_sender_info,
                            at: self.now,
                        }),
                        Event::MediaData(d) if Some(d.mid) == c.audio_mid => {
                            c.audio_frames += 1;
                            c.audio
                                .push((d.data.to_vec(), d.time.numer(), d.last_sender_info));
                        }
                        // Opus keeps the publisher's PT 111 in every viewer's answer.
                        Event::RtpPacket(p) if *p.header.payload_type != 111 => {
                            c.video_rtp.push((*p.seq_no, p.payload.to_vec()));
                        }
                        Event::KeyframeRequest(_) => c.keyframe_requests += 1,
                        _ => {}
                    }
                }
                Err(_) => return self.now + Duration::from_secs(1),
            }
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, mut data: Vec<u8>) {
        if let Some(rewrite) = self.rewrite.as_mut() {
            rewrite(from, to, &mut data);
        }
        if from == SERVER.parse::<SocketAddr>().unwrap() {
            *self.sent_to.entry(to).or_default() += 1;
        }
        let unplugged = self
            .clients
            .iter()
            .any(|c| c.unplugged && (c.addr == from || c.addr == to));
        if self.tap == Some(to) && from == SERVER.parse().unwrap() {
            self.tapped.push((self.now, data.clone()));
        }
        if self.drop_if.as_mut().is_some_and(|f| f(from, to, &data)) {
            return;
        }
        let lossy = self.drop_only_at.is_none_or(|a| a == from || a == to);
        if lossy {
            self.counter += 1;
        }
        if unplugged
            || (lossy && self.drop_every > 0 && self.counter.is_multiple_of(self.drop_every))
        {
            return;
        }
        // xorshift: deterministic jitter, so a failing run can be replayed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let extra = self.jitter.mul_f64((self.rng % 1000) as f64 / 1000.0);
        let mut at = self.now + self.latency + extra;
        if let Some((capped, bps)) = self.cap
            && capped == to
            && from == SERVER.parse::<SocketAddr>().unwrap()
        {
            let start = self.cap_busy.max(self.now);
            if start > self.now + CAP_QUEUE {
                self.cap_drops += 1;
                return;
            }
            // With its UDP and IPv4 headers.
            let bits = (data.len() as u64 + 28) * 8;
            self.cap_busy = start + Duration::from_nanos(bits * 1_000_000_000 / bps.max(1));
            at = self.cap_busy + self.latency + extra;
        }
        if self.duplicate_every > 0 && self.counter.is_multiple_of(self.duplicate_every) {
            self.wire.push_back(InFlight {
                at: at + self.latency,
                from,
                to,
                data: data.clone(),
            });
        }
        self.wire.push_back(InFlight { at, from, to, data });
    }

    /// Injects a raw datagram at the server, as if from `from`.
    pub fn inject(&mut self, from: SocketAddr, data: &[u8]) {
        self.engine
            .handle_datagram(self.now, from, SERVER.parse().unwrap(), data);
    }

    fn new_client(&mut self, cfg: RtcConfig) -> Client {
        self.next_port += 1;
        let addr: SocketAddr = format!("10.0.0.2:{}", self.next_port).parse().unwrap();
        let mut rtc = cfg.build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        Client {
            rtc,
            addr,
            session: None,
            server_ufrag: String::new(),
            connected: false,
            video_mid: None,
            audio_mid: None,
            frames: Vec::new(),
            video_rtp: Vec::new(),
            audio_frames: 0,
            audio: Vec::new(),
            keyframe_requests: 0,
            unplugged: false,
            server_keys: None,
            server_pwd: String::new(),
        }
    }

    fn add(&mut self, client: Client) -> usize {
        self.clients.push(client);
        self.clients.len() - 1
    }
}

/// The `a=ice-pwd` of an SDP.
fn ice_pwd(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-pwd:"))
        .expect("an ICE password in the answer")
        .to_owned()
}

/// Makes a str0m offer look like OBS's: no candidates, and the `a=group:LS` line.
pub fn obs_shape(sdp: &str) -> String {
    let mut out = String::new();
    for line in sdp.lines() {
        if line.starts_with("a=candidate") || line.starts_with("a=end-of-candidates") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
        if line.starts_with("a=group:BUNDLE") {
            out.push_str("a=group:LS 0 1\r\n");
        }
    }
    out
}

/// An Annex-B access unit: SPS + PPS + IDR for keyframes, one P slice otherwise, with the
/// frame number in the payload so frames are distinguishable. Large enough to be split into
/// several RTP packets (FU-A).
pub fn synthetic_frame(n: u64, keyframe: bool) -> Vec<u8> {
    frame_with_sps(n, keyframe, BASELINE_SPS)
}

/// x264's SPS for 320x240 Constrained Baseline.
pub const BASELINE_SPS: &[u8] = &[
    0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00,
    0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0xa4, 0x80,
];
/// x264's SPS for 1280x720 High.
pub const HIGH_SPS: &[u8] = &[
    0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
    0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
];

/// Like [`synthetic_frame`], with a given SPS in keyframes.
pub fn frame_with_sps(n: u64, keyframe: bool, sps: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    if keyframe {
        f.extend_from_slice(&[0, 0, 0, 1]);
        f.extend_from_slice(sps);
        f.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        f.extend_from_slice(&[0, 0, 0, 1, 0x65]);
    } else {
        f.extend_from_slice(&[0, 0, 0, 1, 0x41]);
    }
    let len = if keyframe { 3000 } else { 1500 };
    f.extend((0..len).map(|i| ((n as usize * 7 + i) % 251) as u8 | 1));
    f
}

/// Whether an Annex-B access unit has an IDR slice.
pub fn is_keyframe(data: &[u8]) -> bool {
    data.windows(4)
        .any(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 5)
}

/// The offer codec check used by tests of the 422 path.
pub fn codec_of(offer: &SdpOffer) -> Vec<Codec> {
    offer
        .media_lines
        .iter()
        .flat_map(|l| l.rtp_params())
        .map(|p| p.spec().codec)
        .collect()
}

/// An OBS-shaped WHIP offer from a throwaway str0m peer (for HTTP-level tests that never
/// connect media).
pub fn obs_offer() -> String {
    let mut cfg = RtcConfig::new().clear_codecs();
    cfg.codec_config().add_h264(96.into(), None, true, 0x42e01f);
    cfg.codec_config().enable_opus(true, false);
    let mut rtc = cfg.build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, _) = api.apply().expect("an offer");
    obs_shape(&offer.to_sdp_string())
}

/// A browser-shaped WHEP offer with only the given video codec (to test 422).
pub fn viewer_offer(vp8_only: bool) -> String {
    let cfg = RtcConfig::new().clear_codecs().enable_opus(true, false);
    let cfg = if vp8_only {
        cfg.enable_vp8(true)
    } else {
        cfg.enable_h264(true).enable_vp8(true)
    };
    let mut rtc = cfg.build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, _) = api.apply().expect("an offer");
    offer.to_sdp_string()
}
