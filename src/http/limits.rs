//! Per-client bounds for the HTTP layer: which client a request comes from (its IPv6 /64 as
//! one client, a trusted proxy's forwarded address if configured), and sliding-window rate
//! limits keyed by that client.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use hyper::Request;

use crate::engine::PROBE_TIMEOUT;
use hyper::body::Incoming;

/// One client for every per-address limit: an IPv4 address, or an IPv6 /64 (one host or
/// home network is routinely given a whole /64, so its addresses are free to vary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Self(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

/// The address of the client that sent a request, set on every request by the connection
/// that read it (the socket peer, or the address a trusted proxy forwarded).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// The client key of a request (loopback if the connection did not say, as in unit use).
pub fn client_of(req: &Request<Incoming>) -> ClientKey {
    let ip = req
        .extensions()
        .get::<ClientAddr>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.0);
    ClientKey::of(ip)
}

/// The client address of a request on a connection from `peer`: the last address of
/// `X-Forwarded-For` when `peer` is one of the `trusted` proxies, otherwise `peer` itself.
/// Never trusts the header from anyone else, so clients cannot pick their own bucket.
pub fn forwarded_client(peer: IpAddr, trusted: &[IpAddr], headers: &hyper::HeaderMap) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .next_back()
        .unwrap_or(peer)
}

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
/// The one key of a server-wide limit.
pub const EVERYONE: ClientKey = ClientKey(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));

/// Distinct clients a limiter remembers at once (a few MB at most).
const MAX_CLIENTS: usize = 65_536;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_of_one_slash_64_are_one_client() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            ClientKey::of(mapped),
            ClientKey::of("192.0.2.1".parse().unwrap())
        );
    }

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

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = hyper::HeaderMap::new();
        h.insert("x-forwarded-for", "10.9.9.9, 198.51.100.7".parse().unwrap());
        assert_eq!(forwarded_client(proxy, &[], &h), proxy);
        assert_eq!(
            forwarded_client(proxy, &[proxy], &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }
}
