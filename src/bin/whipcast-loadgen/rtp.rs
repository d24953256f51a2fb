//! The publisher for a server fed plain RTP (a Janus streaming mountpoint): the same frames
//! as the WHIP publisher ([`publisher::make_frame`], 30 fps, an IDR every 2 s, Opus every
//! 20 ms), packetized here as str0m packetizes them for whipcast (RFC 6184: SPS and PPS in
//! one STAP-A, slices in FU-A fragments of at most [`PAYLOAD`] bytes), and sent unencrypted
//! from one loopback socket to the mountpoint's video and audio ports.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio::net::UdpSocket;

use crate::peer;
use crate::publisher::{self, AUDIO, FRAME, Publisher, Shared};

/// RTP payload per packet: what str0m's packetizer gets with its default 1150-byte datagram
/// target (less the SRTP tag, rounded down to the 16-byte block), so both servers are fed
/// the same number of packets per frame.
const PAYLOAD: usize = 1120;
const VIDEO_PT: u8 = 96;
const AUDIO_PT: u8 = 111;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// Starts streaming to `video` and `audio` (loopback only) on a thread of its own.
pub fn start(video: SocketAddr, audio: SocketAddr, epoch: Instant) -> Result<Publisher, String> {
    if !video.ip().is_loopback() || !audio.ip().is_loopback() {
        return Err(format!("RTP goes to loopback only, not {video} / {audio}"));
    }
    Publisher::spawn(Some(video.port()), move |s| async move {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        // tokio's try_send_to refuses (WouldBlock) until the reactor has seen the new
        // socket writable once.
        socket.writable().await.map_err(|e| e.to_string())?;
        // Plain RTP has no handshake: the mountpoint takes packets at once.
        s.connected.store(true, Relaxed);
        run(&socket, video, audio, epoch, &s).await
    })
}

/// One stream's RTP header state.
struct Stream {
    pt: u8,
    ssrc: u32,
    seq: u16,
}

impl Stream {
    fn packet(&mut self, timestamp: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(12 + payload.len());
        p.extend_from_slice(&[0x80, self.pt | if marker { 0x80 } else { 0 }]);
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&timestamp.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        p
    }
}

async fn run(
    socket: &UdpSocket,
    video_to: SocketAddr,
    audio_to: SocketAddr,
    epoch: Instant,
    s: &Shared,
) -> Result<(), String> {
    let mut video = Stream {
        pt: VIDEO_PT,
        ssrc: 0x5743_0001,
        seq: 1,
    };
    let mut audio = Stream {
        pt: AUDIO_PT,
        ssrc: 0x5743_0002,
        seq: 1,
    };
    let send = |p: &[u8], to: SocketAddr| s.on_sent(p, socket.try_send_to(p, to).is_ok());
    let (mut n_video, mut n_audio) = (0u64, 0u64);
    let start = Instant::now();
    let (mut next_video, mut next_audio) = (start, start);
    while !s.stop.load(Relaxed) {
        let now = Instant::now();
        s.hold_back(now, [&mut next_video, &mut next_audio]);
        if now >= next_video {
            let frame = publisher::make_frame(n_video, peer::micros_since(epoch, now));
            let payloads = packetize(&frame);
            let last = payloads.len().saturating_sub(1);
            for (i, p) in payloads.iter().enumerate() {
                send(
                    &video.packet((n_video * 3000) as u32, i == last, p),
                    video_to,
                );
            }
            n_video += 1;
            s.frames.store(n_video, Relaxed);
            next_video += FRAME;
            if now > next_video + 3 * FRAME {
                // Fell behind (a starved core): skip ahead rather than burst.
                let behind = (now - next_video).as_micros() / FRAME.as_micros();
                s.late_frames.fetch_add(behind as u64, Relaxed);
                next_video = now + FRAME;
            }
        }
        if now >= next_audio {
            let mut payload = [0x55u8; 160];
            payload[0] = 0xfc; // a TOC byte for 20 ms CELT, then filler, as publisher.rs
            send(
                &audio.packet((n_audio * 960) as u32, false, &payload),
                audio_to,
            );
            n_audio += 1;
            next_audio += AUDIO;
            if now > next_audio + 5 * AUDIO {
                next_audio = now + AUDIO;
            }
        }
        tokio::time::sleep_until(next_video.min(next_audio).into()).await;
    }
    Ok(())
}

