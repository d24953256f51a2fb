//! Simulcast layers per viewer: a publisher that sends several sizes of its video has each
//! layer as a track of its own (router.rs, ranked from the full size down), and each viewer
//! is sent one of them, starting on a modest one (`Route::start_layer`). Moving a viewer to
//! another layer takes that layer's cached keyframe when it is current (with the few packets
//! since it); otherwise it waits for the layer's next keyframe, asked for about once a
//! second, and keeps sending the current layer until it arrives. Either way the viewer sees
//! one stream that goes on without a gap in its numbering (consumer.rs re-syncs on the new
//! layer as on a new publisher).

use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Rid};
use tracing::debug;

use super::consumer::Consumer;
use super::egress::Estimate;
use super::keyframes::Burst;
use super::peer::{Role, live};
use super::probe::Verdict;
use super::router::Route;
use super::{BroadcastKey, Engine, EngineEvent, LayerError, LayerState, PeerKey, SessionId};

impl Engine {
    /// Moves viewer `session` to the simulcast layer `rid` of its broadcast's video (pinned),
    /// or with `None` lets the server choose from its estimate again.
    pub(super) fn set_layer(
        &mut self,
        now: Instant,
        session: &SessionId,
        rid: Option<Rid>,
    ) -> Result<(), LayerError> {
        let key = *(self.sessions.get(session)).ok_or(LayerError::UnknownSession)?;
        let peer = self.peer_mut(key).ok_or(LayerError::UnknownSession)?;
        // A publisher's session is no viewer's: the same answer as for no session at all.
        if !matches!(peer.role, Role::Viewer(_)) {
            return Err(LayerError::UnknownSession);
        }
        let b = peer.broadcast;
        let on = (peer.consumer_mut(MediaKind::Video)).map_or(0, |c| c.target.unwrap_or(c.layer));
        let route = self.router.route(b).ok_or(LayerError::NoSuchLayer)?;
        let ti = match rid {
            // Automatic: the layer a new viewer would start on if that is larger than the
            // viewer's, else the one it is on; from there its estimate takes it.
            None => {
                let start = route.start_layer(MediaKind::Video, now);
                route.layer_index(MediaKind::Video, start.min(on))
            }
            Some(rid) => (route.tracks.iter())
                .position(|t| t.kind == MediaKind::Video && t.layer == Some(rid)),
        }
        .ok_or(LayerError::NoSuchLayer)?;
        let layer = route.tracks[ti].rank;
        let peer = live(&mut self.peers, key).ok_or(LayerError::UnknownSession)?;
        let Role::Viewer(consumers) = &mut peer.role else {
            return Err(LayerError::UnknownSession);
        };
        let c = (consumers.iter_mut())
            .find(|c| c.kind == MediaKind::Video)
            .ok_or(LayerError::NoSuchLayer)?;
        c.auto = rid.is_none();
        (c.below_since, c.above_since) = (None, None);
        c.probing.reset();
        if c.layer == layer {
            c.target = None;
            return Ok(());
        }
        c.target = Some(layer);
        ask_for_layer(
            now,
            route,
            key,
            (b, ti),
            &mut self.pending_plis,
            &mut self.pending_starts,
        );
        Ok(())
    }
}

impl Engine {
    /// Tells viewers of simulcast broadcast `b` its layers when they changed enough, at most
    /// every [`LAYERS_EVERY`] (called with each of its packets: a comparison until then).
    pub(super) fn tell_layers(&mut self, now: Instant, b: BroadcastKey) {
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        if route.layers(MediaKind::Video) < 2
            || route.layers_told.1.is_some_and(|t| now < t + LAYERS_EVERY)
        {
            return;
        }
        let layers: Vec<LayerState> = (route.tracks.iter())
            .filter(|t| t.kind == MediaKind::Video)
            .map(|t| LayerState {
                rid: t.layer.map(|r| r.to_string()).unwrap_or_default(),
                bitrate_bps: t.rate.bps(now),
                size: t.sps.map(|s| (s.width, s.height)),
            })
            .collect();
        route.layers_told.1 = Some(now);
        if !changed(&route.layers_told.0, &layers) {
            return;
        }
        route.layers_told.0 = layers.clone();
        self.events.push_back(EngineEvent::LayersChanged {
            broadcast: b,
            layers,
        });
    }
}

