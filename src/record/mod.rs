//! Recording (`--record`): broadcasts written to disk as fragmented MP4, off the media path.
//!
//! The engine hands each publisher packet of a recorded codec (H.264, VP8, VP9, AV1, Opus)
//! to a [`Tap`]: an `Arc` clone of the payload into a bounded queue with `try_send`, so
//! fan-out never waits on a disk; a full queue loses that packet for the file only, counted
//! in `/metrics` (`whipcast_record_queue_drops_total`). With `--record` off the engine holds
//! no tap and the media path does nothing more than before.
//!
//! One thread owns every recording: [`recording`] turns a broadcast's packets into segment
//! files ([`segment`]) of fMP4 boxes ([`fmp4`]) with each track's sample entry ([`entry`]),
//! after putting video frames back together ([`frames`]: [`h264`], [`vp8`], [`vp9`], [`av1`]
//! with [`obu`]) and placing every track on one timeline ([`timeline`]).
//!
//! Each broadcast has a Record switch (the broadcaster page's, kept in the registry) and a
//! status the recorder reports, both on the [`Board`]; [`list`] reads a broadcast's files back
//! for the page. A byte cap (`--record-max-bytes`), a free-space floor (`--record-min-free`,
//! measured by [`space`]) or a failed write stops the recording, never the broadcast.
//!
//! A recording lasts from a publish to its DELETE (the engine says [`Tap::stopped`]), or to
//! `idle` after the publisher's last packet: a publisher that drops and comes back within
//! that (a new epoch of its route, or a new route when nobody was watching meanwhile)
//! continues the same recording, with the outage as a gap; a publish after a DELETE, or
//! after a longer absence, starts a new recording.

mod av1;
mod board;
mod entry;
mod fmp4;
mod frames;
mod h264;
pub mod list;
mod obu;
mod recording;
mod segment;
mod space;
#[cfg(test)]
mod tests;
mod timeline;
mod vp8;
mod vp9;

pub use self::board::{Board, Status, StopReason};

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::broadcast_key::BroadcastKey;
use crate::registry::Registry;

use self::recording::Recording;

/// Packets the queue holds: about two seconds of a 6 Mb/s broadcast with its audio
/// (~600 video + 100 audio packets a second), so a disk that stalls for a moment loses nothing.
const QUEUE_PACKETS: usize = 2048;
/// How often the thread looks for recordings whose publisher is gone for good.
const TICK: Duration = Duration::from_secs(1);
/// The recorder empties its queue this often rather than waiting on it: a receiver that
/// blocks must be woken (a futex syscall) by the packets the media thread hands over; one
/// that polls leaves the sender a `try_send` (about 0.3 µs a packet with the `Arc` clone:
/// benches/fanout.rs, BENCHMARKS.md §12). 20 ms holds about 15 packets of a 6 Mb/s broadcast.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// A codec the recorder writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    H264,
    Vp8,
    Vp9,
    Av1,
    Opus,
}

/// One publisher packet, as the engine hands it over.
#[derive(Debug)]
pub struct Packet {
    pub broadcast: BroadcastKey,
    /// The worker and the route generation on it.
    pub route: (usize, u64),
    /// The route's publisher epoch: a new one (or a new route) re-anchors the timeline.
    pub epoch: u32,
    pub media: Media,
    pub seq: u64,
    pub ts: u32,
    pub marker: bool,
    pub payload: Arc<[u8]>,
    pub arrival: Instant,
    /// The latest sender report of the packet's stream, if one came yet.
    pub report: Option<Report>,
}

/// A publisher's sender report (RFC 3550 §6.4.1): its stream's RTP time `rtp` was current at
/// its wall-clock time `ntp`, one clock for all the publisher's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub ntp: std::time::SystemTime,
    pub rtp: u32,
}

/// What goes through the recorder's queue.
#[derive(Debug)]
enum Item {
    Packet(Packet),
    Stopped(BroadcastKey),
}

/// What the recorder needs to know from the options.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub segment: Duration,
    pub max_bytes: Option<u64>,
    /// Free bytes the disk under `dir` keeps: below this, recordings stop.
    pub min_free: u64,
    /// The Record switches and each recording's status, shared with the HTTP side.
    pub board: Arc<Board>,
    /// A recording whose publisher has sent nothing for this long has ended (the resume
    /// grace, plus a margin).
    pub idle: Duration,
}

