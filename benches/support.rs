//! What the fan-out and allocation benches share: one publisher and N viewers connected to a
//! server (whipcast's `Engine` or the naive baseline) through real ICE, DTLS and SRTP on the
//! simulated network, fresh SRTP packets from the publisher, the step that is measured, and
//! the unmeasured exchange that keeps the viewers' consent alive.
//!
//! Viewers never get the forwarded media in steady state (the server's output goes to a null
//! sink): a viewer that saw media with gaps would NACK it, and retransmissions would make the
//! per-packet work uneven. They still get everything else (STUN answers, RTCP, DTLS).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::media::MediaTime;
use str0m::net::{Protocol, Receive};
use str0m::{Event, Input, Output};

use crate::sim::{Client, SERVER, Sfu, Sim};
use whipcast::engine::BroadcastKey;

/// A 2.5 Mb/s stream is ~300 video packets/s.
pub const PACKET_INTERVAL: Duration = Duration::from_micros(3_333);
/// Video payload per packet, as in that stream (the H.264 NAL is one byte more).
pub const PAYLOAD: usize = 1_100;
/// An IDR of the load generator's stream (~80 KB every 2 s at 2.5 Mb/s).
#[allow(dead_code)] // the alloc bench's heap figure uses it; the fan-out bench does not
pub const KEYFRAME: usize = 80_000;
/// Longer than any viewer's RTX cache (whipcast keeps 128 packets or 1 s, str0m's default is
/// 3 s), so every cache is full and evicting when the timing starts.
pub const WARM_UP: Duration = Duration::from_millis(3_300);
/// How often viewers' STUN and RTCP reach the server (outside the timing). An ICE-lite pair
/// dies after 15 s without a STUN request; str0m's clients check well within a second.
const FEEDBACK_EVERY: Duration = Duration::from_secs(1);
/// Rounds of server ⇄ client exchange per feedback pass (STUN, then RTCP answers).
const EXCHANGE_ROUNDS: usize = 6;
const BROADCAST: BroadcastKey = BroadcastKey(1);

/// One publisher turn: the datagrams its `Rtc` sent at `now`, normally one SRTP packet.
pub struct Packet {
    pub now: Instant,
    pub datagrams: Vec<Vec<u8>>,
    /// How many of `datagrams` are RTP (not RTCP or STUN).
    pub rtp: usize,
}

/// What came out of the server for a run of packets; contents go nowhere, but each RTP
/// packet's destination is kept (in room reserved before the timing) so that
/// [`Fanout::check`] can tell every viewer got exactly one copy.
#[derive(Default, Debug)]
pub struct Sink {
    pub datagrams: usize,
    pub bytes: usize,
    pub rtp_to: Vec<SocketAddr>,
}

pub struct Fanout<S: Sfu> {
    pub sim: Sim<S>,
    pub viewers: usize,
    publisher: usize,
    pub publisher_addr: SocketAddr,
    pub server: SocketAddr,
    clients: HashMap<SocketAddr, usize>,
    n: u64,
    next_feedback: Instant,
    /// The server's answers to the publisher (STUN, RTCP), delivered after the timed part.
    pub to_publisher: Vec<(SocketAddr, Vec<u8>)>,
    /// What [`forward`](Self::forward) sent since the last [`check`](Self::check).
    pub sink: Sink,
    /// Called with `true` before and `false` after each of the server's own steps in
    /// [`settle`](Self::settle) (its STUN and RTCP work), so the alloc bench can count them
    /// apart from the clients'.
    pub meter: fn(bool),
}

