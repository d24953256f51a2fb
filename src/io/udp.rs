//! The media socket: batched receive (recvmmsg, GRO) and the local address each datagram was
//! sent to (IP_PKTINFO), both from quinn-udp, which owns the syscalls so we need no `unsafe`.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};

use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
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
        let transmit = transmit(destination, contents, segment_size);
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

/// A worker's handle for sending on the shared media socket (a `try_clone` of it, so the
/// port stays one). Not registered with the reactor but while a send waits for room (see
/// `writable`): the receive thread reads, so the workers are not woken by every datagram
/// that arrives, nor by every sent buffer the kernel frees. UDP `sendmsg` from several
/// threads on one socket needs no lock of ours.
pub(crate) struct SendSocket {
    socket: StdUdpSocket,
    state: UdpSocketState,
}

impl SendSocket {
    /// Wraps a clone of the (already non-blocking) media socket. Must run inside a tokio
    /// runtime.
    pub(crate) fn new(std_socket: StdUdpSocket) -> io::Result<Self> {
        std_socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&std_socket))?;
        Ok(Self {
            socket: std_socket,
            state,
        })
    }
}

impl Outbound for SendSocket {
    fn try_send(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = transmit(destination, contents, segment_size);
        self.state
            .try_send(UdpSockRef::from(&self.socket), &transmit)
    }

    /// Registered with the reactor only while waiting: a registration stays on the socket's
    /// wait queue, and every sent buffer the kernel frees wakes each one (with several
    /// workers on one socket, that was a fifth of their CPU). A full send buffer is rare.
    async fn writable(&self) -> io::Result<()> {
        // Deprecated because the fd could be closed under the registration; the `AsyncFd`
        // owns its own handle of the socket here, so it cannot, and the safe call keeps
        // `forbid(unsafe_code)`.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(self.socket.try_clone()?, Interest::WRITABLE)?;
        let _ready = fd.writable().await?;
        Ok(())
    }

    fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }
}

impl Outbound for MediaSocket {
    fn try_send(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        MediaSocket::try_send(self, destination, contents, segment_size)
    }

    async fn writable(&self) -> io::Result<()> {
        MediaSocket::writable(self).await
    }

    fn max_gso_segments(&self) -> usize {
        MediaSocket::max_gso_segments(self)
    }
}

/// What the loop needs to send: the socket itself (one worker) or a worker's handle on it.
pub(crate) trait Outbound {
    /// Sends one datagram, or a GSO run with `segment_size`, without blocking.
    fn try_send(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()>;
    /// Waits until a send that failed with `WouldBlock` may succeed.
    async fn writable(&self) -> io::Result<()>;
    fn max_gso_segments(&self) -> usize;
}

/// Large enough for any datagram a WebRTC peer sends (MTU-sized, with headroom for jumbo
/// loopback packets).
const RECV_BUF_LEN: usize = 2048;

/// The largest UDP payload the kernel accepts in one GSO send.
pub(crate) const MAX_GSO_BYTES: usize = 65_000;

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

/// One datagram, or with `segment_size` a GSO run of equal-sized ones, to `destination`.
fn transmit(
    destination: SocketAddr,
    contents: &[u8],
    segment_size: Option<usize>,
) -> quinn_udp::Transmit<'_> {
    quinn_udp::Transmit {
        destination,
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    }
}
