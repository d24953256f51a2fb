//! A transport-wide sequence number that goes back past 0 (issue 28, found by the
//! `rtp_publisher` fuzz target): str0m 0.25 extends it to a number near 2^64
//! (`extend_u16`, "wrap around backwards"), and the next transport-cc feedback it builds
//! (`TwccRecvRegister::build_report` → `build_interims`) pushes one entry per 8,192 missing
//! numbers between that and the last one: without bound, until the process runs out of
//! memory (`memory allocation of 4294967296 bytes failed`, abort). Two SRTP packets did it,
//! with empty payloads, from a publisher that negotiated the extension (browsers send it;
//! OBS does not). Viewers' answers carry no transport-cc.
//!
//! Fixed in whipcast (`engine/twcc_guard.rs`): such a packet never reaches str0m. These
//! tests check that the server stays up and that the real publisher's media and the
//! transport-cc feedback it relies on go on. Without the check the first one aborts (run it
//! under a memory limit, `ulimit -v 3000000`, to see it).

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the (virtual) clock

mod common;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use common::sim::{Sim, engine_config};
use whipcast::engine::BroadcastKey;
use whipcast::srtp::capture::Captured;
use whipcast::srtp::{SrtcpReceiver, SrtpSender};

const B: BroadcastKey = BroadcastKey(1);

/// An RTP packet with no payload on `ssrc`, carrying only a transport-cc extension (id 3,
/// as str0m's offers map it), sealed with the publisher's own keys (the other half of the
/// server's) or, `forged`, with a made-up tag.
fn twcc_packet(server_keys: &Captured, ssrc: u32, index: u64, twcc: u16, forged: bool) -> Vec<u8> {
    let mut p = vec![0x90, 96];
    p.extend((index as u16).to_be_bytes());
    p.extend([0, 0, 0, 1]);
    p.extend(ssrc.to_be_bytes());
    p.extend([0xbe, 0xde, 0, 1, 0x31]);
    p.extend(twcc.to_be_bytes());
    p.push(0);
    if forged {
        p.extend([0x5a; 16]);
        return p;
    }
    let peer = Captured {
        active: !server_keys.active,
        ..server_keys.clone()
    };
    let tx = SrtpSender::new(&peer).expect("the simulated peers negotiate AES-GCM");
    tx.seal_rtp(&mut p, 0, 20, ssrc, index);
    p
}

/// The publisher's video SSRC and the SRTP index of its newest packet, read off the wire
/// (the header is clear text under SRTP).
type Newest = Rc<RefCell<Option<(u32, u64)>>>;

/// A connected publisher (a str0m client that negotiated transport-cc, as browsers do) and
/// viewer, and what the publisher sends, watched from here on.
fn connected() -> (Sim, usize, usize, Newest) {
    let mut sim = Sim::new(engine_config());
    let p = sim.publish(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(200));
    let from = sim.clients[p].addr;
    let newest: Newest = Rc::default();
    let record = newest.clone();
    sim.rewrite = Some(Box::new(move |src, _, d: &mut Vec<u8>| {
        if src != from || d.len() <= 12 || d[0] >> 6 != 2 || d[1] & 0x7f != 96 {
            return;
        }
        let ssrc = u32::from_be_bytes(d[8..12].try_into().unwrap());
        let seq = u16::from_be_bytes([d[2], d[3]]);
        let mut newest = record.borrow_mut();
        let index = match *newest {
            // The first packet is in rollover 0; then unwrap against the last one.
            None => u64::from(seq),
            Some((_, last)) => {
                last.wrapping_add_signed(i64::from(seq.wrapping_sub(last as u16) as i16))
            }
        };
        if newest.is_none_or(|(_, last)| index > last) {
            *newest = Some((ssrc, index));
        }
    }));
    (sim, p, v, newest)
}

fn server_keys(sim: &Sim, client: usize) -> Captured {
    sim.clients[client]
        .server_keys
        .as_ref()
        .unwrap()
        .get()
        .unwrap()
        .clone()
}

