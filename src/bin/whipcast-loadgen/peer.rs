//! What the publisher and the viewers share: the SDP offer/answer over HTTP (WHIP or WHEP),
//! or the answer to a server's offer (Janus), the payload types the server chose, the
//! loopback-only candidate filter, the registry of open sessions (so every one gets its
//! DELETE, or its Janus `destroy`), and draining a str0m `Rtc` onto its socket.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;

use crate::http::{self, Base};

/// Sessions the server has created for us (their `Location`s), until each is deleted.
#[derive(Clone, Default)]
pub struct Sessions {
    open: Arc<Mutex<HashSet<String>>>,
    /// Janus sessions: closed by a `destroy` request, as Janus's HTTP API has no DELETE.
    janus: bool,
}

impl Sessions {
    pub fn janus() -> Self {
        Self {
            janus: true,
            ..Self::default()
        }
    }

    pub fn add(&self, location: &str) {
        self.open
            .lock()
            .expect("sessions")
            .insert(location.to_owned());
    }

    /// The sessions still open.
    pub fn open(&self) -> Vec<String> {
        self.open
            .lock()
            .expect("sessions")
            .iter()
            .cloned()
            .collect()
    }

    /// Closes one session: DELETE, or Janus's `destroy`.
    pub async fn delete(&self, base: &Base, location: &str) {
        if !self.open.lock().expect("sessions").remove(location) {
            return;
        }
        let done = if self.janus {
            let destroy = serde_json::json!({"janus": "destroy"});
            crate::janus::call(base, location, destroy)
                .await
                .map(|_| ())
        } else {
            http::request(base, "DELETE", location, None, "")
                .await
                .map(|_| ())
        };
        if let Err(e) = done {
            eprintln!("closing {location}: {e}");
        }
    }

    /// Deletes every session still open, 32 requests at a time; returns how many.
    pub async fn delete_all(&self, base: &Base) -> usize {
        let all = self.open();
        let n = all.len();
        for chunk in all.chunks(32) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|loc| {
                    let (s, b, loc) = (self.clone(), base.clone(), loc.clone());
                    tokio::spawn(async move { s.delete(&b, &loc).await })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        }
        n
    }
}

/// The payload types in the server's answer.
#[derive(Clone, Copy, Default)]
pub struct Pts {
    pub video: Option<u8>,
    pub audio: Option<u8>,
}

/// A peer whose offer the server has answered: ICE and DTLS are still to come.
pub struct Negotiated {
    pub rtc: Rtc,
    pub socket: UdpSocket,
    pub location: String,
    pub audio: Mid,
    pub video: Mid,
    pub pts: Pts,
    /// When this viewer's join started (before its socket and offer, as a player's click;
    /// Janus's session `create` is the same point), and when the server's SDP was in.
    pub started: Instant,
    pub answered: Instant,
    /// The port of the server's (first loopback) candidate.
    pub server_port: Option<u16>,
}

/// Builds an offer with one audio and one video m-line in `order`, POSTs it to `path` and
/// applies the answer. The socket is bound on loopback before the offer, for its candidate.
pub async fn negotiate(
    base: &Base,
    path: &str,
    cfg: RtcConfig,
    dir: Direction,
    order: [MediaKind; 2],
    sessions: &Sessions,
) -> Result<Negotiated, String> {
    let started = Instant::now();
    let (mut rtc, socket) = bind(cfg, base.local).await?;
    let mut api = rtc.sdp_api();
    let first = api.add_media(order[0], dir, None, None, None);
    let second = api.add_media(order[1], dir, None, None, None);
    let (offer, pending) = api.apply().ok_or("str0m made no offer")?;
    let (res, location) =
        http::post_created(base, path, "application/sdp", &offer.to_sdp_string()).await?;
    if location.is_empty() {
        return Err(format!("POST {path}: 201 without Location"));
    }
    let answered = Instant::now();
    sessions.add(&location);
    let (sdp, dropped) = loopback_candidates_only(&res.body);
    if dropped > 0 {
        eprintln!("{path}: ignored {dropped} non-loopback candidate(s) in the answer");
    }
    let answer = SdpAnswer::from_sdp_string(&sdp).map_err(|e| format!("answer: {e}"))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| format!("answer: {e}"))?;
    let (audio, video) = if order[0] == MediaKind::Audio {
        (first, second)
    } else {
        (second, first)
    };
    Ok(Negotiated {
        rtc,
        socket,
        location,
        audio,
        video,
        pts: answer_pts(&sdp),
        started,
        answered,
        server_port: candidate_port(&sdp),
    })
}