/// The engine's side of the queue.
#[derive(Clone)]
pub struct Tap {
    tx: SyncSender<Item>,
    drops: Arc<AtomicU64>,
    /// Recordings with a file open, for `/metrics` (and for tests to know a file is complete).
    active: Arc<AtomicU64>,
}

impl fmt::Debug for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tap")
            .field("drops", &self.drops.load(Ordering::Relaxed))
            .finish()
    }
}

impl Tap {
    /// Queues `packet` for the recorder without waiting; a full queue drops and counts it.
    pub fn offer(&self, packet: Packet) {
        self.send(Item::Packet(packet));
    }

    /// The broadcast's publisher stopped on purpose (DELETE): its recording ends now, and the
    /// next publish starts a new one. (Lost to a full queue, it ends `idle` later instead, and
    /// a publish before that continues it.)
    pub fn stopped(&self, broadcast: BroadcastKey) {
        self.send(Item::Stopped(broadcast));
    }

    fn send(&self, item: Item) {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Recordings in progress (a recording ends `idle` after its publisher's last packet).
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Packets lost because the recorder's queue was full.
    pub fn drops(&self) -> u64 {
        self.drops.load(Ordering::Relaxed)
    }
}

/// Starts the recorder thread; it runs until every [`Tap`] is dropped.
pub fn start(settings: Settings, registry: Arc<Mutex<Registry>>) -> std::io::Result<Tap> {
    let (tx, rx) = sync_channel(QUEUE_PACKETS);
    let active = Arc::new(AtomicU64::new(0));
    let gauge = active.clone();
    std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || run(rx, settings, registry, &gauge))?;
    Ok(Tap {
        tx,
        drops: Arc::default(),
        active,
    })
}

fn run(rx: Receiver<Item>, settings: Settings, registry: Arc<Mutex<Registry>>, active: &AtomicU64) {
    let mut recordings: HashMap<BroadcastKey, Recording> = HashMap::new();
    let mut last_sweep = crate::clock::now();
    let mut switches = settings.board.take_switches();
    loop {
        match rx.try_recv() {
            Ok(Item::Stopped(b)) => {
                if let Some(r) = recordings.remove(&b) {
                    r.finish();
                }
                active.store(recordings.len() as u64, Ordering::Relaxed);
            }
            Ok(Item::Packet(p)) => {
                if settings.board.version() != switches.version {
                    switches = settings.board.take_switches();
                    // Switched off: the recording ends. Switched on again after a stop: the
                    // stopped one ends and the next packet starts a new one.
                    let ended: Vec<BroadcastKey> = (recordings.iter())
                        .filter(|(b, r)| {
                            switches.off.contains(b) || (switches.retry.contains(b) && r.stopped())
                        })
                        .map(|(b, _)| *b)
                        .collect();
                    for b in ended {
                        if let Some(r) = recordings.remove(&b) {
                            r.finish();
                        }
                    }
                }
                if !switches.off.contains(&p.broadcast) {
                    on_packet(&mut recordings, p, &settings, &registry);
                }
                active.store(recordings.len() as u64, Ordering::Relaxed);
            }
            Err(TryRecvError::Empty) => pause(),
            Err(TryRecvError::Disconnected) => break,
        }
        let now = crate::clock::now();
        if now.saturating_duration_since(last_sweep) < TICK {
            continue;
        }
        last_sweep = now;
        let ended: Vec<BroadcastKey> = recordings
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.last_arrival) > settings.idle)
            .map(|(b, _)| *b)
            .collect();
        for b in ended {
            if let Some(r) = recordings.remove(&b) {
                r.finish();
            }
        }
        active.store(recordings.len() as u64, Ordering::Relaxed);
    }
    for (_, r) in recordings {
        r.finish();
    }
}

/// Waits [`DRAIN_EVERY`] before the next look at the queue.
#[allow(clippy::disallowed_methods)] // the recorder's own thread: sleeping stalls no media loop
fn pause() {
    std::thread::sleep(DRAIN_EVERY);
}

/// One packet for the recorder: into its broadcast's recording, started if there is none.
fn on_packet(
    recordings: &mut HashMap<BroadcastKey, Recording>,
    p: Packet,
    settings: &Settings,
    registry: &Mutex<Registry>,
) {
    let recording = recordings.entry(p.broadcast).or_insert_with(|| {
        let label = registry
            .lock()
            .ok()
            .and_then(|r| r.label(p.broadcast).map(str::to_owned))
            .unwrap_or_else(|| p.broadcast.to_string());
        Recording::new(p.broadcast, label, settings, p.arrival)
    });
    recording.handle(p, settings);
}
