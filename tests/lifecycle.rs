//! Session lifecycle as real WHIP/WHEP clients drive it, on the simulated network: a clean
//! close (DTLS close_notify) followed by DELETE, a close followed by a new POST, and ICE
//! restarts that move a viewer or a publisher to another address.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the (virtual) clock

mod common;

use std::time::Duration;

use common::sim::{Sim, engine_config};
use whipcast::engine::{BroadcastKey, CloseReason, EngineEvent, PatchError, Patched};

const B: BroadcastKey = BroadcastKey(1);

/// A live broadcast with one connected viewer that has played a few frames.
fn live_with_viewer(sim: &mut Sim) -> (usize, usize) {
    let p = sim.connected_publisher(B);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(300));
    sim.stream(p, 0..40);
    assert!(!sim.clients[v].frames.is_empty(), "the viewer plays");
    (p, v)
}

fn ended(sim: &Sim) -> bool {
    sim.events.contains(&EngineEvent::BroadcastEnded(B))
}

#[test]
fn a_publisher_that_closes_then_deletes_ends_the_broadcast_at_once() {
    let mut sim = Sim::new(engine_config()); // resume grace 30 s
    let (p, v) = live_with_viewer(&mut sim);
    sim.hang_up(p);
    assert!(
        sim.events.contains(&EngineEvent::BroadcastReconnecting(B)),
        "the close reached the server first"
    );
    assert!(!ended(&sim));
    assert!(sim.close(p, true), "the DELETE after the close succeeds");
    sim.run_for(Duration::from_millis(1)); // collect the engine's events
    assert!(ended(&sim), "the DELETE ended the broadcast, no grace");
    let session = sim.clients[v].session.clone().unwrap();
    assert!(sim.events.contains(&EngineEvent::SessionClosed {
        session,
        reason: CloseReason::BroadcastEnded
    }));
    assert!(!sim.close(p, true), "a second DELETE finds nothing");
    let s = sim.stats();
    assert_eq!((s.peers, s.live_broadcasts), (0, 0), "{s:?}");
}

#[test]
fn a_publisher_that_closes_without_delete_ends_the_broadcast_after_the_hang_up_window() {
    let mut sim = Sim::new(engine_config()); // resume grace 30 s
    let (p, _v) = live_with_viewer(&mut sim);
    sim.hang_up(p);
    sim.run_for(Duration::from_secs(2));
    assert!(
        !ended(&sim),
        "viewers wait a moment for a DELETE or a new POST"
    );
    sim.run_for(Duration::from_secs(4));
    assert!(ended(&sim), "a hang-up is not a loss: no 30 s resume grace");
    assert!(!sim.close(p, true), "past the window the session is gone");
}

#[test]
fn a_publisher_that_closes_and_publishes_again_is_spliced_into_the_same_viewers() {
    let mut sim = Sim::new(engine_config());
    let (p1, v) = live_with_viewer(&mut sim);
    sim.hang_up(p1);
    let before = sim.clients[v].frames.clone();
    let p2 = sim.connected_publisher(B);
    let sent = sim.stream(p2, 0..31);
    assert!(
        sim.close(p1, true),
        "the old session's DELETE still answers"
    );
    sim.run_for(Duration::from_secs(6)); // past the window: the new publisher holds it
    assert!(
        !ended(&sim),
        "the new session took over the broadcast, and the old DELETE did not end it"
    );
    let after = &sim.clients[v].frames[before.len()..];
    assert!(
        !after.is_empty(),
        "media continues in the same viewer session"
    );
    assert!(after[0].keyframe);
    assert_eq!(after[0].data, sent[0]);
    assert_eq!(
        after[0].seq_start,
        before.last().unwrap().seq_end + 1,
        "sequence numbers continue across the splice"
    );
    assert_eq!(sim.stats().viewers, 1, "no new viewer session was made");
}

#[test]
fn a_publisher_lost_without_a_close_keeps_the_resume_grace() {
    let mut sim = Sim::new(engine_config()); // resume grace 30 s
    let (p, _v) = live_with_viewer(&mut sim);
    sim.clients[p].unplugged = true;
    sim.run_for(Duration::from_secs(17 + 10));
    assert!(sim.events.contains(&EngineEvent::BroadcastReconnecting(B)));
    assert!(!ended(&sim), "still within the resume grace");
    assert!(!sim.close(p, true), "a lost session was never hung up");
}

