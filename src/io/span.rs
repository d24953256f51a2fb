//! The queues between workers' engines (engine/span.rs): one per worker, every other worker
//! sending into it, in FIFO order per sender.
//!
//! Control messages (a broadcast's start, loss, end, keyframe requests, viewers leaving)
//! must never be lost, or a mirror would wait forever or its home relay forever; they are
//! few. Media packets are bounded: past [`SPAN_PACKETS`] queued for one worker, a packet for
//! it is dropped and counted, so a worker that falls behind costs its own viewers a repair
//! (NACK, keyframe request) and never blocks the publisher's worker. tokio's unbounded
//! channel is a lock-free list of blocks: a send is a few atomic operations, no lock, no
//! allocation per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::engine::{Engine, SpanMessage};
use crate::handle::RelayDrops;

/// A worker's end: what the other engines sent it.
pub(crate) struct SpanInbox {
    rx: mpsc::UnboundedReceiver<SpanMessage>,
    packets: Arc<AtomicUsize>,
}

/// The sending end of one worker's inbox, shared by every other worker.
#[derive(Clone)]
pub(crate) struct SpanOutlet {
    tx: mpsc::UnboundedSender<SpanMessage>,
    packets: Arc<AtomicUsize>,
    drops: RelayDrops,
}

/// One inbox per worker, and the outlets that reach them (in worker order).
pub(crate) fn queues(workers: usize) -> (Vec<SpanOutlet>, Vec<SpanInbox>) {
    (0..workers)
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let packets = Arc::new(AtomicUsize::new(0));
            let outlet = SpanOutlet {
                tx,
                packets: packets.clone(),
                drops: Arc::new(AtomicU64::new(0)),
            };
            (outlet, SpanInbox { rx, packets })
        })
        .unzip()
}

impl SpanOutlet {
    /// Queues `message`, unless it is a packet and the worker is [`SPAN_PACKETS`] behind.
    pub(crate) fn send(&self, message: SpanMessage) {
        if message.is_packet() {
            if self.packets.load(Ordering::Relaxed) >= SPAN_PACKETS {
                self.drops.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.packets.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.tx.send(message); // the worker stopped: the server is stopping
    }

    /// The count of packets this worker lost because it was behind, for the handle.
    pub(crate) fn drops(&self) -> RelayDrops {
        self.drops.clone()
    }
}

impl SpanInbox {
    /// Waits for the next message.
    pub(crate) async fn recv(&mut self) -> Option<SpanMessage> {
        let message = self.rx.recv().await?;
        self.took(&message);
        Some(message)
    }

    /// Feeds the engine everything queued now. Called before every command, so what an
    /// engine sent before answering a command (a mirror's start) is in place before any
    /// command sent after that answer.
    pub(crate) fn drain(&mut self, engine: &mut Engine) {
        while let Ok(message) = self.rx.try_recv() {
            self.took(&message);
            engine.handle_span(crate::clock::now(), message);
        }
    }

    fn took(&self, message: &SpanMessage) {
        if message.is_packet() {
            self.packets.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Hands what `engine` has for other workers to their inboxes.
pub(crate) fn send_all(engine: &mut Engine, outlets: &[SpanOutlet]) {
    while let Some((worker, message)) = engine.poll_span() {
        if let Some(outlet) = outlets.get(worker) {
            outlet.send(message);
        }
    }
}

/// Media packets queued for one worker before more are dropped: ~1 s of a 2.5 Mb/s
/// broadcast's packets for each of a few broadcasts, far more than a healthy worker lags.
const SPAN_PACKETS: usize = 2048;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_behind_loses_packets_never_control_messages() {
        let (outlets, mut inboxes) = queues(2);
        for _ in 0..SPAN_PACKETS + 10 {
            outlets[1].send(SpanMessage::for_test(true));
        }
        outlets[1].send(SpanMessage::for_test(false));
        assert_eq!(
            outlets[1].drops().load(Ordering::Relaxed),
            10,
            "packets past the bound are dropped, counted"
        );
        assert_eq!(
            outlets[0].drops().load(Ordering::Relaxed),
            0,
            "the other worker's queue is not affected"
        );
        let inbox = &mut inboxes[1];
        let mut got = Vec::new();
        while let Ok(m) = inbox.rx.try_recv() {
            inbox.took(&m);
            got.push(m.is_packet());
        }
        assert_eq!(got.len(), SPAN_PACKETS + 1);
        assert_eq!(
            got.last(),
            Some(&false),
            "the control message still arrives, in order"
        );
        // Taken in, the queue has room again.
        outlets[1].send(SpanMessage::for_test(true));
        assert_eq!(outlets[1].drops().load(Ordering::Relaxed), 10);
    }
}
