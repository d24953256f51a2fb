//! Raw HTTP/1.1 over a TCP socket, for tests that send half a request, hold a connection
//! idle, or read what a refused connection gets (no HTTP client does those).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `head` (and nothing more) on a fresh connection whose reads give up after 30 s (a
/// generous deadline: what the tests assert is what arrives, not when).
pub fn raw(addr: SocketAddr, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Reads until the headers of one answer are in, or the connection ends.
pub fn read_head(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}
