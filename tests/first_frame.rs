//! The first frame a viewer sees: the cached keyframe (or, after a publisher resume, the new
//! publisher's first keyframe) becomes a picture whatever single packet of it is lost, and
//! whenever the viewer's side of DTLS finishes. Simulated network, virtual clock.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the (virtual) clock

mod common;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use common::sim::{SERVER, Sim, engine_config, synthetic_frame};
use str0m::media::{Frequency, MediaTime};
use whipcast::engine::BroadcastKey;

const B: BroadcastKey = BroadcastKey(1);
const FRAME: Duration = Duration::from_millis(33);
/// Frames between the publisher's IDRs (OBS's 2 s at 30 fps would do too; one second keeps
/// the runs short, and no test here sends the next one while it waits for the cached one).
const GOP: u64 = 30;

/// Frame `n`: a keyframe of ~15 KB (about a dozen RTP packets, so the burst has a head, a
/// middle and a tail), or a one-packet P-frame.
fn frame(n: u64, keyframe: bool) -> Vec<u8> {
    let mut f = synthetic_frame(n, keyframe);
    if keyframe {
        // Non-zero bytes: no start code can appear in them.
        f.extend((0..12_000).map(|i| ((n as usize + i) % 251) as u8 | 1));
    } else {
        f.truncate(900);
    }
    f
}

/// Sends frame `n` (and an audio frame) from `publisher`; returns the video frame.
fn send(sim: &mut Sim, publisher: usize, n: u64, keyframe: bool) -> Vec<u8> {
    let data = frame(n, keyframe);
    let now = sim.now;
    let c = &mut sim.clients[publisher];
    let (video, audio) = (c.video_mid.unwrap(), c.audio_mid.unwrap());
    let pt = c.rtc.media(video).unwrap().remote_pts()[0];
    c.rtc
        .writer(video)
        .unwrap()
        .write(pt, now, MediaTime::from_90khz(n * 3000), data.clone())
        .unwrap();
    let apt = c.rtc.media(audio).unwrap().remote_pts()[0];
    let opus = MediaTime::new(n * 1600, Frequency::FORTY_EIGHT_KHZ);
    c.rtc
        .writer(audio)
        .unwrap()
        .write(apt, now, opus, vec![0xf8, 0xff, 0xfe])
        .unwrap();
    data
}

