//! Broadcast routes: who publishes, which tracks (track.rs: the per-track frame state that
//! decides where a viewer may start), who watches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use str0m::media::{MediaKind, Mid};

use super::audience::Audience;
use super::command::{IngestTrack, LayerInfo, LayerIngest, LayerState, METERED_LAYERS};
use super::key::{BroadcastKey, PeerKey};
pub(crate) use super::track::{Mirrored, RateMeter, Track};

/// All routes, by broadcast.
#[derive(Default)]
pub(crate) struct Router {
    routes: HashMap<BroadcastKey, Route>,
    /// Numbers the routes this engine creates (see [`Route::generation`]).
    generations: u64,
}

/// One broadcast as the media path sees it.
#[derive(Default)]
pub(crate) struct Route {
    pub(crate) publisher: Option<PeerKey>,
    /// Set while the publisher is gone without a DELETE and viewers wait for it to resume.
    pub(crate) lost_at: Option<Instant>,
    /// Bumped for every new publisher, so consumers know to splice.
    pub(crate) epoch: u32,
    pub(crate) tracks: Vec<Track>,
    /// Viewers in join order: the first is the oldest (evicted first when full).
    pub(crate) viewers: Vec<PeerKey>,
    pub(crate) live_since: Option<Instant>,
    pub(crate) ingest: RateMeter,
    pub(crate) sps: Option<crate::h264::SpsInfo>,
    pub(crate) ingest_loss: Option<f32>,
    /// Every viewer of the broadcast on any worker: the viewer cap's book (audience.rs).
    pub(crate) audience: Arc<Audience>,
    /// Set on a mirror (span.rs): the worker whose engine has the publisher.
    pub(crate) home: Option<usize>,
    /// Tells this route from an earlier one of the same broadcast, in messages between
    /// engines (a mirror's is its home's).
    pub(crate) generation: u64,
    /// A mirror whose home has a publisher: it is live.
    pub(crate) fed: bool,
    /// On the home: the workers holding mirrors, with their viewer sessions.
    pub(crate) relays: Vec<(usize, usize)>,
    /// The simulcast layers viewers were last told of, and when (layers.rs).
    pub(crate) layers_told: (Vec<LayerState>, Option<Instant>),
}

impl Router {
    pub(crate) fn route(&self, b: BroadcastKey) -> Option<&Route> {
        self.routes.get(&b)
    }

    pub(crate) fn route_mut(&mut self, b: BroadcastKey) -> Option<&mut Route> {
        self.routes.get_mut(&b)
    }

    pub(crate) fn entry(&mut self, b: BroadcastKey) -> &mut Route {
        let generations = &mut self.generations;
        self.routes.entry(b).or_insert_with(|| {
            *generations += 1;
            Route {
                generation: *generations,
                ..Route::default()
            }
        })
    }

    pub(crate) fn remove(&mut self, b: BroadcastKey) {
        self.routes.remove(&b);
    }

    /// Drops routes with neither publisher nor viewers, so the map stays as small as the
    /// set of active broadcasts.
    pub(crate) fn gc(&mut self, b: BroadcastKey) {
        if let Some(r) = self.routes.get(&b)
            && r.home.is_none()
            && r.relays.is_empty()
            && r.publisher.is_none()
            && r.lost_at.is_none()
            && r.viewers.is_empty()
        {
            self.routes.remove(&b);
        }
    }

    /// Broadcasts holding a slot: live, or waiting for their publisher to resume.
    /// What the publishers of simulcast broadcasts here send, by layer rank (home routes
    /// only: a mirror's layers are its home's), for `/metrics`.
    pub(crate) fn simulcast_ingest(&self, now: Option<Instant>) -> [LayerIngest; METERED_LAYERS] {
        let mut by_rank = [LayerIngest::default(); METERED_LAYERS];
        let Some(now) = now else { return by_rank };
        let simulcast = (self.routes.values())
            .filter(|r| r.publisher.is_some() && r.layers(MediaKind::Video) > 1);
        for t in simulcast.flat_map(|r| r.tracks.iter()) {
            if let Some(m) =
                (by_rank.get_mut(usize::from(t.rank))).filter(|_| t.kind == MediaKind::Video)
            {
                m.bits_per_second += t.rate.bps(now);
                m.height = m.height.max(t.sps.map_or(0, |s| s.height));
            }
        }
        by_rank
    }

    pub(crate) fn slots_in_use(&self) -> usize {
        self.routes.values().filter(|r| r.holds_slot()).count()
    }

    pub(crate) fn holding_slots(&self) -> impl Iterator<Item = BroadcastKey> + '_ {
        self.routes
            .iter()
            .filter(|(_, r)| r.holds_slot())
            .map(|(b, _)| *b)
    }

    pub(crate) fn live(&self) -> usize {
        self.routes
            .values()
            .filter(|r| r.publisher.is_some())
            .count()
    }
}

