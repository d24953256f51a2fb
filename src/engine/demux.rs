//! Which peer a datagram belongs to, found through an index, never a scan.
//!
//! Fast path: the source address, learned from STUN that the peer's `Rtc` accepted (so it
//! passed the ICE integrity check). Slow path: the local ufrag in a STUN USERNAME, which we
//! chose per peer. Anything else from an unknown source is dropped before any parsing.

use std::collections::HashMap;
use std::net::SocketAddr;

use str0m::net::Protocol;

use super::key::PeerKey;

/// Where a datagram came from: UDP and ICE-TCP have separate port spaces, so the same
/// address on the two is two different remotes.
pub(crate) type Remote = (Protocol, SocketAddr);

/// The demultiplexing index. Both maps are keyed by values a remote can influence, so they
/// use std's DoS-resistant hasher, and both are bounded: one ufrag per peer and at most
/// [`MAX_ADDRS_PER_PEER`] addresses per peer.
#[derive(Default)]
pub(crate) struct Demux {
    by_addr: HashMap<Remote, PeerKey>,
    by_ufrag: HashMap<String, PeerKey>,
}

impl Demux {
    /// The peer a datagram from `src` is for, if any.
    pub(crate) fn route(&self, src: Remote, datagram: &[u8]) -> Option<PeerKey> {
        if let Some(key) = self.by_addr.get(&src) {
            return Some(*key);
        }
        let ufrag = stun_local_ufrag(datagram)?;
        self.by_ufrag.get(ufrag).copied()
    }

    pub(crate) fn is_known_addr(&self, src: Remote) -> bool {
        self.by_addr.contains_key(&src)
    }

    pub(crate) fn insert_ufrag(&mut self, ufrag: String, key: PeerKey) {
        self.by_ufrag.insert(ufrag, key);
    }

    /// An ICE restart gave `key` a new local ufrag: STUN with the old one no longer reaches
    /// it, so a peer holds one ufrag entry whatever it does.
    pub(crate) fn replace_ufrag(&mut self, key: PeerKey, old: &str, new: String) {
        self.remove(key, old, &[]);
        self.insert_ufrag(new, key);
    }

    /// Forgets every address of `key` but `keep` (the path an ICE restart moved it to).
    pub(crate) fn retain_addr(&mut self, key: PeerKey, keep: Remote, addrs: &mut Vec<Remote>) {
        addrs.retain(|a| {
            if *a == keep {
                return true;
            }
            if self.by_addr.get(a) == Some(&key) {
                self.by_addr.remove(a);
            }
            false
        });
    }

    /// Records that `key` talks from `src`. `addrs` is the peer's own list of its addresses;
    /// the oldest is forgotten past the cap so a peer cannot grow the index.
    pub(crate) fn insert_addr(&mut self, src: Remote, key: PeerKey, addrs: &mut Vec<Remote>) {
        if addrs.len() >= MAX_ADDRS_PER_PEER {
            let old = addrs.remove(0);
            self.by_addr.remove(&old);
        }
        addrs.push(src);
        // An address moving to another peer (a NAT rebinding reuse) takes the newest owner.
        self.by_addr.insert(src, key);
    }

    /// Forgets every entry of a peer that is going away.
    pub(crate) fn remove(&mut self, key: PeerKey, ufrag: &str, addrs: &[Remote]) {
        if self.by_ufrag.get(ufrag) == Some(&key) {
            self.by_ufrag.remove(ufrag);
        }
        for a in addrs {
            if self.by_addr.get(a) == Some(&key) {
                self.by_addr.remove(a);
            }
        }
    }

    pub(crate) fn len(&self) -> (usize, usize) {
        (self.by_addr.len(), self.by_ufrag.len())
    }
}

/// The local (our) ufrag of a STUN binding request: the part of USERNAME before the colon.
///
/// Only the framing is checked here (RFC 8489 §5 and §14); the message integrity is checked by
/// the peer's `Rtc` before any state is kept for the source address.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    let mut local = None;
    for_each_stun_attribute(datagram, |typ, value| {
        if typ == STUN_ATTR_USERNAME {
            local = std::str::from_utf8(value)
                .ok()
                .and_then(|u| u.split_once(':'))
                .map(|(local, _remote)| local);
            return false;
        }
        true
    })?;
    local
}

/// What the engine reads from a STUN binding request the peer's `Rtc` accepted: the remote
/// ufrag (to tell a trickle PATCH from an ICE restart) and whether it nominates its path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BindingRequest<'a> {
    pub(crate) remote_ufrag: &'a str,
    pub(crate) use_candidate: bool,
}

/// The USERNAME's remote part and USE-CANDIDATE of a STUN binding request (RFC 8445 §7.1.2).
pub(crate) fn binding_request(datagram: &[u8]) -> Option<BindingRequest<'_>> {
    if datagram.get(..2)? != STUN_BINDING_REQUEST {
        return None;
    }
    let mut remote_ufrag = None;
    let mut use_candidate = false;
    for_each_stun_attribute(datagram, |typ, value| {
        match typ {
            STUN_ATTR_USERNAME => {
                remote_ufrag = std::str::from_utf8(value)
                    .ok()
                    .and_then(|u| u.split_once(':'))
                    .map(|(_local, remote)| remote);
            }
            STUN_ATTR_USE_CANDIDATE => use_candidate = true,
            _ => {}
        }
        true
    })?;
    Some(BindingRequest {
        remote_ufrag: remote_ufrag?,
        use_candidate,
    })
}

