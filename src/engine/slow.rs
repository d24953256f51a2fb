//! How each viewer fares on its link: whether its estimate (REMB) has stayed below what it is
//! sent for long enough that the picture will freeze (a *slow* viewer), and the report of
//! its layer and link for the viewer page (`GET /stream/session/<id>/layer`) and for the
//! broadcaster page's doctor and `/metrics`.
//!
//! A single-layer broadcast (OBS's default) can do nothing for a slow viewer but say so; a
//! simulcast one moves it down first (layers.rs), so a viewer counts as slow only on the
//! smallest layer that arrives, or on one it pinned itself.

use std::time::{Duration, Instant};

use str0m::media::MediaKind;

use super::command::METERED_LAYERS;
use super::consumer::Consumer;
use super::peer::{Peer, Role, live};
use super::router::Route;
use super::{BroadcastKey, Engine, LayerError, PeerKey, SessionId};

/// One viewer's video link against what it is sent.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Slowness {
    /// Since when every estimate has been below what the viewer needs.
    below_since: Option<Instant>,
    /// Since when every estimate has been enough again, while flagged.
    above_since: Option<Instant>,
    /// Flagged: it stayed below for [`SLOW_AFTER`] and has not recovered for [`CLEAR_AFTER`].
    flagged: bool,
}

impl Slowness {
    /// The viewer's estimate `bps` came at `now`; it is sent `needs` bits/s. `can_move_down`:
    /// the server can still give it a smaller layer, so it is not slow yet, whatever its link.
    ///
    /// Below means under [`BELOW_PERCENT`] of `needs`; the flag clears only at `needs` or
    /// more, so an estimate in between neither starts the count nor ends a flag.
    pub(crate) fn observe(&mut self, now: Instant, bps: u64, needs: u64, can_move_down: bool) {
        let below =
            !can_move_down && u128::from(bps) * 100 < u128::from(needs) * u128::from(BELOW_PERCENT);
        let enough = can_move_down || bps >= needs;
        if below {
            self.above_since = None;
            self.below_since.get_or_insert(now);
            self.flagged = self.flagged(now);
            return;
        }
        let was = self.flagged(now);
        self.below_since = None;
        if !was || !enough {
            self.above_since = None;
            self.flagged = was;
            return;
        }
        let since = *self.above_since.get_or_insert(now);
        self.flagged = now < since + CLEAR_AFTER;
        if !self.flagged {
            self.above_since = None;
        }
    }

    /// Whether the viewer is slow at `now`: below for [`SLOW_AFTER`] already (read between
    /// estimates too, so the flag does not wait for the next one), and not recovered since.
    pub(crate) fn flagged(&self, now: Instant) -> bool {
        self.flagged || self.below_since.is_some_and(|t| now >= t + SLOW_AFTER)
    }
}

/// What a viewer is sent and how its link fares: the answer to `GET …/layer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerLayer {
    /// The rid of the simulcast layer it is sent now (`None` without simulcast).
    pub rid: Option<String>,
    /// The picture height of that layer, from its SPS (H.264).
    pub height: Option<u32>,
    /// The rid of the layer it moves to at that layer's next keyframe.
    pub target: Option<String>,
    /// The server chooses its layer (false once the viewer pinned one).
    pub auto: bool,
    /// Its latest estimate of its link (REMB), bits/s; `None` before the first.
    pub estimate_bps: Option<u64>,
    /// What it is sent (or is moving to): its video layer and the audio, bits/s.
    pub needs_bps: u64,
    /// Its estimate has stayed below `needs_bps` with no smaller layer to move it to.
    pub slow: bool,
}

impl Engine {
    /// Viewer `v` told its estimate `bps` (feedback.rs, after the layer choice saw it).
    pub(super) fn track_slow(&mut self, now: Instant, v: PeerKey, bps: u64) {
        let Some(peer) = live(&mut self.peers, v) else {
            return;
        };
        let b = peer.broadcast;
        let Role::Viewer(consumers) = &mut peer.role else {
            return;
        };
        let Some(c) = consumers.iter_mut().find(|c| c.kind == MediaKind::Video) else {
            return;
        };
        let Some(route) = self.router.route(b) else {
            return;
        };
        let (needs, can_move_down) = needs(route, c, now);
        c.slow.observe(now, bps, needs, can_move_down);
    }