/// Streams frames `range` with an IDR every [`GOP`] frames, or none when `idr` is false.
fn stream(sim: &mut Sim, p: usize, range: std::ops::Range<u64>, idr: bool) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    for n in range {
        sent.push(send(sim, p, n, idr && n % GOP == 0));
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

/// An SRTP video packet (or its RTX) from the server to `to`: RTP, not RTCP, not Opus (the
/// viewer's audio PT is the publisher's 111).
fn video_rtp_to(to: SocketAddr, from: SocketAddr, dst: SocketAddr, d: &[u8]) -> bool {
    from == SERVER.parse().unwrap()
        && dst == to
        && d.len() > 12
        && d[0] >> 6 == 2
        && !(192..=223).contains(&d[1])
        && d[1] & 0x7f != 111
}

/// Loses the `lose`-th video packet (counting from 0) the server sends `viewer` from now on;
/// returns the count of video packets sent to it so far, read as the simulation runs.
fn lose_nth_video_packet(sim: &mut Sim, viewer: usize, lose: Option<usize>) -> Rc<Cell<usize>> {
    let to = sim.clients[viewer].addr;
    let seen = Rc::new(Cell::new(0));
    let count = seen.clone();
    sim.drop_if = Some(Box::new(move |from, dst, d| {
        if !video_rtp_to(to, from, dst, d) {
            return false;
        }
        count.set(count.get() + 1);
        Some(count.get() - 1) == lose
    }));
    seen
}

/// Every video packet a viewer in RTP mode received, by sequence number, once each.
fn received(sim: &Sim, v: usize) -> Vec<Vec<u8>> {
    let mut got = sim.clients[v].video_rtp.clone();
    got.sort_by_key(|(seq, _)| *seq);
    got.dedup_by_key(|(seq, _)| *seq);
    got.into_iter().map(|(_, payload)| payload).collect()
}

/// A viewer (str0m in RTP mode, so every packet it gets is seen) joins after two IDRs, the
/// second cached, while the publisher sends only P-frames: the only video it can get is the
/// cached keyframe. Returns the video payloads it received and how many video datagrams
/// (repeats and retransmissions included) the server sent it.
fn join_mid_gop(lose: Option<usize>) -> (Vec<Vec<u8>>, usize) {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    stream(&mut sim, p, 0..GOP + 10, true);
    sim.rtp_mode_viewers = true;
    let v = sim.view(B).expect("viewer");
    let sent = lose_nth_video_packet(&mut sim, v, lose);
    stream(&mut sim, p, GOP + 10..GOP + 25, false);
    sim.run_for(Duration::from_millis(300));
    assert!(sim.clients[v].connected, "viewer connected");
    (received(&sim, v), sent.get())
}

#[test]
fn the_cached_keyframe_survives_the_loss_of_any_one_of_its_packets() {
    let (whole, _) = join_mid_gop(None);
    let burst = whole.len();
    assert!(burst >= 10, "the keyframe is {burst} packets");
    let unrepaired: Vec<usize> = (0..burst)
        .filter(|&lost| join_mid_gop(Some(lost)).0 != whole)
        .collect();
    assert!(
        unrepaired.is_empty(),
        "the viewer never got the whole cached keyframe ({burst} packets) when one of \
         these was lost: {unrepaired:?}"
    );
}

#[test]
fn a_viewer_whose_dtls_finishes_late_still_starts_on_the_cached_keyframe() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    let sent = stream(&mut sim, p, 0..GOP + 10, true);
    let v = sim.view(B).expect("viewer");
    // The server's final flight (ChangeCipherSpec, Finished) is lost once: the server counts
    // the viewer connected and sends the cache, which the viewer has no keys for yet.
    let to = sim.clients[v].addr;
    let server: SocketAddr = SERVER.parse().unwrap();
    let dropped = Rc::new(Cell::new(0));
    let count = dropped.clone();
    sim.drop_if = Some(Box::new(move |from, dst, d| {
        let lose = from == server && dst == to && d.first() == Some(&20) && count.get() == 0;
        count.set(count.get() + usize::from(lose));
        lose
    }));
    // P-frames only, for longer than the viewer's DTLS retransmission timer.
    stream(&mut sim, p, GOP + 10..GOP + 100, false);
    assert_eq!(dropped.get(), 1, "the final flight was lost");
    assert!(sim.clients[v].connected, "the viewer finished DTLS late");
    let first = sim.clients[v].frames.first().map(|f| &f.data);
    assert!(
        first == Some(&sent[GOP as usize]),
        "the viewer shows the cached keyframe without waiting for the next IDR ({} frames)",
        sim.clients[v].frames.len()
    );
}

/// A viewer (RTP mode) watches publisher 1, which vanishes; publisher 2 resumes the broadcast
/// with an IDR and P-frames. Returns the video payloads the viewer received from publisher
/// 2 and how many video datagrams the server sent it since.
fn resume(lose: Option<usize>) -> (Vec<Vec<u8>>, usize) {
    let mut sim = Sim::new(engine_config());
    let p1 = connected_publisher(&mut sim);
    sim.rtp_mode_viewers = true;
    let v = sim.view(B).expect("viewer");
    sim.run_for(Duration::from_millis(300));
    stream(&mut sim, p1, 0..GOP + 5, true);
    sim.clients[p1].unplugged = true;
    sim.run_for(Duration::from_secs(17));
    let before = received(&sim, v).len();
    assert!(before > GOP as usize, "watching publisher 1: {before}");
    let p2 = connected_publisher(&mut sim);
    let sent = lose_nth_video_packet(&mut sim, v, lose);
    stream(&mut sim, p2, 0..10, true);
    sim.run_for(Duration::from_millis(300));
    (received(&sim, v).split_off(before), sent.get())
}

#[test]
fn the_first_keyframe_after_a_publisher_resume_survives_the_loss_of_any_one_of_its_packets() {
    let (whole, sent) = resume(None);
    assert!(whole.len() >= 19, "an IDR and 9 P-frames: {}", whole.len());
    let keyframe = whole.len() - 9;
    assert_eq!(sent, whole.len(), "no loss, nothing sent twice");
    let unrepaired: Vec<usize> = (0..keyframe)
        .filter(|&lost| resume(Some(lost)).0 != whole)
        .collect();
    assert!(
        unrepaired.is_empty(),
        "the viewer missed packets after the resume when one of these of the \
         {keyframe}-packet IDR was lost: {unrepaired:?}"
    );
}
