//! `--record`: what the media path hands the recorder (`crate::record`): a publisher's packet
//! by handle (an `Arc`, no bytes copied), through the recorder's bounded queue, which never
//! blocks fan-out.

use std::time::Instant;

use str0m::format::Codec;
use str0m::rtp::rtcp::SenderInfo;

use super::BroadcastKey;
use super::packet::CachedPacket;
use super::router::Route;
use crate::record::{Media, Packet, Report, Tap};

/// `--record`: a copy of the packet's handle (an `Arc`, no bytes) for the recorder, if its
/// codec is one the recorder writes and, with simulcast, it is of the full-size layer; with
/// its stream's latest sender report, which the recorder aligns the tracks by.
pub(super) fn offer(
    tap: &Tap,
    (worker, b): (usize, BroadcastKey),
    (route, ti): (&Route, usize),
    cached: &CachedPacket,
    report: Option<&SenderInfo>,
    now: Instant,
) {
    let track = &route.tracks[ti];
    if track.rank != 0 {
        return;
    }
    let codec = track
        .params
        .iter()
        .find(|p| p.pt() == cached.pt)
        .map(|p| p.spec().codec);
    let media = match codec {
        Some(Codec::H264) => Media::H264,
        Some(Codec::Vp8) => Media::Vp8,
        Some(Codec::Vp9) => Media::Vp9,
        Some(Codec::Av1) => Media::Av1,
        Some(Codec::Opus) => Media::Opus,
        _ => return,
    };
    tap.offer(Packet {
        broadcast: b,
        route: (worker, route.generation),
        epoch: route.epoch,
        media,
        seq: cached.seq,
        ts: cached.ts,
        marker: cached.marker,
        payload: cached.payload.clone(),
        arrival: now,
        report: report.map(|r| Report {
            ntp: r.ntp_time,
            rtp: r.rtp_time.numer() as u32,
        }),
    });
}