/// A new `Rtc` with a UDP socket on `ip` (loopback) as its one candidate.
async fn bind(cfg: RtcConfig, ip: IpAddr) -> Result<(Rtc, UdpSocket), String> {
    let socket = UdpSocket::bind((ip, 0)).await.map_err(|e| e.to_string())?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let mut rtc = cfg.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| e.to_string())?);
    Ok((rtc, socket))
}

/// The other way round, for a server that offers (Janus): accepts `offer` (its non-loopback
/// candidates dropped) with a new loopback peer, a full ICE agent, and returns the peer and
/// its answer. `location` and the times are the caller's to fill in.
pub async fn answer(
    offer: &str,
    cfg: RtcConfig,
    ip: IpAddr,
) -> Result<(Negotiated, String), String> {
    let (mut rtc, socket) = bind(cfg, ip).await?;
    let (sdp, dropped) = loopback_candidates_only(offer);
    if dropped > 0 {
        log_limited(format_args!(
            "ignored {dropped} non-loopback candidate(s) in an offer"
        ));
    }
    let (Some(audio), Some(video)) = (mid_of(&sdp, "audio"), mid_of(&sdp, "video")) else {
        return Err("the offer lacks an audio or a video section".into());
    };
    let offer = SdpOffer::from_sdp_string(&sdp).map_err(|e| format!("offer: {e}"))?;
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| format!("offer: {e}"))?;
    let now = Instant::now();
    let n = Negotiated {
        rtc,
        socket,
        location: String::new(),
        audio,
        video,
        pts: answer_pts(&sdp),
        started: now,
        answered: now,
        server_port: candidate_port(&sdp),
    };
    Ok((n, answer.to_sdp_string()))
}

/// The `a=mid` of the first `m=<kind>` section.
fn mid_of(sdp: &str, kind: &str) -> Option<Mid> {
    let section = sdp.split("m=").skip(1).find(|s| s.starts_with(kind))?;
    let mid = section
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))?;
    Some(Mid::from(mid))
}

/// Removes `a=candidate` lines whose address is not loopback (or not an address at all):
/// this generator only ever sends to loopback.
fn loopback_candidates_only(sdp: &str) -> (String, usize) {
    let mut out = String::with_capacity(sdp.len());
    let mut dropped = 0;
    for line in sdp.split_inclusive('\n') {
        if let Some(c) = line.trim_end().strip_prefix("a=candidate:") {
            let addr = c
                .split_whitespace()
                .nth(4)
                .and_then(|a| a.parse::<IpAddr>().ok());
            if !addr.is_some_and(|a| a.is_loopback()) {
                dropped += 1;
                continue;
            }
        }
        out.push_str(line);
    }
    (out, dropped)
}

fn candidate_port(sdp: &str) -> Option<u16> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=candidate:"))
        .and_then(|c| c.split_whitespace().nth(5)?.parse().ok())
}

/// The first H264 and Opus payload types of the answer's video and audio sections.
fn answer_pts(sdp: &str) -> Pts {
    let mut pts = Pts::default();
    for line in sdp.lines() {
        let Some((pt, codec)) = line
            .strip_prefix("a=rtpmap:")
            .and_then(|r| r.split_once(' '))
        else {
            continue;
        };
        let Ok(pt) = pt.parse::<u8>() else { continue };
        let name = codec.split('/').next().unwrap_or("").to_ascii_lowercase();
        match name.as_str() {
            "h264" if pts.video.is_none() => pts.video = Some(pt),
            "opus" if pts.audio.is_none() => pts.audio = Some(pt),
            _ => {}
        }
    }
    pts
}

