//! From an SDP offer to a ready str0m `Rtc` and its answer, for publishers (WHIP) and viewers
//! (WHEP). Pure functions of their inputs: no IO, no engine state, so the HTTP layer runs them
//! off the media loop and the fuzzer can call them directly.
//!
//! Here: the codecs each side gets and the `Rtc` built from them. `answer.rs` rewrites a
//! viewer's answer text (one stream, one CNAME); `ice.rs` makes our ICE credentials and
//! candidates.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::{Codec, CodecConfig, PayloadParams};
use str0m::media::{Direction, MediaKind, Pt};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Rtc, RtcConfig};

use crate::engine::{IngestTrack, ViewerTrack};
use crate::srtp::{KeySlot, build_rtc};

mod answer;
mod extmap;
mod ice;
mod quirks;

pub use ice::ice_credentials;

use answer::one_stream;

/// What every session shares: our candidates and DTLS certificate.
#[derive(Clone)]
pub struct SessionSetup {
    pub candidates: Vec<SocketAddr>,
    /// Passive ICE-TCP candidates, offered to viewers only (OBS is UDP only, and the
    /// connection test is about UDP).
    pub tcp_candidates: Vec<SocketAddr>,
    /// One certificate for all sessions: generating one per session would cost more than
    /// the rest of building the `Rtc`.
    pub dtls_cert: DtlsCert,
}

/// A built session, ready to hand to the engine.
pub struct Accepted<T> {
    pub rtc: Rtc,
    /// Where the session's SRTP keys land once DTLS is up (src/srtp/).
    pub keys: KeySlot,
    pub answer: String,
    pub ufrag: String,
    pub tracks: Vec<T>,
    /// The header extension id str0m reads transport-wide sequence numbers from in this
    /// session, if any (extmap.rs): for the engine's check in front of it.
    pub transport_cc: Option<u8>,
}

/// Why an offer cannot be answered. Each says what is wrong with the offer, for a human.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    #[error("the body is not a valid SDP offer: {0}")]
    Malformed(String),
    #[error("the offer has {0} media sections; at most {MAX_MEDIA} are allowed")]
    TooManyMedia(usize),
    #[error("the offer has no audio or video section to {0}")]
    NoMedia(&'static str),
    #[error(
        "none of the offered codecs is supported; offer H264, VP8, VP9, AV1 or H265 video, or Opus audio"
    )]
    UnsupportedCodecs,
    #[error(
        "the offer's {0} section has no codec whipcast can forward; offer {codecs}",
        codecs = forwardable(.0)
    )]
    CannotForward(&'static str),
    #[error("your browser cannot play this broadcast's {0} video; try another browser")]
    CannotDecode(String),
    #[error("the offer could not be negotiated: {0}")]
    Negotiation(String),
}

/// The codecs of one kind that publishers can send.
fn forwardable(kind: &str) -> &'static str {
    if kind == "video" {
        "H264, VP8, VP9, AV1 or H265"
    } else {
        "Opus"
    }
}

impl SessionSetup {
    pub fn new(candidates: Vec<SocketAddr>) -> Self {
        let provider = str0m::crypto::from_feature_flags();
        let dtls_cert = provider
            .dtls_provider
            .generate_certificate()
            .expect("the crypto provider can make a certificate");
        Self {
            candidates,
            tcp_candidates: Vec::new(),
            dtls_cert,
        }
    }

    /// Also offer viewers these passive ICE-TCP candidates.
    pub fn with_tcp(mut self, tcp_candidates: Vec<SocketAddr>) -> Self {
        self.tcp_candidates = tcp_candidates;
        self
    }

