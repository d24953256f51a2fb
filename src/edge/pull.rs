//! One pull: our own WHEP client. A str0m `Rtc` offers to receive audio and video (full ICE,
//! so we are the controlling agent; `actpass`, so the ICE-lite origin answers `passive` and
//! we are the DTLS client), the offer is POSTed to the origin's WHEP URL with the edge
//! secret, and the answer is applied. The engine then drives the `Rtc` as the publisher of a
//! local broadcast (engine/upstream.rs).

use std::net::SocketAddr;
use std::time::Duration;

use str0m::change::SdpAnswer;
use str0m::format::PayloadParams;
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, RtcConfig};

use super::client::{ClientError, OriginClient};
use crate::cluster::EDGE_SECRET_HEADER;
use crate::engine::{BroadcastKey, IngestTrack, NewPeer, SessionId};
use crate::offer::{SessionSetup, ice_credentials, media_of};
use crate::srtp::build_rtc;

/// A pull the origin answered, ready for `Command::Pull`.
pub(crate) struct Answered {
    pub(crate) peer: NewPeer,
    pub(crate) tracks: Vec<IngestTrack>,
    /// The origin's UDP candidates, for the demux index.
    pub(crate) origin: Vec<SocketAddr>,
    /// The session URL at the origin (for its DELETE).
    pub(crate) location: Option<String>,
}

/// Why a pull did not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PullError {
    #[error("the origin does not know this view ID")]
    UnknownView,
    #[error("the broadcast is not live at the origin")]
    NotLive,
    #[error("the origin refused the pull with {status}: {body}")]
    Refused { status: u16, body: String },
    #[error(transparent)]
    Unreachable(#[from] ClientError),
    #[error("the origin's answer is not usable: {0}")]
    BadAnswer(String),
}

/// Offers to the origin's WHEP endpoint for `view_id` and applies its answer; `origin` is
/// the client and base URL to reach it.
pub(crate) async fn pull(
    setup: &SessionSetup,
    (client, origin): (&OriginClient, &str),
    secret: &str,
    view_id: &str,
    broadcast: BroadcastKey,
) -> Result<Answered, PullError> {
    let creds = ice_credentials();
    let ufrag = creds.ufrag.clone();
    let config = RtcConfig::new()
        .set_rtp_mode(true)
        .set_dtls_cert(setup.dtls_cert.clone())
        .set_local_ice_credentials(creds)
        .set_stats_interval(Some(STATS_INTERVAL));
    let now = crate::clock::now();
    let (mut rtc, keys) = build_rtc(config, now);
    for addr in &setup.candidates {
        if let Ok(c) = Candidate::host(*addr, "udp") {
            rtc.add_local_candidate(c);
        }
    }
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api
        .apply()
        .ok_or_else(|| PullError::BadAnswer("str0m made no offer".into()))?;
    let url = format!("{origin}/stream?id={view_id}");
    let headers = [
        ("content-type", "application/sdp"),
        (EDGE_SECRET_HEADER, secret),
    ];
    let reply = client
        .request("POST", &url, &headers, offer.to_sdp_string())
        .await?;
    match reply.status {
        201 => {}
        404 => return Err(PullError::UnknownView),
        409 => return Err(PullError::NotLive),
        status => {
            return Err(PullError::Refused {
                status,
                body: reply.body.chars().take(200).collect(),
            });
        }
    }
    let (sdp, origin_addrs) = udp_candidates_only(&reply.body);
    if origin_addrs.is_empty() {
        return Err(PullError::BadAnswer("no UDP candidate".into()));
    }
    let answer =
        SdpAnswer::from_sdp_string(&sdp).map_err(|e| PullError::BadAnswer(e.to_string()))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| PullError::BadAnswer(e.to_string()))?;
    let mut tracks: Vec<IngestTrack> = Vec::new();
    for (mid, kind, pts) in media_of(&rtc, &sdp) {
        let params: Vec<PayloadParams> = pts
            .iter()
            .filter_map(|pt| rtc.codec_config().find(|p| p.pt() == *pt).copied())
            .collect();
        if !params.is_empty() && !tracks.iter().any(|t| t.kind == kind) {
            tracks.push(IngestTrack {
                mid,
                kind,
                params,
                layer: None,
            });
        }
    }
    if tracks.is_empty() {
        return Err(PullError::BadAnswer("no track to receive".into()));
    }
    let peer = NewPeer {
        broadcast,
        session: SessionId::random(),
        ufrag,
        rtc,
        keys,
        // The origin answers as to any viewer, without transport-cc (offer/mod.rs): str0m
        // builds no feedback on transport-wide numbers here, so there is nothing to check.
        transport_cc: None,
    };
    Ok(Answered {
        peer,
        tracks,
        origin: origin_addrs,
        location: reply.location,
    })
}

/// The answer without its TCP candidates (the edge pulls over UDP), and the UDP candidates'
/// addresses.
fn udp_candidates_only(sdp: &str) -> (String, Vec<SocketAddr>) {
    let mut out = String::with_capacity(sdp.len());
    let mut addrs = Vec::new();
    for line in sdp.split_inclusive('\n') {
        if let Some(c) = line.trim_end().strip_prefix("a=candidate:") {
            // foundation component transport priority address port typ …
            let f: Vec<&str> = c.split_whitespace().collect();
            if f.len() < 6 || !f[2].eq_ignore_ascii_case("udp") {
                continue;
            }
            let addr = f[4]
                .parse()
                .ok()
                .zip(f[5].parse().ok())
                .map(|(ip, port)| SocketAddr::new(ip, port));
            match addr {
                Some(a) if !addrs.contains(&a) => addrs.push(a),
                Some(_) => {}
                None => continue,
            }
        }
        out.push_str(line);
    }
    (out, addrs)
}

/// Ingest loss for the edge's status, as for a WHIP publisher.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_udp_candidates_are_kept_and_collected() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n\
                   a=candidate:2 1 tcp 1 127.0.0.1 5001 typ host tcptype passive\r\n\
                   a=candidate:3 1 UDP 1 ::1 5002 typ host\r\na=candidate:junk\r\n";
        let (out, addrs) = udp_candidates_only(sdp);
        assert_eq!(
            addrs,
            vec![
                "127.0.0.1:5000".parse().unwrap(),
                "[::1]:5002".parse().unwrap()
            ]
        );
        assert!(!out.contains("tcp"), "{out}");
        assert!(!out.contains("junk"), "{out}");
    }
}
