//! The tokio driver: the only code that touches the media socket (it reads the clock through
//! `crate::clock`).
//!
//! One task owns the [`Engine`] and loops: receive a bounded batch of datagrams and feed them,
//! run commands from the HTTP layer, fire the one earliest deadline, then drain transmits
//! into the socket and events to the HTTP layer.
//!
//! With `--workers N` (workers.rs) a receive thread owns the socket's receive side and N
//! such loops each own an `Engine`, fed from a queue instead of the socket (inbox.rs, routed
//! by route.rs), sending on their own handle of the socket; the HTTP layer reaches them
//! through one [`EngineHandle`](crate::handle::EngineHandle) (src/handle/).

mod inbox;
mod route;
mod span;
mod tcp;
mod udp;
mod workers;

pub use self::workers::{Media, start};

use std::io;
use std::net::{TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::time::Instant;

use str0m::net::Protocol;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use self::tcp::IceTcp;
use self::udp::{MAX_GSO_BYTES, MediaSocket, Outbound};
use crate::clock::now;
use crate::engine::{Engine, EngineEvent, TransmitRun};
use crate::handle::Request;

/// The media sockets: the UDP socket, and the ICE-TCP listener if it is on.
pub struct MediaSockets {
    pub udp: StdUdpSocket,
    pub tcp: Option<StdTcpListener>,
}

/// Runs the engine on its sockets until `shutdown` fires or every handle is dropped.
pub async fn drive(
    mut engine: Engine,
    sockets: MediaSockets,
    mut commands: mpsc::Receiver<Request>,
    events: mpsc::UnboundedSender<EngineEvent>,
    mut shutdown: oneshot::Receiver<()>,
) -> io::Result<()> {
    let mut socket = MediaSocket::new(sockets.udp)?;
    let mut tcp = sockets.tcp.map(IceTcp::start).transpose()?;
    debug!(addr = %socket.local_addr(), "media loop running");
    loop {
        flush(&mut engine, &socket, &mut tcp_sender(tcp.as_ref()), &events).await;
        let sleep = sleep_until(engine.poll_timeout());
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            ready = socket.readable() => {
                ready?;
                receive(&mut engine, &mut socket);
            }
            frame = next_tcp_frame(&mut tcp) => match frame {
                Some(frame) => receive_tcp(&mut engine, tcp.as_mut(), frame),
                None => {
                    warn!("ICE-TCP stopped; viewers can still play over UDP");
                    tcp = None;
                }
            },
            request = commands.recv() => {
                let Some(request) = request else { break };
                run_command(&mut engine, request);
            }
            _ = sleep => {}
        }
        end_turn(&mut engine, &mut commands, run_command);
    }
    flush(&mut engine, &socket, &mut tcp_sender(tcp.as_ref()), &events).await;
    Ok(())
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn run_command(engine: &mut Engine, Request { command, reply }: Request) {
    let outcome = engine.handle_command(now(), command);
    let _ = reply.send(outcome); // the HTTP request may have gone away
}

/// The end of every loop turn, whatever woke it. `run` runs each command (a worker's
/// also passes messages between engines: workers.rs).
fn end_turn(
    engine: &mut Engine,
    commands: &mut mpsc::Receiver<Request>,
    mut run: impl FnMut(&mut Engine, Request),
) {
    // A busy socket (a flood) keeps winning the biased select: commands from HTTP get a
    // share of every turn anyway, so WHIP, WHEP and the API keep answering.
    for _ in 0..COMMANDS_PER_TURN {
        let Ok(request) = commands.try_recv() else {
            break;
        };
        run(engine, request);
    }
    // Check the clock ourselves rather than trusting which branch woke us: a busy socket
    // must not starve timers.
    let now = now();
    if engine.poll_timeout().is_some_and(|t| t <= now) {
        engine.handle_timeout(now);
    }
}

/// Where ICE-TCP transmits go when the loop owns the listener.
fn tcp_sender(tcp: Option<&IceTcp>) -> impl FnMut(std::net::SocketAddr, &[u8]) + '_ {
    move |to, packet| {
        if let Some(tcp) = tcp {
            tcp.send(to, packet);
        }
    }
}

pub(crate) async fn next_tcp_frame(tcp: &mut Option<IceTcp>) -> Option<tcp::Frame> {
    match tcp {
        Some(tcp) => tcp.next_frame().await,
        None => std::future::pending().await,
    }
}

/// Feeds `first` and the frames already waiting behind it, up to [`IO_LOOP_BOUND`].
fn receive_tcp(engine: &mut Engine, tcp: Option<&mut IceTcp>, first: tcp::Frame) {
    let now = now();
    engine.handle_tcp_frame(now, first.remote, first.local, &first.data);
    let Some(tcp) = tcp else { return };
    for _ in 1..IO_LOOP_BOUND {
        let Some(f) = tcp.try_next_frame() else { break };
        engine.handle_tcp_frame(now, f.remote, f.local, &f.data);
    }
}

/// Receives up to [`IO_LOOP_BOUND`] datagrams, so one flood cannot hold the loop.
fn receive(engine: &mut Engine, socket: &mut MediaSocket) {
    let mut total = 0;
    while total < IO_LOOP_BOUND {
        let now = now();
        match socket.try_recv_batch(|src, dst, data| engine.handle_datagram(now, src, dst, data)) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // ICMP errors for one peer (ECONNREFUSED and the like) surface on the next call;
            // they concern that peer only, whose consent timeout handles it.
            Err(e) => {
                debug!(error = %e, "udp receive error");
                break;
            }
        }
    }
}

/// Sends every pending transmit (UDP in GSO runs per destination, straight from the
/// engine's buffer; ICE-TCP through `tcp`) and hands events on.
async fn flush(
    engine: &mut Engine,
    socket: &impl Outbound,
    tcp: &mut impl FnMut(std::net::SocketAddr, &[u8]),
    events: &mpsc::UnboundedSender<EngineEvent>,
) {
    let max_segments = socket.max_gso_segments();
    while let Some(run) = engine.poll_transmit_run(max_segments, MAX_GSO_BYTES) {
        if run.proto != Protocol::Udp {
            tcp(run.destination, run.contents);
            continue;
        }
        send(socket, run).await;
    }
    while let Some(e) = engine.poll_event() {
        let _ = events.send(e); // nobody listening is fine
    }
}

/// Sends a run, waiting out back-pressure rather than dropping it.
async fn send(socket: &impl Outbound, run: TransmitRun<'_>) {
    let segment = (run.segments > 1).then_some(run.segment_size);
    loop {
        match socket.try_send(run.destination, run.contents, segment) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    return;
                }
            }
            Err(e) if segment.is_some() => {
                // Some drivers refuse GSO (EIO/EINVAL): send the datagrams one by one.
                debug!(error = %e, "gso send refused; sending one by one");
                for d in run.contents.chunks(run.segment_size) {
                    let _ = socket.try_send(run.destination, d, None);
                }
                return;
            }
            Err(e) => {
                warn!(error = %e, "udp send failed");
                return;
            }
        }
    }
}

/// Datagrams per loop turn before commands and timers get their turn (quinn uses 160).
const IO_LOOP_BOUND: usize = 256;
/// Commands run per loop turn besides the one the select may pick: against 256 datagrams,
/// each command (about 1 ms at most, building nothing) is a fair share.
const COMMANDS_PER_TURN: usize = 8;