    /// `GET /stream/session/<id>/layer`: the viewer's layer, where it is moving, and how its
    /// link fares. A publisher's session is answered as no session at all.
    pub(super) fn describe_layer(
        &self,
        now: Instant,
        session: &SessionId,
    ) -> Result<ViewerLayer, LayerError> {
        let key = *(self.sessions.get(session)).ok_or(LayerError::UnknownSession)?;
        let peer = (self.peers.get(key.index as usize))
            .filter(|p| p.generation == key.generation)
            .ok_or(LayerError::UnknownSession)?;
        let Role::Viewer(consumers) = &peer.role else {
            return Err(LayerError::UnknownSession);
        };
        let estimate_bps = peer
            .egress
            .as_ref()
            .and_then(|e| e.estimate)
            .map(|(bps, _)| bps);
        let Some(c) = consumers.iter().find(|c| c.kind == MediaKind::Video) else {
            return Ok(ViewerLayer {
                rid: None,
                height: None,
                target: None,
                auto: true,
                estimate_bps,
                needs_bps: 0,
                slow: false,
            });
        };
        let route = self.router.route(peer.broadcast);
        let track = |layer: u8| route.and_then(|r| r.layer(MediaKind::Video, layer));
        let rid = |layer: u8| track(layer).and_then(|t| t.layer.map(|r| r.to_string()));
        Ok(ViewerLayer {
            rid: rid(c.layer),
            height: track(c.layer).and_then(|t| t.sps).map(|s| s.height),
            target: c.target.and_then(rid),
            auto: c.auto,
            estimate_bps,
            needs_bps: route.map_or(0, |r| needs(r, c, now).0),
            slow: c.slow.flagged(now),
        })
    }

    /// Viewers of broadcast `b` on this engine that are slow at `now` (the doctor's count).
    pub(super) fn slow_viewers(&self, now: Instant, b: BroadcastKey) -> usize {
        let Some(route) = self.router.route(b) else {
            return 0;
        };
        (route.viewers.iter())
            .filter_map(|v| {
                self.peers
                    .get(v.index as usize)
                    .filter(|p| p.generation == v.generation)
            })
            .filter_map(video_of)
            .filter(|c| c.slow.flagged(now))
            .count()
    }

    /// Every slow viewer, and the viewers of simulcast broadcasts by the layer they are sent
    /// (rank 0 is the full size), for `/metrics`: a walk over the peers, as `stats` does.
    /// `now`: the latest instant the engine saw (none yet: nobody has been slow for long).
    pub(super) fn viewer_layers(&self, now: Option<Instant>) -> (usize, [usize; METERED_LAYERS]) {
        let (mut slow, mut by_layer) = (0, [0; METERED_LAYERS]);
        for (_, peer) in &self.peers {
            let Some(c) = video_of(peer) else {
                continue;
            };
            slow += usize::from(now.is_some_and(|now| c.slow.flagged(now)));
            let simulcast =
                (self.router.route(peer.broadcast)).is_some_and(|r| r.layers(MediaKind::Video) > 1);
            if let Some(n) = by_layer.get_mut(usize::from(c.layer)).filter(|_| simulcast) {
                *n += 1;
            }
        }
        (slow, by_layer)
    }
}

/// A viewer peer's video consumer.
fn video_of(peer: &Peer) -> Option<&Consumer> {
    match &peer.role {
        Role::Viewer(consumers) => consumers.iter().find(|c| c.kind == MediaKind::Video),
        _ => None,
    }
}

/// What viewer video consumer `c` needs (the layer it is sent, or moving to, and the audio),
/// and whether the server could still move it to a smaller layer that arrives.
fn needs(route: &Route, c: &Consumer, now: Instant) -> (u64, bool) {
    let layer = c.target.unwrap_or(c.layer);
    let rate = |kind: MediaKind, layer: u8| route.layer(kind, layer).map_or(0, |t| t.rate.bps(now));
    let smaller =
        (layer + 1..route.layers(MediaKind::Video)).any(|l| rate(MediaKind::Video, l) > 0);
    (
        rate(MediaKind::Video, layer) + rate(MediaKind::Audio, 0),
        c.auto && smaller,
    )
}

