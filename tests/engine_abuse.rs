//! Abuse on the simulated network: what someone holding only a viewer link can do to a
//! broadcast and its other viewers, and what the engine does about it.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the (virtual) clock

mod common;

use std::time::Duration;

use common::sim::{Sim, engine_config};
use whipcast::engine::{BroadcastKey, CloseReason, CommandError, EngineEvent, Outcome};

const B: BroadcastKey = BroadcastKey(1);

fn connected_publisher(sim: &mut Sim) -> usize {
    let p = sim.publish(B).expect("publish");
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[p].connected, "publisher completes ICE and DTLS");
    p
}

fn evicted(sim: &Sim, client: usize) -> bool {
    let session = sim.clients[client].session.clone().unwrap();
    sim.events.contains(&EngineEvent::SessionClosed {
        session,
        reason: CloseReason::Evicted,
    })
}

/// A WHEP session that never sends a packet (a junk POST with a copied viewer link).
#[allow(clippy::result_large_err)] // test helper: the Outcome is what tests assert on
fn junk_viewer(sim: &mut Sim) -> Result<usize, Outcome> {
    let v = sim.view(B)?;
    sim.clients[v].unplugged = true;
    Ok(v)
}

#[test]
fn sessions_that_never_connect_neither_take_places_nor_evict_viewers() {
    let mut sim = Sim::new(engine_config()); // max_viewers = 3, evict-oldest
    let _p = connected_publisher(&mut sim);
    let real: Vec<usize> = (0..3).map(|_| sim.view(B).unwrap()).collect();
    sim.run_for(Duration::from_millis(500));
    assert!(real.iter().all(|v| sim.clients[*v].connected));
    // Junk offers up to the pending bound (4 with three places) are taken, the rest refused.
    let mut refused = 0;
    for _ in 0..8 {
        match junk_viewer(&mut sim) {
            Ok(_) => {}
            Err(Outcome::Subscribed(Err(CommandError::TooManyPending))) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(refused, 4, "pending sessions have their own bound");
    sim.run_for(Duration::from_secs(1));
    assert!(
        real.iter().all(|v| !evicted(&sim, *v)),
        "junk sessions evicted nobody"
    );
    assert_eq!(sim.stats().evictions, 0);
    // The junk sessions time out and free the pending bound.
    sim.run_for(Duration::from_secs(21));
    assert!(real.iter().all(|v| !evicted(&sim, *v)));
    assert_eq!(sim.stats().viewers, 3);
    // A viewer that really connects takes a place from the oldest one.
    let newcomer = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[newcomer].connected);
    assert!(evicted(&sim, real[0]), "the oldest connected viewer goes");
    assert_eq!(sim.stats().evictions, 1);
    assert_eq!(sim.stats().viewers, 3);
}

/// Streams frames `range` (keyframe every 30) from `publisher`, 30 per second.
fn stream(sim: &mut Sim, publisher: usize, range: std::ops::Range<u64>) {
    for n in range {
        sim.send_frame(publisher, n, n % 30 == 0);
        sim.run_for(Duration::from_millis(33));
    }
}

#[test]
fn media_stops_going_to_an_address_that_has_gone_silent() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[v].connected);
    stream(&mut sim, p, 0..30);
    let addr = sim.clients[v].addr;
    assert!(sim.sent_to[&addr] > 20, "the viewer gets media");
    // The viewer's address falls silent (a forged address never answers, nor does a
    // vanished host). Past the consent window (RFC 7675's 30 s) nothing more goes there.
    sim.clients[v].unplugged = true;
    stream(&mut sim, p, 30..300);
    assert!(
        !sim.events.iter().any(|e| matches!(
            e,
            EngineEvent::SessionClosed {
                reason: CloseReason::TimedOut,
                ..
            }
        )),
        "9 s of silence: the session is still open"
    );
    stream(&mut sim, p, 300..1000);
    let after_consent = sim.sent_to[&addr];
    stream(&mut sim, p, 1000..1060);
    assert_eq!(
        sim.sent_to[&addr], after_consent,
        "nothing sent to a silent address"
    );
    // Its only address is silent: the viewer itself is gone (a viewer that sends nothing
    // for the consent lifetime, engine_liveness.rs).
    assert!(
        sim.events.iter().any(|e| matches!(
            e,
            EngineEvent::SessionClosed {
                reason: CloseReason::TimedOut,
                ..
            }
        )),
        "the silent viewer's session ended"
    );
}

#[test]
fn a_session_cannot_add_source_addresses_without_end() {
    let mut sim = Sim::new(engine_config());
    let p = connected_publisher(&mut sim);
    let v = sim.view(B).unwrap();
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[v].connected);
    // The viewer (it knows its session's ICE password) checks from 30 new addresses: every
    // check passes MESSAGE-INTEGRITY, and each would be a new remote candidate in str0m.
    for port in 0..30u16 {
        let addr: std::net::SocketAddr = format!("10.0.0.3:{}", 50_000 + port).parse().unwrap();
        sim.clients[v]
            .rtc
            .add_local_candidate(str0m::Candidate::host(addr, "udp").unwrap());
    }
    stream(&mut sim, p, 0..600); // 20 s
    let answered: Vec<_> = sim
        .sent_to
        .keys()
        .filter(|a| a.ip() == std::net::IpAddr::from([10, 0, 0, 3]))
        .collect();
    assert!(
        !answered.is_empty(),
        "the extra addresses did reach the server"
    );
    assert!(
        answered.len() <= 7,
        "{} new addresses admitted for one session",
        answered.len()
    );
}
