//! Our estimate of a viewer's link from its transport-wide feedback, on the simulated network:
//! the viewer is a str0m client that numbers nothing itself and answers every packet whipcast
//! numbers with real transport-wide feedback (as Chromium and Firefox do), behind a link of
//! limited bandwidth with a 200 ms queue. No REMB is sent: layer choice follows what the
//! feedback shows (engine/egress/send_side.rs), and probes for a larger layer stop on the
//! queue they build, before it overflows.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::time::Duration;

use common::sim::{Sim, engine_config};
use common::sim_simulcast::{assert_continuous, layers_of, publisher_and_viewer};
use whipcast::engine::{BroadcastKey, Command, Outcome, Stats};

const B: BroadcastKey = BroadcastKey(1);
const FRAME: Duration = Duration::from_millis(33);

fn stats(sim: &mut Sim) -> Stats {
    match sim.engine.handle_command(sim.now, Command::Stats) {
        Outcome::Stats(s) => s,
        other => panic!("Stats answered with {other:?}"),
    }
}

/// Frames `range` of the three layers, a keyframe on each every second.
fn stream(sim: &mut Sim, p: usize, range: std::ops::Range<u64>, sent: &mut Vec<Vec<Vec<u8>>>) {
    for n in range {
        sent.push(sim.send_simulcast_frame(p, n, n % 30 == 0));
        sim.run_for(FRAME);
    }
}

/// The layers are about 890, 560 and 440 kb/s with their headers (engine_simulcast.rs). A
/// link of 800 kb/s carries the middle one and not the full one.
#[test]
fn a_viewer_behind_a_slow_link_settles_on_a_layer_that_fits_without_overflowing_it_and_climbs_when_it_lifts()
 {
    let mut sim = Sim::new(engine_config());
    sim.transport_cc_viewers = true;
    let (p, v, _session) = publisher_and_viewer(&mut sim, B);
    sim.cap = Some((sim.clients[v].addr, 800_000));
    let mut sent = Vec::new();
    // It starts on the full layer (at most 1.2 Mb/s), which the link cannot carry.
    stream(&mut sim, p, 0..150, &mut sent);
    let layers = layers_of(&sim.clients[v].frames, &sent);
    assert_eq!(layers.last(), Some(&1), "on the middle layer: {layers:?}");
    let feedbacks = stats(&mut sim).transport_feedbacks;
    assert!(feedbacks > 40, "feedback read: {feedbacks} in 5 s");
    assert_eq!(stats(&mut sim).rembs_received, 0, "no REMB: our estimate");
    // Then 30 s on it: its link is probed for the full layer (a probe every 4–8 s), and
    // every probe stops on its queue before the queue overflows.
    let (drops, probes, decoded) = (
        sim.cap_drops,
        stats(&mut sim).probe_packets,
        sim.clients[v].frames.len(),
    );
    stream(&mut sim, p, 150..1050, &mut sent);
    let layers = layers_of(&sim.clients[v].frames, &sent);
    let probes = stats(&mut sim).probe_packets - probes;
    eprintln!(
        "{probes} probe packets; {} dropped at the link; layers since: {:?}",
        sim.cap_drops - drops,
        &layers[decoded..]
    );
    assert!(probes > 40, "its link was probed: {probes} copies");
    assert_eq!(sim.cap_drops, drops, "nothing overflowed the link's queue");
    assert!(
        layers[decoded..].iter().all(|&l| l == 1),
        "the middle layer all along: {layers:?}"
    );
    assert!(
        sim.clients[v].frames.len() - decoded >= 890,
        "every frame decoded: {}",
        sim.clients[v].frames.len() - decoded
    );
    // The link is no longer capped: a probe shows it, and the viewer is back on the full
    // layer within 15 s.
    sim.cap = None;
    let lifted = sim.clients[v].frames.len();
    stream(&mut sim, p, 1050..1500, &mut sent);
    let layers = layers_of(&sim.clients[v].frames, &sent);
    let back = (layers[lifted..].iter())
        .position(|&l| l == 0)
        .unwrap_or_else(|| panic!("back on the full layer: {:?}", &layers[lifted..]));
    eprintln!("back on the full layer {back} frames after the cap lifted");
    assert!(back < 450, "within 15 s");
    assert!(
        layers[lifted + back..].iter().all(|&l| l == 0),
        "{layers:?}"
    );
    // From the settled viewer on, every frame, with no gap in its numbering across the move
    // (what overflowed the link at the start was lost).
    assert_continuous(&sim.clients[v].frames[decoded..]);
}

/// A viewer whose transport-wide feedback flows is not moved by a REMB (a browser's REMB then
/// covers only what carries no number): the estimate is ours.
#[test]
fn a_remb_is_not_followed_while_transport_wide_feedback_gives_the_estimate() {
    let mut sim = Sim::new(engine_config());
    sim.transport_cc_viewers = true;
    let (p, v, _session) = publisher_and_viewer(&mut sim, B);
    let mut sent = Vec::new();
    for n in 0..150 {
        if n % 6 == 0 {
            sim.send_remb(v, 100_000);
        }
        sent.push(sim.send_simulcast_frame(p, n, n % 30 == 0));
        sim.run_for(FRAME);
    }
    let layers = layers_of(&sim.clients[v].frames, &sent);
    assert!(stats(&mut sim).rembs_received >= 20);
    assert!(
        layers.iter().all(|&l| l == 0),
        "the full layer all along though REMB said 100 kb/s: {layers:?}"
    );
}

/// A link of 600 kb/s would carry the middle layer (560 kb/s with its headers) with almost
/// nothing to spare: its keyframes, and every probe from it, would overflow the link's queue.
/// The probes from the smallest layer find the link full at what it carries, and the
/// viewer's estimate, which rises while nothing queues, does not move it up to a layer that
/// takes more than 90 % of that: it plays through the probes without a drop. (Before, it went
/// up and down between the two, and the link dropped packets.)
#[test]
fn a_viewer_is_not_moved_up_to_a_layer_that_would_fill_its_link() {
    let mut sim = Sim::new(engine_config());
    sim.transport_cc_viewers = true;
    let (p, v, _session) = publisher_and_viewer(&mut sim, B);
    sim.cap = Some((sim.clients[v].addr, 600_000));
    let mut sent = Vec::new();
    stream(&mut sim, p, 0..300, &mut sent);
    let layers = layers_of(&sim.clients[v].frames, &sent);
    assert_eq!(layers.last(), Some(&2), "on the smallest layer: {layers:?}");
    let (drops, probes, decoded) = (
        sim.cap_drops,
        stats(&mut sim).probe_packets,
        sim.clients[v].frames.len(),
    );
    stream(&mut sim, p, 300..1200, &mut sent);
    let layers = layers_of(&sim.clients[v].frames, &sent);
    let probes = stats(&mut sim).probe_packets - probes;
    eprintln!(
        "{probes} probe packets; {} dropped at the link; layers since: {:?}",
        sim.cap_drops - drops,
        &layers[decoded..]
    );
    assert!(probes > 40, "its link was probed: {probes} copies");
    assert_eq!(sim.cap_drops, drops, "nothing overflowed the link's queue");
    assert!(
        layers[decoded..].iter().all(|&l| l == 2),
        "the smallest layer all along: {layers:?}"
    );
    assert!(
        sim.clients[v].frames.len() - decoded >= 890,
        "every frame decoded: {}",
        sim.clients[v].frames.len() - decoded
    );
    assert_continuous(&sim.clients[v].frames[decoded..]);
}
