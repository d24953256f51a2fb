//! Any datagram, from a stranger or carrying a live peer's ufrag, into an engine with a
//! publisher and a viewer: dropped or handled, never a panic, and the indices stay bounded.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use whipcast::config::WhenFull;
use whipcast::engine::{BroadcastKey, Command, Engine, EngineConfig, NewPeer, Outcome, SessionId};
use whipcast::offer::SessionSetup;

struct World {
    engine: Engine,
    now: Instant,
    ufrags: Vec<String>,
}

fn world() -> World {
    let server: SocketAddr = "127.0.0.1:8189".parse().unwrap();
    let mut engine = Engine::new(EngineConfig {
        candidates: vec![server],
        tcp_candidates: Vec::new(),
        max_live_broadcasts: 2,
        max_viewers: 2,
        when_full: WhenFull::EvictOldest,
        resume_grace: Duration::from_secs(30),
        handshake_timeout: Duration::from_secs(20),
        test_seq_start: None,
        worker: 0,
    });
    // One certificate for every run: generating it is most of the setup cost.
    static SETUP: std::sync::OnceLock<SessionSetup> = std::sync::OnceLock::new();
    let setup = SETUP.get_or_init(|| SessionSetup::new(vec![server]));
    let now = Instant::now();
    let b = BroadcastKey(1);
    let publisher = setup.accept_publisher(now, OBS_OFFER).unwrap();
    let tracks = publisher.tracks.clone();
    let mut ufrags = vec![publisher.ufrag.clone()];
    let peer = NewPeer {
        broadcast: b,
        session: SessionId::random(),
        ufrag: publisher.ufrag,
        rtc: publisher.rtc,
        keys: publisher.keys,
        transport_cc: publisher.transport_cc,
    };
    assert!(matches!(
        engine.handle_command(now, Command::Publish(peer, tracks.clone())),
        Outcome::Published(Ok(()))
    ));
    let viewer = setup.accept_viewer(now, VIEWER_OFFER, &tracks).unwrap();
    ufrags.push(viewer.ufrag.clone());
    let peer = NewPeer {
        broadcast: b,
        session: SessionId::random(),
        ufrag: viewer.ufrag,
        rtc: viewer.rtc,
        keys: viewer.keys,
        transport_cc: viewer.transport_cc,
    };
    assert!(matches!(
        engine.handle_command(now, Command::Subscribe(peer, viewer.tracks)),
        Outcome::Subscribed(Ok(()))
    ));
    World {
        engine,
        now,
        ufrags,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut w = world();
    let server: SocketAddr = "127.0.0.1:8189".parse().unwrap();
    // Each chunk: [source selector][ufrag selector][time step][len][bytes…].
    let mut rest = data;
    while rest.len() >= 4 {
        let (head, tail) = rest.split_at(4);
        let len = (head[3] as usize).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        let src: SocketAddr = format!(
            "127.0.0.{}:{}",
            2 + head[0] % 4,
            5000 + (head[0] as u16 % 7)
        )
        .parse()
        .unwrap();
        w.now += Duration::from_millis(head[2] as u64 * 10);
        let datagram = if head[1] % 3 == 0 {
            // Give the bytes a STUN frame naming a live peer's ufrag, so they reach str0m.
            stun_with_username(&w.ufrags[head[1] as usize % w.ufrags.len()], body)
        } else {
            body.to_vec()
        };
        w.engine.handle_datagram(w.now, src, server, &datagram);
        w.engine.handle_timeout(w.now);
        while w.engine.poll_transmit().is_some() {}
        while w.engine.poll_event().is_some() {}
    }
    let s = w.engine.stats();
    assert!(
        s.demux_addrs <= 4 * s.peers && s.demux_ufrags <= s.peers,
        "indices stay bounded: {s:?}"
    );
});

fn stun_with_username(ufrag: &str, rest: &[u8]) -> Vec<u8> {
    let username = format!("{ufrag}:fuzz");
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&6u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    attrs.extend_from_slice(rest);
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    msg.extend_from_slice(&[9; 12]);
    msg.extend_from_slice(&attrs);
    msg
}

const OBS_OFFER: &str = include_str!("../../tests/fixtures/obs-31-offer.sdp");
const VIEWER_OFFER: &str = include_str!("../../tests/fixtures/chromium-recvonly-offer.sdp");