/// RTP payloads for one Annex-B access unit: the parameter sets (SPS, PPS) together in a
/// STAP-A, every other NAL unit whole when it fits in [`PAYLOAD`], else in FU-A fragments.
pub fn packetize(frame: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut params: Vec<&[u8]> = Vec::new();
    for nal in nal_units(frame) {
        let kind = nal[0] & 0x1f;
        if kind == 7 || kind == 8 {
            params.push(nal);
            continue;
        }
        if !params.is_empty() {
            let mut stap = vec![(nal[0] & 0x60) | NAL_STAP_A];
            for p in params.drain(..) {
                stap.extend_from_slice(&(p.len() as u16).to_be_bytes());
                stap.extend_from_slice(p);
            }
            out.push(stap);
        }
        if nal.len() <= PAYLOAD {
            out.push(nal.to_vec());
            continue;
        }
        let (header, body) = (nal[0], &nal[1..]);
        let chunks: Vec<&[u8]> = body.chunks(PAYLOAD - 2).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let start = if i == 0 { 0x80 } else { 0 };
            let end = if i == chunks.len() - 1 { 0x40 } else { 0 };
            let mut fu = vec![(header & 0x60) | NAL_FU_A, start | end | (header & 0x1f)];
            fu.extend_from_slice(chunk);
            out.push(fu);
        }
    }
    out
}

/// The NAL units of an Annex-B stream (start codes of 3 or 4 bytes removed).
fn nal_units(mut data: &[u8]) -> Vec<&[u8]> {
    let starts = |d: &[u8]| d.windows(3).position(|w| w == [0, 0, 1]);
    let mut out = Vec::new();
    let Some(first) = starts(data) else {
        return out;
    };
    data = &data[first + 3..];
    loop {
        match starts(data) {
            Some(i) => {
                // A 4-byte start code leaves its leading zero on the previous unit.
                let end = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
                out.push(&data[..end]);
                data = &data[i + 3..];
            }
            None => {
                out.push(data);
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payloads, depacketized as RFC 6184 says, give back the frame byte for byte (so
    /// the full viewers' marker and filler check passes), and none exceeds [`PAYLOAD`].
    #[test]
    fn packets_depacketize_to_the_same_frame() {
        for n in [0u64, 1, 60] {
            let frame = publisher::make_frame(n, 42);
            let payloads = packetize(&frame);
            assert!(payloads.iter().all(|p| p.len() <= PAYLOAD));
            let mut back = Vec::new();
            for p in &payloads {
                match p[0] & 0x1f {
                    NAL_STAP_A => {
                        let mut rest = &p[1..];
                        while rest.len() > 2 {
                            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                            back.extend_from_slice(&[0, 0, 0, 1]);
                            back.extend_from_slice(&rest[2..2 + len]);
                            rest = &rest[2 + len..];
                        }
                    }
                    NAL_FU_A => {
                        if p[1] & 0x80 != 0 {
                            back.extend_from_slice(&[0, 0, 0, 1, (p[0] & 0x60) | (p[1] & 0x1f)]);
                        }
                        back.extend_from_slice(&p[2..]);
                    }
                    _ => {
                        back.extend_from_slice(&[0, 0, 0, 1]);
                        back.extend_from_slice(p);
                    }
                }
            }
            assert_eq!(back, frame, "frame {n}");
            assert_eq!(publisher::check_frame(&back), Ok((n, 42)));
        }
    }
}