/// Drains `rtc` until its next timeout: sends each datagram (loopback only; a full socket
/// buffer drops it, as UDP would) and hands each event to `on_event`.
pub fn drain(
    rtc: &mut Rtc,
    socket: &UdpSocket,
    on_event: impl FnMut(Event),
) -> Result<Instant, String> {
    drain_counting(rtc, socket, on_event, |_, _| {})
}

/// [`drain`], also telling `on_sent` of each datagram whether the socket took it.
pub fn drain_counting(
    rtc: &mut Rtc,
    socket: &UdpSocket,
    mut on_event: impl FnMut(Event),
    mut on_sent: impl FnMut(&[u8], bool),
) -> Result<Instant, String> {
    loop {
        match rtc.poll_output().map_err(|e| e.to_string())? {
            Output::Timeout(t) => return Ok(t),
            Output::Transmit(t) => {
                if t.destination.ip().is_loopback() {
                    let sent = socket.try_send_to(&t.contents, t.destination).is_ok();
                    on_sent(&t.contents, sent);
                }
            }
            Output::Event(e) => on_event(e),
        }
    }
}

/// RTP rather than STUN, DTLS or RTCP: version 2, and not an RTCP packet type (RFC 5761:
/// 64–95 after the marker bit covers RTCP's 192–223).
pub fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && d[0] & 0xc0 == 0x80 && !(64..=95).contains(&(d[1] & 0x7f))
}

/// Feeds one received datagram to `rtc` (ignoring what str0m cannot classify).
pub fn feed(rtc: &mut Rtc, local: SocketAddr, src: SocketAddr, data: &[u8]) -> Result<(), String> {
    match Receive::new(Protocol::Udp, src, local, data) {
        Ok(r) => rtc
            .handle_input(Input::Receive(Instant::now(), r))
            .map_err(|e| e.to_string()),
        Err(_) => Ok(()),
    }
}

/// Lets `rtc` run its timers.
pub fn tick(rtc: &mut Rtc) -> Result<(), String> {
    rtc.handle_input(Input::Timeout(Instant::now()))
        .map_err(|e| e.to_string())
}

/// The µs since `epoch` (never 0, which means "not yet" in the counters).
pub fn micros_since(epoch: Instant, t: Instant) -> u64 {
    (t.saturating_duration_since(epoch).as_micros() as u64).max(1)
}

/// Logs to stderr, but only the first few messages of the whole run: with hundreds of
/// viewers one failure tends to repeat hundreds of times.
pub fn log_limited(msg: std::fmt::Arguments) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static LOGGED: AtomicU32 = AtomicU32::new(0);
    match LOGGED.fetch_add(1, Ordering::Relaxed) {
        0..10 => eprintln!("{msg}"),
        10 => eprintln!("(further messages like these are not shown)"),
        _ => {}
    }
}

/// Polls `f` every 20 ms until it holds or `limit` passes.
pub async fn wait_until(mut f: impl FnMut() -> bool, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_parsing() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 103\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 8189 typ host\r\n\
            a=candidate:2 1 udp 2130706431 192.0.2.7 8189 typ host\r\n\
            a=rtpmap:102 H264/90000\r\na=rtpmap:103 rtx/90000\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        let (kept, dropped) = loopback_candidates_only(sdp);
        assert_eq!(dropped, 1);
        assert!(kept.contains("127.0.0.1 8189") && !kept.contains("192.0.2.7"));
        let pts = answer_pts(&kept);
        assert_eq!((pts.video, pts.audio), (Some(102), Some(111)));
        assert_eq!(candidate_port(&kept), Some(8189));
        assert_eq!(mid_of(sdp, "audio"), None);
        let janus = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:v\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:a\r\n";
        assert_eq!(mid_of(janus, "video"), Some(Mid::from("v")));
        assert_eq!(mid_of(janus, "audio"), Some(Mid::from("a")));
    }
}
