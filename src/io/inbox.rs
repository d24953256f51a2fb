//! Datagrams on their way from the receive thread to a worker: batches of owned bytes in one
//! buffer each, passed through a bounded queue and handed back empty for reuse, so the steady
//! state allocates nothing per datagram.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc as std_mpsc};

use str0m::net::Protocol;
use tokio::sync::mpsc;

use crate::handle::ReceiveCounters;

/// Datagrams for one worker, in the order they were received.
#[derive(Default)]
pub(crate) struct Batch {
    items: Vec<Item>,
    bytes: Vec<u8>,
}

struct Item {
    proto: Protocol,
    src: SocketAddr,
    dst: SocketAddr,
    range: Range<usize>,
}

impl Batch {
    pub(crate) fn push(&mut self, proto: Protocol, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        self.items.push(Item {
            proto,
            src,
            dst,
            range: start..self.bytes.len(),
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Each datagram as (protocol, source, local address, bytes), in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Protocol, SocketAddr, SocketAddr, &[u8])> {
        self.items
            .iter()
            .map(|i| (i.proto, i.src, i.dst, &self.bytes[i.range.clone()]))
    }

    fn clear(&mut self) {
        self.items.clear();
        self.bytes.clear();
    }
}

/// The receive thread's end of one worker's queue.
pub(crate) struct Outlet {
    tx: mpsc::Sender<Batch>,
    open: Batch,
    counters: Arc<ReceiveCounters>,
    worker: usize,
}

/// The worker's end: batches in, empty batches back.
pub(crate) struct Inlet {
    pub(crate) rx: mpsc::Receiver<Batch>,
    spent: std_mpsc::Sender<Batch>,
}

impl Inlet {
    /// Hands an emptied batch back to the receive thread.
    pub(crate) fn recycle(&self, mut batch: Batch) {
        batch.clear();
        let _ = self.spent.send(batch);
    }
}

/// One queue per worker, and the pool of empty batches they share.
pub(crate) fn queues(
    workers: usize,
    counters: Arc<ReceiveCounters>,
) -> (Vec<Outlet>, Vec<Inlet>, Pool) {
    let (spent_tx, spent_rx) = std_mpsc::channel();
    let (mut outlets, mut inlets) = (Vec::new(), Vec::new());
    for worker in 0..workers {
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        outlets.push(Outlet {
            tx,
            open: Batch::default(),
            counters: counters.clone(),
            worker,
        });
        inlets.push(Inlet {
            rx,
            spent: spent_tx.clone(),
        });
    }
    (outlets, inlets, Pool { spent: spent_rx })
}

/// Empty batches the workers handed back.
pub(crate) struct Pool {
    spent: std_mpsc::Receiver<Batch>,
}

impl Outlet {
    pub(crate) fn push(&mut self, proto: Protocol, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        self.open.push(proto, src, dst, data);
    }

    /// Sends what was gathered since the last call. A worker whose queue is full loses the
    /// batch (counted): it must not hold up the receive thread and so every other worker.
    pub(crate) fn send(&mut self, pool: &Pool) {
        if self.open.len() == 0 {
            return;
        }
        let next = pool.spent.try_recv().unwrap_or_default();
        let batch = std::mem::replace(&mut self.open, next);
        if let Err(e) = self.tx.try_send(batch) {
            let lost = match &e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => {
                    b.len()
                }
            };
            self.counters.queue_drops[self.worker].fetch_add(lost as u64, Ordering::Relaxed);
            let mut batch = e.into_inner();
            batch.clear();
            self.open = batch;
        }
    }
}

/// Batches waiting per worker: at up to 256 datagrams a batch, a worker may fall ~16 k
/// datagrams (a few keyframes of a whole audience's feedback) behind before losing any.
const QUEUE_BATCHES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_full_worker_queue_loses_its_own_datagrams_only_and_keeps_order() {
        let counters = ReceiveCounters::new(2);
        let (mut outlets, mut inlets, pool) = queues(2, counters.clone());
        let rounds = QUEUE_BATCHES + 5;
        let mut got = Vec::new();
        for i in 0..rounds {
            for outlet in &mut outlets {
                outlet.push(Protocol::Udp, addr(1), addr(2), &(i as u32).to_be_bytes());
                outlet.push(Protocol::Udp, addr(1), addr(2), &[0xff]);
                outlet.send(&pool);
            }
            // Worker 1 keeps up; worker 0 takes nothing.
            while let Ok(batch) = inlets[1].rx.try_recv() {
                got.extend(batch.iter().map(|(_, _, _, d)| d.to_vec()));
                inlets[1].recycle(batch);
            }
        }
        assert_eq!(
            counters.queue_drops(0),
            2 * 5,
            "the 5 batches past the bound"
        );
        assert_eq!(counters.queue_drops(1), 0);
        let want: Vec<Vec<u8>> = (0..rounds as u32)
            .flat_map(|i| [i.to_be_bytes().to_vec(), vec![0xff]])
            .collect();
        assert_eq!(
            got, want,
            "every datagram of the worker that keeps up, in order"
        );
        let mut queued = 0;
        while let Ok(batch) = inlets[0].rx.try_recv() {
            queued += batch.len();
        }
        assert_eq!(
            queued,
            2 * QUEUE_BATCHES,
            "the slow worker still has the first ones"
        );
    }
}
