//! Datagrams in: each UDP datagram or ICE-TCP frame is routed to its peer through the demux
//! index, checked against the peer's consent limits and fed to its `Rtc`.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::Input;
use str0m::net::{Protocol, Receive};
use tracing::{debug, info, trace};

use super::demux::{self, is_rtcp, is_stun};
use super::peer::{Role, contained, live};
use super::priority;
use super::{CloseReason, Engine};

impl Engine {
    /// Feeds one UDP datagram received from `src` on local address `dst`.
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        self.handle_receive(now, Protocol::Udp, src, dst, data);
    }

    /// Feeds one ICE-TCP frame (RFC 4571, length prefix removed) from the connection `src` →
    /// `dst`. Its answers come back as transmits with `Protocol::Tcp` to `src`.
    pub fn handle_tcp_frame(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) {
        self.handle_receive(now, Protocol::Tcp, src, dst, data);
    }

    fn handle_receive(
        &mut self,
        now: Instant,
        proto: Protocol,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) {
        self.last_now = Some(now);
        let remote = (proto, src);
        let Some(key) = self.demux.route(remote, data) else {
            self.counters.datagrams_dropped += 1;
            trace!(len = data.len(), "dropping datagram from unknown source");
            return;
        };
        let destination = self.candidate_for(proto, dst, src);
        let Some(peer) = live(&mut self.peers, key) else {
            self.counters.datagrams_dropped += 1;
            return;
        };
        let known = self.demux.is_known_addr(remote);
        if !known && !peer.consent.admits_new(now, peer.connected) {
            self.counters.datagrams_dropped += 1;
            trace!(peer = %key, "new address refused: too many, or too soon");
            return;
        }
        if known && demux::is_binding_indication(data) {
            // A keep-alive (RFC 8445 §11; libnice sends these, not requests): str0m ignores
            // it, but it is the peer, heard on an address it proved with a checked request.
            peer.hear(remote, now, data);
            return;
        }
        // FFmpeg 8.0's WHIP muxer sends Binding requests without PRIORITY, which str0m
        // refuses to parse: checked with our password and signed again with one (priority.rs).
        let with_priority = priority::add_if_missing(&mut peer.rtc, data);
        let data = with_priority.as_deref().unwrap_or(data);
        let Ok(receive) = Receive::new(proto, src, destination, data) else {
            self.counters.datagrams_dropped += 1;
            return;
        };
        // RTCP from a viewer we seal for is ours alone: str0m has no send streams left for it
        // to apply feedback or receiver reports to (see egress.rs).
        let feedback_to_answer = peer.egress.is_some() && is_rtcp(data);
        let input = Input::Receive(now, receive);
        if !peer.rtc.accepts(&input) {
            self.counters.datagrams_dropped += 1;
            trace!(peer = %key, "datagram not accepted by peer");
            return;
        }
        peer.hear(remote, now, data);
        if feedback_to_answer {
            self.answer_feedback(key, data);
            self.flush_deferred(now);
            return;
        }
        let moved = is_stun(data)
            && demux::binding_request(data)
                .is_some_and(|req| self.on_binding_request(key, remote, destination, &req));
        let Some(peer) = live(&mut self.peers, key) else {
            return;
        };
        if let Role::Publisher(ingest) = &mut peer.role
            && !ingest.twcc.admits(data, &peer.keys)
        {
            self.counters.datagrams_dropped += 1;
            debug!(peer = %key, "RTP refused: str0m would take its transport-wide number as gone back past 0");
            return;
        }
        if let Err(e) = contained(|| peer.rtc.handle_input(input)) {
            debug!(peer = %key, error = %e, "peer input failed");
            self.close_peer(now, key, CloseReason::PeerFailed);
            return;
        }
        if !known && !self.demux.is_known_addr(remote) {
            // Accepted means STUN with a valid MESSAGE-INTEGRITY for this peer's ufrag (or
            // traffic from its nominated address): safe to index.
            let peer = self
                .peers
                .get_mut(key.index as usize)
                .expect("peer checked above");
            peer.consent.added(now, peer.connected);
            self.demux.insert_addr(remote, key, &mut peer.addrs);
        }
        self.drain(now, key);
        if moved {
            self.path_moved(now, key);
        }
        if is_rtcp(data)
            && self.peer_mut(key).is_some_and(|p| p.is_publisher())
            && self.said_goodbye(key, data)
        {
            info!(peer = %key, "publisher sent RTCP BYE: it hung up");
            self.hang_up(now, key);
        }
        self.flush_deferred(now);
    }

    /// Maps a local (bound) address onto the advertised candidate it stands for.
    fn candidate_for(&self, proto: Protocol, dst: SocketAddr, src: SocketAddr) -> SocketAddr {
        let cands = match proto {
            Protocol::Udp => &self.config.candidates,
            _ => &self.config.tcp_candidates,
        };
        if let Some(c) = cands.iter().find(|c| **c == dst) {
            return *c;
        }
        // Behind 1:1 NAT or on a wildcard socket the local address is not what we advertised;
        // str0m needs the advertised one (notes/str0m.md §5).
        cands
            .iter()
            .find(|c| c.is_ipv4() == src.is_ipv4())
            .or(cands.first())
            .copied()
            .unwrap_or(dst)
    }
}
