//! Which client an HTTP request comes from: the connection's peer, or a trusted proxy's
//! forwarded address if configured; keyed as [`ClientKey`] for every per-client limit.

use std::net::IpAddr;

use hyper::Request;
use hyper::body::Incoming;

use crate::client_key::ClientKey;

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

#[cfg(test)]
mod tests {
    use super::*;

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
