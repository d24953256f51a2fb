//! How long sessions live, on the simulated network and its virtual clock: a session lives
//! while its peer is heard (media, RTCP, STUN requests or indications), whichever of these its
//! stack sends; it ends on silence, DELETE, DTLS close_notify or a publisher's RTCP BYE.
//!
//! The peers here are str0m clients made to behave like other stacks: libnice (Binding
//! indications instead of requests once connected), FFmpeg 8.0 (requests without PRIORITY,
//! no STUN at all once connected).

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the (virtual) clock

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use aws_lc_rs::hmac;
use common::sim::{Sim, engine_config};
use str0m::media::MediaKind;
use whipcast::engine::{BroadcastKey, CloseReason, EngineEvent};
use whipcast::srtp::SrtpSender;
use whipcast::srtp::capture::Captured;

const B: BroadcastKey = BroadcastKey(1);

fn is_binding_request(data: &[u8]) -> bool {
    data.starts_with(&[0x00, 0x01])
}

fn is_rtcp(data: &[u8]) -> bool {
    data.len() > 1 && data[0] >> 6 == 2 && (192..=223).contains(&data[1])
}

/// A Binding indication as libnice sends it to keep a pair alive: no credentials.
fn binding_indication() -> Vec<u8> {
    let mut m = vec![0x00, 0x11, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[5; 12]);
    m
}

fn closed(sim: &Sim, client: usize) -> Option<CloseReason> {
    let session = sim.clients[client].session.clone()?;
    sim.events.iter().find_map(|e| match e {
        EngineEvent::SessionClosed { session: s, reason } if *s == session => Some(*reason),
        _ => None,
    })
}

/// Streams at 10 fps for `d`, sending each of `keepalive` a Binding indication every 25 s
/// (libnice's Tr).
fn stream_for(sim: &mut Sim, p: usize, from: u64, d: Duration, keepalive: &[SocketAddr]) -> u64 {
    let frames = d.as_millis() as u64 / 100;
    for n in from..from + frames {
        if let Some(reason) = closed(sim, p) {
            panic!(
                "the publisher's session closed ({reason:?}) {} s in",
                n / 10
            );
        }
        sim.send_frame(p, n, n % 20 == 0);
        if n % 250 == 0 {
            for &addr in keepalive {
                sim.inject(addr, &binding_indication());
            }
        }
        sim.run_for(Duration::from_millis(100));
    }
    from + frames
}

#[test]
fn peers_heard_only_through_indications_and_media_keep_their_sessions_for_ten_minutes() {
    let mut sim = Sim::new(engine_config());
    let p = sim.connected_publisher(B);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[v].connected);
    let (pa, va) = (sim.clients[p].addr, sim.clients[v].addr);
    // From here on, as libnice: no Binding requests, only indications. The viewer sends no
    // RTCP either, so indications are all the server hears from it.
    sim.drop_if = Some(Box::new(move |from, _to, data| {
        (from == pa && is_binding_request(data))
            || (from == va && (is_binding_request(data) || is_rtcp(data)))
    }));
    let n = stream_for(&mut sim, p, 0, Duration::from_secs(590), &[pa, va]);
    let before = sim.clients[v].frames.len();
    stream_for(&mut sim, p, n, Duration::from_secs(10), &[pa, va]);
    assert_eq!(closed(&sim, p), None, "the publisher's session is open");
    assert_eq!(closed(&sim, v), None, "the viewer's session is open");
    let last_10s = sim.clients[v].frames.len() - before;
    assert!(
        last_10s >= 90,
        "the viewer still gets the picture after ten minutes: {last_10s} frames in the last 10 s"
    );
}

#[test]
fn a_viewer_that_sends_nothing_is_gone_after_thirty_seconds() {
    let mut sim = Sim::new(engine_config());
    let p = sim.connected_publisher(B);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[v].connected);
    let va = sim.clients[v].addr;
    // It still receives, but says nothing: no RTCP, no STUN of any kind.
    sim.drop_if = Some(Box::new(move |from, _to, _data| from == va));
    let n = stream_for(&mut sim, p, 0, Duration::from_secs(29), &[]);
    assert_eq!(closed(&sim, v), None, "still open before the bound");
    stream_for(&mut sim, p, n, Duration::from_secs(2), &[]);
    assert_eq!(
        closed(&sim, v),
        Some(CloseReason::TimedOut),
        "closed once silent for 30 s"
    );
    assert_eq!(closed(&sim, p), None, "the publisher goes on");
}

