//! RTP correctness of what whipcast seals for viewers, on the simulated network with a
//! virtual clock: no sequence number is sealed twice with another payload (AES-GCM nonce
//! reuse), payload types follow a resumed publisher's codec, sender reports pair the newest
//! timestamp with its time, numbering starts at random and survives the 16-bit wrap, and a
//! vanished publisher is noticed within 3 s.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the (virtual) clock

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::sim::{BASELINE_SPS, Sim, engine_config};
use str0m::format::{Codec, FormatParams};
use str0m::media::Frequency;
use whipcast::engine::{BroadcastKey, CloseReason, EngineEvent, Patched};
use whipcast::srtp::SrtcpReceiver;
use whipcast::srtp::capture::Captured;

const B: BroadcastKey = BroadcastKey(1);
const FRAME: Duration = Duration::from_millis(33);

fn stream(sim: &mut Sim, publisher: usize, range: std::ops::Range<u64>) {
    for n in range {
        sim.send_frame(publisher, n, n % 30 == 0);
        sim.run_for(FRAME);
    }
}

fn connected_publisher(sim: &mut Sim) -> usize {
    let p = sim.publish(B).expect("publish");
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[p].connected, "publisher completes ICE and DTLS");
    p
}

/// A connected viewer whose datagrams from the server are tapped.
fn tapped_viewer(sim: &mut Sim) -> usize {
    let v = sim.view(B).unwrap();
    sim.tap = Some(sim.clients[v].addr);
    sim.run_for(Duration::from_millis(300));
    assert!(sim.clients[v].connected);
    v
}

/// The clear RTP header fields of a tapped SRTP datagram: (SSRC, sequence number, timestamp).
fn rtp_header(d: &[u8]) -> Option<(u32, u16, u32)> {
    let rtcp = (192..=223).contains(&d.get(1).copied()?);
    if d.len() < 12 || d[0] >> 6 != 2 || rtcp {
        return None;
    }
    Some((
        u32::from_be_bytes(d[8..12].try_into().unwrap()),
        u16::from_be_bytes([d[2], d[3]]),
        u32::from_be_bytes(d[4..8].try_into().unwrap()),
    ))
}

/// Asserts that no (SSRC, sequence number) was sealed twice with different bytes: with
/// AES-GCM, that is the same nonce for two plaintexts (RFC 7714 §8.1). A packet resent
/// unchanged seals to the same bytes and is fine.
fn assert_no_nonce_reuse(sim: &Sim) {
    let mut sealed: HashMap<(u32, u16), &[u8]> = HashMap::new();
    for (_, d) in &sim.tapped {
        let Some((ssrc, seq, _)) = rtp_header(d) else {
            continue;
        };
        if let Some(before) = sealed.insert((ssrc, seq), d) {
            assert_eq!(
                before,
                &d[..],
                "SSRC {ssrc:08x} sequence number {seq} sealed twice with different payloads"
            );
        }
    }
    assert!(sealed.len() > 50, "media was tapped: {}", sealed.len());
}

/// Has the publisher send P-frame `n` (several packets) with its first packet held back on
/// the way in; returns that packet, to be delivered late.
fn hold_back_first_packet(sim: &mut Sim, publisher: usize, n: u64) -> (SocketAddr, Vec<u8>) {
    let datagrams = sim.capture_publisher_packet(publisher, n, 2500);
    let first = datagrams
        .iter()
        .position(|(_, d)| rtp_header(d).is_some())
        .expect("the frame's packets");
    assert!(
        datagrams[first + 1..]
            .iter()
            .any(|(_, d)| rtp_header(d).is_some()),
        "the frame takes more than one packet"
    );
    for (i, (from, d)) in datagrams.iter().enumerate() {
        if i != first {
            sim.inject(*from, d);
        }
    }
    datagrams[first].clone()
}

/// Sends the keyframe that re-syncs the viewer, then the held-back packet from before it.
/// The engine must drop that packet rather than rewrite it onto a number already sent.
fn deliver_late_after_resync(sim: &mut Sim, p: usize, v: usize, late: (SocketAddr, Vec<u8>)) {
    sim.run_for(FRAME);
    let keyframe = sim.send_frame(p, 101, true);
    sim.run_for(FRAME);
    assert!(
        sim.clients[v].frames.iter().any(|f| f.data == keyframe),
        "the viewer re-synced at the keyframe"
    );
    let dropped = sim.stats().late_packets_dropped;
    sim.inject(late.0, &late.1);
    stream(sim, p, 102..130);
    assert_no_nonce_reuse(sim);
    assert!(
        sim.stats().late_packets_dropped > dropped,
        "the late packet was counted as dropped"
    );
}

