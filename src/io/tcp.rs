//! ICE-TCP (RFC 6544) for viewers whose network blocks UDP: the listener behind our passive
//! TCP candidates, and one task per connection that unframes RFC 4571 (a 2-byte big-endian
//! length before each STUN, DTLS or SRTP packet). The media loop sees frames in and hands
//! frames out; it never touches a TCP socket, so a slow connection cannot stall it.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use crate::client_key::ClientKey;

/// One unframed packet from a connection.
pub(crate) struct Frame {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub data: Vec<u8>,
}

enum ConnEvent {
    Opened {
        remote: SocketAddr,
        id: u64,
        tx: mpsc::Sender<Vec<u8>>,
    },
    Frame(Frame),
    Closed {
        remote: SocketAddr,
        id: u64,
    },
}

/// The media loop's side of ICE-TCP: frames from every connection, and the way back to each.
pub(crate) struct IceTcp {
    events: mpsc::Receiver<ConnEvent>,
    conns: HashMap<SocketAddr, (u64, mpsc::Sender<Vec<u8>>)>,
}

impl IceTcp {
    /// Starts accepting on an already bound listener. Must run inside a tokio runtime.
    pub(crate) fn start(listener: StdTcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let (tx, events) = mpsc::channel(FRAMES_QUEUE);
        tokio::spawn(accept(listener, tx));
        Ok(Self {
            events,
            conns: HashMap::new(),
        })
    }

    /// The next frame from any connection; `None` once the listener and every connection
    /// are gone. Cancel-safe: bookkeeping events are applied as they are taken.
    pub(crate) async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let event = self.events.recv().await?;
            if let Some(frame) = self.apply(event) {
                return Some(frame);
            }
        }
    }

    /// A frame that is already waiting, without waiting.
    pub(crate) fn try_next_frame(&mut self) -> Option<Frame> {
        loop {
            let event = self.events.try_recv().ok()?;
            if let Some(frame) = self.apply(event) {
                return Some(frame);
            }
        }
    }

    fn apply(&mut self, event: ConnEvent) -> Option<Frame> {
        match event {
            ConnEvent::Opened { remote, id, tx } => {
                self.conns.insert(remote, (id, tx));
                None
            }
            ConnEvent::Closed { remote, id } => {
                if self.conns.get(&remote).is_some_and(|(open, _)| *open == id) {
                    self.conns.remove(&remote);
                }
                None
            }
            ConnEvent::Frame(frame) => Some(frame),
        }
    }

    /// Queues one packet to the connection from `to`. A connection that cannot keep up
    /// loses packets, as UDP would; NACK and RTX repair them.
    pub(crate) fn send(&self, to: SocketAddr, packet: &[u8]) {
        let Some((_, tx)) = self.conns.get(&to) else {
            debug!(%to, "ICE-TCP packet for a closed connection");
            return;
        };
        if packet.len() > usize::from(u16::MAX) {
            return;
        }
        let _ = tx.try_send(packet.to_vec());
    }
}

async fn accept(listener: TcpListener, events: mpsc::Sender<ConnEvent>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_client: Arc<Mutex<HashMap<ClientKey, usize>>> = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: wait rather than spin.
            Err(e) => {
                warn!(error = %e, "ICE-TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%remote, "ICE-TCP connection refused: too many open");
            continue;
        };
        let client = ClientKey::of(remote.ip());
        {
            let mut counts = per_client.lock().expect("ICE-TCP count lock");
            let n = counts.entry(client).or_default();
            if *n >= MAX_CONNECTIONS_PER_CLIENT {
                debug!(%remote, "ICE-TCP connection refused: too many from one address");
                continue;
            }
            *n += 1;
        }
        next_id += 1;
        let id = next_id;
        let events = events.clone();
        let per_client = per_client.clone();
        tokio::spawn(async move {
            connection(stream, remote, id, events).await;
            drop(slot);
            let mut counts = per_client.lock().expect("ICE-TCP count lock");
            if let Some(n) = counts.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&client);
                }
            }
        });
    }
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    id: u64,
    events: mpsc::Sender<ConnEvent>,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    if events
        .send(ConnEvent::Opened { remote, id, tx })
        .await
        .is_err()
    {
        return;
    }
    let answered = Arc::new(Answered::new());
    let writing = tokio::spawn(write_frames(writer, rx, answered.clone()));
    let end = read_frames(reader, remote, local, &events, &answered).await;
    debug!(%remote, reason = end, "ICE-TCP connection closed");
    writing.abort();
    let _ = events.send(ConnEvent::Closed { remote, id }).await;
}