impl<S: Sfu> Fanout<S> {
    /// Connects a publisher and `viewers` viewers to the server in `sim`, starts every viewer
    /// on a keyframe and runs [`WARM_UP`] of packets through the server.
    pub fn connect(mut sim: Sim<S>, viewers: usize) -> Self {
        sim.latency = Duration::from_millis(1);
        let publisher = sim.publish(BROADCAST).expect("publish");
        sim.run_for(Duration::from_millis(200));
        assert!(sim.clients[publisher].connected, "publisher connected");
        let first = sim.clients.len();
        for _ in 0..viewers {
            sim.view(BROADCAST).expect("view");
        }
        for _ in 0..50 {
            if sim.clients[first..].iter().all(|c| c.connected) {
                break;
            }
            sim.run_for(Duration::from_millis(100));
        }
        let connected = sim.clients[first..].iter().filter(|c| c.connected).count();
        assert_eq!(connected, viewers, "every viewer saw Event::Connected");
        // Start every viewer on a keyframe, delivered and decoded for real.
        sim.send_frame(publisher, 0, true);
        sim.run_for(Duration::from_millis(100));
        let started = sim.clients[first..]
            .iter()
            .filter(|c| c.frames.first().is_some_and(|f| f.keyframe))
            .count();
        assert_eq!(started, viewers, "every viewer decoded the first keyframe");
        let server: SocketAddr = SERVER.parse().unwrap();
        let clients = sim
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| (c.addr, i))
            .collect();
        let mut f = Fanout {
            publisher_addr: sim.clients[publisher].addr,
            next_feedback: sim.now,
            sim,
            viewers,
            publisher,
            server,
            clients,
            n: 0,
            to_publisher: Vec::with_capacity(64),
            sink: Sink::default(),
            meter: |_| {},
        };
        let warm_up = (WARM_UP.as_micros() / PACKET_INTERVAL.as_micros()) as usize;
        let mut left = warm_up;
        while left > 0 {
            let batch = f.prepare(left.min(64));
            left -= batch.len();
            for p in &batch {
                f.forward(p);
            }
            f.check(&batch);
            f.settle();
        }
        f
    }

    /// Has the publisher send `k` packets, [`PACKET_INTERVAL`] apart in virtual time, and
    /// keeps their datagrams for [`forward`](Self::forward). Not timed.
    pub fn prepare(&mut self, k: usize) -> Vec<Packet> {
        let batch: Vec<Packet> = (0..k).map(|_| self.publisher_packet()).collect();
        self.reserve(&batch);
        batch
    }

    /// Room for every copy of `batch`, so that keeping their destinations does not allocate
    /// in the measured step.
    fn reserve(&mut self, batch: &[Packet]) {
        let copies = batch.iter().map(|p| p.rtp).sum::<usize>() * self.viewers;
        self.sink.rtp_to.reserve(copies);
    }

    /// A whole IDR (`KEYFRAME` bytes, ~70 RTP packets) in one turn: the datagrams reach the
    /// server together, as a keyframe burst does within one receive round of the io loop.
    #[allow(dead_code)] // as KEYFRAME
    pub fn prepare_keyframe(&mut self) -> Packet {
        let keyframe = self.publisher_write(0x65, KEYFRAME);
        self.reserve(std::slice::from_ref(&keyframe));
        keyframe
    }

    fn publisher_packet(&mut self) -> Packet {
        // One P-slice NAL that fits one RTP packet.
        self.publisher_write(0x41, PAYLOAD)
    }

    fn publisher_write(&mut self, nal_header: u8, len: usize) -> Packet {
        self.n += 1;
        self.sim.now += PACKET_INTERVAL;
        let (n, now) = (self.n, self.sim.now);
        // Bytes vary so no two packets are equal.
        let mut nal = Vec::with_capacity(len + 5);
        nal.extend_from_slice(&[0, 0, 0, 1, nal_header]);
        nal.extend((0..len).map(|i| ((n as usize + i) % 251) as u8 | 1));
        let c = &mut self.sim.clients[self.publisher];
        let video = c.video_mid.expect("publisher has video");
        let pt = c.rtc.media(video).expect("video media").remote_pts()[0];
        c.rtc
            .writer(video)
            .expect("frame mode writer")
            .write(pt, now, MediaTime::from_90khz(n * 300), nal)
            .expect("write");
        let mut datagrams = Vec::new();
        // str0m releases a write on the tick after the one that queues it.
        for _ in 0..3 {
            let _ = c.rtc.handle_input(Input::Timeout(now));
            let next = drain(c, |_, d| datagrams.push(d.to_vec()));
            if next.is_none_or(|t| t > now) {
                break;
            }
        }
        let rtp = datagrams.iter().filter(|d| is_rtp(d)).count();
        Packet {
            now,
            datagrams,
            rtp,
        }
    }

    /// The measured step: one publisher turn into the server, every transmit out to the null
    /// sink, as the io loop does it (datagram, due timeouts, transmits, events).
    #[inline(never)]
    pub fn forward(&mut self, p: &Packet) {
        let engine = &mut self.sim.engine;
        for d in &p.datagrams {
            engine.handle_datagram(p.now, self.publisher_addr, self.server, d);
        }
        let (publisher, to_publisher) = (self.publisher_addr, &mut self.to_publisher);
        emit(engine, p.now, &mut self.sink, |to, d| {
            if to == publisher {
                to_publisher.push((to, d.to_vec()));
                return true;
            }
            false
        });
    }

    /// Every viewer got exactly one copy of every publisher RTP packet in `batch` (nobody
    /// two and another none); resets the sink for the next batch. Not timed.
    pub fn check(&mut self, batch: &[Packet]) {
        let sent: usize = batch.iter().map(|p| p.rtp).sum();
        let mut copies: HashMap<SocketAddr, usize> = HashMap::with_capacity(self.viewers);
        for to in self.sink.rtp_to.drain(..) {
            *copies.entry(to).or_default() += 1;
        }
        let viewers = self.clients.iter().filter(|&(_, &i)| i != self.publisher);
        for (addr, _) in viewers {
            let got = copies.remove(addr).unwrap_or(0);
            assert_eq!(got, sent, "viewer {addr}: {got} copies of {sent} packets");
        }
        assert!(copies.is_empty(), "RTP to strangers: {copies:?}");
    }

    /// Not timed: the publisher gets the server's answers, and about once a second every
    /// client's timers run and its STUN and RTCP reach the server (and back).
    pub fn settle(&mut self) {
        let now = self.sim.now;
        let mut to_server = Vec::new();
        let answers = std::mem::take(&mut self.to_publisher);
        for (to, data) in &answers {
            self.deliver(*to, data, &mut to_server);
        }
        self.to_publisher = answers;
        self.to_publisher.clear();
        if now >= self.next_feedback {
            self.next_feedback = now + FEEDBACK_EVERY;
            for c in &mut self.sim.clients {
                let _ = c.rtc.handle_input(Input::Timeout(now));
                drain(c, |from, d| to_server.push((from, d.to_vec())));
            }
        }
        self.exchange(to_server);
    }

    /// Carries datagrams between the clients and the server at `now` until both are quiet.
    /// Media RTP for viewers is dropped (see the module docs).
    fn exchange(&mut self, mut to_server: Vec<(SocketAddr, Vec<u8>)>) {
        let now = self.sim.now;
        for _ in 0..EXCHANGE_ROUNDS {
            // Copies for the clients are made with the meter off: they are the bench's, not
            // the server's.
            let mut back = Vec::new();
            for (from, d) in to_server.drain(..) {
                (self.meter)(true);
                self.sim.engine.handle_datagram(now, from, self.server, &d);
                (self.meter)(false);
            }
            (self.meter)(true);
            if self.sim.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.sim.engine.handle_timeout(now);
            }
            (self.meter)(false);
            loop {
                (self.meter)(true);
                let t = self.sim.engine.poll_transmit();
                (self.meter)(false);
                let Some(t) = t else { break };
                if t.destination == self.publisher_addr || !is_rtp(t.contents) {
                    back.push((t.destination, t.contents.to_vec()));
                }
            }
            (self.meter)(true);
            while self.sim.engine.poll_event().is_some() {}
            (self.meter)(false);
            if back.is_empty() {
                return;
            }
            for (to, data) in back {
                self.deliver(to, &data, &mut to_server);
            }
        }
    }

    fn deliver(&mut self, to: SocketAddr, data: &[u8], out: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let Some(&i) = self.clients.get(&to) else {
            return;
        };
        let c = &mut self.sim.clients[i];
        if let Ok(r) = Receive::new(Protocol::Udp, self.server, to, data)
            && c.rtc.handle_input(Input::Receive(self.sim.now, r)).is_ok()
        {
            drain(c, |from, d| out.push((from, d.to_vec())));
        }
    }
}

