//! A connected publisher and viewer, set up once per fuzz process on the tests' simulated
//! network (`tests/common/sim.rs`: the real `Engine`, str0m clients shaped like OBS and like a
//! browser, a virtual clock), and the peers' own SRTP keys, so a target can write any plaintext
//! RTP or RTCP and have it enter exactly where a real peer's packets enter: encrypted with the
//! keys the DTLS handshake gave that peer, from that peer's address.
//!
//! Between inputs nothing is rebuilt: the clock moves on a few milliseconds (timers run, the
//! clients keep ICE alive) and each peer's packet index keeps counting, so the engine never
//! sees a replayed index. The world is built again only when an input ended a session (a
//! publisher's BYE, a failed peer), so every input meets a connected pair.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use whipcast::engine::{BroadcastKey, EngineEvent};
use whipcast::srtp::capture::Captured;
use whipcast::srtp::{SrtcpReceiver, SrtpSender};

use crate::sim::{Sim, engine_config};

pub const B: BroadcastKey = BroadcastKey(1);
const FRAME: Duration = Duration::from_millis(33);
/// How often (in inputs) the whole simulation runs, clients included (see [`World::settle`]).
const SYNC_EVERY: u64 = 32;
/// The transport-wide sequence number's extension id in the viewer's offer (str0m's standard
/// map, as a browser's): the server numbers every packet it seals for the viewer with it.
const TRANSPORT_WIDE_ID: u8 = 3;

pub struct World {
    pub sim: Sim,
    pub publisher: usize,
    pub viewer: usize,
    /// Sealing as the publisher seals (its half of the DTLS-SRTP material).
    as_publisher: SrtpSender,
    /// Sealing as the viewer seals.
    as_viewer: SrtpSender,
    /// Opening what the server sends the viewer, as the viewer opens it (its sender reports).
    viewer_rx: SrtcpReceiver,
    /// The middle 32 bits of the NTP time of the last sender report the server sent the
    /// viewer: what a receiver report's LSR names, so the engine can read a round trip.
    pub viewer_sr: Option<u32>,
    /// Whether the publisher sends three simulcast layers (OBS-shaped, "0" full to "2"):
    /// the viewer's layer then follows its estimate, and probes are sent (layers.rs, probe.rs).
    simulcast: bool,
    /// The publisher's SSRCs: video (each layer, the full one first), then audio last.
    pub publisher_ssrcs: Vec<u32>,
    /// The SSRCs of what the server sends the viewer (media and RTX), in the order first seen.
    pub viewer_ssrcs: Vec<u32>,
    /// Each SSRC's last extended sequence number as this world sent it (the SRTP index).
    sent_seq: HashMap<u32, u64>,
    /// Each publisher SSRC's last RTP timestamp as this world sent it.
    pub last_ts: HashMap<u32, u32>,
    /// The newest sequence number the server sent the viewer on each SSRC (what a NACK names).
    pub viewer_seq: HashMap<u32, u16>,
    /// The newest transport-wide number the server sent the viewer (what its transport-wide
    /// feedback names, and the send-side estimate reads).
    pub viewer_transport_wide: Option<u16>,
    /// Frames the publisher's real client has sent (so NACKs have packets to name).
    frames: u64,
    pub inputs: u64,
    pub builds: u64,
}

/// The half of the keying material the peer seals with: the other side's of the server's.
fn peer_sealer(server_side: &Captured) -> SrtpSender {
    SrtpSender::new(&as_peer(server_side)).expect("the simulated peers negotiate AES-GCM")
}

/// The keys as the peer holds them (it is the DTLS client when the server is not).
fn as_peer(server_side: &Captured) -> Captured {
    Captured {
        active: !server_side.active,
        ..server_side.clone()
    }
}

