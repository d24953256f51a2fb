//! The live media path: a publisher's RTP packet to every viewer of its broadcast, and the
//! release of what was written (the start bursts and keyframe requests are keyframes.rs).

use std::time::Instant;

use slab::Slab;
use str0m::media::MediaKind;
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use tracing::{info, trace};

use super::consumer::{Consumer, Skip, Source, SourcePacket};
use super::egress::MAX_QUEUED;
use super::packet::CachedPacket;
use super::peer::{Peer, Role, contained, live};
use super::record_tap;
use super::router;
use super::{BroadcastKey, CloseReason, Engine, PeerKey};

impl Engine {
    pub(super) fn on_rtp(&mut self, now: Instant, key: PeerKey, pkt: RtpPacket) {
        let Some(peer) = self.peer_mut(key) else {
            return;
        };
        let b = peer.broadcast;
        let Role::Publisher(ingest) = &mut peer.role else {
            return;
        };
        ingest.twcc.registered(pkt.header.ext_vals.transport_cc);
        let Some((mid, rid)) = ingest.mid_of(&mut peer.rtc, pkt.header.ssrc) else {
            return;
        };
        // When its media was current: what the viewers' sender reports map its RTP time to.
        let wallclock = ingest.clock.instant(
            pkt.timestamp,
            pkt.header.timestamp,
            pkt.last_sender_info.as_ref(),
        );
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        if route.publisher != Some(key) {
            return;
        }
        let Some(ti) = route.track_index(mid, rid) else {
            return;
        };
        self.counters.packets_in += 1;
        self.counters.bytes_in += pkt.payload.len() as u64;
        let size = pkt.payload.len() + pkt.header.header_len;
        route.ingest.add(now, size);
        let track = &mut route.tracks[ti];
        if let Some(sps) = track.arrived(now, size, &pkt.payload)
            && track.rank == 0
        {
            route.sps = Some(sps);
        }
        let cached = CachedPacket::from_rtp(&pkt);
        if let Some(tap) = &self.recorder {
            let report = pkt.last_sender_info.as_ref();
            record_tap::offer(
                tap,
                (self.config.worker, b),
                (route, ti),
                &cached,
                report,
                now,
            );
        }
        let exts = fresh_extensions(&pkt.header.ext_vals);
        self.tell_layers(now, b);
        self.relay(b, ti, &cached, wallclock, &exts);
        self.fan_out(now, b, ti, cached, wallclock, &exts);
    }

    /// A packet of broadcast `b`'s track `ti`, from its publisher here or relayed from its
    /// home (span.rs): kept for NACKs and the keyframe cache, and written to every viewer.
    pub(super) fn fan_out(
        &mut self,
        now: Instant,
        b: BroadcastKey,
        ti: usize,
        cached: CachedPacket,
        wallclock: Instant,
        exts: &ExtensionValues,
    ) {
        let Some(route) = self.router.route_mut(b) else {
            return;
        };
        let Some(track) = route.tracks.get_mut(ti) else {
            return;
        };
        track.remember(&cached);
        let keyframe_completed = track.observe(now, &cached);
        let mut packets = std::mem::take(&mut self.scratch_packets);
        packets.clear();
        packets.push(cached);
        let mut viewers = std::mem::take(&mut self.scratch_keys);
        viewers.clear();
        viewers.extend_from_slice(&route.viewers);
        let mut waiting = Vec::new();
        for &v in &viewers {
            if !self.write_to_viewer(now, v, b, ti, &packets, Start::IfSynced, wallclock, exts)
                && keyframe_completed
            {
                waiting.push(v);
            }
        }
        if !waiting.is_empty() {
            // Viewers waiting for a place to start get the whole keyframe that just completed.
            packets.clear();
            if let Some(route) = self.router.route(b) {
                packets.extend_from_slice(&route.tracks[ti].keyframe);
            }
            for v in waiting {
                let _ = self.write_to_viewer(now, v, b, ti, &packets, Start::Here, wallclock, exts);
            }
        }
        self.scratch_keys = viewers;
        self.scratch_packets = packets;
    }