/// After an input: a server's due timeouts, its transmits (to the null sink, unless `aside`
/// takes them) and its events, as the io loop does it.
pub fn emit<S: Sfu>(
    server: &mut S,
    now: Instant,
    sink: &mut Sink,
    mut aside: impl FnMut(SocketAddr, &[u8]) -> bool,
) {
    if server.poll_timeout().is_some_and(|t| t <= now) {
        server.handle_timeout(now);
    }
    while let Some(t) = server.poll_transmit() {
        if aside(t.destination, t.contents) {
            continue;
        }
        sink.datagrams += 1;
        if is_rtp(t.contents) {
            sink.rtp_to.push(t.destination);
        }
        sink.bytes += black_box(t.contents).len();
    }
    while server.poll_event().is_some() {}
}

/// Drains a client's `Rtc` to its next timeout, handing each datagram to `send`.
fn drain(c: &mut Client, mut send: impl FnMut(SocketAddr, &[u8])) -> Option<Instant> {
    loop {
        match c.rtc.poll_output() {
            Ok(Output::Timeout(t)) => return Some(t),
            Ok(Output::Transmit(t)) => send(c.addr, &t.contents),
            Ok(Output::Event(Event::Connected)) => c.connected = true,
            Ok(Output::Event(_)) => {}
            // A failed client stays quiet; the assertions on the server's output notice.
            Err(_) => return None,
        }
    }
}

/// RTP rather than RTCP, STUN or DTLS: version 2, and a second byte outside RTCP's packet
/// types 192–223 (RFC 5761 §4), which is all the clear header tells.
pub fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && d[0] & 0xc0 == 0x80 && !(64..=95).contains(&(d[1] & 0x7f))
}