/// Drops PRIORITY from a Binding request and signs it again with `password`, as FFmpeg 8.0
/// builds its requests (USERNAME, USE-CANDIDATE, MESSAGE-INTEGRITY, FINGERPRINT).
fn without_priority(data: &mut Vec<u8>, password: &str) {
    let mut out = data[..20].to_vec();
    let mut at = 20;
    while at + 4 <= data.len() {
        let typ = u16::from_be_bytes([data[at], data[at + 1]]);
        let len = usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
        let next = at + 4 + ((len + 3) & !3);
        // Keep USERNAME, USE-CANDIDATE and the role attributes; drop PRIORITY and the
        // integrity and fingerprint that are signed again below.
        if ![0x0024, 0x0008, 0x8028].contains(&typ) {
            out.extend_from_slice(&data[at..next]);
        }
        at = next;
    }
    let set_len = |m: &mut Vec<u8>, total: usize| {
        let body = ((total - 20) as u16).to_be_bytes();
        m[2..4].copy_from_slice(&body);
    };
    let end = out.len() + 24;
    set_len(&mut out, end);
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
    let tag = hmac::sign(&key, &out);
    out.extend_from_slice(&[0x00, 0x08, 0, 20]);
    out.extend_from_slice(tag.as_ref());
    let end = out.len() + 8;
    set_len(&mut out, end);
    let mut crc = !0u32;
    for &b in &out {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    out.extend_from_slice(&[0x80, 0x28, 0, 4]);
    out.extend_from_slice(&((!crc) ^ 0x5354_554e).to_be_bytes());
    *data = out;
}

#[test]
fn an_ffmpeg_shaped_publisher_connects_and_lives_on_media_alone() {
    let mut sim = Sim::new(engine_config());
    let p = sim.publish(B).expect("publish");
    let (pa, password) = (sim.clients[p].addr, sim.clients[p].server_pwd.clone());
    sim.rewrite = Some(Box::new(move |from, _to, data| {
        if from == pa && is_binding_request(data) {
            without_priority(data, &password);
        }
    }));
    sim.run_for(Duration::from_millis(500));
    assert!(
        sim.clients[p].connected,
        "requests without PRIORITY are answered: ICE and DTLS complete"
    );
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    // Once connected FFmpeg sends no STUN at all, and no RTCP (it only reads it).
    sim.drop_if = Some(Box::new(move |from, _to, data| {
        from == pa && (is_binding_request(data) || is_rtcp(data))
    }));
    let n = stream_for(&mut sim, p, 0, Duration::from_secs(50), &[]);
    let before = sim.clients[v].frames.len();
    stream_for(&mut sim, p, n, Duration::from_secs(10), &[]);
    assert_eq!(closed(&sim, p), None, "media alone keeps the publisher");
    assert!(
        sim.clients[v].frames.len() - before >= 90,
        "its viewer still gets the picture a minute on"
    );
}

/// A compound RTCP packet (an RR, then a BYE for `ssrcs`), sealed as the publisher seals
/// its RTCP: with the other half of the session's keys.
fn sealed_bye(server: &Captured, ssrcs: &[u32]) -> Vec<u8> {
    let mut rtcp = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
    rtcp.push(0x80 | ssrcs.len() as u8);
    rtcp.push(203);
    rtcp.extend_from_slice(&(ssrcs.len() as u16).to_be_bytes());
    for s in ssrcs {
        rtcp.extend_from_slice(&s.to_be_bytes());
    }
    let peer = Captured {
        active: !server.active,
        profile: server.profile,
        material: server.material.clone(),
    };
    let mut sender = SrtpSender::new(&peer).expect("an AEAD session");
    sender.seal_rtcp(&mut rtcp, 0);
    rtcp
}

#[test]
fn rtcp_bye_for_every_source_of_a_publisher_is_a_hang_up() {
    let mut sim = Sim::new(engine_config());
    let p = sim.connected_publisher(B);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    sim.stream(p, 0..30);
    let pa = sim.clients[p].addr;
    let ssrc = |sim: &mut Sim, kind| {
        let c = &mut sim.clients[p];
        let mid = if kind == MediaKind::Video {
            c.video_mid
        } else {
            c.audio_mid
        };
        *c.rtc
            .direct_api()
            .stream_tx_by_mid(mid.unwrap(), None)
            .unwrap()
            .ssrc()
    };
    let (audio, video) = (
        ssrc(&mut sim, MediaKind::Audio),
        ssrc(&mut sim, MediaKind::Video),
    );
    let keys = sim.clients[p]
        .server_keys
        .as_ref()
        .unwrap()
        .get()
        .unwrap()
        .clone();

    // Not from the publisher: a BYE that does not authenticate changes nothing.
    let mut forged = sealed_bye(&keys, &[audio, video]);
    let last = forged.len() - 5;
    forged[last] ^= 1;
    sim.inject(pa, &forged);
    // One track's goodbye is not the broadcast's.
    sim.inject(pa, &sealed_bye(&keys, &[audio]));
    sim.stream(p, 30..60);
    assert_eq!(closed(&sim, p), None, "still publishing");

    sim.inject(pa, &sealed_bye(&keys, &[video]));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        closed(&sim, p),
        Some(CloseReason::HungUp),
        "BYE for its last source: the publisher hung up"
    );
    assert_eq!(
        closed(&sim, v),
        None,
        "viewers wait for a DELETE or a new publisher"
    );
}
