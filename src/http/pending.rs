//! Viewer sessions each client has still connecting: a WHEP POST takes a place before its
//! body is read, the place goes to the session it creates, and comes back when that session
//! connects (DTLS done) or closes. A count of sessions in their handshake, not a rate: a
//! viewer who reloads the page, or a class of thirty behind one NAT opening the link
//! together, waits only while its own handshakes are in flight.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client_key::ClientKey;
use crate::engine::SessionId;

/// At most `max` sessions per client in their handshake. A place whose session never
/// reports back (the event was lost, the server is stopping) is given back after `period`,
/// the handshake timeout, when the engine has closed that session anyway.
pub struct PendingViewers {
    max: usize,
    period: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_ticket: u64,
    clients: HashMap<ClientKey, Vec<Place>>,
    sessions: HashMap<SessionId, ClientKey>,
}

struct Place {
    ticket: u64,
    since: Instant,
    session: Option<SessionId>,
}

/// A place taken by a request that has not created its session yet; dropped unused (a bad
/// offer, a full broadcast), it is given back.
pub struct Reservation<'a> {
    owner: &'a PendingViewers,
    client: ClientKey,
    ticket: u64,
    kept: bool,
}

impl PendingViewers {
    pub fn new(max: usize, period: Duration) -> Self {
        Self {
            max: max.max(1),
            period,
            inner: Mutex::default(),
        }
    }

    /// Takes a place for `client`, or says when to try again.
    pub fn reserve(&self, client: ClientKey, now: Instant) -> Result<Reservation<'_>, Duration> {
        let mut inner = self.inner.lock().expect("pending viewers lock");
        let Inner {
            next_ticket,
            clients,
            sessions,
        } = &mut *inner;
        if !clients.contains_key(&client) && clients.len() >= MAX_CLIENTS {
            clients.retain(|_, places| !places.is_empty());
            if clients.len() >= MAX_CLIENTS {
                return Err(RETRY_AFTER);
            }
        }
        let places = clients.entry(client).or_default();
        let period = self.period;
        places.retain(|p| {
            let live = now < p.since + period;
            if !live && let Some(s) = &p.session {
                sessions.remove(s);
            }
            live
        });
        if places.len() >= self.max {
            return Err(RETRY_AFTER);
        }
        *next_ticket += 1;
        let ticket = *next_ticket;
        places.push(Place {
            ticket,
            since: now,
            session: None,
        });
        Ok(Reservation {
            owner: self,
            client,
            ticket,
            kept: false,
        })
    }

    /// `session` connected or closed: its client's place is free again.
    pub fn settled(&self, session: &SessionId) {
        let mut inner = self.inner.lock().expect("pending viewers lock");
        let Some(client) = inner.sessions.remove(session) else {
            return;
        };
        if let Some(places) = inner.clients.get_mut(&client) {
            places.retain(|p| p.session.as_ref() != Some(session));
        }
    }

    /// Sessions `client` has in their handshake now (for tests and `/metrics`).
    pub fn count(&self, client: ClientKey) -> usize {
        let inner = self.inner.lock().expect("pending viewers lock");
        inner.clients.get(&client).map_or(0, Vec::len)
    }

    fn release(&self, client: ClientKey, ticket: u64) {
        let mut inner = self.inner.lock().expect("pending viewers lock");
        if let Some(places) = inner.clients.get_mut(&client) {
            places.retain(|p| p.ticket != ticket);
        }
    }
}

impl Reservation<'_> {
    /// The request created `session`: the place stays taken until it connects or closes.
    pub fn keep(mut self, session: SessionId) {
        self.kept = true;
        let mut inner = self.owner.inner.lock().expect("pending viewers lock");
        let Some(place) = inner
            .clients
            .get_mut(&self.client)
            .and_then(|places| places.iter_mut().find(|p| p.ticket == self.ticket))
        else {
            return;
        };
        place.session = Some(session.clone());
        inner.sessions.insert(session, self.client);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.owner.release(self.client, self.ticket);
        }
    }
}

/// What a client over its bound is told: handshakes take well under a second, so its own
/// sessions in flight will have connected by then.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Distinct clients remembered at once (a few MB at most); past it, clients with no session
/// in flight are forgotten, and if none are, new clients wait (fail closed).
const MAX_CLIENTS: usize = 65_536;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn client(last: u8) -> ClientKey {
        ClientKey::of(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn a_place_comes_back_when_its_session_connects_not_after_a_period() {
        let pending = PendingViewers::new(2, Duration::from_secs(20));
        let t0 = crate::clock::now();
        let (a, b) = (SessionId::random(), SessionId::random());
        pending.reserve(client(1), t0).unwrap().keep(a.clone());
        pending.reserve(client(1), t0).unwrap().keep(b);
        assert!(pending.reserve(client(1), t0).is_err(), "two in flight");
        assert!(
            pending.reserve(client(2), t0).is_ok(),
            "another client is not held up"
        );
        pending.settled(&a);
        assert_eq!(pending.count(client(1)), 1);
        pending
            .reserve(client(1), t0)
            .unwrap()
            .keep(SessionId::random());
        assert_eq!(pending.count(client(1)), 2);
    }

    #[test]
    fn a_reservation_dropped_unused_gives_its_place_back() {
        let pending = PendingViewers::new(1, Duration::from_secs(20));
        let t0 = crate::clock::now();
        drop(pending.reserve(client(1), t0).unwrap());
        assert_eq!(pending.count(client(1)), 0);
        assert!(pending.reserve(client(1), t0).is_ok());
    }

    #[test]
    fn a_session_that_never_reports_back_frees_its_place_after_the_period() {
        let pending = PendingViewers::new(1, Duration::from_secs(20));
        let t0 = crate::clock::now();
        let old = SessionId::random();
        pending.reserve(client(1), t0).unwrap().keep(old.clone());
        assert!(
            pending
                .reserve(client(1), t0 + Duration::from_secs(19))
                .is_err()
        );
        pending
            .reserve(client(1), t0 + Duration::from_secs(21))
            .unwrap()
            .keep(SessionId::random());
        // The forgotten session's late event frees nothing of the new one.
        pending.settled(&old);
        assert_eq!(pending.count(client(1)), 1);
    }
}