/// A STUN Binding indication (RFC 8445 §11 keep-alive): no transaction, no answer, and
/// often no credentials (libnice's carry none).
pub(crate) fn is_binding_indication(datagram: &[u8]) -> bool {
    datagram.get(..2) == Some(&STUN_BINDING_INDICATION[..])
        && datagram.len() >= STUN_HEADER_LEN
        && datagram[4..8] == STUN_MAGIC_COOKIE
}

/// Calls `f` with each attribute of a STUN message until it returns `false`. `None` when the
/// framing is broken (RFC 8489 §5 and §14).
pub(crate) fn for_each_stun_attribute<'a>(
    datagram: &'a [u8],
    mut f: impl FnMut(u16, &'a [u8]) -> bool,
) -> Option<()> {
    if datagram.len() < STUN_HEADER_LEN || datagram[0] & 0xc0 != 0 {
        return None;
    }
    if datagram[4..8] != STUN_MAGIC_COOKIE {
        return None;
    }
    let body_len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let mut rest = datagram.get(STUN_HEADER_LEN..STUN_HEADER_LEN + body_len)?;
    while rest.len() >= 4 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + len)?;
        if !f(typ, value) {
            return Some(());
        }
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    Some(())
}

/// Two addresses cover a peer that is reachable over IPv4 and IPv6, plus a rebinding or two.
const MAX_ADDRS_PER_PEER: usize = 4;
pub(crate) const STUN_HEADER_LEN: usize = 20;
pub(crate) const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// STUN, by the first byte (RFC 7983 §7: 0–3).
pub(crate) fn is_stun(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(0..=3))
}

/// SRTP or SRTCP, by the first byte (RFC 7983 §7: 128–191).
pub(crate) fn is_rtp_or_rtcp(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(128..=191))
}

/// SRTCP rather than SRTP, by the packet type in the second byte (RFC 5761 §4: 192–223).
pub(crate) fn is_rtcp(datagram: &[u8]) -> bool {
    is_rtp_or_rtcp(datagram) && matches!(datagram.get(1), Some(192..=223))
}

const STUN_ATTR_USERNAME: u16 = 0x0006;
const STUN_ATTR_USE_CANDIDATE: u16 = 0x0025;
pub(crate) const STUN_BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const STUN_BINDING_INDICATION: [u8; 2] = [0x00, 0x11];

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&STUN_ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    #[test]
    fn local_ufrag_is_read_from_username() {
        assert_eq!(
            stun_local_ufrag(&binding_request("ours:theirs")),
            Some("ours")
        );
    }

    #[test]
    fn non_stun_and_truncated_input_has_no_ufrag() {
        let msg = binding_request("ours:theirs");
        for cut in 0..msg.len() {
            let _ = stun_local_ufrag(&msg[..cut]); // must not panic
        }
        assert_eq!(stun_local_ufrag(&msg[..msg.len() - 4]), None);
        assert_eq!(stun_local_ufrag(&[0x80; 40]), None, "RTP is not STUN");
        assert_eq!(stun_local_ufrag(&binding_request("nocolon")), None);
    }

    #[test]
    fn binding_requests_show_the_remote_ufrag_and_nomination() {
        let mut msg = binding_request("ours:theirs");
        assert_eq!(
            super::binding_request(&msg),
            Some(BindingRequest {
                remote_ufrag: "theirs",
                use_candidate: false
            })
        );
        msg.extend_from_slice(&STUN_ATTR_USE_CANDIDATE.to_be_bytes());
        msg.extend_from_slice(&[0, 0]);
        let len = (msg.len() - STUN_HEADER_LEN) as u16;
        msg[2..4].copy_from_slice(&len.to_be_bytes());
        assert!(super::binding_request(&msg).unwrap().use_candidate);
        msg[..2].copy_from_slice(&[0x01, 0x01]); // a success response is no request
        assert_eq!(super::binding_request(&msg), None);
    }

    #[test]
    fn a_replaced_ufrag_no_longer_routes() {
        let mut demux = Demux::default();
        let key = PeerKey {
            index: 0,
            generation: 1,
        };
        demux.insert_ufrag("old".into(), key);
        demux.replace_ufrag(key, "old", "new".into());
        let src = (Protocol::Udp, SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(demux.route(src, &binding_request("old:x")), None);
        assert_eq!(demux.route(src, &binding_request("new:x")), Some(key));
        assert_eq!(demux.len(), (0, 1));
    }

    #[test]
    fn addresses_per_peer_are_capped() {
        let mut demux = Demux::default();
        let key = PeerKey {
            index: 0,
            generation: 1,
        };
        let mut addrs = Vec::new();
        for port in 1..=10 {
            let src = SocketAddr::from(([127, 0, 0, 1], port));
            demux.insert_addr((Protocol::Udp, src), key, &mut addrs);
        }
        assert_eq!(demux.len().0, MAX_ADDRS_PER_PEER);
        assert_eq!(addrs.len(), MAX_ADDRS_PER_PEER);
        demux.remove(key, "", &addrs);
        assert_eq!(demux.len(), (0, 0));
    }

    #[test]
    fn the_same_address_on_udp_and_tcp_is_two_remotes() {
        let mut demux = Demux::default();
        let (a, b) = (
            PeerKey {
                index: 0,
                generation: 1,
            },
            PeerKey {
                index: 1,
                generation: 1,
            },
        );
        let src = SocketAddr::from(([192, 0, 2, 1], 50_000));
        let (mut addrs_a, mut addrs_b) = (Vec::new(), Vec::new());
        demux.insert_addr((Protocol::Udp, src), a, &mut addrs_a);
        demux.insert_addr((Protocol::Tcp, src), b, &mut addrs_b);
        assert_eq!(demux.route((Protocol::Udp, src), &[]), Some(a));
        assert_eq!(demux.route((Protocol::Tcp, src), &[]), Some(b));
    }
}
