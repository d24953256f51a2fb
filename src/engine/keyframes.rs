//! Keyframes on demand, both deferred until no `Rtc` is being drained: the cached keyframe
//! (and the GOP since it) that starts a viewer, and keyframe requests back to publishers.

use std::sync::Arc;
use std::time::Instant;

use str0m::media::{KeyframeRequestKind, MediaKind};
use str0m::rtp::ExtensionValues;
use tracing::{debug, trace};

use super::consumer::Source;
use super::forward::{OUTBOX_BUDGET, Start};
use super::gop;
use super::hold::HOLD;
use super::packet::CachedPacket;
use super::peer::{Peer, Role};
use super::router;
use super::{Engine, PeerKey};

impl Engine {
    /// Sends a viewer that just connected the last complete keyframe and every packet since
    /// (the GOP cache, `router.rs`), so its first picture shows at once and moves: it is at
    /// the live edge and takes the live packets from here. A browser that is just starting
    /// may decode a lone keyframe and never present it (a first visit in Chromium: the
    /// `<video>` element learns of no frame until the next one), so a still until the
    /// publisher's next IDR is not enough. Without a whole GOP cache the viewer gets the
    /// keyframe alone and then waits for the next IDR (the live frames in between reference
    /// pictures it never got); so does a viewer that is moved, see [`Burst`].
    fn send_keyframe_cache(&mut self, now: Instant, v: PeerKey, kind: Burst) {
        let Some(peer) = self.peer_mut(v) else { return };
        let b = peer.broadcast;
        let first = peer.first_frames == 0;
        let video = match &peer.role {
            Role::Viewer(cs) => cs.iter().find(|c| c.kind == MediaKind::Video),
            _ => None,
        };
        let video = video.map(|c| (c.layer, c.target, c.auto));
        let Some(route) = self.router.route(b) else {
            return;
        };
        // A viewer's first start is on the layer it would start on now: the layers' bitrates
        // and GOPs have moved on since it made its offer (router.rs).
        let fresh = first && kind == Burst::WithGop && video.is_some_and(|(.., auto)| auto);
        let wanted = match kind {
            Burst::Switch => video.and_then(|(_, target, _)| target),
            _ if fresh => Some(route.start_layer(MediaKind::Video, now)),
            _ => video.map(|(layer, ..)| layer),
        };
        let has_keyframe = |t: &router::Track| t.kind == MediaKind::Video && !t.keyframe.is_empty();
        let ti = if kind == Burst::Switch {
            // The layer the viewer moves to, while its keyframe is still current; else it
            // waits for that layer's next one (layers.rs).
            let Some(ti) = wanted.and_then(|l| route.layer_index(MediaKind::Video, l)) else {
                return;
            };
            if !route.tracks[ti].keyframe_is_current(now) {
                if !self.pending_plis.contains(&(b, ti)) {
                    self.pending_plis.push((b, ti));
                }
                return;
            }
            ti
        } else {
            // The viewer's simulcast layer, or, while that has no keyframe yet, any that has
            // (the viewer moves to its own at that one's first keyframe).
            let Some(ti) = wanted
                .and_then(|l| route.layer_index(MediaKind::Video, l))
                .filter(|&i| has_keyframe(&route.tracks[i]))
                .or_else(|| route.tracks.iter().position(has_keyframe))
            else {
                return;
            };
            ti
        };
        let track = &route.tracks[ti];
        let layer = track.rank;
        let mut gop = match kind {
            Burst::WithGop | Burst::Switch => track.gop.packets(),
            Burst::Keyframe => None,
        };
        // A simulcast start whose GOP is long (a publisher that sends keyframes only when
        // asked, as Chromium does) is more than a slow link takes at once: what it cannot
        // queue is lost, and repairing it keeps the first picture waiting for seconds. So
        // the viewer is sent the keyframe alone and starts at that layer's next one, asked
        // for now (at most once a second per layer).
        let bytes = |p: &[CachedPacket]| p.iter().map(|p| p.payload.len()).sum::<usize>();
        if kind == Burst::WithGop
            && route.layers(MediaKind::Video) > 1
            && gop.is_some_and(|g| bytes(&track.keyframe) + bytes(g) > START_BURST_BYTES)
        {
            gop = None;
            if !self.pending_plis.contains(&(b, ti)) {
                self.pending_plis.push((b, ti));
            }
        }
        let (keyframe, source) = (
            track.keyframe.clone(),
            Source {
                epoch: route.epoch,
                layer,
            },
        );
        // What the viewer is sent, kept by its egress for NACKs (first_frame.rs): the
        // keyframe alone is shared as it is; with the GOP it is one copy per start, its
        // timestamps squeezed toward the live edge (gop.rs).
        let sent: Arc<[CachedPacket]> = match gop {
            Some(gop) if !gop.is_empty() => gop::squeezed(keyframe.iter().chain(gop)),
            _ => keyframe.clone(),
        };
        let at_live_edge = gop.is_some();
        let mut burst = std::mem::take(&mut self.scratch_packets);
        burst.clear();
        // The first packet twice: a receiver counts from the first packet it gets, so no
        // NACK could ever ask for a lost first packet (see first_frame.rs for the last).
        burst.extend(sent.first().cloned());
        burst.extend_from_slice(&sent);
        debug!(peer = %v, packets = burst.len(), at_live_edge, "sending cached keyframe");
        let Some(peer) = self.peer_mut(v) else { return };
        let sealed = peer.egress.is_some();
        let mut video_mid = None;
        if let Role::Viewer(consumers) = &mut peer.role
            && let Some(c) = consumers.iter_mut().find(|c| c.kind == MediaKind::Video)
        {
            // Sent again (first_frame.rs): the viewer restarts from this keyframe.
            c.unsync();
            video_mid = Some(c.mid);
            if fresh {
                // Its start layer, or the one it had no keyframe for yet: it moves there.
                c.target = wanted.filter(|&w| w != layer);
            }
            if c.layer != layer {
                c.target = match kind {
                    Burst::Switch => None,
                    _ if fresh => c.target,
                    _ => c.target.or(Some(c.layer)),
                };
                c.layer = layer;
                c.loss.moved(now);
                // A viewer that had no picture yet was not moved.
                self.counters.layer_switches += u64::from(!fresh);
            }
        }
        // The keyframe (and its first packet twice) at once; what follows it, held a
        // moment when we seal for the viewer (hold.rs).
        let gop_from = (keyframe.len() + 1).min(burst.len());
        let hold = (sealed && gop_from < burst.len())
            .then_some(video_mid)
            .flatten();
        let (keyframe_part, gop_part) = match hold {
            Some(_) => burst.split_at(gop_from),
            None => (burst.as_slice(), &[][..]),
        };
        let exts = ExtensionValues::default();
        let _ = self.write_to_viewer(now, v, b, ti, keyframe_part, Start::Here, now, &exts);
        let started = match hold {
            Some(mid) => {
                if let Some(egress) = self.peer_mut(v).and_then(|p| p.egress.as_mut()) {
                    egress.hold(mid, now + HOLD);
                }
                let _ = self.write_to_viewer(now, v, b, ti, gop_part, Start::IfSynced, now, &exts);
                now + HOLD
            }
            None => now,
        };
        self.scratch_packets = burst;
        let Some(peer) = self.peer_mut(v) else { return };
        if kind != Burst::Switch {
            peer.first_frames = peer.first_frames.saturating_add(1);
        }
        let Peer {
            role: Role::Viewer(consumers),
            egress,
            ..
        } = peer
        else {
            return;
        };
        let Some(c) = consumers.iter_mut().find(|c| c.kind == MediaKind::Video) else {
            return;
        };
        // Kept with the numbers it was sent under.
        if let (Some(egress), Some(first)) = (egress, sent.first())
            && c.is_synced_to(source)
            && let Some(pt) = c.mapped_pt(first.pt)
        {
            let out = (c.seq_out(first.seq), c.ts_out(first.ts));
            egress.started_on(c.mid, sent.clone(), out, (first.pt, pt), started);
        }
        if !at_live_edge {
            c.unsync();
        }
        self.reschedule(v);
    }