#[test]
fn a_late_packet_after_the_keyframe_sent_on_an_ice_restart_is_dropped_not_sealed_on_a_used_number()
{
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    stream(&mut sim, p, 0..40);
    // Joins mid-stream: gets the cached keyframe (frame 30) and the GOP since, then live.
    let v = tapped_viewer(&mut sim);
    stream(&mut sim, p, 40..50);
    // Moves: gets the cached keyframe alone (it has a picture and a timeline), then waits
    // for the next IDR, which re-syncs it.
    assert!(matches!(
        sim.restart_ice(v, false, Some("*")),
        Ok(Patched::Restarted { .. })
    ));
    sim.tap = Some(sim.clients[v].addr);
    sim.run_for(Duration::from_millis(300));
    let late = hold_back_first_packet(&mut sim, p, 100);
    deliver_late_after_resync(&mut sim, p, v, late);
}

#[test]
fn a_viewer_joining_mid_stream_gets_a_late_packet_of_the_gop_in_its_place() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    stream(&mut sim, p, 0..40);
    let v = tapped_viewer(&mut sim);
    let frames = sim.clients[v].frames.len();
    assert!(
        frames >= 10,
        "keyframe 30 and the GOP since: {frames} frames"
    );
    let dropped = sim.stats().late_packets_dropped;
    // At the live edge at once: a packet held back and delivered late is still wanted.
    let late = hold_back_first_packet(&mut sim, p, 40);
    stream(&mut sim, p, 41..43);
    sim.inject(late.0, &late.1);
    stream(&mut sim, p, 43..60);
    assert_no_nonce_reuse(&sim);
    assert_eq!(sim.stats().late_packets_dropped, dropped, "nothing dropped");
    assert!(
        sim.clients[v].frames.len() >= frames + 19,
        "frames 40..60 all reached the viewer: {} after {frames}",
        sim.clients[v].frames.len()
    );
}

#[test]
fn a_late_packet_after_a_publisher_splice_is_dropped_not_sealed_on_a_used_number() {
    let mut sim = Sim::new(engine_config());
    let p1 = connected_publisher(&mut sim);
    let v = tapped_viewer(&mut sim);
    stream(&mut sim, p1, 0..40);
    // OBS reconnects with a new session; its numbering starts over. Its first frames are
    // P-frames (its first IDR was lost), which the viewer skips while it waits for a keyframe.
    let p2 = connected_publisher(&mut sim);
    assert!(sim.events.contains(&EngineEvent::SessionClosed {
        session: sim.clients[p1].session.clone().unwrap(),
        reason: CloseReason::Replaced
    }));
    stream(&mut sim, p2, 1..6);
    let late = hold_back_first_packet(&mut sim, p2, 100);
    deliver_late_after_resync(&mut sim, p2, v, late);
}

#[test]
fn a_publisher_resuming_with_another_codec_on_the_same_pt_ends_viewers_that_cannot_decode_it() {
    let mut sim = Sim::new(engine_config());
    let p1 = connected_publisher(&mut sim);
    let v = tapped_viewer(&mut sim);
    stream(&mut sim, p1, 0..31);
    assert!(!sim.clients[v].frames.is_empty());
    // OBS comes back with its AV1 encoder, also on PT 96. The viewer's session negotiated
    // H.264 only: its old PT 96 → H.264 mapping must not carry AV1 to it.
    let av1 = |c: &mut str0m::format::CodecConfig| {
        let format = FormatParams::default();
        c.add_config(
            96.into(),
            None,
            Codec::Av1,
            Frequency::NINETY_KHZ,
            None,
            format,
        )
    };
    let p2 = sim.publish_with(B, av1).expect("AV1 publisher accepted");
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[p2].connected);
    let session = sim.clients[v].session.clone().unwrap();
    assert!(
        sim.events.contains(&EngineEvent::SessionClosed {
            session,
            reason: CloseReason::CodecChanged
        }),
        "{:?}",
        sim.events
    );
    assert_eq!(sim.stats().viewers, 0);
}

