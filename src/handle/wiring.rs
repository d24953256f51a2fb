//! What the handle shares with the UDP driver (io/): the route updates it sends the receive
//! thread, and the drop counters the driver writes and the handle reads for `/metrics`. The
//! driver imports these from here; the handle imports nothing from the driver.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A change to the routing table, from the HTTP handle.
#[derive(Debug)]
pub(crate) enum RouteUpdate {
    /// A new session on `worker` answers to `ufrag`.
    Add { ufrag: String, worker: usize },
    /// The session is gone.
    Forget { ufrag: String },
    /// An ICE restart: the session answers to `new` now; its addresses stay until it moves.
    Rename {
        old: String,
        new: String,
        worker: usize,
    },
}

/// What the receive thread drops, for `/metrics` (written there, read by the HTTP handle).
pub(crate) struct ReceiveCounters {
    /// Datagrams each worker lost because its queue was full.
    pub(crate) queue_drops: Box<[AtomicU64]>,
    /// Datagrams no session's route matched (what the engine would have counted as dropped).
    pub(crate) unroutable: AtomicU64,
}

impl ReceiveCounters {
    pub(crate) fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self {
            queue_drops: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            unroutable: AtomicU64::new(0),
        })
    }

    pub(crate) fn queue_drops(&self, worker: usize) -> u64 {
        self.queue_drops
            .get(worker)
            .map_or(0, |d| d.load(Ordering::Relaxed))
    }

    pub(crate) fn unroutable(&self) -> u64 {
        self.unroutable.load(Ordering::Relaxed)
    }
}

/// Packets relayed from another worker that this one was too far behind to take (written by
/// the relaying worker's outlet, io/span.rs).
pub(crate) type RelayDrops = Arc<AtomicU64>;