    /// Queues a start burst for viewer `v` (once: a second request while one is queued is
    /// the same start).
    pub(super) fn queue_start(&mut self, v: PeerKey, kind: Burst) {
        if !self.pending_starts.iter().any(|(p, _)| *p == v) {
            self.pending_starts.push((v, kind));
        }
    }

    /// Work deferred until no `Rtc` is being drained: keyframe-cache bursts for viewers that
    /// just connected, then keyframe requests to publishers.
    pub(super) fn flush_deferred(&mut self, now: Instant) {
        // A start is a whole GOP (up to a few MB): like sealing, it waits while the outbox is
        // full, and `flush_writes` comes back here once it has been sent.
        while self.outbox.len_bytes() < OUTBOX_BUDGET
            && let Some((v, kind)) = self.pending_starts.pop()
        {
            self.send_keyframe_cache(now, v, kind);
        }
        while let Some((b, ti)) = self.pending_plis.pop() {
            let Some(route) = self.router.route_mut(b) else {
                continue;
            };
            let Some(publisher) = route.publisher else {
                // A mirror's home throttles keyframe requests for the whole broadcast.
                self.keyframe_from_home(b, ti);
                continue;
            };
            let Some(track) = route.tracks.get_mut(ti) else {
                continue;
            };
            if !track.take_pli_slot(now) {
                if let Some(at) = track.next_pli_slot()
                    && !self
                        .deferred_plis
                        .iter()
                        .any(|&(_, b2, t2)| (b2, t2) == (b, ti))
                {
                    self.deferred_plis.push((at, b, ti));
                }
                continue;
            }
            let (mid, rid) = (track.mid, track.layer);
            let Some(peer) = self.peer_mut(publisher) else {
                continue;
            };
            if !peer.connected {
                continue;
            }
            if let Some(rx) = peer.rtc.direct_api().stream_rx_by_mid(mid, rid) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                self.counters.plis_sent += 1;
                trace!(broadcast = %b, "keyframe requested from publisher");
            }
            self.drain(now, publisher);
        }
    }
}

/// The most a simulcast viewer's start burst may hold (payload bytes): about what a 1 Mb/s
/// link with a fifth of a second of queue takes at once, plus what it passes meanwhile.
const START_BURST_BYTES: usize = 48 * 1024;

/// What a start burst holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Burst {
    /// The keyframe and the GOP since it: a viewer without a picture yet (just connected, or
    /// its first burst was lost) starts at the live edge and its picture moves at once.
    WithGop,
    /// The keyframe alone, then the next IDR: a viewer that has a picture and a timeline
    /// and lost packets while it moved (an ICE restart). A GOP would be numbered from its
    /// last timestamp on, so every later frame would be stamped up to a GOP's age ahead of
    /// the real time and its jitter buffer would hold them back that long.
    Keyframe,
    /// The keyframe of the layer a viewer moves to and the GOP since it, while that is
    /// current (`Track::keyframe_is_current`): the move needs no keyframe from the publisher.
    /// Its timestamps squeezed toward the newest frame, it follows the viewer's timeline as
    /// a new publisher's first frame does (consumer.rs).
    Switch,
}
