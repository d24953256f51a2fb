//! One broadcast across workers: the engine of its publisher (the *home*) feeds a *mirror*
//! of the broadcast in every other engine that holds viewers of it.
//!
//! A mirror is a route without a local publisher. Its viewers are served exactly as the
//! home's are, from the mirror's own keyframe cache and retransmission ring, both built from
//! the packets the home relays: the same `CachedPacket`s, payload `Arc`s shared, never
//! copied. What a mirror cannot decide alone goes back to the home: keyframe requests (the
//! home throttles them for the whole broadcast) and the end of its last viewer. The viewer
//! cap is shared through the broadcast's [`Audience`].
//!
//! Messages between engines are [`SpanMessage`]s: an engine emits them
//! ([`poll_span`](Engine::poll_span)) and takes them in
//! ([`handle_span`](Engine::handle_span)); the io layer carries them between threads in
//! FIFO order per pair of engines, and may drop packets (never anything else) when a mirror
//! falls behind: its viewers repair the gap with NACKs and keyframe requests.
//!
//! The protocol, per broadcast and home route generation:
//!
//! - `Mirror(b, w)` (a command, before a viewer of `b` is started on worker `w`): the home
//!   counts one more session on `w` and sends `w` a `Start`. A worker runs everything its
//!   queue held before each command, so that `Start` is in place when the viewer arrives;
//! - `Start` again for every new publisher epoch (resume, replacement), `Lost` when the
//!   publisher vanished, `Ended` when the broadcast ended;
//! - every viewer session that ends on a mirror (or is refused there) sends `Left`; at zero
//!   the home stops relaying and sends `Unrelay`, which frees the mirror route.

use std::sync::Arc;
use std::time::Instant;

use str0m::rtp::ExtensionValues;
use tracing::debug;

use super::audience::Audience;
use super::command::IngestTrack;
use super::packet::CachedPacket;
use super::track::Mirrored;
use super::{BroadcastKey, CloseReason, Engine, PeerKey};

/// A message from one engine to another (see the module docs). Opaque outside the engine.
pub struct SpanMessage(Message);

impl SpanMessage {
    /// A media packet (the only kind a full queue may drop).
    pub fn is_packet(&self) -> bool {
        matches!(self.0, Message::Packet { .. })
    }
}

#[cfg(test)]
impl SpanMessage {
    /// A media packet, or a control message, for tests of the queues that carry them.
    pub(crate) fn for_test(packet: bool) -> Self {
        let b = BroadcastKey(1);
        SpanMessage(if packet {
            Message::Packet {
                b,
                generation: 1,
                track: 0,
                packet: CachedPacket {
                    seq: 1,
                    ts: 0,
                    pt: 96.into(),
                    marker: false,
                    orientation: None,
                    payload: Arc::from(&[0u8][..]),
                },
                wallclock: crate::clock::now(),
                audio: (None, None),
            }
        } else {
            Message::Lost { b, generation: 1 }
        })
    }
}

impl std::fmt::Debug for SpanMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.0 {
            Message::Start(_) => "start",
            Message::Packet { .. } => "packet",
            Message::Lost { .. } => "lost",
            Message::Ended { .. } => "ended",
            Message::Unrelay { .. } => "unrelay",
            Message::Keyframe { .. } => "keyframe",
            Message::Left { .. } => "left",
            Message::Evict { .. } => "evict",
        };
        f.write_str(kind)
    }
}

enum Message {
    // home → mirror
    Start(Box<Start>),
    Packet {
        b: BroadcastKey,
        generation: u64,
        track: usize,
        packet: CachedPacket,
        wallclock: Instant,
        /// The publisher's audio level and voice activity (the orientation is in `packet`).
        audio: (Option<i8>, Option<bool>),
    },
    Lost {
        b: BroadcastKey,
        generation: u64,
    },
    Ended {
        b: BroadcastKey,
        generation: u64,
    },
    Unrelay {
        b: BroadcastKey,
        generation: u64,
    },
    // mirror → home
    Keyframe {
        b: BroadcastKey,
        generation: u64,
        track: usize,
    },
    Left {
        b: BroadcastKey,
        generation: u64,
        from: usize,
    },
    // any → any: the shared audience chose this viewer to make room.
    Evict {
        b: BroadcastKey,
        viewer: PeerKey,
    },
}

/// What a mirror needs to serve viewers of a broadcast from its current publisher.
struct Start {
    b: BroadcastKey,
    generation: u64,
    home: usize,
    epoch: u32,
    live: bool,
    tracks: Vec<IngestTrack>,
    /// Each track's cached keyframe, GOP and bitrate (`Track::mirrored`).
    caches: Vec<Mirrored>,
    audience: Arc<Audience>,
}

