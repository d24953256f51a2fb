//! A viewer: a browser-like recvonly offer (H.264 variants + Opus, RTX, TWCC) over WHEP, or
//! the same codecs answering Janus's offer ([`crate::janus::watch`]), its own loopback UDP
//! socket and a tokio task. After ICE and DTLS, every RTP packet is counted from
//! its clear header (SSRC, sequence number: distinct packets delivered, duplicates) without
//! decrypting; loss is what the publisher sent minus what arrived ([`crate::window`]).
//!
//! * **Sink** viewers hand only STUN, DTLS and RTCP to str0m, so consent checks and receiver
//!   reports keep running while RTP costs one header parse; that keeps the generator cheaper
//!   than the server.
//! * **Full** viewers also hand every RTP packet to str0m (frame mode, NACK on), and check
//!   each decoded frame's marker and filler ([`publisher::check_frame`]): frame latency
//!   (receive time − send time, same clock), order, gaps and byte integrity.
//!
//! With `--receiver-gro` a viewer's socket has UDP GRO on (through quinn-udp): a GSO run from
//! the server arrives as one buffer, split here at its segment size.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use std::io::IoSliceMut;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Event, IceConnectionState, Rtc, RtcConfig};

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use crate::http::Base;
use crate::janus;
use crate::peer::{self, Negotiated, Pts, Sessions};
use crate::publisher;
use crate::stats::{Counters, SeqCounter};

/// Datagrams read per wake-up before yielding to the other viewers.
const BATCH: usize = 64;
/// With UDP GRO, one receive can hold a whole GSO run from the server (≤ 64 KB).
const GRO_BUFFER: usize = 65_536;

/// What a viewer joins.
#[derive(Clone, Debug)]
pub enum Target {
    /// whipcast: a WHEP POST to `/stream?id=<view id>`.
    Whep(String),
    /// Janus: a streaming mountpoint, by id.
    Janus(u64),
}

pub struct Viewer {
    pub location: String,
    pub full: bool,
    pub counters: Arc<Counters>,
    task: AbortHandle,
}

impl Viewer {
    /// Negotiates (the first request's send time starts the time-to-first-frame clock) and
    /// spawns the viewer's task on the current runtime.
    pub async fn join(
        base: &Base,
        target: &Target,
        full: bool,
        gro: bool,
        epoch: Instant,
        sessions: &Sessions,
    ) -> Result<Self, String> {
        let cfg = RtcConfig::new()
            .clear_codecs()
            .enable_h264(true)
            .enable_opus(true, false);
        let n = match target {
            Target::Whep(view_id) => {
                let path = base.path(&format!("/stream?id={view_id}"));
                let order = [MediaKind::Video, MediaKind::Audio];
                peer::negotiate(base, &path, cfg, Direction::RecvOnly, order, sessions).await?
            }
            Target::Janus(mountpoint) => janus::watch(base, *mountpoint, cfg, sessions).await?,
        };
        if n.pts.video.is_none() {
            return Err(format!("{target:?}: no H264 was negotiated"));
        }
        let counters = Arc::new(Counters::default());
        counters
            .started_us
            .store(peer::micros_since(epoch, n.started), Relaxed);
        counters
            .answered_us
            .store(peer::micros_since(epoch, n.answered), Relaxed);
        let location = n.location.clone();
        let c = Arc::clone(&counters);
        let task = tokio::spawn(async move {
            if let Err(e) = run(n, full, gro, epoch, &c).await {
                peer::log_limited(format_args!("viewer: {e}"));
            }
            c.ended.store(true, Relaxed);
        });
        Ok(Self {
            location,
            full,
            counters,
            task: task.abort_handle(),
        })
    }