    /// A WHIP offer: accepts one audio (Opus) and one video codec, the first the publisher
    /// offers in our order of preference, so exactly one video codec reaches viewers.
    pub fn accept_publisher(
        &self,
        now: Instant,
        offer: &str,
    ) -> Result<Accepted<IngestTrack>, OfferError> {
        let parsed = parse(offer)?;
        let mut chosen: Vec<PayloadParams> = Vec::new();
        let mut any_media = false;
        for line in parsed.media_lines.iter() {
            let kind = match line.typ.to_string().as_str() {
                "audio" => "audio",
                "video" => "video",
                _ => continue,
            };
            if line.disabled || line.pts.is_empty() {
                continue;
            }
            any_media = true;
            // A section whose codecs we cannot forward is refused, not dropped: going live
            // without the publisher's video would look like a broken stream to everyone.
            let p = pick_ingest_codec(&line.rtp_params()).ok_or(OfferError::CannotForward(kind))?;
            let p = quirks::without_red(p);
            if !chosen
                .iter()
                .any(|c| c.spec().codec.kind() == p.spec().codec.kind())
            {
                chosen.push(p);
            }
        }
        if !any_media {
            return Err(OfferError::NoMedia("publish"));
        }
        if chosen.is_empty() {
            return Err(OfferError::UnsupportedCodecs);
        }
        let parsed_layers: Vec<_> = parsed
            .media_lines
            .iter()
            .map(|l| (l.mid(), layers_in_order(&l.rids())))
            .collect();
        let Accepted {
            rtc,
            answer,
            ufrag,
            keys,
            transport_cc,
            ..
        } = self.accept(now, parsed, chosen, PUBLISHER_STATS_INTERVAL, Ice::Udp)?;
        let layers: Vec<(str0m::media::Mid, Vec<str0m::media::Rid>)> = parsed_layers;
        let mut tracks = Vec::new();
        for (mid, kind, pts) in media_of(&rtc, &answer) {
            let params: Vec<PayloadParams> = pts
                .iter()
                .filter_map(|pt| rtc.codec_config().find(|p| p.pt() == *pt).copied())
                .collect();
            if !params.is_empty() && !tracks.iter().any(|t: &IngestTrack| t.kind == kind) {
                // A simulcast m-line is one track per layer, the full-size layer first.
                let rids = (layers.iter())
                    .find(|(m, _)| *m == mid)
                    .map(|(_, rids)| rids.clone())
                    .unwrap_or_default();
                let rids: Vec<Option<str0m::media::Rid>> = match rids.is_empty() {
                    true => vec![None],
                    false => rids.into_iter().take(MAX_LAYERS).map(Some).collect(),
                };
                for layer in rids {
                    tracks.push(IngestTrack {
                        mid,
                        kind,
                        params: params.clone(),
                        layer,
                    });
                }
            }
        }
        if tracks.is_empty() {
            return Err(OfferError::UnsupportedCodecs);
        }
        Ok(Accepted {
            rtc,
            answer,
            ufrag,
            keys,
            tracks,
            transport_cc,
        })
    }

    /// A WHEP offer: the viewer gets exactly the publisher's codecs (with RTX for video, so
    /// its NACKs are answered), or an error naming the codec it cannot decode.
    pub fn accept_viewer(
        &self,
        now: Instant,
        offer: &str,
        publisher: &[IngestTrack],
    ) -> Result<Accepted<ViewerTrack>, OfferError> {
        let parsed = parse(offer)?;
        let used: Vec<Pt> = publisher
            .iter()
            .flat_map(|t| t.params.iter().flat_map(|p| [Some(p.pt()), p.resend()]))
            .flatten()
            .collect();
        let mut free = (96u8..=127).map(Pt::from).filter(|pt| !used.contains(pt));
        let mut params = Vec::new();
        // A simulcast m-line is a track per layer, all with the same codecs: once each.
        let one_per_mline = publisher
            .iter()
            .enumerate()
            .filter(|(i, t)| !publisher[..*i].iter().any(|u| u.mid == t.mid))
            .map(|(_, t)| t);
        for t in one_per_mline {
            for p in &t.params {
                let resend = if t.kind == MediaKind::Video {
                    free.next()
                } else {
                    None
                };
                let mut params_for_viewer = PayloadParams::new(p.pt(), resend, p.spec());
                // Transport-cc: every packet we send a viewer is numbered, and its feedback
                // gives our estimate of its link (engine/egress/send_side.rs). REMB from
                // the abs-send-time we write too, for a viewer that sends no such feedback
                // (it estimates its own link then). NACK, PLI, FIR.
                let video = t.kind == MediaKind::Video;
                params_for_viewer.set_fb_transport_cc(true);
                params_for_viewer.set_fb_remb(video);
                params.push(params_for_viewer);
            }
        }
        let Accepted {
            rtc,
            answer,
            ufrag,
            keys,
            transport_cc,
            ..
        } = self.accept(now, parsed, params, VIEWER_STATS_INTERVAL, Ice::UdpAndTcp)?;
        let answer = one_stream(&answer);
        let mut tracks: Vec<ViewerTrack> = Vec::new();
        for (mid, kind, pts) in media_of(&rtc, &answer) {
            if !pts.is_empty() && !tracks.iter().any(|t| t.kind == kind) {
                tracks.push(ViewerTrack { mid, kind });
            }
        }
        if let Some(video) = publisher.iter().find(|t| t.kind == MediaKind::Video)
            && !tracks.iter().any(|t| t.kind == MediaKind::Video)
        {
            let codec = video
                .params
                .first()
                .map(|p| format!("{:?}", p.spec().codec))
                .unwrap_or_default();
            return Err(OfferError::CannotDecode(codec.to_uppercase()));
        }
        if tracks.is_empty() {
            return Err(OfferError::NoMedia("receive"));
        }
        Ok(Accepted {
            rtc,
            answer,
            ufrag,
            keys,
            tracks,
            transport_cc,
        })
    }