impl Engine {
    /// While viewer `v`'s link is probed, its sender reports go four times a second: the
    /// probe reads the viewer's queue from the round trips they give back (probe.rs).
    pub(super) fn quicken_reports_while_probing(&mut self, now: Instant, v: PeerKey) {
        let Some(peer) = live(&mut self.peers, v) else {
            return;
        };
        let probing = peer
            .consumer_mut(MediaKind::Video)
            .is_some_and(|c| c.probing.is_active());
        let moved = probing
            && (peer.egress.as_mut()).is_some_and(|e| e.quicken_reports(now, now + QUICK_FOR));
        if moved {
            self.reschedule(v);
        }
    }

    /// A new estimate of viewer `v`'s link (ours from its transport-wide feedback, or its
    /// REMB): in automatic mode it moves to the largest layer that fits with
    /// [`HEADROOM_PERCENT`], down once the estimate has stayed under its layer's bitrate (or
    /// its queue has stood, while no probe runs) for [`DOWN_AFTER`], up once it has stayed
    /// above a larger one (with the headroom) for [`UP_AFTER`]. A layer's bitrate counts the
    /// broadcast's audio. In between, its link may be probed for more (probe.rs); a probe
    /// that finds the link full moves the viewer off a layer that takes more than
    /// [`FILLS_PERCENT`] of what arrived, and no estimate moves it up to one.
    pub(super) fn follow_estimate(&mut self, now: Instant, v: PeerKey, estimate: Estimate) {
        let Estimate {
            bps,
            queued,
            ours,
            full_bps,
        } = estimate;
        let Some(peer) = live(&mut self.peers, v) else {
            return;
        };
        let b = peer.broadcast;
        // Probes are RTX copies sealed by us (egress.rs).
        let sealed = peer.egress.is_some();
        let Role::Viewer(consumers) = &mut peer.role else {
            return;
        };
        let Some(c) = consumers.iter_mut().find(|c| c.kind == MediaKind::Video) else {
            return;
        };
        let Some(route) = self.router.route(b) else {
            return;
        };
        let layers = route.layers(MediaKind::Video);
        if !c.auto || layers < 2 {
            return;
        }
        // A layer's bitrate, with the audio every viewer is sent whatever its layer: the
        // estimate measures all that arrives, so a layer that fits leaves room for both.
        let audio = (route.layer(MediaKind::Audio, 0)).map_or(0, |t| t.rate.bps(now));
        let needs = |l: u8| {
            route
                .layer(MediaKind::Video, l)
                .map_or(0, |t| t.rate.bps(now))
        };
        let with_audio = |l: u8| match needs(l) {
            0 => 0,
            bps => bps + audio,
        };
        let Some(largest) = (0..layers).find(|&l| needs(l) > 0) else {
            return;
        };
        let current = c.target.unwrap_or(c.layer);
        // Loss on its layer moves a viewer down though its estimate says the layer fits,
        // and bars that layer to it for a while (loss.rs).
        let pps = route
            .layer(MediaKind::Video, c.layer)
            .map_or(0, |t| t.rate.pps(now));
        let lossy = c.loss.lossy(now, pps, c.layer);
        if lossy
            && c.target.is_none()
            && let Some(smaller) = (c.layer + 1..layers).find(|&l| needs(l) > 0)
        {
            debug!(peer = %v, bps, from = c.layer, to = smaller, "the viewer loses packets on its layer");
            c.loss.bar(now, c.layer);
            c.probing.failed(now);
            let (plis, starts) = (&mut self.pending_plis, &mut self.pending_starts);
            move_to(now, route, (v, c), (b, smaller), plis, starts);
            return;
        }
        // The largest layer it may go to: what arrives, and not one it lost on lately.
        let largest = largest.max(c.loss.top(now));
        let larger = (largest..current).rev().find(|&l| needs(l) > 0);
        match c.probing.estimate(now, bps) {
            Verdict::Going => {}
            Verdict::Full => {
                debug!(peer = %v, bps, full_bps, "the probe found the link full");
                // What arrived as the probe filled the link is what it carries. A layer that
                // takes nearly all of it is left at once: its keyframes (and the next probe)
                // would overflow the link's queue.
                if full_bps.is_some_and(|full| with_audio(c.layer) * 100 > full * FILLS_PERCENT)
                    && c.target.is_none()
                    && let Some(smaller) = (c.layer + 1..layers).find(|&l| needs(l) > 0)
                {
                    debug!(peer = %v, bps, from = c.layer, to = smaller, "the viewer's layer fills its link");
                    let (plis, starts) = (&mut self.pending_plis, &mut self.pending_starts);
                    move_to(now, route, (v, c), (b, smaller), plis, starts);
                    return;
                }
            }
            Verdict::Carried => {
                // The link carried the larger layer's bitrate: up at once, the probe having
                // been the wait for a stable estimate.
                if let Some(larger) = larger
                    && c.target.is_none()
                {
                    debug!(peer = %v, bps, from = c.layer, to = larger, "the link carried the probe");
                    let (plis, starts) = (&mut self.pending_plis, &mut self.pending_starts);
                    move_to(now, route, (v, c), (b, larger), plis, starts);
                }
                return;
            }
        }
        // What the link carries: the estimate, or what a probe proved while the estimate
        // climbs towards it.
        let carries = c.probing.effective(now, bps);
        // The largest layer that arrives and fits with headroom; the smallest that arrives
        // if none does.
        let smallest = (largest..layers)
            .rev()
            .find(|&l| needs(l) > 0)
            .unwrap_or(largest);
        // Nor, by our estimate, one that would take nearly all the link carried when it was
        // last full (its estimate rises while nothing queues, whatever the link carries).
        let fills = |l: u8| full_bps.is_some_and(|full| with_audio(l) * 100 > full * FILLS_PERCENT);
        let fits = (largest..layers)
            .find(|&l| {
                needs(l) > 0
                    && with_audio(l).saturating_mul(HEADROOM_PERCENT) / 100 <= carries
                    && (l >= current || !fills(l))
            })
            .unwrap_or(smallest);
        // The layer a viewer is on is kept while the estimate covers most of its bitrate:
        // headroom is asked of a move up only, so an estimate that wanders around a layer's
        // bitrate (or, as a viewer starts, climbs to it) does not make it go back and forth.
        // Not a layer whose packets have stood in the link's queue for [`STANDING`], though
        // (while no probe runs): that is more than the link carries (a layer within a few
        // per cent of it), and each keyframe stalls.
        c.queued_since = match c.queued_since {
            _ if !queued || c.probing.is_active() => None,
            Some((t, layer)) if layer == c.layer => Some((t, layer)),
            _ => Some((now, c.layer)),
        };
        let overfills = c.queued_since.is_some_and(|(t, _)| now >= t + STANDING);
        let keep = if ours {
            KEEP_OURS_PERCENT
        } else {
            KEEP_PERCENT
        };
        let keeps = !overfills && needs(current) > 0 && with_audio(current) * keep / 100 <= carries;
        let (since, wait) = match fits.cmp(&current) {
            // Up while a probe runs: the probe decides (its copies are in the estimate).
            std::cmp::Ordering::Less if c.probing.is_active() => {
                (c.below_since, c.above_since) = (None, None);
                return;
            }
            std::cmp::Ordering::Less => {
                c.below_since = None;
                (c.above_since.get_or_insert(now), UP_AFTER)
            }
            std::cmp::Ordering::Greater if !keeps => {
                c.above_since = None;
                // An estimate still climbing (a browser's first seconds, or its recovery
                // after a move) is not a full link: the wait starts again while it rises.
                let below = c.below_since.get_or_insert((now, bps));
                if bps.saturating_mul(100) > below.1.saturating_mul(RISING_PERCENT) {
                    *below = (now, bps);
                }
                (&mut below.0, DOWN_AFTER)
            }
            _ => {
                (c.below_since, c.above_since) = (None, None);
                // Steady: probe for the next larger layer if the estimate says the link
                // may carry more than it is sent (probe.rs).
                if let Some(larger) = larger
                    && sealed
                    && c.rtx.is_some()
                    && c.target.is_none()
                    && c.probing.may_start(now, bps, with_audio(current))
                {
                    let to_bps = with_audio(larger).saturating_mul(HEADROOM_PERCENT) / 100;
                    debug!(peer = %v, bps, layer = current, to_bps, "probing the viewer's link");
                    c.probing.start(now, bps, with_audio(current), to_bps);
                }
                return;
            }
        };
        if now < *since + wait {
            return;
        }
        (c.below_since, c.above_since) = (None, None);
        if fits < current {
            c.probing.reset();
        } else {
            c.probing.failed(now);
        }
        c.target = (fits != c.layer).then_some(fits);
        debug!(peer = %v, bps, from = c.layer, to = fits, "viewer's layer follows its estimate");
        if let Some(ti) = route.layer_index(MediaKind::Video, fits)
            && c.target.is_some()
        {
            let (plis, starts) = (&mut self.pending_plis, &mut self.pending_starts);
            ask_for_layer(now, route, v, (b, ti), plis, starts);
        }
    }
}