/// A viewer whose estimate stays below what it is sent this long is told its link is too
/// slow (issue 26): long enough that a start-up estimate still climbing (Chromium's REMB
/// starts from what it measured over its first seconds and grows by about 8 % a second) or
/// a dip of a few seconds (a keyframe, a Wi-Fi hiccup) does not flag a viewer that plays
/// well, short enough that the notice comes while the viewer still wonders why it freezes.
pub const SLOW_AFTER: Duration = Duration::from_secs(10);
/// The flag clears once every estimate for this long has been enough: three of Chromium's
/// REMBs (about one a second while steady), so one lucky report does not hide the notice
/// only for it to come back, and a link that did recover is told so within seconds.
pub const CLEAR_AFTER: Duration = Duration::from_secs(3);
/// An estimate counts as below what the viewer is sent under this share of it (percent): the
/// server counts the ingest (payload, the publisher's RTP headers, the audio) and the
/// browser its own arrivals, over other windows, and the two differ by a few percent on a
/// link that carries the stream well (Firefox's REMB sat at 100.6 % of it in a run); a
/// link 10 % short of the stream is one that freezes.
const BELOW_PERCENT: u64 = 90;

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_viewer_below_for_ten_seconds_is_slow_and_not_before() {
        let t0 = crate::clock::now();
        let mut s = Slowness::default();
        for i in 0..=9 {
            s.observe(t0 + S * i, 200_000, 1_000_000, false);
        }
        assert!(!s.flagged(t0 + S * 9), "9 s below is not slow yet");
        assert!(
            s.flagged(t0 + S * 10),
            "10 s below is, even between estimates"
        );
        s.observe(t0 + S * 11, 200_000, 1_000_000, false);
        assert!(s.flagged(t0 + S * 11));
    }

    #[test]
    fn one_estimate_above_starts_the_ten_seconds_again() {
        let t0 = crate::clock::now();
        let mut s = Slowness::default();
        s.observe(t0, 200_000, 1_000_000, false);
        s.observe(t0 + S * 8, 1_200_000, 1_000_000, false);
        s.observe(t0 + S * 9, 200_000, 1_000_000, false);
        assert!(!s.flagged(t0 + S * 15), "below only since 9 s");
        assert!(s.flagged(t0 + S * 19));
    }

    #[test]
    fn the_flag_clears_after_three_seconds_of_enough() {
        let t0 = crate::clock::now();
        let mut s = Slowness::default();
        for i in 0..=10 {
            s.observe(t0 + S * i, 200_000, 1_000_000, false);
        }
        assert!(s.flagged(t0 + S * 10));
        s.observe(t0 + S * 11, 1_000_000, 1_000_000, false);
        s.observe(t0 + S * 13, 1_100_000, 1_000_000, false);
        assert!(
            s.flagged(t0 + S * 13),
            "two seconds of enough are not yet a recovery"
        );
        s.observe(t0 + S * 14, 1_100_000, 1_000_000, false);
        assert!(!s.flagged(t0 + S * 14), "three are");
        // A relapse within the recovery starts it again.
        for i in 20..=30 {
            s.observe(t0 + S * i, 200_000, 1_000_000, false);
        }
        s.observe(t0 + S * 31, 1_100_000, 1_000_000, false);
        s.observe(t0 + S * 32, 200_000, 1_000_000, false);
        s.observe(t0 + S * 33, 1_100_000, 1_000_000, false);
        s.observe(t0 + S * 35, 1_100_000, 1_000_000, false);
        assert!(s.flagged(t0 + S * 35), "enough only since 33 s");
    }

    #[test]
    fn an_estimate_just_under_the_stream_neither_flags_nor_clears() {
        let t0 = crate::clock::now();
        let mut s = Slowness::default();
        for i in 0..=20 {
            s.observe(t0 + S * i, 950_000, 1_000_000, false);
        }
        assert!(!s.flagged(t0 + S * 20), "95 % of the stream is not slow");
        for i in 21..=31 {
            s.observe(t0 + S * i, 500_000, 1_000_000, false);
        }
        assert!(s.flagged(t0 + S * 31));
        for i in 32..=40 {
            s.observe(t0 + S * i, 950_000, 1_000_000, false);
        }
        assert!(s.flagged(t0 + S * 40), "nor is it a recovery");
    }

    #[test]
    fn a_viewer_that_can_move_down_is_never_slow() {
        let t0 = crate::clock::now();
        let mut s = Slowness::default();
        for i in 0..=20 {
            s.observe(t0 + S * i, 100_000, 1_000_000, true);
        }
        assert!(!s.flagged(t0 + S * 20));
    }
}
