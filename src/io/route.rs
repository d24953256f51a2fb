//! Which worker a datagram is for, decided by the receive thread without asking the workers.
//!
//! STUN is routed by the local ufrag in its USERNAME: the HTTP handle tells us each session's
//! ufrag and worker before the peer can know it ([`RouteUpdate`]). The source address of a
//! STUN check with a known ufrag is learned, and everything else (DTLS, SRTP, SRTCP) is
//! routed by source address. Learning before the worker's integrity check is safe enough: a
//! forged check needs the session's ufrag, a secret of its SDP answer, and at worst sends
//! that address's datagrams to a worker that drops them. Both maps are bounded: a ufrag per
//! live session and [`MAX_ADDRS_PER_UFRAG`] addresses per ufrag, forgotten with the session.

use std::collections::HashMap;
use std::net::SocketAddr;

use str0m::net::Protocol;

use crate::engine::stun_local_ufrag;
use crate::handle::RouteUpdate;

/// Where a datagram came from (UDP and ICE-TCP are separate port spaces).
pub(crate) type Remote = (Protocol, SocketAddr);

#[derive(Default)]
pub(crate) struct Routes {
    by_ufrag: HashMap<String, Entry>,
    by_addr: HashMap<Remote, (usize, u64)>,
    next_id: u64,
}

struct Entry {
    worker: usize,
    /// Tells this session's address entries from a later owner's of the same address.
    id: u64,
    addrs: Vec<Remote>,
}

impl Routes {
    pub(crate) fn apply(&mut self, update: RouteUpdate) {
        match update {
            RouteUpdate::Add { ufrag, worker } => {
                self.next_id += 1;
                let entry = Entry {
                    worker,
                    id: self.next_id,
                    addrs: Vec::new(),
                };
                if let Some(old) = self.by_ufrag.insert(ufrag, entry) {
                    self.forget_addrs(&old);
                }
            }
            RouteUpdate::Forget { ufrag } => {
                if let Some(old) = self.by_ufrag.remove(&ufrag) {
                    self.forget_addrs(&old);
                }
            }
            RouteUpdate::Rename { old, new, worker } => match self.by_ufrag.remove(&old) {
                Some(entry) => {
                    self.by_ufrag.insert(new, entry);
                }
                None => self.apply(RouteUpdate::Add { ufrag: new, worker }),
            },
        }
    }

    /// The worker for a datagram from `src`, learning `src` from a STUN check with a known
    /// ufrag. `None`: nobody's (dropped, as the engine would).
    pub(crate) fn route(&mut self, src: Remote, datagram: &[u8]) -> Option<usize> {
        if let Some(ufrag) = stun_local_ufrag(datagram)
            && let Some(entry) = self.by_ufrag.get_mut(ufrag)
        {
            let owner = (entry.worker, entry.id);
            if self.by_addr.get(&src) != Some(&owner) {
                if entry.addrs.len() >= MAX_ADDRS_PER_UFRAG {
                    let oldest = entry.addrs.remove(0);
                    if self.by_addr.get(&oldest).is_some_and(|o| o.1 == entry.id) {
                        self.by_addr.remove(&oldest);
                    }
                }
                entry.addrs.push(src);
                // An address moving to another session (a NAT reusing a port) takes the
                // newest owner, as the engine's demux does.
                self.by_addr.insert(src, owner);
            }
            return Some(entry.worker);
        }
        self.by_addr.get(&src).map(|(w, _)| *w)
    }

    fn forget_addrs(&mut self, entry: &Entry) {
        for a in &entry.addrs {
            if self.by_addr.get(a).is_some_and(|o| o.1 == entry.id) {
                self.by_addr.remove(a);
            }
        }
    }

    /// (addresses, ufrags) held, for tests.
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.by_addr.len(), self.by_ufrag.len())
    }
}

/// As many as the engine keeps per peer (engine/demux.rs): IPv4 and IPv6 plus a rebinding.
const MAX_ADDRS_PER_UFRAG: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN binding request whose USERNAME is `ours:theirs` (framing only, as routing
    /// reads it).
    fn check(ours: &str) -> Vec<u8> {
        let username = format!("{ours}:theirs");
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        attr.resize(attr.len().next_multiple_of(4), 0);
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    fn udp(port: u16) -> Remote {
        (Protocol::Udp, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    const SRTP: &[u8] = &[0x80, 96, 0, 1];

    fn add(routes: &mut Routes, ufrag: &str, worker: usize) {
        routes.apply(RouteUpdate::Add {
            ufrag: ufrag.into(),
            worker,
        });
    }

    #[test]
    fn media_follows_the_address_its_stun_check_came_from() {
        let mut routes = Routes::default();
        add(&mut routes, "a", 0);
        add(&mut routes, "b", 1);
        assert_eq!(routes.route(udp(1), SRTP), None, "unknown address: dropped");
        assert_eq!(routes.route(udp(1), &check("b")), Some(1));
        assert_eq!(routes.route(udp(2), &check("a")), Some(0));
        assert_eq!(routes.route(udp(1), SRTP), Some(1));
        assert_eq!(routes.route(udp(2), SRTP), Some(0));
        assert_eq!(routes.route(udp(3), &check("nobody")), None);
        assert_eq!(routes.len(), (2, 2));
    }

    #[test]
    fn a_forgotten_session_no_longer_routes_and_leaves_nothing_behind() {
        let mut routes = Routes::default();
        add(&mut routes, "a", 1);
        routes.route(udp(1), &check("a"));
        routes.apply(RouteUpdate::Forget { ufrag: "a".into() });
        assert_eq!(routes.route(udp(1), SRTP), None);
        assert_eq!(routes.route(udp(1), &check("a")), None);
        assert_eq!(routes.len(), (0, 0));
    }

    #[test]
    fn an_ice_restart_keeps_the_address_until_the_new_ufrag_arrives() {
        let mut routes = Routes::default();
        add(&mut routes, "old", 1);
        routes.route(udp(1), &check("old"));
        routes.apply(RouteUpdate::Rename {
            old: "old".into(),
            new: "new".into(),
            worker: 1,
        });
        assert_eq!(routes.route(udp(1), SRTP), Some(1));
        assert_eq!(routes.route(udp(1), &check("old")), Some(1), "by address");
        assert_eq!(routes.route(udp(2), &check("new")), Some(1));
        assert_eq!(routes.len(), (2, 1));
    }

    #[test]
    fn addresses_per_session_are_capped() {
        let mut routes = Routes::default();
        add(&mut routes, "a", 0);
        for port in 1..=20 {
            routes.route(udp(port), &check("a"));
        }
        assert_eq!(routes.len(), (MAX_ADDRS_PER_UFRAG, 1));
        assert_eq!(routes.route(udp(20), SRTP), Some(0), "the newest stays");
        assert_eq!(routes.route(udp(1), SRTP), None, "the oldest went");
    }

    #[test]
    fn an_address_reused_by_another_session_follows_the_newest() {
        let mut routes = Routes::default();
        add(&mut routes, "a", 0);
        add(&mut routes, "b", 1);
        routes.route(udp(1), &check("a"));
        routes.route(udp(1), &check("b"));
        assert_eq!(routes.route(udp(1), SRTP), Some(1));
        // Forgetting the first owner must not take the address from the second.
        routes.apply(RouteUpdate::Forget { ufrag: "a".into() });
        assert_eq!(routes.route(udp(1), SRTP), Some(1));
    }
}