/// The sender reports the server sealed for viewer `v`, opened: (when, SSRC, RTP
/// timestamp, packet count, octet count).
fn sender_reports(sim: &Sim, v: usize) -> Vec<(Instant, u32, u32, u32, u32)> {
    let keys = sim.clients[v].server_keys.as_ref().unwrap().get().unwrap();
    // What the server seals, opened as its peer does: the other half of the keys.
    let ours = Captured {
        active: !keys.active,
        ..keys.clone()
    };
    let rx = SrtcpReceiver::new(&ours).expect("AES-GCM keys");
    let mut scratch = Vec::new();
    let mut out = Vec::new();
    for (at, d) in &sim.tapped {
        if d.get(1) != Some(&200) {
            continue;
        }
        let plain = rx.open(d, &mut scratch).expect("our SRTCP opens");
        let word = |i: usize| u32::from_be_bytes(plain[i..i + 4].try_into().unwrap());
        out.push((*at, word(4), word(16), word(20), word(24)));
    }
    out
}

/// A publisher without sender reports, with B-frames (x264's, in decode order: I0 P3 B1 B2
/// P6 B4 B5 …, each sent when it is numbered): our reports pair the newest timestamp with
/// when it arrived, not the last packet's (a B-frame's older timestamp with a later time).
#[test]
fn sender_reports_pair_the_newest_timestamp_with_its_time_not_the_last_b_frame() {
    let mut sim = Sim::new(engine_config());
    let p = sim.publish_without_reports(B).expect("publish");
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[p].connected);
    let v = tapped_viewer(&mut sim);
    sim.send_frame_with(p, 0, 0, true, BASELINE_SPS);
    sim.run_for(FRAME);
    let mut n = 1;
    for k in 1..60u64 {
        for t in [3 * k, 3 * k - 2, 3 * k - 1] {
            sim.send_frame_with(p, n, t, false, BASELINE_SPS);
            n += 1;
            sim.run_for(FRAME);
        }
    }
    assert_reports_follow_the_newest_frame(&sim, v);
}

/// A publisher with B-frames whose own sender reports say when each frame was captured: a
/// P-frame leaves as soon as it is captured, the B-frames before it one and two frame
/// periods later. Our reports follow its timeline (engine/capture_clock.rs), on which the
/// newest frame is also the one that arrived soonest after its capture.
#[test]
fn sender_reports_follow_the_timeline_of_a_b_frame_publishers_own_reports() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    let v = tapped_viewer(&mut sim);
    let start = sim.now;
    let captured = |t: u64| start + FRAME * t as u32;
    sim.send_frame_captured(p, (0, 0), true, BASELINE_SPS, captured(0));
    sim.run_for(FRAME * 3);
    let mut n = 1;
    for k in 1..60u64 {
        for t in [3 * k, 3 * k - 2, 3 * k - 1] {
            sim.send_frame_captured(p, (n, t), false, BASELINE_SPS, captured(t));
            n += 1;
            sim.run_for(FRAME);
        }
    }
    assert_reports_follow_the_newest_frame(&sim, v);
}

/// Every video sender report viewer `v` got gives the RTP time of the newest frame sent
/// before it (the highest timestamp) as of when that frame was sent, within 300 ticks.
fn assert_reports_follow_the_newest_frame(sim: &Sim, v: usize) {
    let reports = sender_reports(sim, v);
    let (video_ssrc, _, first_ts) = sim
        .tapped
        .iter()
        .find_map(|(_, d)| rtp_header(d).filter(|_| d.len() > 1000))
        .expect("video was sealed");
    let video: Vec<(Instant, u32)> = sim
        .tapped
        .iter()
        .filter_map(|(at, d)| rtp_header(d).map(|h| (*at, h)))
        .filter(|(_, (ssrc, _, _))| *ssrc == video_ssrc)
        .map(|(at, (_, _, ts))| (at, ts))
        .collect();
    let mut checked = 0;
    for &(at, ssrc, rtp, _, _) in reports.iter().filter(|r| r.1 == video_ssrc) {
        // The newest frame sent before the report: the highest timestamp, and when.
        let Some(&(sent, ts)) = video
            .iter()
            .filter(|(t, _)| *t <= at)
            .max_by_key(|(t, ts)| (ts.wrapping_sub(first_ts), std::cmp::Reverse(*t)))
        else {
            continue;
        };
        let expected = ts.wrapping_add(((at - sent).as_micros() * 90 / 1000) as u32);
        let off = rtp.wrapping_sub(expected) as i32;
        assert!(
            off.abs() < 300,
            "SR of {ssrc:08x} is {off} ticks off the newest frame's timeline"
        );
        checked += 1;
    }
    assert!(checked >= 4, "sender reports checked: {checked}");
}