/// Sends the publisher's frame `n`: on every layer when it publishes simulcast.
fn send_frame(sim: &mut Sim, publisher: usize, simulcast: bool, n: u64, keyframe: bool) {
    if simulcast {
        sim.send_simulcast_frame(publisher, n, keyframe);
    } else {
        sim.send_frame(publisher, n, keyframe);
    }
}

impl World {
    /// A publisher of one video layer and audio, and a viewer.
    pub fn new() -> Self {
        Self::build(false)
    }

    /// A simulcast publisher (three layers and audio), and a viewer.
    pub fn simulcast() -> Self {
        Self::build(true)
    }

    fn build(simulcast: bool) -> Self {
        let mut sim = Sim::new(engine_config());
        let publisher = match simulcast {
            true => sim.publish_simulcast(B),
            false => sim.publish(B),
        }
        .expect("publish");
        sim.run_for(Duration::from_millis(300));
        assert!(sim.clients[publisher].connected, "publisher connected");
        // The viewer negotiates transport-wide numbers, as Chromium and Firefox do: the
        // server then numbers its packets and estimates the link from the viewer's feedback
        // (engine/egress/send_side.rs), the path every browser viewer takes.
        sim.transport_cc_viewers = true;
        let viewer = sim.view(B).expect("view");
        sim.tap = Some(sim.clients[viewer].addr);
        // The publisher client's extended sequence numbers per SSRC (its SRTP indices), read
        // off the wire: the forged packets continue from them.
        let seen: Rc<RefCell<HashMap<u32, u64>>> = Rc::default();
        let from = sim.clients[publisher].addr;
        let record = seen.clone();
        sim.rewrite = Some(Box::new(move |src, _, d: &mut Vec<u8>| {
            if src != from || d.len() < 12 || d[0] >> 6 != 2 || (192..=223).contains(&d[1]) {
                return;
            }
            let ssrc = u32::from_be_bytes(d[8..12].try_into().unwrap());
            let seq = u16::from_be_bytes([d[2], d[3]]) as u64;
            let mut seen = record.borrow_mut();
            let ext = seen.entry(ssrc).or_insert(seq);
            // Unwrap against the last one (RFC 3711 appendix A's guess).
            let roc = *ext >> 16;
            let candidates = [roc.wrapping_sub(1), roc, roc + 1].map(|r| (r << 16) | seq);
            let best = candidates
                .into_iter()
                .filter(|c| *c < 1 << 48)
                .min_by_key(|c| c.abs_diff(*ext))
                .unwrap();
            *ext = (*ext).max(best);
        }));
        let mut frames = 0;
        for n in 0..12 {
            send_frame(&mut sim, publisher, simulcast, n, n % 10 == 0);
            sim.run_for(FRAME);
            frames += 1;
        }
        assert!(sim.clients[viewer].connected, "viewer connected");
        let keys = |i: usize| {
            sim.clients[i]
                .server_keys
                .as_ref()
                .and_then(|k| k.get())
                .expect("keys captured")
                .clone()
        };
        let as_publisher = peer_sealer(&keys(publisher));
        let as_viewer = peer_sealer(&keys(viewer));
        let viewer_rx =
            SrtcpReceiver::new(&as_peer(&keys(viewer))).expect("AES-GCM SRTCP is opened");
        let publisher_rx =
            SrtcpReceiver::new(&as_peer(&keys(publisher))).expect("AES-GCM SRTCP is opened");
        let c = &mut sim.clients[publisher];
        let (video, audio) = (c.video_mid.unwrap(), c.audio_mid.unwrap());
        let mut api = c.rtc.direct_api();
        let rids: &[Option<&str>] = match simulcast {
            true => &[Some("0"), Some("1"), Some("2")],
            false => &[None],
        };
        let mut publisher_ssrcs: Vec<u32> = rids
            .iter()
            .map(|rid| {
                *api.stream_tx_by_mid(video, rid.map(Into::into))
                    .expect("video stream")
                    .ssrc()
            })
            .collect();
        let audio_ssrc = *api
            .stream_tx_by_mid(audio, None)
            .expect("audio stream")
            .ssrc();
        sim.rewrite = None;
        // The server's transport-wide feedback to the publisher's client describes the
        // fuzzer's packets too (they are sealed with the publisher's keys, so the server
        // takes them as the publisher's): numbers the client never sent, which str0m's
        // sender-side reader panics on ("Incorrect large delta size", found by this target).
        // That client is the harness, not the server under test: it is not given them.
        let server: std::net::SocketAddr = crate::sim::SERVER.parse().unwrap();
        let mut scratch = Vec::new();
        sim.drop_if = Some(Box::new(move |src, dst, d: &[u8]| {
            src == server
                && dst == from
                && is_rtcp(d)
                && publisher_rx
                    .open(d, &mut scratch)
                    .is_some_and(has_transport_feedback)
        }));
        let sent_seq = seen.borrow().clone();
        assert!(
            publisher_ssrcs.iter().all(|s| sent_seq.contains_key(s)),
            "the publisher's video was seen"
        );
        publisher_ssrcs.push(audio_ssrc);
        let mut w = World {
            sim,
            publisher,
            viewer,
            as_publisher,
            as_viewer,
            viewer_rx,
            viewer_sr: None,
            simulcast,
            publisher_ssrcs,
            viewer_ssrcs: Vec::new(),
            sent_seq,
            last_ts: HashMap::new(),
            viewer_seq: HashMap::new(),
            viewer_transport_wide: None,
            frames,
            inputs: 0,
            builds: 1,
        };
        w.read_tap();
        assert!(!w.viewer_ssrcs.is_empty(), "the viewer received media");
        assert!(
            w.viewer_transport_wide.is_some(),
            "the server numbers the viewer's packets"
        );
        // The keys are right: a packet sealed here is opened and forwarded like the client's
        // (on each layer: the viewer's is forwarded).
        let before = w.sim.engine.stats().packets_forwarded;
        let video = w.publisher_ssrcs.len() - 1;
        for ssrc in w.publisher_ssrcs[..video].to_vec() {
            let mut rtp = vec![0x80, 96, 0, 0, 0, 1, 0, 0];
            rtp.extend_from_slice(&ssrc.to_be_bytes());
            rtp.extend_from_slice(&[0x41, 1, 2, 3]);
            w.publisher_rtp(rtp, 12, 1);
        }
        w.sim.run_for(Duration::from_millis(5));
        let after = w.sim.engine.stats().packets_forwarded;
        assert!(
            after > before,
            "a packet sealed with the publisher's keys is forwarded"
        );
        // And the viewer's: a PLI on each of its streams is read by the engine.
        let before = w.sim.engine.stats().plis_received;
        for ssrc in w.viewer_ssrcs.clone() {
            let mut pli = vec![0x81, 206, 0, 2, 0, 0, 0, 7];
            pli.extend_from_slice(&ssrc.to_be_bytes());
            w.rtcp(false, pli);
        }
        assert!(
            w.sim.engine.stats().plis_received > before,
            "a PLI sealed with the viewer's keys is read"
        );
        w
    }