/// Viewer `v` (its video consumer `c`) moves to `layer` of broadcast `b` at once: no wait
/// for the estimate under way, and the layer's keyframe as [`ask_for_layer`] gets it.
fn move_to(
    now: Instant,
    route: &Route,
    (v, c): (PeerKey, &mut Consumer),
    (b, layer): (BroadcastKey, u8),
    pending_plis: &mut Vec<(BroadcastKey, usize)>,
    pending_starts: &mut Vec<(PeerKey, Burst)>,
) {
    (c.below_since, c.above_since) = (None, None);
    c.target = Some(layer);
    if let Some(ti) = route.layer_index(MediaKind::Video, layer) {
        ask_for_layer(now, route, v, (b, ti), pending_plis, pending_starts);
    }
}

/// Viewer `v` is to move to track `ti` of broadcast `b`: with the layer's cached keyframe
/// and the GOP since it when that is current (a start burst of the target layer, queued for
/// `keyframes.rs`), else at the layer's next keyframe, asked of the publisher (at most once
/// a second per layer, `keyframes.rs`).
fn ask_for_layer(
    now: Instant,
    route: &Route,
    v: PeerKey,
    (b, ti): (BroadcastKey, usize),
    pending_plis: &mut Vec<(BroadcastKey, usize)>,
    pending_starts: &mut Vec<(PeerKey, Burst)>,
) {
    // A start still queued goes first; the move then waits for the layer's next keyframe.
    let current = (route.tracks.get(ti)).is_some_and(|t| t.keyframe_is_current(now))
        && !pending_starts.iter().any(|(p, _)| *p == v);
    if current {
        pending_starts.push((v, Burst::Switch));
    } else if !pending_plis.contains(&(b, ti)) {
        pending_plis.push((b, ti));
    }
}

