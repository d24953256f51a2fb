//! Ending sessions: a peer that failed or timed out, a peer that hung up, a publisher that
//! vanished (viewers wait for it to resume), a broadcast that ended, and the final removal
//! from every index.
//!
//! # Hang-ups
//!
//! A clean close (DTLS close_notify, str0m's `Event::Closed`) is a deliberate hang-up, not a
//! network failure: WHIP/WHEP clients such as the `whip-whep` reference clients close their
//! PeerConnection first and send DELETE after. The session's URL therefore keeps answering
//! DELETE (`200`) for [`HANG_UP_WINDOW`] after the close ([`HungUp`]). For a publisher:
//!
//! - a DELETE in the window ends the broadcast at once, as a DELETE always does;
//! - a new publisher on the same broadcast in the window is spliced into the waiting viewers
//!   (hot resume, as after a loss);
//! - otherwise the broadcast ends when the window runs out: the publisher said goodbye, so
//!   its viewers do not wait the whole `--resume-grace` for it.
//!
//! A publisher lost without any close (crash, network) keeps the full resume grace.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use str0m::Output;
use tracing::{debug, info};

use super::outbox::Path;
use super::peer::{contained, live};
use super::{BroadcastKey, CloseReason, Engine, EngineEvent, PeerKey, SessionId};

