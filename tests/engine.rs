//! The engine on a simulated network with a virtual clock: str0m clients shaped like OBS and
//! like browsers, the real `Engine`, no sockets.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the (virtual) clock

mod common;

use std::time::Duration;

use common::sim::{HIGH_SPS, Sim, engine_config, synthetic_frame};
use str0m::media::KeyframeRequestKind;
use whipcast::engine::{BroadcastKey, CloseReason, EngineEvent, Outcome};

const B: BroadcastKey = BroadcastKey(1);
const FRAME: Duration = Duration::from_millis(33);

/// Streams frames `range` (keyframe every 30) from `publisher`, returning what was sent.
fn stream(sim: &mut Sim, publisher: usize, range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
    let mut sent = Vec::new();
    for n in range {
        sent.push((n, sim.send_frame(publisher, n, n % 30 == 0)));
        sim.run_for(FRAME);
    }
    sent
}

fn connected_publisher(sim: &mut Sim) -> usize {
    let p = sim.publish(B).expect("publish");
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[p].connected, "publisher completes ICE and DTLS");
    p
}

#[test]
fn obs_shaped_publisher_reaches_every_viewer_unchanged() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    let v1 = sim.view(B).unwrap();
    let v2 = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[v1].connected && sim.clients[v2].connected);
    let sent = stream(&mut sim, p, 0..61);
    sim.run_for(Duration::from_millis(200));
    for v in [v1, v2] {
        let got = &sim.clients[v].frames;
        assert!(got.len() >= 55, "viewer {v} got {} of 61 frames", got.len());
        assert!(got[0].keyframe, "first frame is a keyframe");
        // Every received frame is byte-identical to the sent frame it starts at.
        let first = sent
            .iter()
            .position(|(_, f)| *f == got[0].data)
            .expect("first frame was sent");
        for (g, (_, s)) in got.iter().zip(&sent[first..]) {
            assert_eq!(&g.data, s, "frames arrive unchanged and in order");
        }
        assert!(
            sim.clients[v].audio_frames > 40,
            "audio flows too: {}",
            sim.clients[v].audio_frames
        );
    }
    let s = sim.stats();
    assert!(s.packets_forwarded > 0);
    assert_eq!(
        s.viewers_sealed, 2,
        "both viewers' media is sealed by whipcast, not str0m"
    );
}

#[test]
fn a_sealed_viewers_pli_and_fir_reach_the_publisher_at_most_once_a_second() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    stream(&mut sim, p, 0..31);
    let v = sim.view(B).unwrap();
    // Past the keyframe request every viewer's connect makes, and past its 1 s throttle.
    stream(&mut sim, p, 31..76);
    assert_eq!(
        sim.stats().viewers_sealed,
        1,
        "whipcast seals, so reads its RTCP"
    );
    let mid = sim.clients[v].video_mid.expect("viewer has video");
    let ask = |sim: &mut Sim, kind: KeyframeRequestKind| {
        let mut api = sim.clients[v].rtc.direct_api();
        api.stream_rx_by_mid(mid, None)
            .expect("viewer receives video")
            .request_keyframe(kind);
        sim.run_for(Duration::from_millis(200));
    };
    let (asked, plis) = (sim.clients[p].keyframe_requests, sim.stats().plis_received);

    ask(&mut sim, KeyframeRequestKind::Pli);
    assert_eq!(
        sim.stats().plis_received,
        plis + 1,
        "the viewer's PLI was read"
    );
    assert_eq!(sim.clients[p].keyframe_requests, asked + 1, "and passed on");

    ask(&mut sim, KeyframeRequestKind::Fir);
    assert_eq!(
        sim.stats().plis_received,
        plis + 2,
        "the viewer's FIR was read"
    );
    assert_eq!(
        sim.clients[p].keyframe_requests,
        asked + 1,
        "a second request within the second waits"
    );

    sim.run_for(Duration::from_secs(1));
    ask(&mut sim, KeyframeRequestKind::Fir);
    assert_eq!(
        sim.clients[p].keyframe_requests,
        asked + 2,
        "FIR, a second later"
    );
}

