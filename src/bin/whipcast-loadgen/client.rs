//! The load generator's str0m peers, each a tokio task on its own loopback UDP socket: one
//! synthetic publisher and many viewers. Sink viewers count RTP from the clear header without
//! decrypting (so the generator stays cheaper than the server); full viewers decode and read
//! the marker in every frame for latency and integrity.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;

use crate::http::request;
use crate::stats::Tally;

/// What one viewer saw.
#[derive(Default)]
pub struct Report {
    pub joined_at: Option<Instant>,
    pub connected: bool,
    pub first_video: Option<Instant>,
    pub tally: Tally,
    /// Frame latencies in ms (full viewers), and frames out of order or corrupt.
    pub latencies_ms: Vec<f64>,
    pub bad_frames: u64,
    pub last_frame: Option<u64>,
}

pub struct Peer {
    pub location: String,
    pub report: Arc<Mutex<Report>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Publisher,
    Sink,
    Full,
}

impl Peer {
    pub async fn publish(base: &str, broadcast_id: &str, epoch: Instant) -> Result<Self, String> {
        let mut cfg = RtcConfig::new().clear_codecs();
        cfg.codec_config().add_h264(96.into(), None, true, 0x42e01f);
        cfg.codec_config().enable_opus(true, false);
        Self::start(
            base,
            &format!("/broadcast?id={broadcast_id}"),
            cfg,
            Direction::SendOnly,
            [MediaKind::Audio, MediaKind::Video],
            Mode::Publisher,
            epoch,
        )
        .await
    }

    pub async fn view(
        base: &str,
        view_id: &str,
        full: bool,
        epoch: Instant,
    ) -> Result<Self, String> {
        let cfg = RtcConfig::new()
            .clear_codecs()
            .enable_h264(true)
            .enable_opus(true, false);
        let mode = if full { Mode::Full } else { Mode::Sink };
        Self::start(
            base,
            &format!("/stream?id={view_id}"),
            cfg,
            Direction::RecvOnly,
            [MediaKind::Video, MediaKind::Audio],
            mode,
            epoch,
        )
        .await
    }

    async fn start(
        base: &str,
        path: &str,
        cfg: RtcConfig,
        dir: Direction,
        kinds: [MediaKind; 2],
        mode: Mode,
        epoch: Instant,
    ) -> Result<Self, String> {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        let mut rtc = cfg.build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| e.to_string())?);
        let mut api = rtc.sdp_api();
        let first = api.add_media(kinds[0], dir, None, None, None);
        let second = api.add_media(kinds[1], dir, None, None, None);
        let (offer, pending) = api.apply().ok_or("no offer")?;
        let report = Arc::new(Mutex::new(Report {
            joined_at: Some(Instant::now()),
            ..Default::default()
        }));
        let res = request(
            base,
            "POST",
            path,
            &[("Content-Type", "application/sdp")],
            &offer.to_sdp_string(),
        )
        .await?;
        if res.status != 201 {
            return Err(format!("{path}: {} {}", res.status, res.body));
        }
        let video_pt = res.body.lines().find_map(|l| {
            l.strip_prefix("a=rtpmap:")
                .and_then(|r| r.split_once(" H264"))
                .map(|(pt, _)| pt.to_owned())
        });
        let video_pt: u8 = video_pt.and_then(|p| p.parse().ok()).unwrap_or(96);
        let answer = SdpAnswer::from_sdp_string(&res.body).map_err(|e| e.to_string())?;
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| e.to_string())?;
        let (audio, video) = if kinds[0] == MediaKind::Audio {
            (first, second)
        } else {
            (second, first)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (report, stop) = (report.clone(), stop.clone());
            tokio::spawn(async move {
                run(
                    rtc, socket, mode, audio, video, video_pt, epoch, report, stop,
                )
                .await
            })
        };
        Ok(Self {
            location: res.header("location").unwrap_or_default().to_owned(),
            report,
            stop,
            task,
        })
    }

    /// Stops the task and sends DELETE.
    pub async fn leave(self, base: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let _ = request(base, "DELETE", &self.location, &[], "").await;
    }
}

