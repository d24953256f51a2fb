//! The synthetic WHIP publisher, on its own thread so the viewers' load cannot delay its
//! frames: OBS-like offer (H264 PT 96 `42e01f` packetization-mode 1 without RTX, Opus 111,
//! sendonly), then 30 fps of synthetic Annex-B H.264 at ~2.5 Mb/s (an ~80 KB IDR with SPS and
//! PPS every 2 s, ~9 KB P-frames) and a 160-byte Opus packet every 20 ms.
//!
//! Every video frame carries a 16-byte marker right after the slice's NAL header (frame
//! number, send time in µs since the run's epoch; 7 bits per byte with the top bit set, so it
//! can never form a start code) followed by filler that is a function of the frame number:
//! full viewers check both ([`check_frame`]).

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::{Event, Rtc, RtcConfig};

use crate::http::Base;
use crate::peer::{self, Sessions};

pub const FRAME: Duration = Duration::from_micros(33_333);
pub const AUDIO: Duration = Duration::from_millis(20);
/// An IDR every 60 frames (2 s).
const GOP: u64 = 60;
const IDR_FILLER: usize = 80_000;
const P_FILLER: usize = 9_000;
const MARKER: usize = 16;
/// How often a held publisher looks whether it may go on.
const HELD_TICK: Duration = Duration::from_millis(2);

/// x264's SPS for 320x240 Constrained Baseline, and a PPS (nobody decodes the pictures).
const SPS: &[u8] = &[
    0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00,
    0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0xa4, 0x80,
];
const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

pub struct Publisher {
    /// The server's UDP port, from its candidate.
    pub server_port: Option<u16>,
    pub connected: Arc<AtomicBool>,
    /// Video frames written so far, and frames skipped because the thread fell behind.
    pub frames: Arc<AtomicU64>,
    pub late_frames: Arc<AtomicU64>,
    /// Media RTP packets the socket took (what every viewer should receive, as the server
    /// forwards each one), and RTP packets a full socket buffer dropped before the server.
    pub rtp_sent: Arc<AtomicU64>,
    pub rtp_send_drops: Arc<AtomicU64>,
    /// Set by the run to hold the publisher back (window.rs): nothing is written meanwhile.
    pub hold: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// POSTs the WHIP offer and starts streaming on a thread of its own once connected.
    pub async fn start(
        base: &Base,
        broadcast_id: &str,
        epoch: Instant,
        sessions: &Sessions,
    ) -> Result<Self, String> {
        let mut cfg = RtcConfig::new().clear_codecs();
        cfg.codec_config().add_h264(96.into(), None, true, 0x42e01f);
        let cfg = cfg.enable_opus(true, false);
        let path = base.path(&format!("/broadcast?id={broadcast_id}"));
        let n = peer::negotiate(
            base,
            &path,
            cfg,
            Direction::SendOnly,
            [MediaKind::Audio, MediaKind::Video],
            sessions,
        )
        .await?;
        // The socket belongs to this runtime's reactor; hand over the std socket instead.
        let socket = n.socket.into_std().map_err(|e| e.to_string())?;
        let (rtc, audio, video) = (n.rtc, n.audio, n.video);
        Self::spawn(n.server_port, move |shared| async move {
            let socket = tokio::net::UdpSocket::from_std(socket).map_err(|e| e.to_string())?;
            run(rtc, socket, audio, video, epoch, &shared).await
        })
    }

