//! One client for every per-address limit (HTTP's rate limits and pending viewers, the
//! ICE-TCP connection cap): an IPv4 address, or an IPv6 /64.

use std::net::{IpAddr, Ipv6Addr};

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

/// The one key of a server-wide limit.
pub const EVERYONE: ClientKey = ClientKey(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));

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
}
