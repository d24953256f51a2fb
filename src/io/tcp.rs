//! ICE-TCP (RFC 6544) for viewers whose network blocks UDP: the listener behind our passive
//! TCP candidates, and one task per connection that unframes RFC 4571 (a 2-byte big-endian
//! length before each STUN, DTLS or SRTP packet). The media loop sees frames in and hands
//! frames out; it never touches a TCP socket, so a slow connection cannot stall it.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

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
        next_id += 1;
        let id = next_id;
        let events = events.clone();
        tokio::spawn(async move {
            connection(stream, remote, id, events).await;
            drop(slot);
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
    let writing = tokio::spawn(write_frames(writer, rx));
    let end = read_frames(reader, remote, local, &events).await;
    debug!(%remote, reason = end, "ICE-TCP connection closed");
    writing.abort();
    let _ = events.send(ConnEvent::Closed { remote, id }).await;
}

/// Reads frames until the connection ends; returns why.
async fn read_frames(
    reader: OwnedReadHalf,
    remote: SocketAddr,
    local: SocketAddr,
    events: &mpsc::Sender<ConnEvent>,
) -> &'static str {
    let mut reader = BufReader::new(reader);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(IDLE, reader.read_exact(&mut len)).await {
            Err(_) => return "idle",
            Ok(Err(_)) => return "closed by the peer",
            Ok(Ok(_)) => {}
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 || len > MAX_FRAME {
            return "bad frame length";
        }
        let mut data = vec![0; len];
        match tokio::time::timeout(IDLE, reader.read_exact(&mut data)).await {
            Err(_) => return "idle",
            Ok(Err(_)) => return "closed by the peer",
            Ok(Ok(_)) => {}
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

/// Writes queued packets with their length prefix, flushing once the queue is empty.
async fn write_frames(writer: OwnedWriteHalf, mut packets: mpsc::Receiver<Vec<u8>>) {
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
    }
}

/// STUN, DTLS and SRTP packets are MTU-sized; RFC 4571 allows 64 KiB, we need far less.
const MAX_FRAME: usize = 4096;
/// A viewer's browser sends a consent check every few seconds; a silent connection is dead.
const IDLE: Duration = Duration::from_secs(30);
/// Open ICE-TCP connections at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 4096;
/// Packets queued per connection: a keyframe burst (~100) with room to spare.
const SEND_QUEUE: usize = 512;
/// Frames from all connections waiting for the media loop.
const FRAMES_QUEUE: usize = 1024;