    /// Reads what the server sent the viewer since the last call (RTP headers are clear
    /// text under SRTP): its SSRCs, newest sequence numbers and transport-wide number; and
    /// its sender reports, opened.
    fn read_tap(&mut self) {
        let mut scratch = Vec::new();
        for (_, d) in self.sim.tapped.drain(..) {
            if is_rtcp(&d) {
                // A compound of ours starts with an SR: its NTP time at bytes 8–15.
                if let Some(sr) = self.viewer_rx.open(&d, &mut scratch)
                    && sr.len() >= 16
                    && sr[1] == 200
                {
                    self.viewer_sr = Some(u32::from_be_bytes(sr[10..14].try_into().unwrap()));
                }
                continue;
            }
            let rtp = d.len() >= 12 && d[0] >> 6 == 2;
            if !rtp {
                continue;
            }
            let ssrc = u32::from_be_bytes(d[8..12].try_into().unwrap());
            if !self.viewer_ssrcs.contains(&ssrc) && self.viewer_ssrcs.len() < 8 {
                self.viewer_ssrcs.push(ssrc);
            }
            self.viewer_seq
                .insert(ssrc, u16::from_be_bytes([d[2], d[3]]));
            if let Some(n) = transport_wide(&d) {
                self.viewer_transport_wide = Some(n);
            }
        }
    }