#[allow(clippy::too_many_arguments)] // one task's whole state, passed once
async fn run(
    mut rtc: Rtc,
    socket: UdpSocket,
    mode: Mode,
    audio: Mid,
    video: Mid,
    video_pt: u8,
    epoch: Instant,
    report: Arc<Mutex<Report>>,
    stop: Arc<AtomicBool>,
) {
    let local = socket.local_addr().unwrap();
    let mut buf = vec![0u8; 2048];
    let mut next_frame = Instant::now();
    let mut n: u64 = 0;
    let mut connected = false;
    while !stop.load(Ordering::Relaxed) {
        // Drain the Rtc (str0m: after every input until Timeout).
        let mut wake = Instant::now() + Duration::from_millis(100);
        loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    wake = wake.min(t);
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(e)) => on_event(e, mode, video, epoch, &report, &mut connected),
                Err(_) => return,
            }
        }
        if mode == Mode::Publisher && connected {
            let now = Instant::now();
            if now >= next_frame {
                write_frame(&mut rtc, audio, video, n, epoch);
                n += 1;
                next_frame += Duration::from_micros(33_333);
                continue;
            }
            wake = wake.min(next_frame);
        }
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((len, src)) = r else { return };
                let data = &buf[..len];
                if mode == Mode::Sink && is_rtp(data) {
                    let mut rep = report.lock().unwrap();
                    let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
                    rep.tally.by_ssrc.entry(ssrc).or_default().add(u16::from_be_bytes([data[2], data[3]]));
                    if data[1] & 0x7f == video_pt && rep.first_video.is_none() {
                        rep.first_video = Some(Instant::now());
                    }
                    continue;
                }
                if let Ok(r) = Receive::new(Protocol::Udp, src, local, data)
                    && rtc.handle_input(Input::Receive(Instant::now(), r)).is_err()
                {
                    return;
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    return;
                }
            }
        }
    }
}

/// RTP, not RTCP (RFC 5761: RTCP packet types 64–95 after the marker bit).
fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && d[0] & 0xc0 == 0x80 && !(64..=95).contains(&(d[1] & 0x7f))
}

fn on_event(
    e: Event,
    mode: Mode,
    video: Mid,
    epoch: Instant,
    report: &Mutex<Report>,
    connected: &mut bool,
) {
    match e {
        Event::Connected => {
            *connected = true;
            report.lock().unwrap().connected = true;
        }
        Event::MediaData(d) if mode == Mode::Full && d.mid == video => {
            let now = Instant::now();
            let mut rep = report.lock().unwrap();
            rep.first_video.get_or_insert(now);
            match read_marker(&d.data) {
                Some((frame, sent_us)) => {
                    let now_us = now.duration_since(epoch).as_micros() as f64;
                    rep.latencies_ms.push((now_us - sent_us as f64) / 1000.0);
                    if rep.last_frame.is_some_and(|l| frame <= l) {
                        rep.bad_frames += 1;
                    }
                    rep.last_frame = Some(frame);
                }
                None => rep.bad_frames += 1,
            }
        }
        _ => {}
    }
}

/// A synthetic 30 fps, ~2.5 Mb/s H.264 stream: an IDR (~80 KB) every 2 s, P-frames of ~10 KB,
/// each with a marker (frame number, send time) after the NAL header; Opus 20 ms frames.
fn write_frame(rtc: &mut Rtc, audio: Mid, video: Mid, n: u64, epoch: Instant) {
    let now = Instant::now();
    let keyframe = n.is_multiple_of(60);
    let mut f = Vec::with_capacity(90_000);
    if keyframe {
        f.extend_from_slice(&[0, 0, 0, 1]);
        f.extend_from_slice(SPS);
        f.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        f.extend_from_slice(&[0, 0, 0, 1, 0x65]);
    } else {
        f.extend_from_slice(&[0, 0, 0, 1, 0x41]);
    }
    // Hex digits, so the marker can never form a start code.
    let sent_us = now.duration_since(epoch).as_micros() as u64;
    f.extend_from_slice(format!("{n:016x}{sent_us:016x}").as_bytes());
    let size = if keyframe { 80_000 } else { 9_000 };
    f.extend((0..size).map(|i| ((i * 31 + n as usize) % 250) as u8 + 1));
    let vpt = rtc
        .media(video)
        .and_then(|m| m.remote_pts().first().copied());
    let apt = rtc
        .media(audio)
        .and_then(|m| m.remote_pts().first().copied());
    if let (Some(vpt), Some(apt)) = (vpt, apt) {
        if let Some(w) = rtc.writer(video) {
            let _ = w.write(vpt, now, MediaTime::from_90khz(n * 3000), f);
        }
        // One ~160-byte Opus packet per video frame: about the packet rate of 20 ms audio.
        if let Some(w) = rtc.writer(audio) {
            let _ = w.write(
                apt,
                now,
                MediaTime::new(n * 1600, Frequency::FORTY_EIGHT_KHZ),
                vec![0xfc; 160],
            );
        }
    }
}

fn read_marker(frame: &[u8]) -> Option<(u64, u64)> {
    let at = frame
        .windows(4)
        .position(|w| w[..3] == [0, 0, 1] && matches!(w[3] & 0x1f, 1 | 5))?
        + 4;
    let hex = std::str::from_utf8(frame.get(at..at + 32)?).ok()?;
    Some((
        u64::from_str_radix(&hex[..16], 16).ok()?,
        u64::from_str_radix(&hex[16..], 16).ok()?,
    ))
}

/// x264's SPS for 320x240 Constrained Baseline (nobody decodes the pictures).
const SPS: &[u8] = &[
    0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00,
    0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0xa4, 0x80,
];
