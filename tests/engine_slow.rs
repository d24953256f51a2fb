//! A viewer whose link is slower than what it is sent, on the simulated network: its estimate
//! (REMB) stays below the stream's bitrate for 10 s and it is flagged *slow* (the viewer
//! page's notice, the broadcaster page's doctor, `/metrics`); it is not flagged before, it
//! is cleared once its estimate has been enough for a few seconds, and a simulcast viewer is
//! moved down rather than flagged while a smaller layer is left.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::time::Duration;

use common::sim::{Sim, engine_config};
use common::sim_session::FRAME;
use str0m::media::Rid;
use whipcast::engine::{BroadcastKey, Command, LayerError, Outcome, SessionId, ViewerLayer};

const B: BroadcastKey = BroadcastKey(1);

fn describe(sim: &mut Sim, session: &SessionId) -> Result<ViewerLayer, LayerError> {
    let now = sim.now;
    match (sim.engine).handle_command(now, Command::DescribeLayer(session.clone())) {
        Outcome::LayerDescribed(r) => r,
        other => panic!("DescribeLayer answered with {other:?}"),
    }
}

fn slow_viewers(sim: &mut Sim) -> usize {
    let now = sim.now;
    match sim.engine.handle_command(now, Command::Info(B)) {
        Outcome::Info(info) => info.slow_viewers,
        other => panic!("Info answered with {other:?}"),
    }
}

/// One second of 30 frames (keyframes every 30), the viewer's estimate told every 200 ms
/// if there is one; `simulcast`: on every layer.
fn second(sim: &mut Sim, p: usize, v: usize, n: &mut u64, estimate: Option<u64>, simulcast: bool) {
    for _ in 0..30 {
        if let Some(bps) = estimate
            && n.is_multiple_of(6)
        {
            sim.send_remb(v, bps);
        }
        if simulcast {
            sim.send_simulcast_frame(p, *n, n.is_multiple_of(30));
        } else {
            sim.send_frame(p, *n, n.is_multiple_of(30));
        }
        sim.run_for(FRAME);
        *n += 1;
    }
}

fn viewer(sim: &mut Sim) -> (usize, SessionId) {
    let v = sim.view(B).expect("viewer");
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[v].connected);
    let session = sim.clients[v].session.clone().expect("a session");
    (v, session)
}

#[test]
fn a_single_layer_viewer_below_the_streams_bitrate_for_ten_seconds_is_slow_until_it_recovers() {
    let mut sim = Sim::new(engine_config());
    let p = sim.connected_publisher(B);
    let (v, session) = viewer(&mut sim);
    let mut n = 0;
    for _ in 0..2 {
        second(&mut sim, p, v, &mut n, None, false);
    }
    let before = describe(&mut sim, &session).expect("a viewer");
    assert_eq!(before.estimate_bps, None, "no estimate before a REMB");
    assert!(!before.slow);
    assert_eq!(
        (before.rid.as_deref(), before.target.as_deref()),
        (None, None)
    );
    assert_eq!(
        before.height,
        Some(240),
        "the size from the SPS: {before:?}"
    );
    assert!(before.auto);
    let needs = before.needs_bps;
    assert!(
        (300_000..600_000).contains(&needs),
        "what it is sent: about 360 kb/s of video and the audio, {needs}"
    );

    // 100 kb/s: well below. Nine seconds are not yet slow.
    for s in 1..=9 {
        second(&mut sim, p, v, &mut n, Some(100_000), false);
        let l = describe(&mut sim, &session).unwrap();
        assert!(!l.slow, "not slow after {s} s below: {l:?}");
        assert_eq!(l.estimate_bps, Some(100_000));
    }
    assert_eq!(slow_viewers(&mut sim), 0);
    second(&mut sim, p, v, &mut n, Some(100_000), false);
    second(&mut sim, p, v, &mut n, Some(100_000), false);
    let l = describe(&mut sim, &session).unwrap();
    assert!(l.slow, "slow after 11 s below: {l:?}");
    assert_eq!(slow_viewers(&mut sim), 1, "the doctor counts it");
    assert_eq!(sim.stats().viewers_slow, 1, "and /metrics");

    // A link that recovered: still flagged two seconds on, cleared within four.
    for _ in 0..2 {
        second(&mut sim, p, v, &mut n, Some(5_000_000), false);
    }
    assert!(
        describe(&mut sim, &session).unwrap().slow,
        "2 s are no recovery yet"
    );
    for _ in 0..2 {
        second(&mut sim, p, v, &mut n, Some(5_000_000), false);
    }
    let l = describe(&mut sim, &session).unwrap();
    assert!(!l.slow, "cleared after 4 s of enough: {l:?}");
    assert_eq!(slow_viewers(&mut sim), 0);
    assert_eq!(sim.stats().viewers_slow, 0);
}