#[test]
fn a_keyframe_request_held_back_by_the_throttle_goes_when_it_allows() {
    // Browsers and GStreamer send a keyframe only when asked: a viewer that joins within a
    // second of another must still cause one, or it may wait for it forever.
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    stream(&mut sim, p, 0..31);
    let before = sim.clients[p].keyframe_requests;
    sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.clients[p].keyframe_requests,
        before + 1,
        "the first join asks"
    );
    sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.clients[p].keyframe_requests,
        before + 1,
        "the second join, within the second, waits for the throttle"
    );
    sim.run_for(Duration::from_millis(1200));
    assert_eq!(
        sim.clients[p].keyframe_requests,
        before + 2,
        "and is sent once the throttle allows, not dropped"
    );
}

#[test]
fn viewer_joining_mid_stream_starts_on_the_cached_keyframe() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    let sent = stream(&mut sim, p, 0..45);
    let fwd = sim.stats().packets_forwarded;
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(300));
    assert!(
        sim.stats().packets_forwarded > fwd,
        "the cache is forwarded without any new publisher packet"
    );
    let got = sim.clients[v].frames.clone();
    assert!(
        !got.is_empty(),
        "the cached keyframe arrives before the publisher's next IDR"
    );
    assert!(got[0].keyframe);
    assert_eq!(
        got[0].data, sent[30].1,
        "the cached keyframe is the latest complete one (frame 30)"
    );
    // The GOP waits a moment behind its keyframe, so a browser presents the keyframe as
    // soon as it would alone (engine/hold.rs); then it comes at once.
    let held = got[1].at.duration_since(got[0].at);
    assert!(
        held >= Duration::from_millis(40) && got.len() == 15,
        "the cached GOP follows its keyframe 40 ms later: {held:?}, {} frames",
        got.len()
    );
    let more = stream(&mut sim, p, 45..70);
    sim.run_for(Duration::from_millis(200));
    let got = &sim.clients[v].frames;
    // The frames since the cached keyframe (31..44) follow it at once (the GOP cache,
    // engine/gop.rs), then the live ones from 45 on: motion without waiting for an IDR.
    assert!(
        got[1].data == sent[31].1,
        "after the cached keyframe comes the frame that followed it"
    );
    assert!(
        got[14].data == sent[44].1 && got[15].data == more[0].1,
        "after the cached GOP (frames 30..=44), the live frames follow without a gap"
    );
    assert_eq!(
        got[1].seq_start,
        got[0].seq_end + 1,
        "sequence numbers stay continuous"
    );
    // The burst's frames are stamped 1 ms (90 ticks) apart up to the newest (engine/gop.rs),
    // which keeps its distance to the live frames after it: their real spacing.
    let steps: Vec<u64> = got
        .windows(2)
        .map(|w| w[1].rtp_time - w[0].rtp_time)
        .collect();
    assert!(
        steps[..14].iter().all(|&d| d == 90),
        "the cached GOP squeezed toward its newest frame: steps {steps:?}"
    );
    assert!(
        steps[14] > 90 && steps[14..].iter().all(|&d| d == steps[14]),
        "the live frames follow the newest cached one at their real spacing: steps {steps:?}"
    );
}

#[test]
fn publisher_delete_frees_every_peer_index_and_timer() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(300));
    stream(&mut sim, p, 0..5);
    assert!(sim.close(p, true), "DELETE of the publisher session");
    sim.run_for(Duration::from_millis(100));
    let s = sim.stats();
    assert_eq!(
        (
            s.peers,
            s.demux_addrs,
            s.demux_ufrags,
            s.deadlines,
            s.live_broadcasts
        ),
        (0, 0, 0, 0, 0),
        "{s:?}"
    );
    assert!(sim.events.contains(&EngineEvent::BroadcastEnded(B)));
    let viewer_session = sim.clients[v].session.clone().unwrap();
    assert!(sim.events.contains(&EngineEvent::SessionClosed {
        session: viewer_session,
        reason: CloseReason::BroadcastEnded
    }));
    assert!(!sim.close(p, true), "a second DELETE finds nothing");
    assert!(
        matches!(sim.view(B), Err(Outcome::Described(None))),
        "no publisher: a viewer is told it is not live"
    );
}

#[test]
fn viewer_session_url_cannot_stop_the_publisher() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(300));
    assert!(
        !sim.close(v, true),
        "viewer session ID in the publisher URL space"
    );
    assert!(
        !sim.close(p, false),
        "publisher session ID in the viewer URL space"
    );
    assert_eq!(sim.stats().peers, 2);
}

