//! Starting the media threads: one loop that owns the socket (one worker), or a receive
//! thread and N workers (`--workers N`).
//!
//! With several workers, one UDP port stays the only port: the receive thread reads the
//! socket in batches (recvmmsg, GRO), routes each datagram by STUN ufrag or source address
//! ([`Routes`]) and hands it to its worker through that worker's bounded queue, one FIFO per
//! worker, so no peer's datagrams are reordered. `SO_REUSEPORT` sockets were rejected: the
//! kernel hashes the 4-tuple, so without a BPF steering program a peer's datagrams land on
//! whichever socket the hash picks, not on the worker that owns its session. Each worker
//! sends on its own clone of the socket ([`SendSocket`]) and runs its own sans-IO `Engine`;
//! what a worker owns is decided by the HTTP handle (src/handle/). Workers whose engines share
//! a broadcast pass its packets and events to each other through span.rs's queues. With one
//! core per worker, each worker is pinned to its own.

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use str0m::net::Protocol;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::inbox::{self, Inlet, Outlet, Pool};
use super::route::Routes;
use super::span::{self, SpanInbox, SpanOutlet};
use super::tcp::IceTcp;
use super::udp::{MediaSocket, SendSocket};
use super::{IO_LOOP_BOUND, MediaSockets, end_turn, flush, next_tcp_frame, now};
use crate::engine::{Engine, EngineEvent};
use crate::handle::{EngineHandle, ReceiveCounters, Request, RouteUpdate};

/// The running media threads.
pub struct Media {
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Media {
    /// Tells every thread to stop (after its last flush).
    pub fn stop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }

    /// Stops and waits for every thread.
    pub fn join(mut self) {
        self.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Starts one media thread per engine (plus the receive thread when there are several) and
/// returns the handle the HTTP layer calls them through.
pub fn start(
    engines: Vec<Engine>,
    sockets: MediaSockets,
    events: mpsc::UnboundedSender<EngineEvent>,
    max_live_broadcasts: usize,
) -> io::Result<(Media, EngineHandle)> {
    let n = engines.len();
    let mut media = Media {
        stops: Vec::new(),
        threads: Vec::new(),
    };
    let counters = ReceiveCounters::new(n);
    let mut commands = Vec::new();
    if n == 1 {
        let engine = engines.into_iter().next().expect("one engine");
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        commands.push(tx);
        let (stop, stopped) = oneshot::channel();
        media.stops.push(stop);
        // The media loop gets a thread of its own so HTTP work (building an `Rtc` costs about
        // 1 ms) never delays packets.
        media
            .threads
            .push(spawn("whipcast-media".into(), async move {
                super::drive(engine, sockets, rx, events, stopped).await
            })?);
        let handle =
            EngineHandle::with_workers(commands, None, counters, Vec::new(), max_live_broadcasts);
        return Ok((media, handle));
    }
    let (outlets, inlets, pool) = inbox::queues(n, counters.clone());
    let (routes_tx, routes_rx) = mpsc::unbounded_channel();
    let (tcp_tx, tcp_rx) = mpsc::channel(TCP_OUT_QUEUE);
    let tcp_out = sockets.tcp.is_some().then_some(tcp_tx);
    let (span_outlets, span_inboxes) = span::queues(n);
    let peers: Arc<[SpanOutlet]> = span_outlets.clone().into();
    let workers = engines.into_iter().zip(inlets).zip(span_inboxes);
    let cores = pinned_cores(n);
    for (i, ((engine, inlet), span)) in workers.enumerate() {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        commands.push(tx);
        let (stop, stopped) = oneshot::channel();
        media.stops.push(stop);
        let worker = Worker {
            engine,
            inlet,
            udp: sockets.udp.try_clone()?,
            tcp_out: tcp_out.clone(),
            commands: rx,
            events: events.clone(),
            span,
            peers: peers.clone(),
        };
        let core = cores.get(i).copied();
        media
            .threads
            .push(spawn(format!("whipcast-worker-{i}"), async move {
                if let Some(core) = core
                    && !core_affinity::set_for_current(core)
                {
                    debug!(worker = i, "could not pin the worker to its core");
                }
                worker.run(stopped).await
            })?);
    }
    let (stop, stopped) = oneshot::channel();
    media.stops.push(stop);
    let receiver = Receiver {
        counters: counters.clone(),
        outlets,
        pool,
        routes: Routes::default(),
        updates: routes_rx,
        tcp_out: tcp_rx,
    };
    media.threads.push(spawn(
        "whipcast-receive".into(),
        receiver.run(sockets, stopped),
    )?);
    let handle = EngineHandle::with_workers(
        commands,
        Some(routes_tx),
        counters,
        span_outlets.iter().map(SpanOutlet::drops).collect(),
        max_live_broadcasts,
    );
    Ok((media, handle))
}

/// The core each of `n` workers is pinned to: one each, from the cores the process may run
/// on (its affinity mask: `taskset` and cgroups are respected). None when there are fewer
/// cores than workers: threads that must share cores are left to the scheduler.
fn pinned_cores(n: usize) -> Vec<core_affinity::CoreId> {
    match core_affinity::get_core_ids() {
        Some(cores) if cores.len() >= n => cores.into_iter().take(n).collect(),
        _ => Vec::new(),
    }
}

/// A thread with a current-thread tokio runtime of its own, running `task`.
fn spawn(
    name: String,
    task: impl Future<Output = io::Result<()>> + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for a media thread");
        if let Err(e) = rt.block_on(task) {
            error!(error = %e, "media loop failed");
        }
    })
}

