//! Time: the timer index's due peers, each `Rtc` fed the time and drained, viewers' reports,
//! and when the engine next wants to be woken.

use std::time::Instant;

use str0m::{Input, Output};
use tracing::{debug, info};

use super::demux::{is_rtp_or_rtcp, is_stun};
use super::first_frame;
use super::outbox::Path;
use super::peer::{contained, live};
use super::{CloseReason, Engine, PeerKey};

impl Engine {
    /// Advances every peer whose deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        self.flush_writes();
        let mut due = std::mem::take(&mut self.scratch_keys);
        due.clear();
        self.deadlines.pop_due(now, &mut due);
        let pending = &mut self.pending_plis;
        self.deferred_plis.retain(|&(at, b, ti)| {
            let due = at <= now;
            if due {
                pending.push((b, ti));
            }
            !due
        });
        self.end_graces(now);
        for &key in &due {
            let Some(peer) = self.peer_mut(key) else {
                continue;
            };
            peer.deadline = None;
            if peer.expires.is_some_and(|t| t <= now) {
                let reason = if peer.connected {
                    CloseReason::BroadcastEnded
                } else {
                    CloseReason::TimedOut
                };
                self.expire(now, key, reason);
                continue;
            }
            if peer.is_silent(now) {
                let role = if peer.is_publisher() {
                    "publisher"
                } else {
                    "viewer"
                };
                info!(peer = %key, role, "peer sent nothing for a while: gone");
                self.close_peer(now, key, CloseReason::TimedOut);
                continue;
            }
            self.tick(now, key);
            self.report(now, key);
        }
        self.scratch_keys = due;
        self.flush_deferred(now);
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.last_now {
            // Written packets wait for a tick: at once.
            Some(now) if !self.dirty.is_empty() => Some(now),
            _ => {
                let deferred = (self.deferred_plis.iter().map(|(at, ..)| *at))
                    .chain(self.graces.iter().map(|(at, ..)| *at))
                    .min();
                match (self.deadlines.earliest(), deferred) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// Feeds the `Rtc` the current time and drains it.
    ///
    /// A write is released in two steps (the tick schedules the send for `now`, a second tick
    /// at `now` sends it), so a tick that leaves the peer due at once is followed by one more
    /// right away: the packets leave in this turn, not the next.
    pub(super) fn tick(&mut self, now: Instant, key: PeerKey) {
        for _ in 0..TICKS_PER_TURN {
            let Some(peer) = self.peer_mut(key) else {
                return;
            };
            if let Err(e) = contained(|| peer.rtc.handle_input(Input::Timeout(now))) {
                debug!(peer = %key, error = %e, "peer timeout failed");
                self.close_peer(now, key, CloseReason::PeerFailed);
                return;
            }
            self.drain(now, key);
            if self
                .peer_mut(key)
                .and_then(|p| p.rtc_deadline)
                .is_none_or(|t| t > now)
            {
                return;
            }
        }
    }

    /// Drains a peer's `Rtc` until it asks for a timeout, acting on every output.
    pub(super) fn drain(&mut self, now: Instant, key: PeerKey) {
        loop {
            let Some(peer) = self.peer_mut(key) else {
                return;
            };
            match contained(|| peer.rtc.poll_output()) {
                Ok(Output::Timeout(t)) => {
                    peer.rtc_deadline = Some(t);
                    self.reschedule(key);
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    let path = Path::from(&t);
                    // Our final DTLS flight again: the peer never got it, so a viewer could
                    // not decrypt the first frame it was sent (first_frame.rs).
                    let flight_again =
                        peer.connected && first_frame::is_dtls_handshake(&t.contents);
                    if !is_stun(&t.contents) {
                        if !peer.consent.fresh((path.proto, path.destination), now) {
                            // Not heard from lately: maybe not the peer's address at all.
                            continue;
                        }
                        // DTLS and RTCP leave on the selected pair; STUN answers go wherever
                        // the check came from.
                        peer.media_path = Some(path);
                    }
                    if peer.egress.is_some() && is_rtp_or_rtcp(&t.contents) {
                        // Reports about streams str0m no longer sends (see egress.rs).
                        continue;
                    }
                    self.counters.packets_out += 1;
                    self.counters.bytes_out += t.contents.len() as u64;
                    self.outbox.push_copy(path, &t.contents);
                    if flight_again {
                        self.resend_first_frame(key);
                    }
                }
                Ok(Output::Event(e)) => self.on_event(now, key, e),
                Err(e) => {
                    debug!(peer = %key, error = %e, "peer output failed");
                    self.close_peer(now, key, CloseReason::PeerFailed);
                    return;
                }
            }
        }
    }

    /// Sends a viewer's sender reports and first-frame repeats when they are due (viewers we
    /// seal for only).
    fn report(&mut self, now: Instant, key: PeerKey) {
        let Some(peer) = live(&mut self.peers, key) else {
            return;
        };
        if let Some(p) = peer.media_path
            && !peer.consent.fresh((p.proto, p.destination), now)
        {
            // Our own sealed media follows `media_path`: it stops with it.
            peer.media_path = None;
        }
        let path = peer.media_path;
        let Some(egress) = peer.egress.as_mut() else {
            return;
        };
        self.counters.retransmissions += egress.repair_first_frame(now, path, &mut self.outbox);
        if egress.release_due_hold(now) {
            let f = egress.flush(now, path, &mut self.outbox);
            self.counters.packets_out += f.datagrams;
            self.counters.probe_packets += f.copies;
            self.counters.bytes_out += f.bytes;
        }
        egress.report(now, path, &mut self.outbox);
        self.reschedule(key);
    }

    pub(super) fn reschedule(&mut self, key: PeerKey) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        let next = peer.next_deadline();
        let old = peer.deadline;
        peer.deadline = next;
        self.deadlines.update(key, old, next);
    }
}

/// str0m releases a written packet on the second tick at the same instant; a third covers a
/// pacer step. More would mean the `Rtc` keeps asking for `now`, which the next turn handles.
const TICKS_PER_TURN: usize = 3;
