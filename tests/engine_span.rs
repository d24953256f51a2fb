//! Two workers' engines sharing broadcasts on the simulated network (tests/common/pair.rs
//! places and routes as `--workers 2` does): viewers on the engine without the publisher
//! get every frame from its mirror, repairs included; the cap evicts the oldest viewer on the
//! other engine; a publisher's loss, resume and end reach viewers on both; a home whose
//! viewers are all on the other engine still ends the broadcast when the grace runs out.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

use std::time::Duration;

mod common;

use common::pair::Pair;
use common::sim::{Sim, engine_config};
use whipcast::engine::{
    BroadcastKey, CloseReason, CommandError, EngineConfig, EngineEvent, Outcome,
};
use whipcast::offer::SessionSetup;

const A: BroadcastKey = BroadcastKey(1);
const B: BroadcastKey = BroadcastKey(2);

fn sim(config: EngineConfig) -> Sim<Pair> {
    let setup = SessionSetup::new(config.candidates.clone());
    Sim::with_server(Pair::new(config), setup)
}

fn worker(sim: &Sim<Pair>, client: usize) -> usize {
    let session = sim.clients[client].session.as_ref().unwrap();
    sim.engine.worker_of(session).expect("placed")
}

fn closed(sim: &Sim<Pair>, client: usize, reason: CloseReason) -> bool {
    let session = sim.clients[client].session.clone().unwrap();
    sim.events
        .contains(&EngineEvent::SessionClosed { session, reason })
}

#[test]
fn viewers_on_both_engines_get_every_frame_and_repairs() {
    let mut sim = sim(engine_config());
    let p = sim.connected_publisher(A);
    let viewers: Vec<usize> = (0..3).map(|_| sim.view(A).unwrap()).collect();
    sim.run_for(Duration::from_millis(300));
    let placed: Vec<usize> = viewers.iter().map(|&v| worker(&sim, v)).collect();
    assert_eq!(
        placed,
        [0, 1, 0],
        "the home on a tie, else the engine with fewer"
    );
    // Every 7th video datagram to the mirror's viewer is lost (audio is not repaired):
    // NACKs must be answered from the mirror's own retransmission ring.
    let mirrored = sim.clients[viewers[1]].addr;
    let mut n = 0;
    sim.drop_if = Some(Box::new(move |_, to, data| {
        let video = to == mirrored && data.len() > 400;
        n += usize::from(video);
        video && n % 7 == 0
    }));
    let sent = sim.stream(p, 0..60);
    sim.drop_if = None;
    sim.run_for(Duration::from_millis(500));
    for &v in &viewers {
        let got: Vec<&[u8]> = sim.clients[v].frames.iter().map(|f| &f.data[..]).collect();
        let want: Vec<&[u8]> = sent.iter().map(|d| &d[..]).collect();
        let w = worker(&sim, v);
        assert_eq!(got.len(), want.len(), "client {v} on worker {w}");
        assert!(got == want, "client {v}: every frame, in order, unchanged");
        let audio = sim.clients[v].audio_frames;
        assert_eq!(audio, 60, "client {v} on worker {w}: audio");
    }
    let s = sim.stats();
    assert!(s.retransmissions > 0, "the mirror answered NACKs: {s:?}");
    assert_eq!(
        s.live_broadcasts, 1,
        "a mirror is not a broadcast of its own"
    );
}

#[test]
fn the_cap_evicts_the_oldest_viewer_on_the_other_engine() {
    let mut sim = sim(EngineConfig {
        max_viewers: 1,
        ..engine_config()
    });
    let p = sim.connected_publisher(A);
    let oldest = sim.view(A).unwrap();
    sim.run_for(Duration::from_millis(300));
    sim.stream(p, 0..3);
    let newest = sim.view(A).unwrap();
    assert_eq!((worker(&sim, oldest), worker(&sim, newest)), (0, 1));
    sim.run_for(Duration::from_millis(300));
    assert!(
        closed(&sim, oldest, CloseReason::Evicted),
        "the oldest went"
    );
    assert!(!closed(&sim, newest, CloseReason::Evicted));
    let before = sim.clients[newest].frames.len();
    // From the cached keyframe, then from the next IDR (frame 30) on.
    sim.stream(p, 3..70);
    assert!(
        sim.clients[newest].frames.len() > before + 30,
        "the newest plays"
    );
    assert_eq!(sim.stats().evictions, 1);
}