/// One worker: its engine, fed from its queue, sending on its own handle of the socket.
struct Worker {
    engine: Engine,
    inlet: Inlet,
    udp: StdUdpSocket,
    tcp_out: Option<mpsc::Sender<(SocketAddr, Vec<u8>)>>,
    commands: mpsc::Receiver<Request>,
    events: mpsc::UnboundedSender<EngineEvent>,
    /// Messages from the other engines, and the way to theirs (in worker order).
    span: SpanInbox,
    peers: Arc<[SpanOutlet]>,
}

impl Worker {
    async fn run(self, mut shutdown: oneshot::Receiver<()>) -> io::Result<()> {
        let Self {
            mut engine,
            mut inlet,
            udp,
            tcp_out,
            mut commands,
            events,
            mut span,
            peers,
        } = self;
        let socket = SendSocket::new(udp)?;
        // ICE-TCP connections belong to the receive thread; their packets go back through it.
        // A full queue loses the packet, as a slow TCP connection would.
        let mut tcp = |to: SocketAddr, packet: &[u8]| {
            if let Some(out) = &tcp_out {
                let _ = out.try_send((to, packet.to_vec()));
            }
        };
        loop {
            // Other workers' viewers first: their engines start while this one sends.
            span::send_all(&mut engine, &peers);
            flush(&mut engine, &socket, &mut tcp, &events).await;
            let sleep = super::sleep_until(engine.poll_timeout());
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                batch = inlet.rx.recv() => {
                    let Some(batch) = batch else { break };
                    feed(&mut engine, &inlet, batch);
                    // What else is already queued, within the turn's bound.
                    for _ in 1..BATCHES_PER_TURN {
                        let Ok(batch) = inlet.rx.try_recv() else { break };
                        feed(&mut engine, &inlet, batch);
                    }
                }
                message = span.recv() => {
                    let Some(message) = message else { break };
                    engine.handle_span(crate::clock::now(), message);
                    span.drain(&mut engine);
                }
                request = commands.recv() => {
                    let Some(request) = request else { break };
                    run_spanning(&mut engine, &mut span, &peers, request);
                }
                _ = sleep => {}
            }
            end_turn(&mut engine, &mut commands, |engine, request| {
                run_spanning(engine, &mut span, &peers, request)
            });
        }
        span::send_all(&mut engine, &peers);
        flush(&mut engine, &socket, &mut tcp, &events).await;
        Ok(())
    }
}

/// Runs a command in step with the other engines: what they sent before it was asked is
/// taken in first, and what it makes this engine send them (a mirror's start) is on its way
/// before the answer, so any command that follows the answer finds it there.
fn run_spanning(engine: &mut Engine, span: &mut SpanInbox, peers: &[SpanOutlet], request: Request) {
    span.drain(engine);
    let Request { command, reply } = request;
    let outcome = engine.handle_command(crate::clock::now(), command);
    span::send_all(engine, peers);
    let _ = reply.send(outcome); // the HTTP request may have gone away
}