    /// A connectivity-test offer (any audio m-line): the answer carries our candidates and
    /// fingerprint; no media will flow, ICE and DTLS are the test.
    pub fn accept_probe(&self, now: Instant, offer: &str) -> Result<Accepted<()>, OfferError> {
        let parsed = parse(offer)?;
        let opus = parsed
            .media_lines
            .iter()
            .flat_map(|l| l.rtp_params())
            .find(|p| p.spec().codec == Codec::Opus)
            .ok_or(OfferError::NoMedia(
                "test with (offer one Opus audio section)",
            ))?;
        self.accept(now, parsed, vec![opus], VIEWER_STATS_INTERVAL, Ice::Udp)
    }

    fn accept(
        &self,
        now: Instant,
        offer: SdpOffer,
        codecs: Vec<PayloadParams>,
        stats: Duration,
        ice: Ice,
    ) -> Result<Accepted<()>, OfferError> {
        let creds = ice_credentials();
        let ufrag = creds.ufrag.clone();
        // Negotiate only the header extensions that are sent. Publishers: the standard set,
        // so MID/RID (simulcast) and the video orientation are read. Viewers: what our egress
        // writes (src/engine/egress.rs): the video orientation, abs-send-time (the viewer's
        // estimate) and the transport-wide number (ours); the SSRCs are in the
        // answer, so no MID is needed.
        let exts = match ice {
            Ice::UdpAndTcp => viewer_extensions(),
            Ice::Udp => ExtensionMap::standard(),
        };
        let transport_cc = extmap::transport_cc_id(&exts, &offer);
        let mut config = RtcConfig::new()
            .set_extension_map(exts)
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .set_dtls_cert(self.dtls_cert.clone())
            .set_local_ice_credentials(creds)
            .set_stats_interval(Some(stats));
        *config.codec_config() = CodecConfig::new_from_payload_params(codecs);
        let (mut rtc, keys) = build_rtc(config, now);
        for c in self.local_candidates(ice == Ice::UdpAndTcp) {
            rtc.add_local_candidate(c);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| OfferError::Negotiation(e.to_string()))?;
        Ok(Accepted {
            rtc,
            answer: answer.to_sdp_string(),
            ufrag,
            keys,
            tracks: Vec::new(),
            transport_cc,
        })
    }
}

/// Which transports a session's answer offers: viewers' (UDP and TCP) also get viewers'
/// header extensions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ice {
    Udp,
    UdpAndTcp,
}

fn viewer_extensions() -> ExtensionMap {
    let mut exts = ExtensionMap::empty();
    exts.set(VIDEO_ORIENTATION_ID, Extension::VideoOrientation);
    exts.set(ABS_SEND_TIME_ID, Extension::AbsoluteSendTime);
    exts.set(TRANSPORT_CC_ID, Extension::TransportSequenceNumber);
    exts
}

fn parse(offer: &str) -> Result<SdpOffer, OfferError> {
    if !offer.starts_with("v=0") {
        return Err(OfferError::Malformed("it must start with \"v=0\"".into()));
    }
    let parsed = SdpOffer::from_sdp_string(&quirks::accept_bundle_only(offer))
        .map_err(|e| OfferError::Malformed(e.to_string()))?;
    let n = parsed.media_lines.len();
    if n > MAX_MEDIA {
        return Err(OfferError::TooManyMedia(n));
    }
    Ok(parsed)
}