#[test]
fn datagrams_from_unknown_or_spoofed_sources_are_dropped() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(300));
    let before = sim.stats().datagrams_dropped;
    let stranger = "10.9.9.9:5000".parse().unwrap();
    sim.inject(stranger, b"garbage that is not STUN, DTLS or RTP");
    sim.inject(stranger, &[0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]); // RTP-looking
    // STUN binding request naming a ufrag nobody has.
    let mut stun = vec![0, 1, 0, 16, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[1; 12]);
    stun.extend_from_slice(&[0, 6, 0, 9]);
    stun.extend_from_slice(b"nobody:xx\0\0\0");
    sim.inject(stranger, &stun);
    assert_eq!(sim.stats().datagrams_dropped, before + 3);
    let sent = stream(&mut sim, p, 0..31);
    sim.run_for(Duration::from_millis(200));
    assert!(
        sim.clients[v].frames.len() >= 25,
        "real media keeps flowing"
    );
    assert_eq!(
        sim.clients[v].frames.last().unwrap().data,
        sent.last().unwrap().1
    );
    assert_eq!(sim.stats().peers, 2);
}

#[test]
fn oldest_viewer_is_evicted_when_full() {
    let mut sim = Sim::new(engine_config()); // max_viewers = 3
    let _p = connected_publisher(&mut sim);
    let viewers: Vec<usize> = (0..4).map(|_| sim.view(B).unwrap()).collect();
    sim.run_for(Duration::from_millis(300));
    let oldest = sim.clients[viewers[0]].session.clone().unwrap();
    assert!(sim.events.contains(&EngineEvent::SessionClosed {
        session: oldest,
        reason: CloseReason::Evicted
    }));
    let s = sim.stats();
    assert_eq!((s.viewers, s.evictions), (3, 1));
    assert!(viewers[1..].iter().all(|v| sim.clients[*v].connected));
}

#[test]
fn publishing_fails_when_every_slot_is_taken() {
    let mut sim = Sim::new(engine_config()); // 2 slots
    sim.publish(BroadcastKey(1)).unwrap();
    sim.publish(BroadcastKey(2)).unwrap();
    let third = sim.publish(BroadcastKey(3));
    assert!(matches!(
        third,
        Err(Outcome::Published(Err(
            whipcast::engine::CommandError::NoFreeSlot
        )))
    ));
    // A live broadcast's own reconnect is not refused: it already holds its slot.
    sim.publish(BroadcastKey(1))
        .expect("replacement of a live publisher");
}

#[test]
fn resumed_publisher_is_spliced_into_the_same_viewer_sessions() {
    let mut sim = Sim::new(engine_config());
    let p1 = connected_publisher(&mut sim);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(300));
    stream(&mut sim, p1, 0..40);
    // OBS crashes: no DELETE, no more packets. ICE-lite consent runs out after ~15 s.
    sim.clients[p1].unplugged = true;
    sim.run_for(Duration::from_secs(17));
    assert!(sim.events.contains(&EngineEvent::BroadcastReconnecting(B)));
    assert!(sim.clients[v].connected);
    let before = sim.clients[v].frames.clone();
    // OBS comes back: a new PeerConnection whose seq and timestamps start over.
    let p2 = connected_publisher(&mut sim);
    let sent = stream(&mut sim, p2, 0..31);
    sim.run_for(Duration::from_millis(200));
    let after = &sim.clients[v].frames[before.len()..];
    assert!(
        !after.is_empty(),
        "media continues in the same viewer session"
    );
    assert!(after[0].keyframe);
    assert_eq!(after[0].data, sent[0].1);
    let last = before.last().unwrap();
    assert_eq!(
        after[0].seq_start,
        last.seq_end + 1,
        "sequence numbers continue across the splice"
    );
    assert!(
        after[0].rtp_time > last.rtp_time,
        "timestamps keep increasing"
    );
    assert_eq!(sim.stats().viewers, 1, "no new viewer session was made");
}

#[test]
fn viewers_are_ended_when_the_publisher_does_not_resume_in_time() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(300));
    stream(&mut sim, p, 0..5);
    sim.clients[p].unplugged = true;
    sim.run_for(Duration::from_secs(17 + 31));
    let session = sim.clients[v].session.clone().unwrap();
    assert!(sim.events.contains(&EngineEvent::BroadcastEnded(B)));
    assert!(sim.events.contains(&EngineEvent::SessionClosed {
        session,
        reason: CloseReason::BroadcastEnded
    }));
    let s = sim.stats();
    assert_eq!(
        (s.peers, s.deadlines, s.demux_addrs, s.demux_ufrags),
        (0, 0, 0, 0),
        "{s:?}"
    );
}

