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

    /// Sends one datagram without blocking; `WouldBlock` means: wait for `writable`, retry.
    pub(crate) fn try_send(&self, destination: SocketAddr, contents: &[u8]) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: None,
            src_ip: None,
        };
        self.socket.try_io(Interest::WRITABLE, || {
            self.state
                .try_send(UdpSockRef::from(&self.socket), &transmit)
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Large enough for any datagram a WebRTC peer sends (MTU-sized, with headroom for jumbo
/// loopback packets).
const RECV_BUF_LEN: usize = 2048;