impl Route {
    /// Viewers may join: a publisher here, or at the home of a mirror.
    pub(crate) fn is_live(&self) -> bool {
        self.publisher.is_some() || self.fed
    }

    /// Live or waiting for its publisher to resume, on its home (a mirror holds no slot).
    pub(crate) fn holds_slot(&self) -> bool {
        self.home.is_none() && (self.publisher.is_some() || self.lost_at.is_some())
    }

    /// The publisher's tracks as a new engine would be told them.
    pub(crate) fn ingest_tracks(&self) -> Vec<IngestTrack> {
        self.tracks
            .iter()
            .map(|t| IngestTrack {
                mid: t.mid,
                kind: t.kind,
                params: t.params.clone(),
                layer: t.layer,
            })
            .collect()
    }

    /// A mirror takes its home's publisher epoch, tracks, cached keyframes, GOPs and
    /// bitrates (the home relays every later packet, so they go on from there).
    pub(crate) fn mirror_epoch(&mut self, epoch: u32, tracks: &[IngestTrack], home: Vec<Mirrored>) {
        self.epoch = epoch;
        self.tracks = Track::all(tracks);
        for (t, home) in self.tracks.iter_mut().zip(home) {
            t.start_from(home);
        }
    }

    /// Installs a new publisher's tracks; consumers re-sync at the next keyframe.
    pub(crate) fn start_epoch(&mut self, publisher: PeerKey, tracks: &[IngestTrack]) {
        self.publisher = Some(publisher);
        self.lost_at = None;
        self.ingest = RateMeter::default();
        self.sps = None;
        self.ingest_loss = None;
        self.epoch = self.epoch.wrapping_add(1);
        self.tracks = Track::all(tracks);
    }

    /// The track of a packet: its m-line and, with simulcast, its layer.
    pub(crate) fn track_index(&self, mid: Mid, rid: Option<str0m::media::Rid>) -> Option<usize> {
        self.tracks
            .iter()
            .position(|t| t.mid == mid && (t.layer.is_none() || t.layer == rid))
    }

    /// The track of `kind` at simulcast rank `layer` (0: the full-size or only one).
    pub(crate) fn layer(&self, kind: MediaKind, layer: u8) -> Option<&Track> {
        self.tracks
            .iter()
            .find(|t| t.kind == kind && t.rank == layer)
    }

    /// Its index, as [`layer`](Self::layer).
    pub(crate) fn layer_index(&self, kind: MediaKind, layer: u8) -> Option<usize> {
        self.tracks
            .iter()
            .position(|t| t.kind == kind && t.rank == layer)
    }

    /// The video layers as they arrive, the full-size one first.
    pub(crate) fn layer_infos(&self, now: Instant) -> Vec<LayerInfo> {
        (self.tracks.iter())
            .filter(|t| t.kind == MediaKind::Video)
            .map(|t| LayerInfo {
                rid: t.layer.map(|r| r.to_string()),
                bitrate_bps: t.rate.bps(now),
                size: t.sps.map(|s| (s.width, s.height)),
                fps: t.doctor.fps,
            })
            .collect()
    }

    /// The simulcast layer of `kind` a new viewer starts on: the largest that arrives at no
    /// more than [`START_BPS`], else the smallest that arrives. A viewer's link is unknown
    /// when it connects, and the start burst (a keyframe and the GOP since it, keyframes.rs)
    /// of a layer larger than its link floods it: the first picture then waits for repairs
    /// or the next keyframe. From the start layer its estimate and probes move it (layers.rs,
    /// probe.rs). While no layer has been measured (the broadcast's first second: a start
    /// burst is then little more than its first keyframe) it starts on the full size.
    pub(crate) fn start_layer(&self, kind: MediaKind, now: Instant) -> u8 {
        let layers = self.layers(kind);
        let bps = |l: u8| self.layer(kind, l).map_or(0, |t| t.rate.bps(now));
        (0..layers)
            .find(|&l| (1..=START_BPS).contains(&bps(l)))
            .or_else(|| (0..layers).rev().find(|&l| bps(l) > 0))
            .unwrap_or(0)
    }

    /// How many layers of `kind` the publisher sends (1 without simulcast).
    pub(crate) fn layers(&self, kind: MediaKind) -> u8 {
        self.tracks.iter().filter(|t| t.kind == kind).count() as u8
    }
}

/// The bitrate a new viewer's layer may have ([`Route::start_layer`]): what a modest link (a
/// phone's 1.5 Mb/s) carries with the headroom a move up asks for.
const START_BPS: u64 = 1_200_000;
