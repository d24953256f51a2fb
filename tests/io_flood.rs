//! The media loop under a UDP flood: commands from the HTTP layer still get their turn while
//! the socket stays readable. Drives `io::drive` on a thread of its own (as the server does)
//! on a loopback socket; the flood is bounded in count and aimed at that socket only.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use quinn_udp::{Transmit, UdpSockRef, UdpSocketState};
use tokio::sync::{mpsc, oneshot};
use whipcast::engine::{Command, Engine, Outcome};
use whipcast::handle::EngineHandle;
use whipcast::io::{self, MediaSockets};

/// Junk datagrams per send: with UDP GSO one syscall carries 16, and with GRO the media
/// socket takes them as one buffer, so a few senders keep it readable at every turn of the
/// loop (plain one-datagram sends cannot outpace it).
const SEGMENTS: usize = 16;
const SEGMENT_BYTES: usize = 20;
const SENDERS: usize = 4;
/// Sends per sender: the flood's bound, far more than the test needs before it stops it.
const SENDS: usize = 500_000;

/// Floods `target` with junk until `stop` or [`SENDS`]; counts itself in `finished` at the end.
fn flood(target: SocketAddr, stop: Arc<AtomicBool>, finished: Arc<AtomicUsize>) {
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let state = UdpSocketState::new(UdpSockRef::from(&sender)).unwrap();
    let junk = [0x80u8; SEGMENTS * SEGMENT_BYTES];
    let transmit = Transmit {
        destination: target,
        ecn: None,
        contents: &junk,
        segment_size: Some(SEGMENT_BYTES),
        src_ip: None,
    };
    for _ in 0..SENDS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // A full receive buffer drops on loopback; nothing to handle here.
        let _ = state.try_send(UdpSockRef::from(&sender), &transmit);
    }
    finished.fetch_add(1, Ordering::SeqCst);
}

async fn dropped(engine: &EngineHandle) -> u64 {
    match engine.call(Command::Stats).await.unwrap() {
        Outcome::Stats(s) => s.datagrams_dropped,
        _ => unreachable!("Stats is answered with Stats"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_are_answered_while_a_udp_flood_lasts() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = socket.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(8);
    let (events, _events_rx) = mpsc::unbounded_channel();
    let (stop_media, stop_media_rx) = oneshot::channel();
    let engine = Engine::new(common::sim::engine_config());
    let sockets = MediaSockets {
        udp: socket,
        tcp: None,
    };
    let media = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(io::drive(engine, sockets, rx, events, stop_media_rx))
    });
    let engine = EngineHandle::new(tx);
    assert_eq!(
        dropped(&engine).await,
        0,
        "nothing received before the flood"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (stop, finished) = (stop.clone(), finished.clone());
            std::thread::spawn(move || flood(target, stop, finished))
        })
        .collect();
    // Wait (bounded) until the flood is seen, so the commands below meet it.
    let mut seen = 0;
    for _ in 0..1_000 {
        seen = dropped(&engine).await;
        if seen > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(seen > 0, "the flood reaches the media loop");
    // Each command must be answered while every sender is still sending: without a share
    // of each turn, a command waits until the socket is empty, which is when the flood ends.
    let mut during_flood = 0;
    for _ in 0..20 {
        dropped(&engine).await;
        if finished.load(Ordering::SeqCst) == 0 {
            during_flood += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(during_flood, 20, "commands answered while the flood lasted");
    stop_media.send(()).unwrap();
    media.join().unwrap().unwrap();
}