#[test]
fn the_last_viewer_leaving_while_the_publisher_is_away_frees_the_slot() {
    let mut sim = Sim::new(engine_config()); // 2 slots
    let p = connected_publisher(&mut sim);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(300));
    stream(&mut sim, p, 0..5);
    sim.publish(BroadcastKey(2)).unwrap();
    sim.clients[p].unplugged = true;
    sim.run_for(Duration::from_secs(17));
    assert!(sim.events.contains(&EngineEvent::BroadcastReconnecting(B)));
    assert!(!sim.events.contains(&EngineEvent::BroadcastEnded(B)));
    // Both slots are held: B waits for its publisher, broadcast 2 is live.
    assert!(sim.publish(BroadcastKey(3)).is_err());
    // The only viewer closes its tab long before the resume grace runs out.
    assert!(sim.close(v, false));
    sim.run_for(Duration::from_millis(100));
    assert!(
        sim.events.contains(&EngineEvent::BroadcastEnded(B)),
        "nothing is left to keep, so the broadcast ends at once"
    );
    sim.publish(BroadcastKey(3))
        .expect("the slot B held is free again");
}

#[test]
fn a_session_that_never_connects_is_freed() {
    let mut sim = Sim::new(engine_config());
    let p = sim.publish(B).unwrap();
    sim.clients[p].unplugged = true;
    sim.run_for(Duration::from_secs(25));
    assert_eq!(sim.stats().peers, 0);
    assert_eq!(sim.stats().deadlines, 0);
}

#[test]
fn synthetic_frames_are_distinct() {
    assert_ne!(synthetic_frame(1, false), synthetic_frame(2, false));
}

#[test]
fn viewers_keep_decoding_through_loss_reordering_and_duplication() {
    let s = lossy_viewer_link(false);
    assert!(
        s.retransmissions > 0,
        "the viewer's NACKs were answered from whipcast's own ring: {s:?}"
    );
}

#[test]
fn viewers_whose_media_str0m_seals_are_repaired_by_str0m() {
    let s = lossy_viewer_link(true);
    assert_eq!(s.viewers_sealed, 0, "str0m's send path served this viewer");
    assert_eq!(s.retransmissions, 0, "so whipcast resent nothing itself");
}

/// Streams 120 frames to one viewer over a link that loses 5 % both ways, jitters and
/// duplicates; asserts every frame arrives intact and the viewer's losses were NACKed.
fn lossy_viewer_link(str0m_seals: bool) -> whipcast::engine::Stats {
    let mut sim = Sim::new(engine_config());
    sim.str0m_seals_viewers = str0m_seals;
    let p = connected_publisher(&mut sim);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    stream(&mut sim, p, 0..30);
    let before = sim.clients[v].frames.len();
    assert!(before >= 29, "playing before the trouble starts: {before}");
    // Loss on the viewer's link, the side of the repair whipcast owns. (The fake publisher
    // is str0m without RTX, which never resends, so loss on its link would only measure the
    // fake; OBS resends on the original SSRC.)
    sim.drop_every = 20;
    sim.drop_only_at = Some(sim.clients[v].addr);
    sim.jitter = Duration::from_millis(15);
    sim.duplicate_every = 50;
    let sent = stream(&mut sim, p, 30..150);
    sim.drop_every = 0;
    sim.run_for(Duration::from_secs(2));
    let got = &sim.clients[v].frames[before..];
    assert_eq!(got.len(), 120, "viewer decoded {} of 120 frames", got.len());
    for g in got {
        assert!(
            sent.iter().any(|(_, s)| *s == g.data),
            "every frame the viewer assembled is intact"
        );
    }
    let s = sim.stats();
    assert!(
        s.nacks_received > 0,
        "the viewer reported its losses: {s:?}"
    );
    s
}