    pub fn publisher_addr(&self) -> SocketAddr {
        self.sim.clients[self.publisher].addr
    }

    pub fn viewer_addr(&self) -> SocketAddr {
        self.sim.clients[self.viewer].addr
    }

    /// Seals `rtp` (a plaintext RTP packet: header of `header_len` bytes, then payload) as the
    /// publisher and delivers it. `seq_step` moves that SSRC's extended sequence number (the
    /// index the SRTP nonce carries) from where the last packet left it.
    pub fn publisher_rtp(&mut self, mut rtp: Vec<u8>, header_len: usize, seq_step: i32) {
        let ssrc = u32::from_be_bytes(rtp[8..12].try_into().unwrap());
        // A new SSRC starts where a sender's would: anywhere in the first rollover.
        let last = self.sent_seq.entry(ssrc).or_insert(ssrc as u16 as u64);
        let before = *last;
        // An index may go back (a reordered or replayed packet), never below zero.
        *last = last.saturating_add_signed(seq_step as i64).min(1 << 47);
        rtp[2..4].copy_from_slice(&(*last as u16).to_be_bytes());
        let index = *last;
        self.as_publisher
            .seal_rtp(&mut rtp, 0, header_len, ssrc, index);
        let from = self.publisher_addr();
        let far = seq_step.unsigned_abs() >= 1 << 15;
        let routed = far.then(|| self.sim.engine.stats().packets_in);
        self.sim.inject(from, &rtp);
        // A jump of half the sequence space or more is one the receiver cannot follow (it
        // guesses the rollover counter from the 16 bits): the packet fails authentication,
        // and a sender that went on from there would never be heard again in this world.
        // Unless it got through, the next packet goes on from before the jump.
        if routed.is_some_and(|n| n == self.sim.engine.stats().packets_in) {
            self.sent_seq.insert(ssrc, before);
        }
    }

    /// Seals a compound RTCP packet as `publisher` or the viewer and delivers it.
    pub fn rtcp(&mut self, from_publisher: bool, mut rtcp: Vec<u8>) {
        // SRTCP reads the sender SSRC from the first packet's header: at least eight bytes.
        if rtcp.len() < 8 {
            rtcp.resize(8, 0);
        }
        let (sealer, from) = if from_publisher {
            (
                &mut self.as_publisher,
                self.sim.clients[self.publisher].addr,
            )
        } else {
            (&mut self.as_viewer, self.sim.clients[self.viewer].addr)
        };
        sealer.seal_rtcp(&mut rtcp, 0);
        self.sim.inject(from, &rtcp);
    }