impl Engine {
    /// A peer failed or timed out. A publisher that vanishes keeps its viewers for the
    /// resume grace; anything else is simply removed.
    pub(super) fn close_peer(&mut self, now: Instant, key: PeerKey, reason: CloseReason) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        let b = peer.broadcast;
        if !peer.is_publisher() {
            self.remove_peer(now, key, reason);
            return;
        }
        self.remove_peer(now, key, reason);
        info!(broadcast = %b, "publisher lost; viewers wait for it to resume");
        self.wait_for_publisher(now, b, now + self.config.resume_grace);
    }

    /// The peer closed its connection cleanly (see the module docs): its session URL answers
    /// DELETE for a while, and a publisher's viewers wait only [`HANG_UP_WINDOW`] for it.
    pub(super) fn hang_up(&mut self, now: Instant, key: PeerKey) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        let (b, publisher) = (peer.broadcast, peer.is_publisher());
        if peer.is_upstream() {
            // The origin closed an edge's pull: its broadcast ended, or the view ID was
            // rotated, or the edge was evicted. Either way this edge's viewers are done.
            info!(broadcast = %b, "the origin closed the pull; the broadcast ends here too");
            self.remove_peer(now, key, CloseReason::HungUp);
            self.end_route(now, b);
            return;
        }
        let session = peer.session.clone();
        self.hung_up.insert(now, session, b, publisher);
        self.remove_peer(now, key, CloseReason::HungUp);
        if publisher {
            info!(broadcast = %b, "publisher hung up; viewers wait briefly for a DELETE or a new session");
            let window = HANG_UP_WINDOW.min(self.config.resume_grace);
            self.wait_for_publisher(now, b, now + window);
        }
    }

    /// A DELETE for a session that hung up in the last [`HANG_UP_WINDOW`]: `true` if there
    /// was one (the DELETE succeeds). A publisher's broadcast ends now, unless a new
    /// publisher has taken it over since.
    pub(super) fn delete_hung_up(
        &mut self,
        now: Instant,
        session: &SessionId,
        publisher: bool,
    ) -> bool {
        let Some(b) = self.hung_up.take(now, session, publisher) else {
            return false;
        };
        let waiting = self
            .router
            .route(b)
            .is_some_and(|r| r.publisher.is_none() && r.lost_at.is_some());
        if publisher && waiting {
            info!(broadcast = %b, "publisher that hung up sent DELETE");
            self.end_route(now, b);
            if let Some(tap) = &self.recorder {
                tap.stopped(b);
            }
        }
        true
    }

    /// The broadcast's publisher is gone: its viewers are kept until `until` (the broadcast
    /// shows as reconnecting), or the broadcast ends now when nobody is watching.
    fn wait_for_publisher(&mut self, now: Instant, b: BroadcastKey, until: Instant) {
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        if route.viewers.is_empty() && route.relays.is_empty() {
            self.events.push_back(EngineEvent::BroadcastEnded(b));
            self.router.gc(b);
            return;
        }
        let grace = until;
        route.lost_at = Some(now);
        self.graces.push((until, b, route.generation, route.epoch));
        let viewers = route.viewers.clone();
        for v in viewers {
            if let Some(p) = self.peer_mut(v) {
                p.expires = Some(grace);
            }
            self.reschedule(v);
        }
        self.events.push_back(EngineEvent::BroadcastReconnecting(b));
        self.notify_mirrors(b, false);
    }

    /// Ends the broadcasts whose resume grace ran out without their publisher.
    pub(super) fn end_graces(&mut self, now: Instant) {
        if self.graces.iter().all(|g| g.0 > now) {
            return;
        }
        let (due, waiting) = std::mem::take(&mut self.graces)
            .into_iter()
            .partition::<Vec<_>, _>(|g| g.0 <= now);
        self.graces = waiting;
        for (_, b, generation, epoch) in due {
            let still_waiting = self.router.route(b).is_some_and(|r| {
                r.generation == generation
                    && r.epoch == epoch
                    && r.publisher.is_none()
                    && r.lost_at.is_some()
            });
            if still_waiting {
                info!(broadcast = %b, "publisher did not resume in time");
                self.end_route(now, b);
            }
        }
    }

    /// A broadcast whose publisher is away and whose last viewer (on any worker) just left
    /// ends now: the resume grace exists to keep viewers, and none is left to keep.
    pub(super) fn end_if_abandoned(&mut self, _now: Instant, b: BroadcastKey) {
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        if route.home.is_none()
            && route.lost_at.is_some()
            && route.publisher.is_none()
            && route.viewers.is_empty()
            && route.relays.is_empty()
        {
            info!(broadcast = %b, "last viewer left while the publisher was away");
            route.lost_at = None;
            self.events.push_back(EngineEvent::BroadcastEnded(b));
            self.router.gc(b);
        }
    }

    /// An engine-level expiry: a handshake that never finished, or a resume grace that ran out.
    pub(super) fn expire(&mut self, now: Instant, key: PeerKey, reason: CloseReason) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        let b = peer.broadcast;
        // A mirror's viewers wait for its home to say (span.rs).
        let waiting_for_resume = !peer.is_publisher()
            && (self.router.route(b)).is_some_and(|r| r.lost_at.is_some() && r.home.is_none());
        if waiting_for_resume {
            info!(broadcast = %b, "publisher did not resume in time");
            self.end_route(now, b);
        } else {
            self.close_peer(now, key, reason);
        }
    }

    /// The publisher stopped (DELETE): free it and its slot, close every viewer.
    pub(super) fn end_broadcast(&mut self, now: Instant, publisher: PeerKey) {
        let Some(peer) = self.peer_mut(publisher) else {
            return;
        };
        let b = peer.broadcast;
        self.remove_peer(now, publisher, CloseReason::Deleted);
        self.end_route(now, b);
        if let Some(tap) = &self.recorder {
            tap.stopped(b);
        }
    }

    pub(super) fn end_route(&mut self, now: Instant, b: BroadcastKey) {
        self.notify_mirrors(b, true);
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        route.lost_at = None;
        let viewers = std::mem::take(&mut route.viewers);
        for v in viewers {
            self.remove_peer(now, v, CloseReason::BroadcastEnded);
        }
        self.events.push_back(EngineEvent::BroadcastEnded(b));
        self.router.gc(b);
    }

    /// Closes a peer's `Rtc` (DTLS close_notify goes out), then forgets it everywhere.
    pub(super) fn remove_peer(&mut self, now: Instant, key: PeerKey, reason: CloseReason) {
        let Some(peer) = live(&mut self.peers, key) else {
            return;
        };
        if contained(|| peer.rtc.close()).is_ok() {
            for _ in 0..MAX_CLOSE_OUTPUTS {
                match contained(|| peer.rtc.poll_output()) {
                    Ok(Output::Transmit(t)) => {
                        let path = Path::from(&t);
                        self.outbox.push_copy(path, &t.contents);
                    }
                    Ok(Output::Event(_)) => {}
                    Ok(Output::Timeout(_)) | Err(_) => break,
                }
            }
        }
        let peer = self.peers.remove(key.index as usize);
        self.demux.remove(key, &peer.ufrag, &peer.addrs);
        self.deadlines.update(key, peer.deadline, None);
        self.sessions.remove(&peer.session);
        let b = peer.broadcast;
        let sessions = peer
            .audience
            .as_ref()
            .map(|a| a.left((self.config.worker, key), peer.connected));
        let mut mirrored = false;
        if let Some(route) = self.router.route_mut(b) {
            if route.publisher == Some(key) {
                route.publisher = None;
            }
            let before = route.viewers.len();
            route.viewers.retain(|v| *v != key);
            if route.viewers.len() != before {
                let viewers = sessions.unwrap_or(route.viewers.len());
                self.events.push_back(EngineEvent::ViewerCountChanged {
                    broadcast: b,
                    viewers,
                });
            }
            mirrored = route.home.is_some() && sessions.is_some();
        }
        if mirrored {
            self.left_mirror(b);
        }
        self.end_if_abandoned(now, b);
        if reason != CloseReason::Deleted {
            debug!(peer = %key, ?reason, "session closed");
        }
        info!(broadcast = %b, peer = %key, ?reason, "session removed");
        self.events.push_back(EngineEvent::SessionClosed {
            session: peer.session,
            reason,
        });
        self.router.gc(b);
    }
}