#[test]
fn a_viewer_that_closes_then_deletes_gets_200() {
    let mut sim = Sim::new(engine_config());
    let (_p, v) = live_with_viewer(&mut sim);
    sim.hang_up(v);
    let session = sim.clients[v].session.clone().unwrap();
    assert!(sim.events.contains(&EngineEvent::SessionClosed {
        session,
        reason: CloseReason::HungUp
    }));
    assert!(!sim.close(v, true), "not through the publisher's URL space");
    assert!(sim.close(v, false), "the DELETE after the close succeeds");
    assert!(!ended(&sim), "a viewer leaving ends nothing");
}

#[test]
fn a_viewer_keeps_its_session_and_numbering_through_an_ice_restart_to_a_new_address() {
    viewer_moves_with_an_ice_restart(false);
}

#[test]
fn a_viewer_whose_media_str0m_sends_follows_an_ice_restart_to_a_new_address() {
    // str0m's send address follows only the nominated pair, which needs the old candidates
    // out of the way (same priority otherwise keeps the old pair).
    viewer_moves_with_an_ice_restart(true);
}

fn viewer_moves_with_an_ice_restart(str0m_seals: bool) {
    let mut sim = Sim::new(engine_config());
    sim.str0m_seals_viewers = str0m_seals;
    let (p, v) = live_with_viewer(&mut sim);
    let old_ufrag = sim.clients[v].server_ufrag.clone();
    let before = sim.clients[v].frames.clone();
    let Ok(Patched::Restarted { local, etag }) = sim.restart_ice(v, false, Some("*")) else {
        panic!("the restart is accepted");
    };
    assert_ne!(local.ufrag, old_ufrag, "new server credentials");
    assert_eq!(etag, format!("\"{}\"", local.ufrag));
    sim.run_for(Duration::from_millis(500));
    // The cached keyframe comes at once; live media resumes at the next keyframe (frame 60),
    // which the viewer's decoder needs after the packets lost while it moved.
    sim.stream(p, 40..70);
    sim.run_for(Duration::from_millis(200));
    let after = &sim.clients[v].frames[before.len()..];
    assert!(after.len() >= 8, "media reaches the new address: {after:?}");
    let cached = before.iter().rev().find(|f| f.keyframe).unwrap();
    assert_eq!(
        after[0].data, cached.data,
        "the cached keyframe comes first"
    );
    assert_eq!(
        after[0].seq_start,
        before.last().unwrap().seq_end + 1,
        "sequence numbers continue"
    );
    assert!(after[1].keyframe, "then live media from the next keyframe");
    let s = sim.stats();
    assert_eq!(
        (s.viewers, s.demux_ufrags),
        (1, 2),
        "same session, one ufrag each"
    );
    assert_eq!(s.demux_addrs, 2, "the old address was forgotten: {s:?}");
}

#[test]
fn a_publisher_moving_with_an_ice_restart_keeps_feeding_its_viewers() {
    let mut sim = Sim::new(engine_config());
    let (p, v) = live_with_viewer(&mut sim);
    let before = sim.clients[v].frames.len();
    assert!(matches!(
        sim.restart_ice(p, true, Some("*")),
        Ok(Patched::Restarted { .. })
    ));
    sim.run_for(Duration::from_millis(500));
    sim.stream(p, 40..70);
    sim.run_for(Duration::from_millis(200));
    assert!(
        sim.clients[v].frames.len() >= before + 25,
        "the publisher's media from its new address reaches the viewer"
    );
    assert!(!sim.events.contains(&EngineEvent::BroadcastReconnecting(B)));
}

#[test]
fn a_patch_is_a_restart_only_with_new_credentials_and_if_match() {
    let mut sim = Sim::new(engine_config());
    let (_p, v) = live_with_viewer(&mut sim);
    assert_eq!(
        sim.trickle(v, false),
        Ok(Patched::Trickled),
        "the same credentials again are a trickle"
    );
    assert_eq!(
        sim.restart_ice(v, false, None),
        Err(PatchError::IfMatchRequired)
    );
    assert_eq!(
        sim.restart_ice(v, false, Some("\"stale\"")),
        Err(PatchError::StaleEtag)
    );
    assert_eq!(
        sim.restart_ice(v, true, Some("*")),
        Err(PatchError::UnknownSession),
        "not through the publisher's URL space"
    );
    let current = format!("\"{}\"", sim.clients[v].server_ufrag);
    let Ok(Patched::Restarted { etag, .. }) = sim.restart_ice(v, false, Some(&current)) else {
        panic!("the current ETag is accepted");
    };
    assert_eq!(
        sim.restart_ice(v, false, Some(&current)),
        Err(PatchError::StaleEtag),
        "the ETag changed with the restart"
    );
    assert!(matches!(
        sim.restart_ice(v, false, Some(&etag)),
        Ok(Patched::Restarted { .. })
    ));
}