    /// Writes `packets` of track `ti` to viewer `v`. With [`Start::Here`] the first packet is
    /// where the viewer (re)starts; with [`Start::IfSynced`] video goes only to viewers that
    /// are synced to the current publisher. Returns false if the viewer is waiting for a
    /// keyframe.
    #[allow(clippy::too_many_arguments)] // the per-packet path; a struct would be rebuilt per viewer
    pub(super) fn write_to_viewer(
        &mut self,
        now: Instant,
        v: PeerKey,
        b: BroadcastKey,
        ti: usize,
        packets: &[CachedPacket],
        start: Start,
        wallclock: Instant,
        exts: &ExtensionValues,
    ) -> bool {
        let Some(route) = self.router.route(b) else {
            return true;
        };
        let epoch = route.epoch;
        let track = &route.tracks[ti];
        let Some(peer) = live(&mut self.peers, v) else {
            return true;
        };
        if !peer.connected {
            return true;
        }
        let kind = track.kind;
        let Peer {
            rtc,
            role: Role::Viewer(consumers),
            egress,
            media_path,
            ..
        } = peer
        else {
            return true;
        };
        let Some(consumer) = consumers.iter_mut().find(|c| c.kind == kind) else {
            return true;
        };
        let is_audio = kind == MediaKind::Audio;
        let source = Source {
            epoch,
            layer: track.rank,
        };
        if !is_audio && consumer.layer != track.rank {
            // Another simulcast layer than the viewer's: it waits for this one's keyframe
            // only if it is moving to it, and takes it there.
            if consumer.target != Some(track.rank) {
                return true;
            }
            if start != Start::Here {
                // Asked again at most once a second per layer (router.rs), until it comes.
                if !self.pending_plis.contains(&(b, ti)) {
                    self.pending_plis.push((b, ti));
                }
                return false;
            }
            consumer.layer = track.rank;
            consumer.target = None;
            consumer.loss.moved(now);
            self.counters.layer_switches += 1;
        }
        if start == Start::IfSynced && !is_audio && !consumer.is_synced_to(source) {
            return false;
        }
        let (mut wrote, mut failed, mut rescheduled) = (false, false, false);
        for (i, p) in packets.iter().enumerate() {
            let src = SourcePacket {
                source,
                seq: p.seq,
                ts: p.ts,
                sync_point: is_audio || (start == Start::Here && i == 0),
                clock_rate: track.clock_rate(p.pt),
            };
            let (seq, ts) = match consumer.rewrite(src, now) {
                Ok(out) => out,
                Err(Skip::Waiting) => continue,
                Err(Skip::BeforeSyncPoint) => {
                    self.counters.late_packets_dropped += 1;
                    trace!(peer = %v, seq = p.seq, "packet from before the sync point dropped");
                    continue;
                }
            };
            let Some(pt) = viewer_pt(consumer, rtc, track, p.pt) else {
                continue;
            };
            if let Some(egress) = egress {
                let out = CachedPacket {
                    seq,
                    ts,
                    pt,
                    marker: p.marker,
                    orientation: p.orientation,
                    payload: p.payload.clone(),
                };
                let len = out.payload.len();
                if egress.queue(consumer.mid, out, src.clock_rate, wallclock.min(now)) {
                    let copies = consumer.probing.copies(now, len);
                    if copies > 0 {
                        egress.queue_copies(copies);
                    }
                }
                wrote = true;
                self.counters.packets_forwarded += 1;
                if egress.queued() >= MAX_QUEUED {
                    let f = egress.flush(now, *media_path, &mut self.outbox);
                    self.counters.packets_out += f.datagrams;
                    self.counters.probe_packets += f.copies;
                    self.counters.bytes_out += f.bytes;
                    rescheduled |= f.rescheduled;
                }
                continue;
            }
            let mut api = rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(consumer.mid, None) else {
                continue;
            };
            let write = RtpWrite::new(pt, seq.into(), ts, wallclock.min(now), p.payload.clone())
                .marker(p.marker)
                .ext_vals(exts.clone())
                .nackable(!is_audio);
            if contained(|| {
                tx.write_rtp(write);
                Ok(())
            })
            .is_err()
            {
                failed = true;
                break;
            }
            wrote = true;
            self.counters.packets_forwarded += 1;
        }
        if failed {
            self.close_peer(now, v, CloseReason::PeerFailed);
            return true;
        }
        if rescheduled {
            self.reschedule(v);
        }
        if wrote && !peer_dirty(&mut self.peers, v) {
            self.dirty.push_back(v);
        }
        true
    }

