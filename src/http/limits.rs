//! Per-client bounds for the HTTP layer: sliding-window rate limits keyed by the client a
//! request comes from (`client.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crate::client_key::ClientKey;
use crate::engine::PROBE_TIMEOUT;

/// At most `max` events per client in any `period`. The map of clients is bounded: when it
/// is full, clients whose events all aged out are dropped; if none have, new clients are
/// refused (fail closed) rather than the map growing.
pub struct RateLimit {
    max: usize,
    period: Duration,
    clients: Mutex<HashMap<ClientKey, VecDeque<Instant>>>,
}

impl RateLimit {
    pub fn new(max: usize, period: Duration) -> Self {
        Self {
            max,
            period,
            clients: Mutex::default(),
        }
    }

    /// Records one event for `client` if it is under its limit; otherwise says how long
    /// until it will be.
    pub fn admit(&self, client: ClientKey, now: Instant) -> Result<(), Duration> {
        self.count(client, now, true)
    }

    /// Whether `client` is under its limit, recording nothing (for events that count only
    /// once they succeed: then [`record`](Self::record)).
    pub fn check(&self, client: ClientKey, now: Instant) -> Result<(), Duration> {
        self.count(client, now, false)
    }

    /// Records one event for `client`, over its limit or not.
    pub fn record(&self, client: ClientKey, now: Instant) {
        if self.count(client, now, true).is_err() {
            let mut clients = self.clients.lock().expect("rate limit lock");
            if let Some(times) = clients.get_mut(&client) {
                times.push_back(now);
            }
        }
    }

    fn count(&self, client: ClientKey, now: Instant, record: bool) -> Result<(), Duration> {
        let mut clients = self.clients.lock().expect("rate limit lock");
        if !clients.contains_key(&client) && clients.len() >= MAX_CLIENTS {
            let period = self.period;
            clients.retain(|_, times| times.back().is_some_and(|t| now < *t + period));
            if clients.len() >= MAX_CLIENTS {
                return Err(self.period);
            }
        }
        let times = clients.entry(client).or_default();
        while times.front().is_some_and(|t| *t + self.period <= now) {
            times.pop_front();
        }
        if times.len() >= self.max {
            let oldest = *times.front().expect("max is at least one here");
            return Err((oldest + self.period).saturating_duration_since(now));
        }
        if record {
            times.push_back(now);
        }
        Ok(())
    }
}

/// Every request-rate bound of the HTTP layer, built from the configuration.
pub struct Limits {
    /// `POST /api/broadcasts` per client per hour.
    pub creations: RateLimit,
    /// WHEP sessions per client within the handshake timeout: those still connecting.
    pub pending_viewers: super::pending::PendingViewers,
    /// Connectivity tests per client, and in total, within [`PROBE_TIMEOUT`].
    pub probes: RateLimit,
    pub probes_total: RateLimit,
    /// Connectivity tests started and refused, for `/metrics`.
    pub probes_started: AtomicU64,
    pub probes_refused: AtomicU64,
}

impl Limits {
    pub fn new(config: &crate::config::Config) -> Self {
        Self {
            creations: RateLimit::new(
                config.max_creations_per_ip.max(1),
                Duration::from_secs(3600),
            ),
            pending_viewers: super::pending::PendingViewers::new(
                config.max_pending_viewers_per_ip,
                config.handshake_timeout,
            ),
            probes: RateLimit::new(PROBES_PER_CLIENT, PROBE_TIMEOUT),
            probes_total: RateLimit::new(PROBES_TOTAL, PROBE_TIMEOUT),
            probes_started: AtomicU64::new(0),
            probes_refused: AtomicU64::new(0),
        }
    }
}

/// Connectivity tests one client may start per [`PROBE_TIMEOUT`]: the page runs one.
const PROBES_PER_CLIENT: usize = 2;
/// Connectivity tests the server runs per [`PROBE_TIMEOUT`], whoever asks (each is an `Rtc`
/// of about 10 KB and a DTLS handshake's CPU).
const PROBES_TOTAL: usize = 32;

/// Distinct clients a limiter remembers at once (a few MB at most).
const MAX_CLIENTS: usize = 65_536;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_rate_waits_until_the_oldest_event_ages_out() {
        let limit = RateLimit::new(2, Duration::from_secs(10));
        let me = ClientKey::of("192.0.2.1".parse().unwrap());
        let other = ClientKey::of("192.0.2.2".parse().unwrap());
        let t0 = crate::clock::now();
        assert!(limit.admit(me, t0).is_ok());
        assert!(limit.admit(me, t0 + Duration::from_secs(4)).is_ok());
        assert_eq!(
            limit.admit(me, t0 + Duration::from_secs(5)),
            Err(Duration::from_secs(5))
        );
        assert!(limit.admit(other, t0 + Duration::from_secs(5)).is_ok());
        assert!(limit.admit(me, t0 + Duration::from_secs(10)).is_ok());
    }
}
