//! The media socket: batched receive (recvmmsg, GRO) and the local address each datagram was
//! sent to (IP_PKTINFO), both from quinn-udp, which owns the syscalls so we need no `unsafe`.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};

use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// A bound UDP socket with its receive buffers.
pub(crate) struct MediaSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
    bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
}

impl MediaSocket {
    /// Wraps an already bound socket. Must run inside a tokio runtime.
    pub(crate) fn new(std_socket: StdUdpSocket) -> io::Result<Self> {
        std_socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&std_socket))?;
        set_buffers(&state, &std_socket);
        let local = std_socket.local_addr()?;
        let socket = UdpSocket::from_std(std_socket)?;
        let buf_len = RECV_BUF_LEN * state.gro_segments().max(1);
        Ok(Self {
            socket,
            state,
            local,
            bufs: (0..BATCH_SIZE).map(|_| vec![0; buf_len]).collect(),
            metas: vec![RecvMeta::default(); BATCH_SIZE],
        })
    }

    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    /// Receives one batch without blocking and hands each datagram to `f(src, dst, bytes)`.
    /// Returns how many datagrams were delivered; `WouldBlock` when there were none.
    pub(crate) fn try_recv_batch(
        &mut self,
        mut f: impl FnMut(SocketAddr, SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        let Self {
            socket,
            state,
            local,
            bufs,
            metas,
        } = self;
        let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = socket.try_io(Interest::READABLE, || {
            state.recv(UdpSockRef::from(&*socket), &mut slices, metas)
        })?;
        let mut delivered = 0;
        for (meta, buf) in metas.iter().zip(slices.iter()).take(n) {
            let dst = match meta.dst_ip {
                Some(ip) => SocketAddr::new(ip, local.port()),
                None => *local,
            };
            // With GRO one buffer holds several datagrams of `stride` bytes each.
            for datagram in buf[..meta.len].chunks(meta.stride.max(1)) {
                f(meta.addr, dst, datagram);
                delivered += 1;
            }
        }
        Ok(delivered)
    }

    /// Sends one datagram, or with `segment_size` several equal-sized ones to the same
    /// destination in one syscall (UDP GSO), without blocking; `WouldBlock` means: wait for
    /// `writable`, retry.
    pub(crate) fn try_send(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        self.socket.try_io(Interest::WRITABLE, || {
            self.state
                .try_send(UdpSockRef::from(&self.socket), &transmit)
        })
    }

    /// How many datagrams one GSO send may carry here (1 where the kernel has no GSO).
    pub(crate) fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Large enough for any datagram a WebRTC peer sends (MTU-sized, with headroom for jumbo
/// loopback packets).
const RECV_BUF_LEN: usize = 2048;

/// Packs consecutive datagrams to one destination into GSO batches: every segment but the
/// last must have the same size, and the last may be shorter. A viewer's burst (a frame's
/// packets, released by one tick) then costs one syscall instead of one per packet.
pub(crate) struct Batch {
    buf: Vec<u8>,
    destination: Option<SocketAddr>,
    segment: usize,
    count: usize,
    /// A shorter segment was added: it must be the last.
    closed: bool,
}

impl Batch {
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::with_capacity(MAX_BATCH_BYTES),
            destination: None,
            segment: 0,
            count: 0,
            closed: false,
        }
    }

    /// Whether `contents` for `destination` can join the batch.
    pub(crate) fn fits(&self, destination: SocketAddr, len: usize, max_segments: usize) -> bool {
        self.destination == Some(destination)
            && !self.closed
            && len <= self.segment
            && self.count < max_segments
            && self.buf.len() + len <= MAX_BATCH_BYTES
    }

    pub(crate) fn push(&mut self, destination: SocketAddr, contents: &[u8]) {
        if self.destination.is_none() {
            self.destination = Some(destination);
            self.segment = contents.len();
        }
        self.closed |= contents.len() < self.segment;
        self.buf.extend_from_slice(contents);
        self.count += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// (destination, bytes, segment size if more than one datagram).
    pub(crate) fn parts(&self) -> Option<(SocketAddr, &[u8], Option<usize>)> {
        let d = self.destination?;
        Some((d, &self.buf, (self.count > 1).then_some(self.segment)))
    }

    /// The datagrams one by one, for a kernel that refused the batch.
    pub(crate) fn segments(&self) -> impl Iterator<Item = &[u8]> {
        self.buf.chunks(self.segment.max(1))
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.destination = None;
        self.count = 0;
        self.closed = false;
    }
}

/// The largest UDP payload the kernel accepts in one GSO send.
const MAX_BATCH_BYTES: usize = 65_000;

/// Socket buffers large enough for a keyframe burst: one IDR from the publisher is ~100
/// datagrams arriving at once, and the same burst goes out to every new viewer. The kernel
/// caps the request at `net.core.{r,w}mem_max`; a smaller buffer only drops sooner, so a
/// refusal is logged, not fatal.
fn set_buffers(state: &UdpSocketState, socket: &StdUdpSocket) {
    let sock = || UdpSockRef::from(socket);
    if let Err(e) = state.set_recv_buffer_size(sock(), SOCKET_BUFFER) {
        tracing::warn!("could not set the UDP receive buffer: {e}");
    }
    if let Err(e) = state.set_send_buffer_size(sock(), SOCKET_BUFFER) {
        tracing::warn!("could not set the UDP send buffer: {e}");
    }
    tracing::debug!(
        recv = state.recv_buffer_size(sock()).ok(),
        send = state.send_buffer_size(sock()).ok(),
        "UDP socket buffers"
    );
}

const SOCKET_BUFFER: usize = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_equal_segments_with_a_shorter_last_one() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut batch = Batch::new();
        batch.push(a, &[1; 100]);
        assert!(batch.fits(a, 100, 64));
        assert!(!batch.fits(b, 100, 64), "one destination per batch");
        assert!(!batch.fits(a, 101, 64), "no segment larger than the first");
        batch.push(a, &[2; 100]);
        batch.push(a, &[3; 40]);
        assert!(!batch.fits(a, 40, 64), "nothing after a shorter segment");
        let (dst, bytes, seg) = batch.parts().unwrap();
        assert_eq!((dst, bytes.len(), seg), (a, 240, Some(100)));
        assert_eq!(
            batch.segments().map(<[u8]>::len).collect::<Vec<_>>(),
            vec![100, 100, 40]
        );
        batch.clear();
        assert!(batch.is_empty());
    }
}