#[test]
fn viewers_start_at_random_sequence_numbers_and_timestamps() {
    let mut sim = Sim::new(engine_config()); // 3 viewers
    let p = connected_publisher(&mut sim);
    let viewers: Vec<usize> = (0..3).map(|_| sim.view(B).unwrap()).collect();
    sim.run_for(Duration::from_millis(300));
    stream(&mut sim, p, 0..31);
    let firsts: Vec<(u64, u64)> = viewers
        .iter()
        .map(|&v| {
            let f = sim.clients[v].frames.first().expect("frames").clone();
            (f.seq_start, f.rtp_time)
        })
        .collect();
    assert!(
        firsts.iter().all(|(seq, _)| *seq < 1 << 15),
        "the first rollover counter is 0 and the wrap far: {firsts:?}"
    );
    assert!(
        firsts.windows(2).any(|w| w[0].0 != w[1].0),
        "sequence numbers start at random: {firsts:?}"
    );
    assert!(
        firsts.windows(2).any(|w| w[0].1 != w[1].1),
        "timestamps start at random: {firsts:?}"
    );
}

#[test]
fn viewers_keep_decoding_across_the_16_bit_sequence_number_wrap() {
    let mut config = engine_config();
    config.test_seq_start = Some(65_500);
    let mut sim = Sim::new(config);
    let p = connected_publisher(&mut sim);
    let v = tapped_viewer(&mut sim);
    stream(&mut sim, p, 0..90);
    let frames = &sim.clients[v].frames;
    assert!(frames.len() >= 85, "decoded {} of 90 frames", frames.len());
    assert!(
        frames.first().unwrap().seq_start < 65_536,
        "started before the wrap: {:?}",
        frames.first().map(|f| f.seq_start)
    );
    let after = frames.iter().filter(|f| f.seq_start >= 65_536).count();
    assert!(after >= 60, "frames decoded past the wrap (ROC 1): {after}");
    for w in frames.windows(2) {
        assert_eq!(
            w[1].seq_start,
            w[0].seq_end + 1,
            "continuous across the wrap"
        );
    }
    assert!(
        sim.tapped
            .iter()
            .filter_map(|(_, d)| rtp_header(d))
            .any(|(_, seq, _)| seq < 100),
        "the 16-bit numbers on the wire wrapped"
    );
}

#[test]
fn a_vanished_publisher_is_noticed_within_3_s_and_viewers_then_wait_the_resume_grace() {
    let mut config = engine_config();
    config.resume_grace = Duration::from_secs(60);
    let mut sim = Sim::new(config);
    let p = connected_publisher(&mut sim);
    let v = tapped_viewer(&mut sim);
    // Streaming for longer than the silence limit is no silence.
    stream(&mut sim, p, 0..150);
    assert!(!sim.events.contains(&EngineEvent::BroadcastReconnecting(B)));
    // OBS is killed: no DELETE, no media, no STUN.
    sim.clients[p].unplugged = true;
    let gone = sim.now;
    while !sim.events.contains(&EngineEvent::BroadcastReconnecting(B)) {
        assert!(sim.now - gone < Duration::from_secs(20), "never noticed");
        sim.run_for(Duration::from_millis(100));
    }
    let noticed = sim.now - gone;
    assert!(
        noticed <= Duration::from_secs(3),
        "noticed after {noticed:?}"
    );
    // The resume grace is as long as it was: the viewer waits all of it.
    let session = sim.clients[v].session.clone().unwrap();
    let ended = EngineEvent::SessionClosed {
        session,
        reason: CloseReason::BroadcastEnded,
    };
    sim.run_for(Duration::from_secs(59));
    assert!(
        !sim.events.contains(&ended),
        "ended before the grace ran out"
    );
    assert!(!sim.events.contains(&EngineEvent::BroadcastEnded(B)));
    sim.run_for(Duration::from_secs(2));
    assert!(sim.events.contains(&ended), "ended when the grace ran out");
}
