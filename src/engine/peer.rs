//! One WebRTC session: a str0m `Rtc` and what the engine knows about it.
//!
//! The str0m call contract applies to every `Rtc` here: after any mutation (input, write,
//! keyframe request, close) `poll_output` is drained until it returns `Output::Timeout`, and
//! after `write_rtp` an `Input::Timeout(now)` is fed before the packets come out. The engine's
//! `drain` and `tick` are the only places that do this.

use std::time::{Duration, Instant};

use slab::Slab;

use str0m::Rtc;
use str0m::media::MediaKind;
use str0m::rtp::Ssrc;

use super::bye::Goodbye;
use super::capture_clock::CaptureClock;
use super::consent::Consent;
use super::consumer::Consumer;
use super::demux::Remote;
use super::egress::Egress;
use super::key::{BroadcastKey, PeerKey, SessionId};
use super::outbox::Path;
use super::twcc_guard::TwccGuard;
use crate::srtp::KeySlot;
use str0m::media::{Mid, Rid};

pub(crate) struct Peer {
    pub(crate) generation: u32,
    /// Boxed: str0m's `Rtc` is ~10 KB, and the slab doubles its capacity as it grows.
    pub(crate) rtc: Box<Rtc>,
    pub(crate) session: SessionId,
    pub(crate) ufrag: String,
    /// The peer's own ICE ufrag, from its accepted checks (or its ICE restart): a PATCH
    /// fragment with another one is an ICE restart (restart.rs).
    pub(crate) remote_ufrag: Option<String>,
    /// An ICE restart is under way: the peer's next nomination moves its media (restart.rs).
    pub(crate) ice_restarting: bool,
    pub(crate) broadcast: BroadcastKey,
    pub(crate) role: Role,
    /// DTLS is up and media may flow (str0m's `Event::Connected`).
    pub(crate) connected: bool,
    /// Addresses this peer talks from, as entered in the demux index.
    pub(crate) addrs: Vec<Remote>,
    /// The `Rtc`'s own next timeout.
    pub(crate) rtc_deadline: Option<Instant>,
    /// When the engine gives up on this peer (handshake never finished, resume grace over).
    pub(crate) expires: Option<Instant>,
    /// What the deadline index currently holds for this peer.
    pub(crate) deadline: Option<Instant>,
    /// The silence clock's own stamp, for what `consent` does not tell (see
    /// [`last_heard`](Self::last_heard)): an edge's pull counts only media (upstream.rs), so
    /// for it this is when its last media came; and a publisher that connected before
    /// anything that counts was heard (an edge's pull before its first media) is silent from
    /// its connection on ([`count_silence_from`](Self::count_silence_from)).
    pub(crate) silence_stamp: Option<Instant>,
    /// The cumulative NACK count in this peer's last str0m stats event.
    pub(crate) nacks_seen: u64,
    /// How many times a viewer was sent the cached keyframe (see `first_frame.rs`).
    pub(crate) first_frames: u8,
    /// Packets were written since the last tick (see `Engine::flush_writes`).
    pub(crate) dirty: bool,
    /// The session's SRTP keys, once its DTLS handshake exports them.
    pub(crate) keys: KeySlot,
    /// A viewer whose media we seal ourselves (set when it connects with AES-GCM keys).
    pub(crate) egress: Option<Box<Egress>>,
    /// Where str0m last sent this peer DTLS or RTCP: the selected ICE pair, which our own
    /// sealed media follows.
    pub(crate) media_path: Option<Path>,
    /// Which addresses may be sent to, and how fast new ones are admitted (consent.rs).
    pub(crate) consent: Consent,
    /// A viewer that is an edge's pull ([`Command::Relay`](super::Command::Relay)): outside
    /// the viewer cap.
    pub(crate) relay: bool,
    /// A viewer's broadcast audience (audience.rs), shared by every worker with viewers.
    pub(crate) audience: Option<std::sync::Arc<super::audience::Audience>>,
}