impl Engine {
    /// The next message for another engine, with its worker index.
    pub fn poll_span(&mut self) -> Option<(usize, SpanMessage)> {
        self.span_out.pop_front()
    }

    /// Takes in a message from another engine.
    pub fn handle_span(&mut self, now: Instant, SpanMessage(message): SpanMessage) {
        self.last_now = Some(now);
        match message {
            Message::Start(start) => self.mirror_start(now, *start),
            Message::Packet {
                b,
                generation,
                track,
                packet,
                wallclock,
                audio,
            } => {
                let fed = (self.router.route_mut(b))
                    .filter(|r| r.generation == generation && r.fed)
                    .and_then(|r| r.tracks.get_mut(track));
                if let Some(t) = fed {
                    // A mirror's viewers follow their estimates too (layers.rs): the
                    // layers' bitrates are measured here as at home (the header as it
                    // came is not relayed; a plain 12-byte one is counted for it).
                    t.arrived(now, packet.payload.len() + 12, &packet.payload);
                    let exts = ExtensionValues {
                        audio_level: audio.0,
                        voice_activity: audio.1,
                        video_orientation: packet.orientation,
                        ..Default::default()
                    };
                    self.fan_out(now, b, track, packet, wallclock, &exts);
                }
            }
            Message::Lost { b, generation } => {
                if let Some(r) = self.mirror_mut(b, generation) {
                    r.fed = false;
                    r.lost_at = Some(now);
                }
            }
            Message::Ended { b, generation } => {
                if self.mirror_mut(b, generation).is_some() {
                    self.end_mirror(now, b);
                }
            }
            Message::Unrelay { b, generation } => {
                if self
                    .mirror_mut(b, generation)
                    .is_some_and(|r| r.viewers.is_empty())
                {
                    self.router.remove(b);
                }
            }
            Message::Keyframe {
                b,
                generation,
                track,
            } => {
                if self.home_route(b, generation) {
                    self.pending_plis.push((b, track));
                }
            }
            Message::Left {
                b,
                generation,
                from,
            } => {
                if self.home_route(b, generation) {
                    self.mirror_left(now, b, from);
                }
            }
            Message::Evict { b, viewer } => {
                let here = self
                    .peer_mut(viewer)
                    .is_some_and(|p| p.broadcast == b && p.is_viewer());
                if here {
                    debug!(broadcast = %b, peer = %viewer, "evicted for a viewer on another worker");
                    self.counters.evictions += 1;
                    self.remove_peer(now, viewer, CloseReason::Evicted);
                }
            }
        }
        self.flush_deferred(now);
    }

    /// `Command::Mirror`: a viewer of `b` is about to start on worker `to`. Returns whether
    /// `b` is live here (else the viewer is refused, as here).
    pub(super) fn mirror_to(&mut self, b: BroadcastKey, to: usize) -> bool {
        let Some(route) = self.router.route_mut(b) else {
            return false;
        };
        if route.publisher.is_none() || route.home.is_some() || to == self.config.worker {
            return false;
        }
        match route.relays.iter_mut().find(|(w, _)| *w == to) {
            Some((_, n)) => *n += 1,
            None => route.relays.push((to, 1)),
        }
        let start = self.start_message(b);
        self.span_out.extend(start.map(|m| (to, m)));
        true
    }

    /// Tells every mirror of `b` about its publisher's new epoch.
    pub(super) fn restart_mirrors(&mut self, b: BroadcastKey) {
        let Some(route) = self.router.route(b) else {
            return;
        };
        let to: Vec<usize> = route.relays.iter().map(|(w, _)| *w).collect();
        for w in to {
            if let Some(m) = self.start_message(b) {
                self.span_out.push_back((w, m));
            }
        }
    }

    /// Relays a publisher's packet to every mirror of `b` (before the home's own viewers
    /// get it, so the other workers start at once).
    pub(super) fn relay(
        &mut self,
        b: BroadcastKey,
        track: usize,
        packet: &CachedPacket,
        wallclock: Instant,
        exts: &ExtensionValues,
    ) {
        let Some(route) = self.router.route(b) else {
            return;
        };
        for &(w, _) in &route.relays {
            let message = Message::Packet {
                b,
                generation: route.generation,
                track,
                packet: packet.clone(),
                wallclock,
                audio: (exts.audio_level, exts.voice_activity),
            };
            self.span_out.push_back((w, SpanMessage(message)));
        }
    }