#[test]
fn a_flood_from_spoofed_sources_neither_grows_state_nor_stops_media() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(300));
    let before = sim.stats();
    let ufrag = sim.clients[v].server_ufrag.clone();
    for i in 0..20_000u32 {
        let from = std::net::SocketAddr::from((
            [10, 66, (i >> 8) as u8, i as u8],
            1000 + (i % 50_000) as u16,
        ));
        match i % 4 {
            0 => sim.inject(from, &[0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1]), // DTLS-looking
            1 => sim.inject(
                from,
                &[
                    0x80,
                    0x60,
                    (i >> 8) as u8,
                    i as u8,
                    0,
                    0,
                    0,
                    1,
                    0,
                    0,
                    0,
                    1,
                    0xde,
                    0xad,
                ],
            ),
            // STUN naming a real peer's ufrag but without valid MESSAGE-INTEGRITY.
            _ => {
                let username = format!("{ufrag}:evil");
                let mut m = vec![0, 1];
                let mut attr = vec![0, 6, 0, username.len() as u8];
                attr.extend_from_slice(username.as_bytes());
                while attr.len() % 4 != 0 {
                    attr.push(0);
                }
                m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
                m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
                m.extend_from_slice(&i.to_be_bytes());
                m.extend_from_slice(&[7; 8]);
                m.extend_from_slice(&attr);
                sim.inject(from, &m);
            }
        }
    }
    let after = sim.stats();
    assert_eq!(
        after.demux_addrs, before.demux_addrs,
        "no address from the flood was indexed"
    );
    assert_eq!(after.peers, 2);
    assert!(after.datagrams_dropped >= before.datagrams_dropped + 20_000);
    let sent = stream(&mut sim, p, 0..31);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        sim.clients[v].frames.last().unwrap().data,
        sent.last().unwrap().1,
        "media keeps flowing"
    );
}

fn info(sim: &mut Sim) -> whipcast::engine::BroadcastInfo {
    match sim
        .engine
        .handle_command(sim.now, whipcast::engine::Command::Info(B))
    {
        Outcome::Info(i) => i,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_ingest_doctor_reads_profile_size_gop_and_frame_rate_from_the_stream() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    // High profile 720p (the SDP says 42e01f, as OBS always does), a keyframe every 5 s.
    for n in 0..330 {
        sim.send_frame_with(p, n, n, n % 150 == 0, HIGH_SPS);
        sim.run_for(FRAME);
    }
    let i = info(&mut sim);
    let sps = i.sps.expect("SPS parsed from the stream");
    assert_eq!(
        (sps.width, sps.height, sps.profile_name()),
        (1280, 720, "High")
    );
    let gop = i
        .keyframe_interval
        .expect("two keyframes seen")
        .as_secs_f32();
    assert!((4.5..5.5).contains(&gop), "keyframe interval {gop}");
    let fps = i.fps.expect("frame rate measured");
    assert!((25.0..35.0).contains(&fps), "fps {fps}");
    assert!(!i.b_frames);
    assert!(i.bitrate_bps > 0);
    assert_eq!(i.video_codec.as_deref(), Some("H264"));
}

#[test]
fn the_ingest_doctor_notices_b_frames() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    // Decode order I P B P B …: every B-frame's timestamp is older than the P before it.
    let mut n = 0;
    for gop in 0..3u64 {
        let base = gop * 30;
        sim.send_frame_with(p, n, base, true, common::sim::BASELINE_SPS);
        n += 1;
        sim.run_for(FRAME);
        for k in (2..30).step_by(2) {
            sim.send_frame_with(p, n, base + k, false, common::sim::BASELINE_SPS);
            sim.send_frame_with(p, n + 1, base + k - 1, false, common::sim::BASELINE_SPS);
            n += 2;
            sim.run_for(FRAME * 2);
        }
    }
    let i = info(&mut sim);
    assert!(i.b_frames);
    // Each IDR follows a B-frame in decode order; it must still be seen whole (and cached).
    let gop = i
        .keyframe_interval
        .expect("keyframes after B-frames are complete");
    assert!(
        (0.9..1.1).contains(&gop.as_secs_f32()),
        "keyframe interval {gop:?}"
    );
    let fps = i.fps.expect("frame rate measured");
    assert!(
        (25.0..35.0).contains(&fps),
        "B-frames count in the frame rate: {fps}"
    );
}

#[test]
fn a_simulcast_publisher_has_every_layer_accepted_and_viewers_get_the_full_one() {
    let mut sim = Sim::new(engine_config());
    let p = sim.publish_simulcast(B).expect("simulcast publish");
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[p].connected);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    let mut sent = Vec::new();
    for n in 0..40 {
        sent.push(sim.send_simulcast_frame(p, n, n % 30 == 0));
        sim.run_for(FRAME);
    }
    sim.run_for(Duration::from_millis(200));
    let got = &sim.clients[v].frames;
    assert!(got.len() >= 30, "viewer decoded {} frames", got.len());
    for g in got {
        assert!(
            sent.iter().any(|layers| layers[0] == g.data),
            "only layer 0 (full resolution) reaches viewers"
        );
    }
}