#[test]
fn loss_resume_and_end_reach_viewers_on_both_engines() {
    let mut sim = sim(engine_config());
    let p1 = sim.connected_publisher(A);
    let viewers = [sim.view(A).unwrap(), sim.view(A).unwrap()];
    sim.run_for(Duration::from_millis(300));
    sim.stream(p1, 0..40);
    sim.clients[p1].unplugged = true;
    sim.run_for(Duration::from_secs(17));
    assert!(sim.events.contains(&EngineEvent::BroadcastReconnecting(A)));
    let before: Vec<usize> = viewers
        .iter()
        .map(|&v| sim.clients[v].frames.len())
        .collect();
    let p2 = sim.connected_publisher(A);
    let sent = sim.stream(p2, 0..31);
    sim.run_for(Duration::from_millis(200));
    for (i, &v) in viewers.iter().enumerate() {
        let after = &sim.clients[v].frames[before[i]..];
        assert!(!after.is_empty(), "viewer {i}: the same session plays on");
        assert_eq!(after[0].data, sent[0], "viewer {i}: from the new keyframe");
    }
    assert_eq!(sim.stats().viewers, 2, "no new viewer sessions");
    assert!(sim.close(p2, true), "DELETE");
    sim.run_for(Duration::from_millis(100));
    for &v in &viewers {
        assert!(closed(&sim, v, CloseReason::BroadcastEnded));
    }
    let s = sim.stats();
    assert_eq!((s.peers, s.live_broadcasts), (0, 0), "{s:?}");
}

#[test]
fn a_home_whose_viewers_are_all_elsewhere_ends_when_the_grace_runs_out() {
    let mut sim = sim(engine_config());
    let p = sim.connected_publisher(A);
    let _b = sim.connected_publisher(B);
    let first = sim.view(A).unwrap();
    let elsewhere = sim.view(A).unwrap();
    assert_eq!((worker(&sim, first), worker(&sim, elsewhere)), (0, 1));
    sim.run_for(Duration::from_millis(300));
    sim.stream(p, 0..5);
    assert!(sim.close(first, false), "the home's own viewer leaves");
    sim.clients[p].unplugged = true;
    sim.run_for(Duration::from_secs(17));
    assert!(sim.events.contains(&EngineEvent::BroadcastReconnecting(A)));
    assert!(
        !closed(&sim, elsewhere, CloseReason::BroadcastEnded),
        "it waits"
    );
    sim.run_for(Duration::from_secs(31));
    assert!(sim.events.contains(&EngineEvent::BroadcastEnded(A)));
    assert!(closed(&sim, elsewhere, CloseReason::BroadcastEnded));
    assert_eq!(sim.stats().live_broadcasts, 1, "only B is left");
}

#[test]
fn sessions_still_connecting_are_bounded_across_both_engines() {
    let mut sim = sim(engine_config()); // max_viewers = 3: at most 4 sessions connecting
    let _p = sim.connected_publisher(A);
    let mut placed = [0; 2];
    let mut refused = 0;
    for _ in 0..8 {
        match sim.view(A) {
            Ok(v) => {
                // A junk POST with a copied viewer link: it never sends a packet.
                sim.clients[v].unplugged = true;
                placed[worker(&sim, v)] += 1;
            }
            Err(Outcome::Subscribed(Err(CommandError::TooManyPending))) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        placed,
        [2, 2],
        "the junk sessions are spread over both engines"
    );
    assert_eq!(
        refused, 4,
        "one bound for the broadcast, not one per engine"
    );
    // They time out and give the bound back; a real viewer then connects on either engine.
    sim.run_for(Duration::from_secs(21));
    let v = sim.view(A).expect("room again");
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[v].connected);
}