pub(crate) enum Role {
    Publisher(Ingest),
    Viewer(Vec<Consumer>),
    /// A connectivity test: ICE and DTLS only, removed as soon as it connects.
    Probe,
}

/// Publisher-side state: which of its SSRCs belong to which m-line.
pub(crate) struct Ingest {
    /// An edge's pull from its origin (upstream.rs), not a WHIP publisher.
    pub(crate) upstream: bool,
    /// SSRC → m-line, learned from str0m's `StreamRx` on the first packet of each SSRC (the
    /// MID extension is only in early packets). NACK is switched on at the same moment.
    ssrcs: Vec<(Ssrc, Mid, Option<Rid>)>,
    /// The SSRCs its RTCP BYE has named (bye.rs).
    pub(crate) goodbye: Goodbye,
    /// When its media was current, by its sender reports (capture_clock.rs).
    pub(crate) clock: CaptureClock,
    /// Its transport-wide sequence numbers, checked before str0m sees them (twcc_guard.rs).
    pub(crate) twcc: TwccGuard,
}

impl Peer {
    pub(crate) fn is_publisher(&self) -> bool {
        matches!(self.role, Role::Publisher(_))
    }

    pub(crate) fn is_upstream(&self) -> bool {
        matches!(&self.role, Role::Publisher(i) if i.upstream)
    }

    pub(crate) fn is_viewer(&self) -> bool {
        matches!(self.role, Role::Viewer(_))
    }

    /// The earliest of the `Rtc` timeout, the engine's own expiry, our next report and when
    /// a silent publisher counts as gone.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let report = self.egress.as_ref().and_then(|e| e.next_deadline());
        [self.rtc_deadline, self.expires, report, self.silent_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The peer was heard from `remote`, one of its own addresses: `data` was accepted for
    /// its session (media, RTCP, STUN, DTLS). One rule for every stack: a session lives while
    /// its peer is heard, whichever of these it sends (browsers send consent checks and RTCP,
    /// libnice Binding indications, FFmpeg nothing but media once connected).
    ///
    /// One stamp per datagram, the consent record of `remote`: it is both where we may send
    /// (consent.rs) and when the peer was last heard ([`last_heard`](Self::last_heard)).
    pub(crate) fn hear(&mut self, remote: Remote, now: Instant, data: &[u8]) {
        // An edge's pull counts only media: the origin answers our checks and sends reports
        // for a while after its publisher is gone (upstream.rs).
        if self.is_upstream() && super::upstream::is_media(data) {
            self.silence_stamp = Some(now);
        }
        self.consent.heard(remote, now);
    }

    /// When the peer was last heard, for its silence deadline: the newest consent record
    /// (every accepted datagram stamps one), or for an edge's pull its last media; in either
    /// case no earlier than a connection that came before anything was heard.
    pub(crate) fn last_heard(&self) -> Option<Instant> {
        if self.is_upstream() {
            return self.silence_stamp;
        }
        self.consent.last_heard().max(self.silence_stamp)
    }

    /// A publisher connected: if nothing that counts was heard from it yet (an edge's pull is
    /// silent, see `upstream::is_media`, from here until its media), its silence counts from
    /// `now`.
    pub(crate) fn count_silence_from(&mut self, now: Instant) {
        if self.last_heard().is_none() {
            self.silence_stamp = Some(now);
        }
    }

    /// When a connected peer that sends nothing more counts as gone: [`PUBLISHER_SILENCE`]
    /// or [`VIEWER_SILENCE`] after the last datagram. Datagrams move it without touching the
    /// deadline index (the index keeps the older instant; when that passes, the peer is
    /// rescheduled from here).
    pub(crate) fn silent_at(&self) -> Option<Instant> {
        if !self.connected {
            return None;
        }
        let bound = match self.role {
            Role::Publisher(_) => PUBLISHER_SILENCE,
            Role::Viewer(_) => VIEWER_SILENCE,
            Role::Probe => return None,
        };
        Some(self.last_heard()? + bound)
    }

    /// A connected peer has sent nothing for its bound.
    pub(crate) fn is_silent(&self, now: Instant) -> bool {
        self.silent_at().is_some_and(|t| t <= now)
    }

    pub(crate) fn consumer_mut(&mut self, kind: MediaKind) -> Option<&mut Consumer> {
        match &mut self.role {
            Role::Viewer(cs) => cs.iter_mut().find(|c| c.kind == kind),
            Role::Publisher(_) | Role::Probe => None,
        }
    }
}

impl Ingest {
    pub(crate) fn new(twcc: TwccGuard) -> Self {
        Self {
            upstream: false,
            ssrcs: Vec::new(),
            goodbye: Goodbye::default(),
            clock: CaptureClock::default(),
            twcc,
        }
    }

