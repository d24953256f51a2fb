//! The baseline whipcast is measured against: str0m used the straightforward way, shaped like
//! str0m's chat example but in RTP mode. One `Vec` of peers; a datagram goes to the first
//! peer whose `accepts()` says yes (an O(N) scan; the publisher joined first, so its packets
//! are found at once); each publisher RTP packet is written to every viewer with its sequence
//! number rebased and its payload type mapped; then every `Rtc` gets `Input::Timeout(now)`
//! and is drained (O(N) per datagram), as the chat example does on every turn.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use str0m::media::MediaKind;
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Event, Input, Output, Rtc};
use whipcast::engine::{Command, EngineEvent, IngestTrack, Outcome, Stats, ViewerTrack};

use crate::sim::Sfu;

struct Peer {
    rtc: Rtc,
    /// The viewer's m-lines; empty for the publisher.
    tracks: Vec<ViewerTrack>,
    connected: bool,
    deadline: Instant,
    /// Per publisher SSRC, what makes this viewer's sequence start at 1.
    seq_offsets: Vec<(u32, u64)>,
}

#[derive(Default)]
pub struct Naive {
    peers: Vec<Peer>,
    tracks: Vec<IngestTrack>,
    transmits: VecDeque<Transmit>,
    /// The transmit `poll_transmit` lends out.
    current: Option<Transmit>,
    forwarded: u64,
}

impl Naive {
    /// One turn of the chat example's loop: the input (if any) to the peer that accepts it,
    /// its packets to every viewer, then time to every peer.
    fn turn(&mut self, now: Instant, input: Option<Input>) {
        let mut packets = Vec::new();
        if let Some(input) = input
            && let Some(p) = self.peers.iter_mut().find(|p| p.rtc.accepts(&input))
        {
            let _ = p.rtc.handle_input(input);
            drain(p, &mut self.transmits, &mut packets);
        }
        // A tick can release more publisher packets; those are forwarded in the same turn.
        for _ in 0..3 {
            for pkt in packets.drain(..) {
                self.forward(&pkt);
            }
            for p in &mut self.peers {
                let _ = p.rtc.handle_input(Input::Timeout(now));
                drain(p, &mut self.transmits, &mut packets);
            }
            if packets.is_empty() {
                return;
            }
        }
    }

    fn forward(&mut self, pkt: &RtpPacket) {
        let Some(publisher) = self.peers.iter_mut().find(|p| p.tracks.is_empty()) else {
            return;
        };
        let Some(mid) = publisher
            .rtc
            .direct_api()
            .stream_rx(&pkt.header.ssrc)
            .map(|s| s.mid())
        else {
            return;
        };
        let Some(track) = self.tracks.iter().find(|t| t.mid == mid) else {
            return;
        };
        let kind = track.kind;
        let pt = pkt.header.payload_type;
        let Some(&params) = track.params.iter().find(|p| p.pt() == pt) else {
            return;
        };
        let ssrc = *pkt.header.ssrc;
        for v in self.peers.iter_mut().filter(|p| p.connected) {
            let Some(vt) = v.tracks.iter().find(|t| t.kind == kind) else {
                continue;
            };
            let Some(vpt) = v.rtc.codec_config().match_params(params).map(|p| p.pt()) else {
                continue;
            };
            let offset = match v.seq_offsets.iter().find(|(s, _)| *s == ssrc) {
                Some(&(_, o)) => o,
                None => {
                    let o = (*pkt.seq_no).wrapping_sub(1);
                    v.seq_offsets.push((ssrc, o));
                    o
                }
            };
            let seq = (*pkt.seq_no).wrapping_sub(offset).into();
            if let Some(tx) = v.rtc.direct_api().stream_tx_by_mid(vt.mid, None) {
                let ts = pkt.header.timestamp;
                let write = RtpWrite::new(vpt, seq, ts, pkt.timestamp, pkt.payload.clone())
                    .marker(pkt.header.marker)
                    .ext_vals(ExtensionValues::default())
                    .nackable(kind == MediaKind::Video);
                tx.write_rtp(write);
                self.forwarded += 1;
            }
        }
    }
}

/// Polls a peer to its timeout, keeping transmits and (from the publisher) RTP packets.
fn drain(p: &mut Peer, transmits: &mut VecDeque<Transmit>, packets: &mut Vec<RtpPacket>) {
    loop {
        match p.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                p.deadline = t;
                return;
            }
            Ok(Output::Transmit(t)) => transmits.push_back(t),
            Ok(Output::Event(Event::Connected)) => p.connected = true,
            Ok(Output::Event(Event::RtpPacket(pkt))) if p.tracks.is_empty() => packets.push(pkt),
            Ok(Output::Event(_)) => {}
            Err(_) => return,
        }
    }
}

impl Sfu for Naive {
    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        if let Ok(r) = Receive::new(Protocol::Udp, src, dst, data) {
            self.turn(now, Some(Input::Receive(now, r)));
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.turn(now, None);
    }

    fn handle_command(&mut self, now: Instant, command: Command) -> Outcome {
        let (new, tracks, outcome) = match command {
            Command::Publish(new, tracks) => {
                self.tracks = tracks;
                (new, Vec::new(), Outcome::Published(Ok(())))
            }
            Command::Subscribe(new, tracks) => (new, tracks, Outcome::Subscribed(Ok(()))),
            Command::Describe(_) => {
                let live = self.peers.iter().any(|p| p.tracks.is_empty());
                return Outcome::Described(live.then(|| self.tracks.clone()));
            }
            _ => return Outcome::Stats(self.stats()),
        };
        self.peers.push(Peer {
            rtc: new.rtc,
            tracks,
            connected: false,
            deadline: now,
            seq_offsets: Vec::new(),
        });
        self.turn(now, None);
        outcome
    }

    fn poll_transmit(&mut self) -> Option<whipcast::engine::Transmit<'_>> {
        self.current = self.transmits.pop_front();
        self.current.as_ref().map(|t| whipcast::engine::Transmit {
            proto: t.proto,
            source: t.source,
            destination: t.destination,
            contents: &t.contents,
        })
    }

    fn poll_event(&mut self) -> Option<EngineEvent> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.peers.iter().map(|p| p.deadline).min()
    }

    fn stats(&self) -> Stats {
        let publishers = self.peers.iter().filter(|p| p.tracks.is_empty()).count();
        Stats {
            peers: self.peers.len(),
            publishers,
            viewers: self.peers.len() - publishers,
            packets_forwarded: self.forwarded,
            ..Stats::default()
        }
    }
}