/// How long a session that hung up keeps answering DELETE, and how long viewers wait for a
/// publisher that hung up to come back. Clients send their DELETE right after closing (one
/// HTTP round trip); a few seconds covers a slow link, and is short enough that viewers of a
/// broadcaster who pressed Stop see "ended" soon even when no DELETE comes.
pub(crate) const HANG_UP_WINDOW: Duration = Duration::from_secs(5);

/// Sessions that hung up in the last [`HANG_UP_WINDOW`], by session ID. Bounded: entries
/// expire in insertion order (the window is the same for all), and past
/// [`MAX_HUNG_UP`] the oldest is forgotten early (its DELETE then answers 404).
#[derive(Default)]
pub(crate) struct HungUp {
    by_session: HashMap<SessionId, (BroadcastKey, bool, Instant)>,
    order: VecDeque<(Instant, SessionId)>,
}

impl HungUp {
    fn insert(&mut self, now: Instant, session: SessionId, b: BroadcastKey, publisher: bool) {
        self.expire(now);
        if self.order.len() >= MAX_HUNG_UP
            && let Some((_, old)) = self.order.pop_front()
        {
            self.by_session.remove(&old);
        }
        let until = now + HANG_UP_WINDOW;
        self.by_session
            .insert(session.clone(), (b, publisher, until));
        self.order.push_back((until, session));
    }

    /// The broadcast of a session that hung up, if it did so within the window and in the
    /// same URL space (`publisher`); the entry is used up.
    fn take(&mut self, now: Instant, session: &SessionId, publisher: bool) -> Option<BroadcastKey> {
        self.expire(now);
        match self.by_session.get(session) {
            Some(&(b, p, _)) if p == publisher => {
                self.by_session.remove(session);
                Some(b)
            }
            _ => None,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((until, _)) = self.order.front()
            && *until <= now
        {
            let (until, session) = self.order.pop_front().expect("front exists");
            if self.by_session.get(&session).is_some_and(|e| e.2 == until) {
                self.by_session.remove(&session);
            }
        }
    }
}

/// Hang-ups remembered at once: far above what arrives in a few seconds on one server
/// (every viewer of a full server closing its tab together), small in memory.
const MAX_HUNG_UP: usize = 4096;

/// Enough for RTCP BYE plus DTLS close_notify; a closing `Rtc` never produces more at once.
const MAX_CLOSE_OUTPUTS: usize = 16;