/// Whether viewers should hear of `new`: a layer started or stopped arriving, changed size,
/// or its bitrate moved by more than a fifth.
fn changed(old: &[LayerState], new: &[LayerState]) -> bool {
    old.len() != new.len()
        || old.iter().zip(new).any(|(a, b)| {
            a.rid != b.rid
                || a.size != b.size
                || (a.bitrate_bps == 0) != (b.bitrate_bps == 0)
                || a.bitrate_bps.abs_diff(b.bitrate_bps) * 5 > a.bitrate_bps
        })
}

/// A layer fits an estimate that is this much above its bitrate (percent).
const HEADROOM_PERCENT: u64 = 115;
/// A layer is kept while the estimate is at least this share of its bitrate (percent): the
/// bitrate measured counts headers and keyframe bursts, and a browser's estimate starts
/// near what arrives and climbs from there.
const KEEP_PERCENT: u64 = 85;
/// The same for our estimate (egress/send_side.rs): on a full link it is 85 % of what
/// arrives, so a layer is kept while the link carries 1.18 times its bitrate (its audio,
/// headers and keyframes with it); one that needs more than the link carries (a layer within
/// a few per cent of it, whose keyframes overflow the link's queue) is left.
const KEEP_OURS_PERCENT: u64 = 100;
/// A layer (with its audio) that needs more than this share (percent) of what the viewer's
/// link carried when it was last full is left: on a 1 Mb/s link, a 970 kb/s layer played
/// until a keyframe or a probe overflowed the link's queue, and then froze.
const FILLS_PERCENT: u64 = 90;
/// How long reports stay quick after an estimate during a probe (browsers send several a
/// second).
const QUICK_FOR: Duration = Duration::from_secs(2);
/// An estimate this much above (percent) what it was when it fell under the viewer's layer
/// is climbing: Chromium's and Firefox's rise by about 8 % a second, a full link's wanders
/// by a few per cent.
const RISING_PERCENT: u64 = 105;
/// A queue that lasts this long on a layer stands: the layer is more than the link carries.
const STANDING: Duration = Duration::from_secs(2);
/// A downgrade is prompt: the estimate stayed under the layer this long.
const DOWN_AFTER: Duration = Duration::from_secs(1);
/// An upgrade waits for a stable estimate.
const UP_AFTER: Duration = Duration::from_secs(5);

/// How often viewers may be told of a broadcast's layers.
pub const LAYERS_EVERY: Duration = Duration::from_secs(2);