fn feed(engine: &mut Engine, inlet: &Inlet, batch: inbox::Batch) {
    let now = now();
    for (proto, src, dst, data) in batch.iter() {
        match proto {
            Protocol::Udp => engine.handle_datagram(now, src, dst, data),
            _ => engine.handle_tcp_frame(now, src, dst, data),
        }
    }
    inlet.recycle(batch);
}

/// The receive thread: the socket and the ICE-TCP listener in, each worker's queue out.
struct Receiver {
    counters: Arc<ReceiveCounters>,
    outlets: Vec<Outlet>,
    pool: Pool,
    routes: Routes,
    updates: mpsc::UnboundedReceiver<RouteUpdate>,
    tcp_out: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

impl Receiver {
    async fn run(
        mut self,
        sockets: MediaSockets,
        mut shutdown: oneshot::Receiver<()>,
    ) -> io::Result<()> {
        let mut socket = MediaSocket::new(sockets.udp)?;
        let mut tcp = sockets.tcp.map(IceTcp::start).transpose()?;
        debug!(addr = %socket.local_addr(), "receive thread running");
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                update = self.updates.recv() => match update {
                    Some(update) => self.routes.apply(update),
                    None => break, // the handle is gone: the server is stopping
                },
                ready = socket.readable() => {
                    ready?;
                    self.receive(&mut socket);
                }
                frame = next_tcp_frame(&mut tcp) => match frame {
                    Some(frame) => self.receive_tcp(tcp.as_mut(), frame),
                    None => {
                        warn!("ICE-TCP stopped; viewers can still play over UDP");
                        tcp = None;
                    }
                },
                Some((to, packet)) = self.tcp_out.recv() => {
                    if let Some(tcp) = &tcp {
                        tcp.send(to, &packet);
                    }
                }
            }
        }
        Ok(())
    }

    /// Route changes sent before the datagrams they concern: a session's ufrag is sent
    /// before its peer can have it, so applying them first never misroutes its first check.
    fn catch_up(&mut self) {
        while let Ok(update) = self.updates.try_recv() {
            self.routes.apply(update);
        }
    }

    /// Reads up to [`IO_LOOP_BOUND`] datagrams and hands them on, one batch per worker.
    fn receive(&mut self, socket: &mut MediaSocket) {
        self.catch_up();
        let Self {
            outlets,
            routes,
            counters,
            ..
        } = self;
        let mut total = 0;
        while total < IO_LOOP_BOUND {
            let got = socket.try_recv_batch(|src, dst, data| {
                match routes.route((Protocol::Udp, src), data) {
                    Some(w) => outlets[w].push(Protocol::Udp, src, dst, data),
                    None => {
                        counters.unroutable.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            match got {
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(error = %e, "udp receive error");
                    break;
                }
            }
        }
        self.send_all();
    }

    fn receive_tcp(&mut self, tcp: Option<&mut IceTcp>, first: super::tcp::Frame) {
        self.catch_up();
        self.route_frame(&first);
        if let Some(tcp) = tcp {
            for _ in 1..IO_LOOP_BOUND {
                let Some(f) = tcp.try_next_frame() else { break };
                self.route_frame(&f);
            }
        }
        self.send_all();
    }

    fn route_frame(&mut self, f: &super::tcp::Frame) {
        match self.routes.route((Protocol::Tcp, f.remote), &f.data) {
            Some(w) => self.outlets[w].push(Protocol::Tcp, f.remote, f.local, &f.data),
            None => {
                self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn send_all(&mut self) {
        for outlet in &mut self.outlets {
            outlet.send(&self.pool);
        }
    }
}

/// HTTP requests waiting for one worker; beyond this, requests wait (back-pressure).
const COMMAND_QUEUE: usize = 1024;
/// Queued batches a worker takes per loop turn before commands and timers get their turn:
/// like the single loop's [`IO_LOOP_BOUND`] datagrams, a few batches of a busy socket.
const BATCHES_PER_TURN: usize = 4;
/// ICE-TCP packets from the workers waiting for the receive thread.
const TCP_OUT_QUEUE: usize = 4096;
