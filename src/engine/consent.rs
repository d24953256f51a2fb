//! Where a peer's datagrams may go, and how fast it may move: a viewer knows its session's
//! ICE password, so it can nominate any source address, a third party's included (ICE-lite
//! takes USE-CANDIDATE from any address whose STUN passes MESSAGE-INTEGRITY). Without limits
//! whipcast would reflect a broadcast's bitrate at whoever the viewer names.
//!
//! Two bounds, both per session:
//! - new source addresses reach the peer's `Rtc` at most [`MAX_NEW_ADDRS`] times in all, and
//!   once connected at most once per [`MIN_ADDR_CHANGE`], so str0m's ICE agent (which never
//!   prunes remote candidates) stays small and the media address cannot be swung around;
//! - nothing but STUN answers goes to an address that has not sent the session anything it
//!   accepted for [`CONSENT`] (RFC 7675 consent freshness, which an ICE-lite server cannot
//!   run itself: the peer's checks, or anything else it sends from the address, renew it).
//!
//! What remains: an attacker who keeps forging valid STUN from the victim's address (it has
//! the password) keeps that address "heard"; it then gets one viewer's stream, no more, from
//! one session whose address it may move once per [`MIN_ADDR_CHANGE`], and only a few times.

use std::time::{Duration, Instant};

use super::demux::Remote;

#[derive(Default)]
pub(crate) struct Consent {
    /// The addresses the session was last heard from, newest last.
    heard: Vec<(Remote, Instant)>,
    new_addrs: usize,
    last_new: Option<Instant>,
}

impl Consent {
    /// Whether a datagram from an address not yet indexed for this session may reach its
    /// `Rtc`.
    pub(crate) fn admits_new(&self, now: Instant, connected: bool) -> bool {
        if self.new_addrs >= MAX_NEW_ADDRS {
            return false;
        }
        // Before DTLS completes a browser tries its candidates in a burst; that is ICE, not a
        // move.
        !connected || self.last_new.is_none_or(|t| now >= t + MIN_ADDR_CHANGE)
    }

    /// A new address was admitted (its datagram was accepted).
    pub(crate) fn added(&mut self, now: Instant, connected: bool) {
        self.new_addrs += 1;
        if connected {
            self.last_new = Some(now);
        }
    }

    /// The session accepted a datagram from `remote`.
    pub(crate) fn heard(&mut self, remote: Remote, now: Instant) {
        if let Some(entry) = self.heard.iter_mut().find(|(r, _)| *r == remote) {
            entry.1 = now;
            return;
        }
        if self.heard.len() >= MAX_HEARD {
            let oldest = (0..self.heard.len())
                .min_by_key(|i| self.heard[*i].1)
                .expect("the list is full, so not empty");
            self.heard.swap_remove(oldest);
        }
        self.heard.push((remote, now));
    }

    /// When the session last accepted a datagram, from any address: the newest record (the
    /// list drops its oldest when full, so the newest is always kept).
    pub(crate) fn last_heard(&self) -> Option<Instant> {
        self.heard.iter().map(|(_, t)| *t).max()
    }

    /// Whether `remote` sent the session something it accepted within [`CONSENT`].
    pub(crate) fn fresh(&self, remote: Remote, now: Instant) -> bool {
        self.heard
            .iter()
            .any(|(r, t)| *r == remote && now < *t + CONSENT)
    }
}

/// New source addresses per session: a viewer's host, reflexive and relayed candidates on two
/// IP families, plus a few network changes.
const MAX_NEW_ADDRS: usize = 8;
/// Once connected, how often the media address may move (a Wi-Fi to cellular switch is one
/// move; a reflector swinging between targets is many).
const MIN_ADDR_CHANGE: Duration = Duration::from_secs(2);
/// How long an address stays a destination without being heard from: RFC 7675's consent
/// lifetime (§5.1, 30 s after the last consent check). For a peer that sends consent checks
/// (browsers) that is exactly RFC 7675; one that sends none keeps consent by what else it
/// sends from the address (RTCP, media, libnice's Binding indications every 25 s). The cost:
/// someone able to forge one valid check from a victim's address (it needs the session's ICE
/// password) aims one viewer's stream at it for this long.
pub(crate) const CONSENT: Duration = Duration::from_secs(30);
/// Addresses remembered per session (as many as the demux index keeps, and a spare).
const MAX_HEARD: usize = 5;

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick their own start instant
mod tests {
    use super::*;

    #[test]
    fn new_addresses_are_capped_in_all_however_slowly_they_come() {
        let mut consent = Consent::default();
        let mut now = Instant::now();
        for _ in 0..MAX_NEW_ADDRS {
            assert!(consent.admits_new(now, true));
            consent.added(now, true);
            now += MIN_ADDR_CHANGE;
        }
        // The demux index keeps only a few addresses per peer, but str0m keeps every remote
        // candidate it is shown: this total is what bounds its ICE agent.
        assert!(!consent.admits_new(now + Duration::from_secs(3_600), true));
    }

    #[test]
    fn once_connected_the_address_moves_at_most_once_per_interval() {
        let mut consent = Consent::default();
        let now = Instant::now();
        // Before DTLS completes, a browser's candidates come in a burst.
        for _ in 0..3 {
            assert!(consent.admits_new(now, false));
            consent.added(now, false);
        }
        assert!(consent.admits_new(now, true));
        consent.added(now, true);
        assert!(!consent.admits_new(now + MIN_ADDR_CHANGE / 2, true));
        assert!(consent.admits_new(now + MIN_ADDR_CHANGE, true));
    }

    #[test]
    fn the_newest_record_is_when_the_session_was_last_heard() {
        let mut consent = Consent::default();
        assert_eq!(consent.last_heard(), None);
        let mut now = Instant::now();
        // More addresses than are kept: the oldest go, the newest stays.
        for port in 0..(MAX_HEARD as u16 * 2) {
            now += Duration::from_millis(10);
            let remote = (
                str0m::net::Protocol::Udp,
                ([192, 0, 2, 1], 5000 + port).into(),
            );
            consent.heard(remote, now);
        }
        assert_eq!(consent.last_heard(), Some(now));
        // An address heard again is the newest again.
        let first = (str0m::net::Protocol::Udp, ([192, 0, 2, 1], 5000).into());
        consent.heard(first, now + Duration::from_millis(1));
        assert_eq!(consent.last_heard(), Some(now + Duration::from_millis(1)));
    }
}
