//! An edge's pull from its origin: a WHEP session this server offered, playing the publisher
//! of a local broadcast.
//!
//! The pull is a publisher like any other (ingest, keyframe cache, retransmission ring, PLI
//! throttle, viewer cap and events all work unchanged); it differs in three ways:
//!
//! - it is the ICE controlling agent and the DTLS client, so the origin (ICE-lite) only ever
//!   *answers* our STUN: the answers carry no USERNAME to route by, so the origin's
//!   candidate addresses are indexed when the pull is put in place;
//! - only media counts as a sign of life: the origin keeps our session through its own
//!   publisher's loss and goes on answering our consent checks, so STUN and RTCP would keep
//!   a silent pull "alive"; without media for `PUBLISHER_SILENCE` the edge's viewers see
//!   "reconnecting", as the origin's do, and the edge pulls again when the origin is live;
//! - a clean close from the origin (DTLS close_notify) ends the local broadcast at once: the
//!   origin ended the broadcast, rotated its view ID or dropped the edge, and none of those
//!   comes back on the same session (teardown.rs).

use std::net::SocketAddr;
use std::time::Instant;

use str0m::net::Protocol;
use tracing::info;

use super::Engine;
use super::command::{CommandError, IngestTrack, NewPeer};
use super::demux::{is_rtcp, is_rtp_or_rtcp};
use super::peer::{Role, live};

impl Engine {
    /// Puts an edge's pull in place as the publisher of its broadcast (replacing a lost
    /// one, whose viewers are spliced onto it as after an OBS reconnect).
    pub(super) fn pull(
        &mut self,
        now: Instant,
        new: NewPeer,
        tracks: Vec<IngestTrack>,
        origin: &[SocketAddr],
    ) -> Result<(), CommandError> {
        let b = new.broadcast;
        self.publish(now, new, tracks)?;
        let key = self
            .router
            .route(b)
            .and_then(|r| r.publisher)
            .expect("publish put a publisher on the route");
        let peer = live(&mut self.peers, key).expect("the publisher was just inserted");
        if let Role::Publisher(ingest) = &mut peer.role {
            ingest.upstream = true;
        }
        for addr in origin.iter().take(MAX_ORIGIN_CANDIDATES) {
            self.demux
                .insert_addr((Protocol::Udp, *addr), key, &mut peer.addrs);
        }
        info!(broadcast = %b, peer = %key, origin = ?origin, "pulling from the origin");
        // Our first connectivity checks left when the peer was inserted; nothing to drain.
        Ok(())
    }
}

/// An RTP packet (not RTCP, STUN or DTLS): what keeps a pull alive.
pub(super) fn is_media(datagram: &[u8]) -> bool {
    is_rtp_or_rtcp(datagram) && !is_rtcp(datagram)
}

/// The origin's candidates we index: an origin advertises one per address family or
/// interface; more would only grow the demux index.
const MAX_ORIGIN_CANDIDATES: usize = 4;