    /// Tells every mirror of `b` that its publisher is gone (`ended`) or away.
    pub(super) fn notify_mirrors(&mut self, b: BroadcastKey, ended: bool) {
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        let generation = route.generation;
        let relays = if ended {
            std::mem::take(&mut route.relays)
        } else {
            route.relays.clone()
        };
        for (w, _) in relays {
            let message = if ended {
                Message::Ended { b, generation }
            } else {
                Message::Lost { b, generation }
            };
            self.span_out.push_back((w, SpanMessage(message)));
        }
    }

    /// A mirror viewer session of `b` ended or was refused: the home hears of it.
    pub(super) fn left_mirror(&mut self, b: BroadcastKey) {
        let Some(route) = self.router.route(b) else {
            return;
        };
        let Some(home) = route.home else { return };
        let message = Message::Left {
            b,
            generation: route.generation,
            from: self.config.worker,
        };
        self.span_out.push_back((home, SpanMessage(message)));
    }

    /// A mirror asks its home for a keyframe on track `track`.
    pub(super) fn keyframe_from_home(&mut self, b: BroadcastKey, track: usize) -> bool {
        let Some(route) = self.router.route(b) else {
            return false;
        };
        let Some(home) = route.home else { return false };
        let message = Message::Keyframe {
            b,
            generation: route.generation,
            track,
        };
        self.span_out.push_back((home, SpanMessage(message)));
        true
    }

    /// Makes room for a viewer seated elsewhere: `viewer` on worker `worker` goes.
    pub(super) fn evict_on(
        &mut self,
        now: Instant,
        b: BroadcastKey,
        (worker, viewer): (usize, PeerKey),
    ) {
        if worker == self.config.worker {
            self.counters.evictions += 1;
            self.remove_peer(now, viewer, CloseReason::Evicted);
        } else {
            let message = Message::Evict { b, viewer };
            self.span_out.push_back((worker, SpanMessage(message)));
        }
    }

    fn start_message(&self, b: BroadcastKey) -> Option<SpanMessage> {
        let route = self.router.route(b)?;
        let start = Start {
            b,
            generation: route.generation,
            home: self.config.worker,
            epoch: route.epoch,
            live: route.publisher.is_some(),
            tracks: route.ingest_tracks(),
            caches: route.tracks.iter().map(|t| t.mirrored()).collect(),
            audience: route.audience.clone(),
        };
        Some(SpanMessage(Message::Start(Box::new(start))))
    }

    fn mirror_start(&mut self, now: Instant, s: Start) {
        let stale = self
            .router
            .route(s.b)
            .is_some_and(|r| r.home != Some(s.home) || r.generation != s.generation);
        if stale {
            // The broadcast this mirror served has ended (its `Ended` is overtaken only if
            // the home started anew): its viewers end with it.
            self.end_mirror(now, s.b);
        }
        let route = self.router.entry(s.b);
        let new_epoch = route.home.is_none() || route.epoch != s.epoch;
        route.home = Some(s.home);
        route.generation = s.generation;
        route.audience = s.audience;
        route.fed = s.live;
        route.lost_at = (!s.live).then_some(now);
        if !new_epoch {
            return;
        }
        route.mirror_epoch(s.epoch, &s.tracks, s.caches);
        self.remap_viewers(now, s.b);
    }

    /// A mirror of a broadcast that ended: its viewers end too, and the route goes.
    fn end_mirror(&mut self, now: Instant, b: BroadcastKey) {
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        // No `Left` for these (the home's route is gone already), and no event: the home
        // told its own listeners.
        route.home = None;
        route.lost_at = None;
        let viewers = std::mem::take(&mut route.viewers);
        for v in viewers {
            self.remove_peer(now, v, CloseReason::BroadcastEnded);
        }
        self.router.remove(b);
    }

    /// On the home: one session fewer on worker `from`.
    fn mirror_left(&mut self, now: Instant, b: BroadcastKey, from: usize) {
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        let Some(i) = route.relays.iter().position(|(w, _)| *w == from) else {
            return;
        };
        route.relays[i].1 -= 1;
        if route.relays[i].1 == 0 {
            route.relays.swap_remove(i);
            let message = Message::Unrelay {
                b,
                generation: route.generation,
            };
            self.span_out.push_back((from, SpanMessage(message)));
        }
        self.end_if_abandoned(now, b);
    }

    fn mirror_mut(
        &mut self,
        b: BroadcastKey,
        generation: u64,
    ) -> Option<&mut super::router::Route> {
        self.router
            .route_mut(b)
            .filter(|r| r.home.is_some() && r.generation == generation)
    }

    fn home_route(&self, b: BroadcastKey, generation: u64) -> bool {
        self.router
            .route(b)
            .is_some_and(|r| r.home.is_none() && r.generation == generation)
    }
}