    /// Lets `ms` of virtual time pass for the engine alone: its timers run and what it sends
    /// is read (the viewer's sequence numbers) and dropped. Every [`SYNC_EVERY`] inputs the
    /// whole simulation runs instead, with one real frame from the publisher's client, so
    /// the clients keep ICE alive, the viewer answers with its own feedback and the router
    /// keeps recent packets for NACKs to name. Running the clients on every input would
    /// double the cost of an execution and add coverage the input did not cause. Then the
    /// world is built again if an input ended a session.
    pub fn settle(&mut self, ms: u64) {
        self.inputs += 1;
        if self.inputs.is_multiple_of(SYNC_EVERY) {
            let n = self.frames;
            send_frame(
                &mut self.sim,
                self.publisher,
                self.simulcast,
                n,
                n % 30 == 0,
            );
            self.frames += 1;
            self.sim.run_for(Duration::from_millis(20));
            self.read_tap();
            // What the simulation keeps for tests' assertions, dropped so memory stays flat.
            for c in &mut self.sim.clients {
                c.frames.clear();
                c.audio.clear();
                c.video_rtp.clear();
            }
        } else {
            self.sim.now += Duration::from_millis(ms);
            let now = self.sim.now;
            let engine = &mut self.sim.engine;
            engine.handle_timeout(now);
            let viewer = self.sim.clients[self.viewer].addr;
            while let Some(t) = engine.poll_transmit() {
                if t.destination == viewer {
                    // Only an RTP header is read (read_tap): no copy of the payload. RTCP
                    // (sender reports, about one a second) is opened whole.
                    let keep = match is_rtcp(&t.contents) {
                        true => t.contents.len(),
                        false => header_len(&t.contents).min(t.contents.len()),
                    };
                    self.sim.tapped.push((now, t.contents[..keep].to_vec()));
                }
            }
            while let Some(e) = engine.poll_event() {
                self.sim.events.push(e);
            }
            self.read_tap();
        }
        let s = self.sim.engine.stats();
        if s.publishers == 1 && s.viewers == 1 {
            self.sim.events.clear();
        }
        if s.publishers != 1 || s.viewers != 1 {
            let ended: Vec<_> = self
                .sim
                .events
                .iter()
                .filter(|e| matches!(e, EngineEvent::SessionClosed { .. }))
                .collect();
            let ended = format!("{ended:?}");
            let (inputs, builds) = (self.inputs, self.builds);
            *self = World::build(self.simulcast);
            self.inputs = inputs;
            self.builds = builds + 1;
            self.sim.events.clear();
            if self.builds.is_power_of_two() {
                eprintln!(
                    "world: built {} times in {} inputs; the last ended: {ended:?}",
                    self.builds, self.inputs
                );
            }
        }
    }
}

/// The length of RTP packet `d`'s header: CSRCs and the extension block included.
fn header_len(d: &[u8]) -> usize {
    let csrcs = 12 + 4 * usize::from(d.first().map_or(0, |b| b & 0x0f));
    match d.first() {
        Some(b) if b & 0x10 != 0 && d.len() >= csrcs + 4 => {
            csrcs + 4 + 4 * usize::from(u16::from_be_bytes([d[csrcs + 2], d[csrcs + 3]]))
        }
        _ => csrcs,
    }
}

/// The transport-wide number in RTP packet `d`'s one-byte header extensions (RFC 8285), if
/// it carries one.
fn transport_wide(d: &[u8]) -> Option<u16> {
    let start = 12 + 4 * usize::from(d[0] & 0x0f);
    if d[0] & 0x10 == 0 || d.get(start..start + 2)? != [0xbe, 0xde] {
        return None;
    }
    let mut ext = d.get(start + 4..header_len(d))?;
    while let [first, rest @ ..] = ext {
        let (id, len) = (first >> 4, usize::from(first & 0x0f) + 1);
        match id {
            0 => ext = rest,
            15 => return None,
            _ if id == TRANSPORT_WIDE_ID && len == 2 => {
                return rest.get(..2).map(|n| u16::from_be_bytes([n[0], n[1]]));
            }
            _ => ext = rest.get(len..)?,
        }
    }
    None
}

fn is_rtcp(d: &[u8]) -> bool {
    d.len() >= 8 && d[0] >> 6 == 2 && (192..=223).contains(&d[1])
}

/// Whether compound RTCP `c` holds a transport-wide congestion control feedback (RTPFB,
/// FMT 15).
fn has_transport_feedback(mut c: &[u8]) -> bool {
    while c.len() >= 4 {
        if c[1] == 205 && c[0] & 0x1f == 15 {
            return true;
        }
        let len = (usize::from(u16::from_be_bytes([c[2], c[3]])) + 1) * 4;
        c = c.get(len..).unwrap_or_default();
    }
    false
}