#[test]
fn a_dip_shorter_than_ten_seconds_never_flags_a_viewer() {
    let mut sim = Sim::new(engine_config());
    let p = sim.connected_publisher(B);
    let (v, session) = viewer(&mut sim);
    let mut n = 0;
    // Eight seconds below, one above, eight below again: never ten in a row.
    for estimate in [100_000; 8]
        .into_iter()
        .chain([5_000_000])
        .chain([100_000; 8])
    {
        second(&mut sim, p, v, &mut n, Some(estimate), false);
        let l = describe(&mut sim, &session).unwrap();
        assert!(!l.slow, "{l:?}");
    }
}

#[test]
fn a_simulcast_viewer_is_moved_down_not_flagged_and_flagged_only_on_the_smallest_layer() {
    let mut sim = Sim::new(engine_config());
    let p = sim.publish_simulcast(B).expect("simulcast publish");
    sim.run_for(Duration::from_millis(500));
    let (v, session) = viewer(&mut sim);
    let mut n = 0;
    for _ in 0..2 {
        second(&mut sim, p, v, &mut n, None, true);
    }
    let top = describe(&mut sim, &session).unwrap();
    assert_eq!(top.rid.as_deref(), Some("0"), "on the full size: {top:?}");
    assert_eq!(sim.stats().simulcast_viewers, [1, 0, 0, 0]);
    // What the publisher sends per layer, for /metrics: each its own bitrate, and the size
    // its SPS gives (the test publisher's layers share one).
    let ingest = sim.stats().simulcast_ingest;
    let bps: Vec<u64> = ingest.iter().map(|l| l.bits_per_second).collect();
    assert!(
        bps[0] > bps[1] && bps[1] > bps[2] && bps[2] > 0 && bps[3] == 0,
        "bitrates by layer: {ingest:?}"
    );
    assert!(
        ingest[..3].iter().all(|l| l.height > 0) && ingest[3].height == 0,
        "{ingest:?}"
    );
    // 460 kb/s for 15 s: under the full layer (about 840 kb/s) and under the 85 % of the
    // middle one (about 560 kb/s) that keeps a viewer on it, over the smallest (about
    // 410 kb/s).
    for s in 1..=15 {
        second(&mut sim, p, v, &mut n, Some(460_000), true);
        let l = describe(&mut sim, &session).unwrap();
        assert!(
            !l.slow,
            "a viewer the server can move down is not slow ({s} s): {l:?}"
        );
    }
    let l = describe(&mut sim, &session).unwrap();
    assert_eq!(l.rid.as_deref(), Some("2"), "moved to the smallest: {l:?}");
    assert!(l.needs_bps < 460_000, "{l:?}");
    let stats = sim.stats();
    assert_eq!(stats.simulcast_viewers, [0, 0, 1, 0], "/metrics by layer");
    assert!(stats.layer_switches >= 1, "the move is counted");
    // 100 kb/s: below even the smallest layer. Slow ten seconds on, not before.
    for s in 1..=9 {
        second(&mut sim, p, v, &mut n, Some(100_000), true);
        assert!(!describe(&mut sim, &session).unwrap().slow, "{s} s");
    }
    for _ in 0..2 {
        second(&mut sim, p, v, &mut n, Some(100_000), true);
    }
    let l = describe(&mut sim, &session).unwrap();
    assert!(l.slow && l.rid.as_deref() == Some("2"), "{l:?}");
}

#[test]
fn a_viewer_that_pinned_the_full_layer_is_slow_when_its_link_cannot_carry_it() {
    let mut sim = Sim::new(engine_config());
    let p = sim.publish_simulcast(B).expect("simulcast publish");
    sim.run_for(Duration::from_millis(500));
    let (v, session) = viewer(&mut sim);
    let now = sim.now;
    let pin = Command::SetLayer {
        session: session.clone(),
        rid: Some(Rid::from("0")),
    };
    assert!(matches!(
        sim.engine.handle_command(now, pin),
        Outcome::LayerSet(Ok(()))
    ));
    let mut n = 0;
    for _ in 0..12 {
        second(&mut sim, p, v, &mut n, Some(150_000), true);
    }
    let l = describe(&mut sim, &session).unwrap();
    assert!(!l.auto && l.rid.as_deref() == Some("0"), "{l:?}");
    assert!(
        l.slow,
        "the server may not move it down, so it is told: {l:?}"
    );
}

#[test]
fn only_a_viewer_is_told_its_layer() {
    let mut sim = Sim::new(engine_config());
    let p = sim.connected_publisher(B);
    let publisher = sim.clients[p].session.clone().unwrap();
    assert_eq!(
        describe(&mut sim, &publisher),
        Err(LayerError::UnknownSession)
    );
    assert_eq!(
        describe(&mut sim, &SessionId::random()),
        Err(LayerError::UnknownSession)
    );
}
