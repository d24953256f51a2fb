//! The datagrams waiting to leave: one byte arena and a queue of (where to, which bytes).
//!
//! Forwarded media is sealed straight into the arena, and str0m's own output (STUN, DTLS,
//! RTCP) is copied in, so handing a datagram to the io loop allocates nothing: the arena
//! keeps its capacity and is reset whenever the queue has been drained.

use std::collections::VecDeque;
use std::net::SocketAddr;

use str0m::net::Protocol;

/// One datagram to send, borrowed from the engine until the next call.
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    pub proto: Protocol,
    /// The local address it leaves from (one of our candidates).
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: &'a [u8],
}

/// Where a datagram goes: protocol, our address, theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Path {
    pub(crate) proto: Protocol,
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
}

#[derive(Default)]
pub(crate) struct Outbox {
    bytes: Vec<u8>,
    queue: VecDeque<(Path, usize, usize)>,
}

impl Outbox {
    pub(crate) fn push_copy(&mut self, path: Path, contents: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(contents);
        self.queue.push_back((path, start, self.bytes.len()));
    }

    /// The arena, to append one datagram to; [`commit`](Self::commit) it with the length
    /// the arena had before.
    pub(crate) fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    pub(crate) fn commit(&mut self, path: Path, start: usize) {
        debug_assert!(
            start <= self.bytes.len(),
            "a datagram starts inside the arena"
        );
        self.queue.push_back((path, start, self.bytes.len()));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Starts the arena over once everything in it has been taken.
    pub(crate) fn clear(&mut self) {
        if self.queue.is_empty() {
            self.bytes.clear();
        }
    }

    /// Bytes in the arena (taken ones included, until [`clear`](Self::clear)).
    pub(crate) fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn pop(&mut self) -> Option<Transmit<'_>> {
        let Some((path, start, end)) = self.queue.pop_front() else {
            self.bytes.clear();
            return None;
        };
        Some(Transmit {
            proto: path.proto,
            source: path.source,
            destination: path.destination,
            contents: &self.bytes[start..end],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_come_out_in_order_and_the_arena_is_reused() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let path = Path {
            proto: Protocol::Udp,
            source: a,
            destination: a,
        };
        let mut out = Outbox::default();
        out.push_copy(path, b"one");
        let start = out.bytes().len();
        out.bytes().extend_from_slice(b"two!");
        out.commit(path, start);
        assert_eq!(out.pop().unwrap().contents, b"one");
        assert_eq!(out.pop().unwrap().contents, b"two!");
        assert!(out.pop().is_none());
        assert_eq!(out.bytes().len(), 0, "drained: the arena starts over");
        assert!(out.bytes().capacity() >= 7, "and keeps its memory");
    }
}
