//! ICE restart (RFC 9725 §4.3.2): a viewer or publisher whose network changed keeps its
//! session, its SSRCs and its sequence numbers.
//!
//! The client PATCHes a fragment with new remote credentials and `If-Match`; we give the
//! `Rtc` new local credentials through str0m's direct API (`set_local_ice_credentials`,
//! `set_remote_ice_credentials`: str0m's own restart needs a full SDP offer) and index the
//! new local ufrag in the demux in place of the old one. The `ETag` of a session names its
//! current local ufrag, so it changes with every restart.
//!
//! The new path is up when the peer nominates a pair with its new credentials (a binding
//! request with USE-CANDIDATE). Then the peer's other addresses are forgotten: str0m keeps
//! the old nominated pair while a new one has the same priority, so the old remote
//! candidates are invalidated, and media (ours and str0m's) follows the new pair at once.
//! A viewer then gets the cached keyframe, so its picture recovers without waiting for the
//! publisher's next one.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::Candidate;
use str0m::media::MediaKind;
use str0m::net::Protocol;
use tracing::{debug, info};

use super::demux::{BindingRequest, Remote};
use super::keyframes::Burst;
use super::outbox::Path;
use super::peer::{Role, live};
use super::{Engine, Patch, PatchError, Patched, PeerKey};

/// The `ETag` of a session whose local ICE ufrag is `ufrag` (quoted, RFC 9110 §8.8.3).
pub fn etag(ufrag: &str) -> String {
    format!("\"{ufrag}\"")
}

/// Whether an `If-Match` value (`*` or a list of entity tags) names `current`.
fn if_match_names(if_match: &str, current: &str) -> bool {
    if_match.trim() == "*"
        || if_match
            .split(',')
            .any(|t| t.trim().trim_start_matches("W/") == current)
}

impl Engine {
    pub(super) fn patch(&mut self, now: Instant, patch: Patch) -> Result<Patched, PatchError> {
        let Patch {
            session,
            publisher,
            if_match,
            remote,
            local,
        } = patch;
        let key = *self
            .sessions
            .get(&session)
            .ok_or(PatchError::UnknownSession)?;
        let peer = live(&mut self.peers, key)
            .filter(|p| !matches!(p.role, Role::Probe) && p.is_publisher() == publisher)
            .ok_or(PatchError::UnknownSession)?;
        if let Some(m) = &if_match
            && !if_match_names(m, &etag(&peer.ufrag))
        {
            return Err(PatchError::StaleEtag);
        }
        let Some(remote) = remote else {
            return Ok(Patched::Trickled);
        };
        // Trickle fragments repeat the current credentials; new ones mean a restart. Before
        // the peer's first check we do not know its ufrag: then If-Match decides.
        let restart = match &peer.remote_ufrag {
            Some(current) => *current != remote.ufrag,
            None => if_match.is_some(),
        };
        if !restart {
            return Ok(Patched::Trickled);
        }
        if if_match.is_none() {
            return Err(PatchError::IfMatchRequired);
        }
        let mut api = peer.rtc.direct_api();
        api.set_local_ice_credentials(local.clone());
        api.set_remote_ice_credentials(remote.clone());
        let old = std::mem::replace(&mut peer.ufrag, local.ufrag.clone());
        peer.remote_ufrag = Some(remote.ufrag);
        peer.ice_restarting = true;
        self.demux.replace_ufrag(key, &old, local.ufrag.clone());
        info!(peer = %key, "ICE restart: waiting for the peer's checks on its new path");
        self.drain(now, key);
        Ok(Patched::Restarted {
            etag: etag(&local.ufrag),
            local,
        })
    }