/// Sends `frames` more frames from the publisher and returns how many the viewer got and
/// how many transport-cc feedback packets (RTPFB, FMT 15) the server sent the publisher.
fn media_and_feedback(sim: &mut Sim, p: usize, v: usize, from: u64, frames: u64) -> (usize, usize) {
    let keys = server_keys(sim, p);
    // What the server seals, opened as the publisher opens it.
    let rx = SrtcpReceiver::new(&Captured {
        active: !keys.active,
        ..keys
    })
    .unwrap();
    let to: SocketAddr = sim.clients[p].addr;
    sim.tap = Some(to);
    sim.tapped.clear();
    let before = sim.clients[v].frames.len();
    for n in from..from + frames {
        sim.send_frame(p, n, n == from);
        sim.run_for(Duration::from_millis(33));
    }
    sim.run_for(Duration::from_millis(200));
    let mut scratch = Vec::new();
    let mut feedback = 0;
    for (_, d) in sim.tapped.drain(..) {
        let Some(mut rtcp) = rx.open(&d, &mut scratch) else {
            continue;
        };
        while rtcp.len() >= 4 {
            if rtcp[1] == 205 && rtcp[0] & 0x1f == 15 {
                feedback += 1;
            }
            let len = 4 * (1 + usize::from(u16::from_be_bytes([rtcp[2], rtcp[3]])));
            rtcp = &rtcp[len.min(rtcp.len())..];
        }
    }
    sim.tap = None;
    (sim.clients[v].frames.len() - before, feedback)
}

#[test]
fn a_transport_wide_sequence_number_behind_zero_is_refused_and_media_goes_on() {
    let (mut sim, p, v, newest) = connected();
    let (frames, feedback) = media_and_feedback(&mut sim, p, v, 0, 10);
    assert!(
        frames >= 8,
        "the viewer gets the publisher's frames: {frames} of 10"
    );
    assert!(feedback > 0, "the publisher gets transport-cc feedback");
    let keys = server_keys(&sim, p);
    let from = sim.clients[p].addr;
    let (ssrc, last) = newest.borrow().expect("the publisher's video was seen");
    let dropped = sim.stats().datagrams_dropped;
    // A new number (still unreported), then one more than half the space "behind" it, in
    // the same feedback interval: str0m would extend it past 0.
    sim.inject(from, &twcc_packet(&keys, ssrc, last + 1, 100, false));
    sim.inject(from, &twcc_packet(&keys, ssrc, last + 2, 40_100, false));
    assert_eq!(
        sim.stats().datagrams_dropped,
        dropped + 1,
        "the second is refused"
    );
    sim.run_for(Duration::from_millis(500));
    let s = sim.stats();
    assert_eq!((s.publishers, s.viewers), (1, 1));
    let (frames, feedback) = media_and_feedback(&mut sim, p, v, 10, 10);
    assert!(
        frames >= 8,
        "the viewer still gets the publisher's frames: {frames} of 10"
    );
    assert!(feedback > 0, "and the publisher its transport-cc feedback");
}

#[test]
fn forged_numbers_from_the_publishers_address_do_not_stop_its_media() {
    let mut sim = Sim::new(engine_config());
    let p = sim.publish(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(200));
    // Before the publisher's first packet, and after it: numbers anywhere, behind 0 of the
    // publisher's own, with tags that do not check out.
    let keys = server_keys(&sim, p);
    let from = sim.clients[p].addr;
    for (i, twcc) in [65_000u16, 40_000, 30_000, 1].into_iter().enumerate() {
        sim.inject(from, &twcc_packet(&keys, 0x1234, i as u64, twcc, true));
    }
    let (frames, feedback) = media_and_feedback(&mut sim, p, v, 0, 10);
    assert!(
        frames >= 8,
        "the viewer gets the publisher's frames: {frames} of 10"
    );
    assert!(feedback > 0, "and the publisher its transport-cc feedback");
    for (i, twcc) in [65_000u16, 40_000].into_iter().enumerate() {
        sim.inject(from, &twcc_packet(&keys, 0x1234, i as u64, twcc, true));
    }
    let (frames, feedback) = media_and_feedback(&mut sim, p, v, 10, 10);
    assert!(frames >= 8, "and still after more: {frames} of 10");
    assert!(feedback > 0);
    let s = sim.stats();
    assert_eq!((s.publishers, s.viewers), (1, 1));
}