    /// Stops the task (the socket closes with it). The DELETE is the caller's.
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// One viewer's state inside its task.
struct State {
    rtc: Rtc,
    local: SocketAddr,
    full: bool,
    video: Mid,
    pts: Pts,
    epoch: Instant,
    /// At most a few SSRCs (video, audio): a short list beats a map.
    seqs: Vec<SeqCounter>,
    other_rtp: u64,
    last_frame: Option<u64>,
}

async fn run(
    n: Negotiated,
    full: bool,
    gro: bool,
    epoch: Instant,
    c: &Counters,
) -> Result<(), String> {
    let Negotiated {
        rtc,
        socket,
        video,
        pts,
        ..
    } = n;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut st = State {
        rtc,
        local,
        full,
        video,
        pts,
        epoch,
        seqs: Vec::with_capacity(4),
        other_rtp: 0,
        last_frame: None,
    };
    let gro = if gro {
        Some(UdpSocketState::new(UdpSockRef::from(&socket)).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let mut buf = vec![0u8; if gro.is_some() { GRO_BUFFER } else { 2048 }];
    let sleep = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        let wake = st.drain(&socket, c)?;
        if !st.rtc.is_alive() {
            return Ok(());
        }
        if armed != Some(wake) {
            sleep.as_mut().reset(wake.into());
            armed = Some(wake);
        }
        tokio::select! {
            r = socket.readable() => {
                r.map_err(|e| e.to_string())?;
                for _ in 0..BATCH {
                    let got = match gro.as_ref() {
                        Some(state) => socket.try_io(Interest::READABLE, || {
                            let mut bufs = [IoSliceMut::new(&mut buf)];
                            let mut meta = [RecvMeta::default()];
                            state.recv(UdpSockRef::from(&socket), &mut bufs, &mut meta)?;
                            Ok((meta[0].len, meta[0].stride, meta[0].addr))
                        }),
                        None => socket
                            .try_recv_from(&mut buf)
                            .map(|(len, src)| (len, len, src)),
                    };
                    match got {
                        Ok((len, stride, src)) => {
                            for d in buf[..len].chunks(stride.max(1)) {
                                st.on_datagram(&socket, src, d, c)?;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        // An ICMP error from an earlier send; the socket is still fine.
                        Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset) => break,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                st.publish(c);
            }
            () = &mut sleep => {
                armed = None;
                peer::tick(&mut st.rtc)?;
            }
        }
    }
}

impl State {
    fn drain(&mut self, socket: &UdpSocket, c: &Counters) -> Result<Instant, String> {
        let Self {
            rtc,
            video,
            epoch,
            last_frame,
            ..
        } = self;
        peer::drain(rtc, socket, |e| on_event(e, *video, *epoch, last_frame, c))
    }

    fn on_datagram(
        &mut self,
        socket: &UdpSocket,
        src: SocketAddr,
        d: &[u8],
        c: &Counters,
    ) -> Result<(), String> {
        if peer::is_rtp(d) {
            self.count_rtp(d, c);
            if !self.full {
                return Ok(());
            }
        }
        peer::feed(&mut self.rtc, self.local, src, d)?;
        self.drain(socket, c).map(|_| ())
    }

    fn count_rtp(&mut self, d: &[u8], c: &Counters) {
        let pt = d[1] & 0x7f;
        if Some(pt) != self.pts.video && Some(pt) != self.pts.audio {
            self.other_rtp += 1;
            return;
        }
        let seq = u16::from_be_bytes([d[2], d[3]]);
        let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        match self.seqs.iter_mut().find(|s| s.ssrc == ssrc) {
            Some(s) => s.add(seq),
            None => self.seqs.push(SeqCounter::new(ssrc, seq)),
        }
        if Some(pt) == self.pts.video && c.first_packet_us.load(Relaxed) == 0 {
            c.first_packet_us
                .store(peer::micros_since(self.epoch, Instant::now()), Relaxed);
        }
    }

    /// Makes this batch's counts visible to the main task, and notes when media last came.
    fn publish(&self, c: &Counters) {
        let (mut r, mut d) = (0, 0);
        for s in &self.seqs {
            (r, d) = (r + s.received, d + s.duplicates);
        }
        if r > c.received.swap(r, Relaxed) {
            let now = peer::micros_since(self.epoch, Instant::now());
            let last = c.last_rtp_us.swap(now, Relaxed);
            if last > 0 {
                c.longest_silence_us
                    .fetch_max(now.saturating_sub(last), Relaxed);
            }
        }
        c.duplicates.store(d, Relaxed);
        c.rtx.store(self.other_rtp, Relaxed);
    }
}

fn on_event(e: Event, video: Mid, epoch: Instant, last_frame: &mut Option<u64>, c: &Counters) {
    match e {
        Event::Connected => {
            c.connected_us
                .store(peer::micros_since(epoch, Instant::now()), Relaxed);
        }
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            peer::log_limited(format_args!("viewer: ICE disconnected"));
        }
        Event::MediaData(d) if d.mid == video => {
            let now = Instant::now();
            let now_us = peer::micros_since(epoch, now);
            if c.first_frame_us.load(Relaxed) == 0 {
                c.first_frame_us.store(now_us, Relaxed);
            }
            match publisher::check_frame(&d.data) {
                Ok((n, sent_us)) => {
                    let late = (now_us as f64 - sent_us as f64) / 1000.0;
                    c.latencies_ms.lock().expect("latency lock").push(late);
                    match *last_frame {
                        Some(l) if n <= l => {
                            c.frames_bad.fetch_add(1, Relaxed);
                        }
                        Some(l) => {
                            c.frames_missing.fetch_add(n - l - 1, Relaxed);
                            c.frames_ok.fetch_add(1, Relaxed);
                        }
                        None => {
                            c.frames_ok.fetch_add(1, Relaxed);
                        }
                    }
                    *last_frame = Some(last_frame.map_or(n, |l| l.max(n)));
                }
                Err(why) => {
                    c.frames_bad.fetch_add(1, Relaxed);
                    peer::log_limited(format_args!(
                        "viewer: bad frame ({why}, {} bytes)",
                        d.data.len()
                    ));
                }
            }
        }
        _ => {}
    }
}