/// The negotiated media of an accepted session: (mid, kind, accepted payload types), for the
/// m-lines that will carry media.
pub(crate) fn media_of(rtc: &Rtc, answer: &str) -> Vec<(str0m::media::Mid, MediaKind, Vec<Pt>)> {
    let Ok(answer) = str0m::change::SdpAnswer::from_sdp_string(answer) else {
        return Vec::new();
    };
    answer
        .media_lines
        .iter()
        .filter(|l| !l.disabled && l.direction() != Direction::Inactive)
        .filter_map(|l| {
            let media = rtc.media(l.mid())?;
            Some((l.mid(), media.kind(), l.pts.clone()))
        })
        .collect()
}

/// A simulcast m-line's layers, from the full-size one down: OBS names its layers "0" (full),
/// "1", "2"; browsers' apps commonly "f", "h", "q" (LiveKit, the WebRTC samples) or "high",
/// "mid", "low", and often list them smallest first. Other names keep the offer's order,
/// after these (the sizes that arrive tell more, router.rs).
fn layers_in_order(rids: &[str0m::media::Rid]) -> Vec<str0m::media::Rid> {
    let size_class = |name: &str| match name {
        "f" | "high" | "hi" | "full" => Some(0),
        "h" | "mid" | "medium" | "half" => Some(1),
        "q" | "low" | "lo" | "quarter" => Some(2),
        _ => None,
    };
    let mut ordered: Vec<(usize, (u8, u64), str0m::media::Rid)> = (rids.iter().enumerate())
        .map(|(i, rid)| {
            let name = rid.to_string();
            let key = match (name.parse::<u64>(), size_class(&name)) {
                (Ok(n), _) => (0, n),
                (_, Some(c)) => (1, c),
                _ => (2, i as u64),
            };
            (i, key, *rid)
        })
        .collect();
    ordered.sort_by_key(|(_, key, _)| *key);
    ordered.into_iter().map(|(_, _, rid)| rid).collect()
}

/// Simulcast layers taken from one m-line: OBS sends at most 4, browsers 3.
const MAX_LAYERS: usize = 4;

/// The codec we take from one offered m-line, in our order of preference: H264 (what OBS
/// sends and every browser plays, preferring constrained baseline), then VP8, VP9, AV1, H265;
/// Opus for audio.
fn pick_ingest_codec(params: &[PayloadParams]) -> Option<PayloadParams> {
    let score = |p: &PayloadParams| -> Option<u32> {
        let f = p.spec().format;
        Some(match p.spec().codec {
            Codec::H264
                if f.packetization_mode == Some(1)
                    && f.profile_level_id.is_some_and(|id| id >> 8 == 0x42e0) =>
            {
                0
            }
            Codec::H264 if f.packetization_mode == Some(1) => 1,
            Codec::Vp8 => 2,
            Codec::Vp9 => 3,
            Codec::Av1 => 4,
            Codec::H265 => 5,
            Codec::Opus => 0,
            _ => return None,
        })
    };
    params
        .iter()
        .filter_map(|p| Some((score(p)?, *p)))
        .min_by_key(|(s, _)| *s)
        .map(|(_, p)| p)
}

/// The id we propose for urn:3gpp:video-orientation (the answer takes the viewer's).
const VIDEO_ORIENTATION_ID: u8 = 13;
/// abs-send-time, which a viewer's receive-side estimate (REMB) is computed from.
const ABS_SEND_TIME_ID: u8 = 2;
/// The transport-wide sequence number, written on every packet a viewer is sent.
const TRANSPORT_CC_ID: u8 = 12;
/// OBS and browsers send one audio and one video section (plus maybe a data channel); a
/// dozen leaves room without letting an offer make us build hundreds of streams.
const MAX_MEDIA: usize = 12;
/// Ingest loss and NACK counts for the broadcaster's live panel, once a second (one publisher
/// per broadcast, so the cost does not matter).
const PUBLISHER_STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Viewer NACK totals for `/metrics`; rarely, because viewers are many.
const VIEWER_STATS_INTERVAL: Duration = Duration::from_secs(5);

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick their own start instant
mod tests;