    /// The SSRCs it has sent media on.
    pub(crate) fn media_ssrcs(&self) -> impl Iterator<Item = Ssrc> + '_ {
        self.ssrcs.iter().map(|(s, ..)| *s)
    }

    /// The m-line of an incoming SSRC. On first sight, asks str0m and enables NACK towards
    /// the publisher: OBS offers no RTX, so str0m would otherwise never NACK it, while OBS
    /// does answer NACKs by resending on the original SSRC.
    pub(crate) fn mid_of(&mut self, rtc: &mut Rtc, ssrc: Ssrc) -> Option<(Mid, Option<Rid>)> {
        if let Some((_, mid, rid)) = self.ssrcs.iter().find(|(s, _, _)| *s == ssrc) {
            return Some((*mid, *rid));
        }
        let mut api = rtc.direct_api();
        let rx = api.stream_rx(&ssrc)?;
        let (mid, rid) = (rx.mid(), rx.rid());
        rx.suppress_nack(false);
        if self.ssrcs.len() < MAX_SSRCS {
            self.ssrcs.push((ssrc, mid, rid));
        }
        Some((mid, rid))
    }
}

/// The live peer a key names: its slot, if the generation still matches. A free function
/// over the slab, so callers can hold other fields of the engine at the same time.
pub(crate) fn live(peers: &mut Slab<Peer>, key: PeerKey) -> Option<&mut Peer> {
    peers
        .get_mut(key.index as usize)
        .filter(|p| p.generation == key.generation)
}

/// Runs `f` on one peer's `Rtc` and contains a panic inside str0m (which treats panics as
/// its own bugs) to that peer: the caller closes it, every other peer keeps going.
pub(crate) fn contained<T>(f: impl FnOnce() -> Result<T, str0m::RtcError>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("str0m panicked on this peer's input".into()),
    }
}

/// How long a connected publisher may send nothing at all before it counts as gone (viewers
/// then see "reconnecting" and wait the resume grace). A live publisher never goes quiet
/// that long: OBS sends audio every 20 ms whatever the picture, browsers send RTCP every
/// second or so and STUN consent checks every ~5 s. str0m's ICE-lite consent timeout alone
/// would take 15 s.
pub(crate) const PUBLISHER_SILENCE: Duration = Duration::from_millis(2500);

/// How long a connected viewer may send nothing at all (no RTCP, no STUN request or
/// indication, no DTLS) before its session ends: RFC 7675's consent lifetime, after which we
/// may not send to it anyway ([`CONSENT`](super::consent::CONSENT)). Every real viewer is heard
/// well within it: browsers send RTCP every second or so and consent checks every few
/// seconds, GStreamer RTCP every few seconds, libnice's keep-alive indications come every
/// 25 s (its Tr). A viewer that vanished without a word (a crash, a lost network) holds its
/// place this long.
pub(crate) const VIEWER_SILENCE: Duration = super::consent::CONSENT;

/// Audio + video, with room for simulcast layers and RTX.
const MAX_SSRCS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_str0m_becomes_an_error_for_that_peer() {
        let r: Result<(), String> = contained(|| panic!("a str0m bug"));
        assert!(r.is_err());
        assert_eq!(contained(|| Ok::<_, str0m::RtcError>(7)), Ok(7));
    }
}