    /// A binding request the peer's `Rtc` accepted, before str0m handles it: remembers the
    /// peer's ufrag, and after an ICE restart moves the peer to the pair it nominates.
    /// Returns `true` when it did (call [`path_moved`](Self::path_moved) once drained).
    pub(super) fn on_binding_request(
        &mut self,
        key: PeerKey,
        remote: Remote,
        local: SocketAddr,
        req: &BindingRequest<'_>,
    ) -> bool {
        let Some(peer) = live(&mut self.peers, key) else {
            return false;
        };
        if peer.remote_ufrag.as_deref() != Some(req.remote_ufrag) {
            peer.remote_ufrag = Some(req.remote_ufrag.to_owned());
        }
        if !(peer.ice_restarting && req.use_candidate) {
            return false;
        }
        peer.ice_restarting = false;
        for &(proto, addr) in &peer.addrs {
            if (proto, addr) == remote {
                continue;
            }
            // The remote candidates str0m can hold for an address: from the offer (host) or
            // learnt from checks (peer-reflexive).
            let proto = if proto == Protocol::Tcp { "tcp" } else { "udp" };
            for kind in ["host", "prflx"] {
                let sdp = format!(
                    "candidate:0 1 {proto} 1 {} {} typ {kind}",
                    addr.ip(),
                    addr.port()
                );
                if let Ok(c) = Candidate::from_sdp_string(&sdp)
                    && peer.rtc.direct_api().invalidate_candidate(&c)
                {
                    debug!(peer = %key, "old remote candidate invalidated");
                }
            }
        }
        self.demux.retain_addr(key, remote, &mut peer.addrs);
        peer.media_path = Some(Path {
            proto: remote.0,
            source: local,
            destination: remote.1,
        });
        true
    }

    /// The peer's media moved to its new path: str0m is ticked so its send address follows
    /// the nomination now, and a viewer gets the cached keyframe and a fresh one is asked for.
    /// str0m's ICE agent reports the pair it sends on (about once a second): a viewer whose
    /// media we seal follows it when the peer nominated another pair without an ICE restart
    /// (a browser may switch to a better pair at any time; str0m's own DTLS and RTCP, which
    /// set `media_path`, seldom flow once connected). Only to an address heard from lately.
    pub(super) fn follow_selected_pair(
        &mut self,
        now: Instant,
        key: PeerKey,
        pair: str0m::stats::CandidatePairStats,
    ) {
        let Some(peer) = live(&mut self.peers, key) else {
            return;
        };
        let path = Path {
            proto: pair.protocol,
            source: pair.local.addr,
            destination: pair.remote.addr,
        };
        if peer.egress.is_none()
            || peer.media_path == Some(path)
            || !peer.consent.fresh((path.proto, path.destination), now)
        {
            return;
        }
        info!(peer = %key, to = %path.destination, "media follows the pair the peer selected");
        peer.media_path = Some(path);
    }

    pub(super) fn path_moved(&mut self, now: Instant, key: PeerKey) {
        self.tick(now, key);
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        info!(peer = %key, "ICE restart: media moved to the new path");
        if !(peer.connected && peer.is_viewer()) {
            return;
        }
        let b = peer.broadcast;
        // The cached keyframe becomes a new sync point that continues the viewer's numbering
        // (written as it stands, its packets would repeat numbers the viewer already had).
        // Alone, not with the GOP: the viewer has a picture and a timeline (see `Burst`).
        let mut layer = 0;
        if let Some(c) = peer.consumer_mut(MediaKind::Video) {
            c.unsync();
            layer = c.layer;
        }
        self.queue_start(key, Burst::Keyframe);
        if let Some(route) = self.router.route(b)
            && let Some(i) = route.layer_index(MediaKind::Video, layer)
        {
            self.pending_plis.push((b, i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_names_the_current_etag_or_anything() {
        let current = etag("abcd");
        assert!(if_match_names("*", &current));
        assert!(if_match_names("\"abcd\"", &current));
        assert!(if_match_names("\"x\", W/\"abcd\"", &current));
        assert!(!if_match_names("\"abce\"", &current));
        assert!(!if_match_names("abcd", &current), "entity tags are quoted");
    }
}