/// Reads frames until the connection ends; returns why. What keeps a connection open is the
/// server answering it (a STUN check passed its MESSAGE-INTEGRITY, or media flows), not the
/// peer sending: junk frames get no answer, so they do not keep a connection alive.
async fn read_frames(
    reader: OwnedReadHalf,
    remote: SocketAddr,
    local: SocketAddr,
    events: &mpsc::Sender<ConnEvent>,
    answered: &Answered,
) -> &'static str {
    let mut reader = BufReader::new(reader);
    loop {
        let mut len = [0u8; 2];
        if let Err(why) = read_answered(&mut reader, &mut len, answered).await {
            return why;
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 || len > MAX_FRAME {
            return "bad frame length";
        }
        let mut data = vec![0; len];
        if let Err(why) = read_answered(&mut reader, &mut data, answered).await {
            return why;
        }
        let frame = Frame {
            remote,
            local,
            data,
        };
        if events.send(ConnEvent::Frame(frame)).await.is_err() {
            return "server stopping";
        }
    }
}

/// Fills `buf`, giving up when the server has not answered the connection recently.
async fn read_answered(
    reader: &mut BufReader<OwnedReadHalf>,
    buf: &mut [u8],
    answered: &Answered,
) -> Result<(), &'static str> {
    if !answered.recently() {
        return Err("not answered");
    }
    let read = reader.read_exact(buf);
    tokio::pin!(read);
    loop {
        match tokio::time::timeout(CHECK_EVERY, &mut read).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(_)) => return Err("closed by the peer"),
            Err(_) if !answered.recently() => return Err("not answered"),
            Err(_) => {}
        }
    }
}

/// Writes queued packets with their length prefix, flushing once the queue is empty.
async fn write_frames(
    writer: OwnedWriteHalf,
    mut packets: mpsc::Receiver<Vec<u8>>,
    answered: Arc<Answered>,
) {
    let mut writer = BufWriter::new(writer);
    while let Some(packet) = packets.recv().await {
        let mut next = Some(packet);
        while let Some(p) = next {
            let len = (p.len() as u16).to_be_bytes();
            if writer.write_all(&len).await.is_err() || writer.write_all(&p).await.is_err() {
                return;
            }
            next = packets.try_recv().ok();
        }
        if writer.flush().await.is_err() {
            return;
        }
        answered.now();
    }
}

/// When the server last sent on a connection, as time since the connection opened.
struct Answered {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Answered {
    fn new() -> Self {
        Self {
            opened: crate::clock::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn now(&self) {
        let ms = crate::clock::now()
            .saturating_duration_since(self.opened)
            .as_millis() as u64;
        self.last_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Answered within [`UNANSWERED`] of opening, and within [`IDLE`] since.
    fn recently(&self) -> bool {
        let elapsed = crate::clock::now().saturating_duration_since(self.opened);
        match self.last_ms.load(Ordering::Relaxed) {
            0 => elapsed < UNANSWERED,
            ms => elapsed.saturating_sub(Duration::from_millis(ms)) < IDLE,
        }
    }
}

/// STUN, DTLS and SRTP packets are MTU-sized; RFC 4571 allows 64 KiB, we need far less.
const MAX_FRAME: usize = 4096;
/// A connection the server has sent nothing on for this long is dead: a viewer gets media,
/// and answers to the consent checks its browser sends every few seconds.
const IDLE: Duration = Duration::from_secs(30);
/// How often a waiting read checks that the connection is still answered.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Open ICE-TCP connections at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 4096;
/// Open ICE-TCP connections from one client (IPv4 address, IPv6 /64): a viewer needs one per
/// session; a household watching on a few devices, with room for reconnects.
const MAX_CONNECTIONS_PER_CLIENT: usize = 16;
/// How long a new connection may go without the server answering it: a browser's first
/// STUN check is answered at once, so this only spares slow networks.
const UNANSWERED: Duration = Duration::from_secs(10);
/// Packets queued per connection: a keyframe burst (~100) with room to spare.
const SEND_QUEUE: usize = 512;
/// Frames from all connections waiting for the media loop.
const FRAMES_QUEUE: usize = 1024;