    /// Releases what was written to dirty viewers, in the order they were written to:
    /// sealed into the outbox by us, or a str0m tick. Stops once the outbox holds
    /// [`OUTBOX_BUDGET`] bytes; `poll_transmit` calls again when it has been sent. A keyframe
    /// to a thousand viewers is then sealed and sent a slice at a time instead of all
    /// waiting in memory (~80 KB per viewer), and the first viewers get it sooner.
    pub(super) fn flush_writes(&mut self) {
        let Some(now) = self.last_now else { return };
        while self.outbox.len_bytes() < OUTBOX_BUDGET {
            let Some(v) = self.dirty.pop_front() else {
                break;
            };
            let Some(p) = live(&mut self.peers, v) else {
                continue;
            };
            p.dirty = false;
            if let Some(egress) = p.egress.as_mut() {
                let f = egress.flush(now, p.media_path, &mut self.outbox);
                self.counters.packets_out += f.datagrams;
                self.counters.probe_packets += f.copies;
                self.counters.bytes_out += f.bytes;
                if f.rescheduled {
                    self.reschedule(v);
                }
            } else {
                self.tick(now, v);
            }
        }
        self.flush_deferred(now);
    }
}

impl Engine {
    /// A new publisher took over broadcast `b`. Its payload types mean nothing to the
    /// viewers' mappings (OBS sends H.264, AV1 and HEVC all as PT 96), so those are rebuilt
    /// from its codecs on the next packet. A viewer whose session did not negotiate the new
    /// codec could only be fed media it cannot decode: it is ended instead, and its page
    /// makes a new session (a new answer for the new codec, or a clear 422).
    pub(super) fn remap_viewers(&mut self, now: Instant, b: BroadcastKey) {
        let Some(route) = self.router.route(b) else {
            return;
        };
        let mut cannot_decode = Vec::new();
        for &v in &route.viewers {
            let Some(Peer {
                rtc,
                role: Role::Viewer(consumers),
                ..
            }) = live(&mut self.peers, v)
            else {
                continue;
            };
            let mut decodes = true;
            for c in consumers.iter_mut() {
                c.forget_pts();
                // The new publisher may send fewer simulcast layers.
                let layers = route.layers(c.kind);
                if c.layer >= layers {
                    c.layer = 0;
                }
                c.target = c.target.filter(|&t| t < layers && t != c.layer);
                if let Some(track) = route.tracks.iter().find(|t| t.kind == c.kind) {
                    let config = rtc.codec_config();
                    decodes &= track
                        .params
                        .iter()
                        .all(|p| config.match_params(*p).is_some());
                }
            }
            if !decodes {
                cannot_decode.push(v);
            }
        }
        for v in cannot_decode {
            info!(broadcast = %b, peer = %v, "the resumed publisher's codec is not the viewer's");
            self.remove_peer(now, v, CloseReason::CodecChanged);
        }
    }
}

/// Marks a peer dirty; returns whether it already was.
fn peer_dirty(peers: &mut Slab<Peer>, key: PeerKey) -> bool {
    match live(peers, key) {
        Some(p) => std::mem::replace(&mut p.dirty, true),
        None => true,
    }
}

/// Where a write may start a viewer's stream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// The packets begin a complete keyframe: a waiting viewer starts at the first.
    Here,
    /// Live packets: video only for viewers already synced to this publisher.
    IfSynced,
}

/// The viewer's payload type for a publisher PT, cached per consumer.
fn viewer_pt(
    consumer: &mut Consumer,
    rtc: &str0m::Rtc,
    track: &router::Track,
    pt: str0m::media::Pt,
) -> Option<str0m::media::Pt> {
    if let Some(v) = consumer.mapped_pt(pt) {
        return Some(v);
    }
    let params = track.codec(pt)?;
    let mapped = rtc.codec_config().match_params(*params)?.pt();
    consumer.remember_pt(pt, mapped);
    Some(mapped)
}

/// Fresh extension values for a viewer: only what describes the media itself. Copying the
/// publisher's values would leak its MID/RID onto the viewer's stream.
fn fresh_extensions(from: &ExtensionValues) -> ExtensionValues {
    ExtensionValues {
        audio_level: from.audio_level,
        voice_activity: from.voice_activity,
        video_orientation: from.video_orientation,
        ..Default::default()
    }
}

/// How many sealed bytes the outbox may hold before sealing waits for the io loop to send
/// them: a few hundred datagrams, enough for full GSO batches, small enough that memory
/// does not grow with the audience.
pub(super) const OUTBOX_BUDGET: usize = 256 * 1024;