    /// Runs `body` on a thread of its own (with a runtime of its own) until it returns or
    /// [`Publisher::stop`]; `body` keeps the counters the run reads.
    pub fn spawn<F, Fut>(server_port: Option<u16>, body: F) -> Result<Self, String>
    where
        F: FnOnce(Shared) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let shared = Shared::default();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("publisher runtime");
                if let Err(e) = rt.block_on(body(s)) {
                    eprintln!("publisher: {e}");
                }
            })
            .map_err(|e| e.to_string())?;
        let Shared {
            connected,
            frames,
            late_frames,
            rtp_sent,
            rtp_send_drops,
            hold,
            stop,
        } = shared;
        Ok(Self {
            server_port,
            connected,
            frames,
            late_frames,
            rtp_sent,
            rtp_send_drops,
            hold,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Publisher {
    /// On an early exit the thread is told to stop but not waited for.
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// The publisher thread's side of [`Publisher`]'s counters.
#[derive(Clone, Default)]
pub struct Shared {
    pub connected: Arc<AtomicBool>,
    pub frames: Arc<AtomicU64>,
    pub late_frames: Arc<AtomicU64>,
    rtp_sent: Arc<AtomicU64>,
    rtp_send_drops: Arc<AtomicU64>,
    hold: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
}

impl Shared {
    /// While the run holds the publisher back, no frame or audio packet is due: the next
    /// ones move a moment past `now`, so nothing is written, and nothing bursts to catch up
    /// when it is let go (frames keep their numbers: none is skipped).
    pub fn hold_back(&self, now: Instant, next: [&mut Instant; 2]) {
        if self.hold.load(Relaxed) {
            for n in next {
                *n = now + HELD_TICK;
            }
        }
    }

    fn on_event(&self, e: &Event) {
        if matches!(e, Event::Connected) {
            self.connected.store(true, Relaxed);
        }
    }

    pub fn on_sent(&self, d: &[u8], sent: bool) {
        if peer::is_rtp(d) {
            match sent {
                true => self.rtp_sent.fetch_add(1, Relaxed),
                false => self.rtp_send_drops.fetch_add(1, Relaxed),
            };
        }
    }

    fn drain(&self, rtc: &mut Rtc, socket: &tokio::net::UdpSocket) -> Result<Instant, String> {
        peer::drain_counting(
            rtc,
            socket,
            |e| self.on_event(&e),
            |d, ok| self.on_sent(d, ok),
        )
    }
}

async fn run(
    mut rtc: Rtc,
    socket: tokio::net::UdpSocket,
    audio: Mid,
    video: Mid,
    epoch: Instant,
    s: &Shared,
) -> Result<(), String> {
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let (mut n_video, mut n_audio) = (0u64, 0u64);
    let (mut next_video, mut next_audio) = (Instant::now(), Instant::now());
    let mut started = false;
    while !s.stop.load(Relaxed) {
        let mut wake = s.drain(&mut rtc, &socket)?;
        let now = Instant::now();
        if s.connected.load(Relaxed) {
            if !started {
                (started, next_video, next_audio) = (true, now, now);
            }
            s.hold_back(now, [&mut next_video, &mut next_audio]);
            let mut wrote = false;
            if now >= next_video {
                write_video(&mut rtc, video, n_video, epoch);
                n_video += 1;
                s.frames.store(n_video, Relaxed);
                next_video += FRAME;
                if now > next_video + 3 * FRAME {
                    // Fell behind (a starved core): skip ahead rather than burst.
                    let behind = (now - next_video).as_micros() / FRAME.as_micros();
                    s.late_frames.fetch_add(behind as u64, Relaxed);
                    next_video = now + FRAME;
                }
                wrote = true;
            }
            if now >= next_audio {
                write_audio(&mut rtc, audio, n_audio);
                n_audio += 1;
                next_audio += AUDIO;
                if now > next_audio + 5 * AUDIO {
                    next_audio = now + AUDIO;
                }
                wrote = true;
            }
            if wrote {
                // A write does not send; the Timeout tick does (notes/str0m.md §1).
                peer::tick(&mut rtc)?;
                continue;
            }
            wake = wake.min(next_video).min(next_audio);
        }
        let wake = wake.min(Instant::now() + Duration::from_millis(100));
        tokio::select! {
            r = socket.readable() => {
                r.map_err(|e| e.to_string())?;
                for _ in 0..64 {
                    match socket.try_recv_from(&mut buf) {
                        Ok((len, src)) => {
                            peer::feed(&mut rtc, local, src, &buf[..len])?;
                            s.drain(&mut rtc, &socket)?;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        // An ICMP error from an earlier send; the socket is still fine.
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
                            ) =>
                        {
                            break;
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            () = tokio::time::sleep_until(wake.into()) => peer::tick(&mut rtc)?,
        }
    }
    Ok(())
}

fn write_video(rtc: &mut Rtc, video: Mid, n: u64, epoch: Instant) {
    let now = Instant::now();
    let frame = make_frame(n, peer::micros_since(epoch, now));
    if let Some(w) = rtc.writer(video) {
        let _ = w.write(96.into(), now, MediaTime::from_90khz(n * 3000), frame);
    }
}

fn write_audio(rtc: &mut Rtc, audio: Mid, n: u64) {
    let pt = rtc
        .media(audio)
        .and_then(|m| m.remote_pts().first().copied());
    if let (Some(pt), Some(w)) = (pt, rtc.writer(audio)) {
        let time = MediaTime::new(n * 960, Frequency::FORTY_EIGHT_KHZ);
        // A TOC byte for 20 ms CELT, then filler (nobody decodes it).
        let mut payload = vec![0x55u8; 160];
        payload[0] = 0xfc;
        let _ = w.write(pt, Instant::now(), time, payload);
    }
}

/// Frame `n` in Annex B: SPS, PPS and an IDR slice every [`GOP`] frames, else a P slice;
/// the slice starts with the marker, then the filler.
pub fn make_frame(n: u64, sent_us: u64) -> Vec<u8> {
    let idr = n.is_multiple_of(GOP);
    let filler = if idr { IDR_FILLER } else { P_FILLER };
    let mut f = Vec::with_capacity(filler + 64);
    if idr {
        for nal in [SPS, PPS] {
            f.extend_from_slice(&[0, 0, 0, 1]);
            f.extend_from_slice(nal);
        }
    }
    f.extend_from_slice(&[0, 0, 0, 1, if idr { 0x65 } else { 0x41 }]);
    f.extend_from_slice(&seven_bit(n));
    f.extend_from_slice(&seven_bit(sent_us));
    f.extend((0..filler).map(|i| filler_byte(n, i)));
    f
}

/// Reads a depacketized frame back: `Ok((frame number, send µs))` when the marker and every
/// filler byte are intact and the slice has the right length.
pub fn check_frame(frame: &[u8]) -> Result<(u64, u64), &'static str> {
    // The slice is the last NAL unit; find its start code.
    let at = frame
        .windows(3)
        .rposition(|w| w == [0, 0, 1])
        .ok_or("no start code")?
        + 3;
    let (&header, rest) = frame[at..].split_first().ok_or("empty NAL unit")?;
    let idr = match header & 0x1f {
        5 => true,
        1 => false,
        _ => return Err("not a slice"),
    };
    let marker = rest.get(..MARKER).ok_or("short slice")?;
    let n = from_seven_bit(&marker[..8]).ok_or("bad marker")?;
    let sent = from_seven_bit(&marker[8..]).ok_or("bad marker")?;
    if idr != n.is_multiple_of(GOP) {
        return Err("wrong slice type for the frame number");
    }
    let filler = &rest[MARKER..];
    if filler.len() != if idr { IDR_FILLER } else { P_FILLER } {
        return Err("wrong length");
    }
    if filler
        .iter()
        .enumerate()
        .any(|(i, &b)| b != filler_byte(n, i))
    {
        return Err("corrupt filler");
    }
    Ok((n, sent))
}

fn filler_byte(n: u64, i: usize) -> u8 {
    // Never 0, so the filler can never form a start code.
    1 + ((i as u64 * 7 + n * 13) % 251) as u8
}

/// 56 bits, big-endian, 7 per byte, top bit set.
fn seven_bit(v: u64) -> [u8; 8] {
    std::array::from_fn(|i| 0x80 | ((v >> (7 * (7 - i))) & 0x7f) as u8)
}

fn from_seven_bit(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |acc, &x| {
        (x & 0x80 != 0).then_some((acc << 7) | (x & 0x7f) as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        for n in [0, 1, 59, 60, 123_456] {
            let mut f = make_frame(n, 987_654_321);
            assert_eq!(check_frame(&f), Ok((n, 987_654_321)));
            // No start code inside the slice.
            let slice_at = f.windows(3).rposition(|w| w == [0, 0, 1]).unwrap();
            assert!(f.len() - slice_at > P_FILLER);
            let last = f.len() - 1;
            f[last] ^= 1;
            assert_eq!(check_frame(&f), Err("corrupt filler"));
        }
    }
}
