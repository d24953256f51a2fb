//! How a test client's packets travel: a UDP socket, or one ICE-TCP connection with RFC 4571
//! framing (a 2-byte big-endian length before each packet).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use str0m::net::{Protocol, Transmit};

pub enum Link {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        server: SocketAddr,
        /// Bytes read but not yet a whole frame.
        pending: Vec<u8>,
    },
}

/// One packet that arrived: (protocol, source, local address, bytes).
pub type Arrival = (Protocol, SocketAddr, SocketAddr, Vec<u8>);

impl Link {
    pub fn udp(socket: UdpSocket) -> Self {
        Self::Udp(socket)
    }

    /// Connects to the server's passive ICE-TCP candidate.
    pub fn tcp(server: SocketAddr) -> Self {
        let stream = TcpStream::connect(server).expect("ICE-TCP port reachable");
        stream.set_nodelay(true).unwrap();
        Self::Tcp {
            stream,
            server,
            pending: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Udp(s) => s.local_addr().unwrap(),
            Self::Tcp { stream, .. } => stream.local_addr().unwrap(),
        }
    }

    pub fn send(&mut self, t: &Transmit) {
        match self {
            Self::Udp(s) => {
                let _ = s.send_to(&t.contents, t.destination);
            }
            Self::Tcp { stream, .. } => {
                let mut framed = (t.contents.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&t.contents);
                let _ = stream.write_all(&framed);
            }
        }
    }

    /// The next packet, waiting at most `wait`.
    pub fn recv(&mut self, wait: Duration) -> Option<Arrival> {
        let local = self.local_addr();
        match self {
            Self::Udp(s) => {
                s.set_read_timeout(Some(wait)).unwrap();
                let mut buf = vec![0u8; 2000];
                let (len, src) = s.recv_from(&mut buf).ok()?;
                buf.truncate(len);
                Some((Protocol::Udp, src, local, buf))
            }
            Self::Tcp {
                stream,
                server,
                pending,
            } => loop {
                if let Some(frame) = take_frame(pending) {
                    return Some((Protocol::Tcp, *server, local, frame));
                }
                stream.set_read_timeout(Some(wait)).unwrap();
                let mut chunk = [0u8; 8192];
                match stream.read(&mut chunk) {
                    Ok(0) => return None,
                    Ok(n) => pending.extend_from_slice(&chunk[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        return None;
                    }
                    Err(_) => return None,
                }
            },
        }
    }
}

fn take_frame(pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let len = usize::from(u16::from_be_bytes([*pending.first()?, *pending.get(1)?]));
    if pending.len() < 2 + len {
        return None;
    }
    let frame = pending[2..2 + len].to_vec();
    pending.drain(..2 + len);
    Some(frame)
}
