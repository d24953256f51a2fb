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

/// Consecutive UDP datagrams to one destination, back to back in one slice, for one GSO
/// send: every one `segment_size` long but the last, which may be shorter.
#[derive(Debug, Clone, Copy)]
pub struct TransmitRun<'a> {
    pub proto: Protocol,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: &'a [u8],
    pub segment_size: usize,
    pub segments: usize,
}

/// Where a datagram goes: protocol, our address, theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Path {
    pub(crate) proto: Protocol,
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
}

impl From<&str0m::net::Transmit> for Path {
    fn from(t: &str0m::net::Transmit) -> Self {
        Self {
            proto: t.proto,
            source: t.source,
            destination: t.destination,
        }
    }
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

    /// The next datagrams as one run: as many as follow the first to the same UDP
    /// destination, contiguous in the arena, none longer than the first, at most
    /// `max_segments` and `max_bytes`; one datagram for TCP.
    pub(crate) fn pop_run(
        &mut self,
        max_segments: usize,
        max_bytes: usize,
    ) -> Option<TransmitRun<'_>> {
        let (path, start, end) = self.queue.pop_front()?;
        let segment_size = end - start;
        let (mut run_end, mut segments) = (end, 1);
        while path.proto == Protocol::Udp && segments < max_segments {
            let Some(&(next, s, e)) = self.queue.front() else {
                break;
            };
            if next != path || s != run_end || e - s > segment_size || e - start > max_bytes {
                break;
            }
            self.queue.pop_front();
            (run_end, segments) = (e, segments + 1);
            if e - s < segment_size {
                break; // a shorter datagram ends a GSO run
            }
        }
        Some(TransmitRun {
            proto: path.proto,
            source: path.source,
            destination: path.destination,
            contents: &self.bytes[start..run_end],
            segment_size,
            segments,
        })
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

    #[test]
    fn runs_join_equal_datagrams_to_one_destination_with_a_shorter_last() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let to = |destination| Path {
            proto: Protocol::Udp,
            source: a,
            destination,
        };
        let mut out = Outbox::default();
        for d in [[1u8; 4].as_slice(), &[2; 4], &[3; 2], &[4; 2]] {
            out.push_copy(to(a), d);
        }
        out.push_copy(to(b), &[5; 4]);
        out.push_copy(to(b), &[6; 4]);
        out.push_copy(to(b), &[7; 4]);
        let r = out.pop_run(64, 1000).unwrap();
        assert_eq!((r.contents.len(), r.segment_size, r.segments), (10, 4, 3));
        let r = out.pop_run(64, 1000).unwrap();
        assert_eq!(
            (r.destination, r.segments),
            (a, 1),
            "nothing after a shorter one"
        );
        let r = out.pop_run(2, 1000).unwrap();
        assert_eq!((r.destination, r.segments), (b, 2), "at most max_segments");
        let r = out.pop_run(64, 1000).unwrap();
        assert_eq!(r.contents, &[7; 4]);
        assert!(out.pop_run(64, 1000).is_none());
    }
}
