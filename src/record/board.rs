//! What the recorder thread and the HTTP side tell each other: each broadcast's Record switch
//! (set from the broadcaster page) and its recording's status (set by the recorder, shown on
//! the page and in the API).
//!
//! The recorder looks at the switches only when they change: a counter it reads per packet
//! (one atomic load) tells it to take the lock and the new set.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::broadcast_key::BroadcastKey;

/// Why a recording stopped while its broadcast went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `--record-max-bytes`: the broadcast's recordings hold this many bytes.
    ByteCap { max: u64 },
    /// `--record-min-free`: the disk under `--record-dir` has less free space than this.
    FreeSpace { free: u64, floor: u64 },
    /// Creating or writing a file failed (read-only or missing directory, full disk…).
    WriteFailed(String),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ByteCap { max } => write!(
                f,
                "this broadcast's recordings reached the server's limit of {} (--record-max-bytes); delete some, then switch Record off and on",
                megabytes(*max)
            ),
            Self::FreeSpace { free, floor } => write!(
                f,
                "the server's disk has {} free, less than the {} it keeps free (--record-min-free)",
                megabytes(*free),
                megabytes(*floor)
            ),
            Self::WriteFailed(e) => write!(f, "the server cannot write the recording: {e}"),
        }
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A broadcast's recording as the recorder last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Writing this file (its name in the broadcast's directory).
    Recording { file: String },
    /// Stopped; the broadcast went on.
    Stopped(StopReason),
}

/// Shared by the recorder thread and the HTTP handlers.
#[derive(Debug, Default)]
pub struct Board {
    inner: Mutex<Inner>,
    /// Bumped by every switch change.
    switches: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    off: HashSet<BroadcastKey>,
    /// Switched on since the recorder last looked: a stopped recording starts again.
    retry: HashSet<BroadcastKey>,
    status: HashMap<BroadcastKey, Status>,
}

/// The switches as the recorder takes them after a change.
pub(crate) struct Switches {
    pub(crate) version: u64,
    pub(crate) off: HashSet<BroadcastKey>,
    pub(crate) retry: HashSet<BroadcastKey>,
}

impl Board {
    /// A board whose switches are off for `off` (from the registry at start-up).
    pub fn with_off(off: impl IntoIterator<Item = BroadcastKey>) -> Self {
        let board = Self::default();
        board.lock().off.extend(off);
        board
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("record board lock")
    }

    /// The broadcaster page's Record switch. Switching on retries a stopped recording.
    pub fn set_switch(&self, key: BroadcastKey, on: bool) {
        let mut inner = self.lock();
        if on {
            inner.off.remove(&key);
            inner.retry.insert(key);
            if matches!(inner.status.get(&key), Some(Status::Stopped(_))) {
                inner.status.remove(&key);
            }
        } else {
            inner.off.insert(key);
            inner.retry.remove(&key);
        }
        self.switches.fetch_add(1, Ordering::Release);
    }

    pub fn switch(&self, key: BroadcastKey) -> bool {
        !self.lock().off.contains(&key)
    }

    pub fn status(&self, key: BroadcastKey) -> Option<Status> {
        self.lock().status.get(&key).cloned()
    }

    /// The file being written for `key`, if any (not to be deleted under the recorder).
    pub fn writing(&self, key: BroadcastKey) -> Option<String> {
        match self.status(key)? {
            Status::Recording { file } => Some(file),
            Status::Stopped(_) => None,
        }
    }

    pub(crate) fn set_status(&self, key: BroadcastKey, status: Option<Status>) {
        let mut inner = self.lock();
        match status {
            Some(s) => inner.status.insert(key, s),
            None => inner.status.remove(&key),
        };
    }

    /// The switches' version: when it differs from the one the recorder took, take them again.
    pub(crate) fn version(&self) -> u64 {
        self.switches.load(Ordering::Acquire)
    }

    pub(crate) fn take_switches(&self) -> Switches {
        let mut inner = self.lock();
        Switches {
            version: self.switches.load(Ordering::Acquire),
            off: inner.off.clone(),
            retry: std::mem::take(&mut inner.retry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switching_on_clears_a_stop_and_asks_for_a_retry() {
        let b = Board::with_off([BroadcastKey(1)]);
        assert!(!b.switch(BroadcastKey(1)));
        let v = b.version();
        b.set_status(
            BroadcastKey(1),
            Some(Status::Stopped(StopReason::ByteCap { max: 1 })),
        );
        b.set_switch(BroadcastKey(1), true);
        assert_ne!(b.version(), v);
        assert!(b.switch(BroadcastKey(1)));
        assert_eq!(b.status(BroadcastKey(1)), None);
        let s = b.take_switches();
        assert!(s.off.is_empty());
        assert!(s.retry.contains(&BroadcastKey(1)));
        assert!(b.take_switches().retry.is_empty(), "taken once");
    }
}
