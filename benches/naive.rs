//! The baseline whipcast is measured against: str0m used the straightforward way, shaped like
//! str0m's chat example but in RTP mode. One `Vec` of peers; each datagram goes to the first
//! peer whose `accepts()` says yes (an O(N) scan); after every datagram every `Rtc` gets a
//! timeout tick and is drained (O(N)); each publisher RTP packet is written to every viewer
//! with its sequence number rebased and its payload type mapped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use str0m::media::MediaKind;
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};
use str0m::{Event, Input, Output, Rtc};
use whipcast::engine::{Command, EngineEvent, IngestTrack, Outcome, SessionId, Stats, ViewerTrack};

use crate::sim::Sfu;

struct Peer {
    rtc: Rtc,
    session: SessionId,
    /// Empty for the publisher.
    viewer_tracks: Vec<ViewerTrack>,
    publisher: bool,
    connected: bool,
    deadline: Instant,
    /// Per publisher SSRC: the offset that makes this viewer's sequence start at 1.
    offsets: Vec<(u32, u64)>,
}

#[derive(Default)]
pub struct Naive {
    peers: Vec<Peer>,
    tracks: Vec<IngestTrack>,
    transmits: VecDeque<Transmit>,
    forwarded: u64,
}

impl Naive {
    fn tick_all(&mut self, now: Instant) {
        let mut packets: Vec<RtpPacket> = Vec::new();
        for p in &mut self.peers {
            let _ = p.rtc.handle_input(Input::Timeout(now));
            drain(p, &mut self.transmits, &mut packets);
        }
        for pkt in packets {
            self.forward(now, &pkt);
        }
    }

    fn forward(&mut self, now: Instant, pkt: &RtpPacket) {
        let Some(publisher) = self.peers.iter_mut().find(|p| p.publisher) else {
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
        let (kind, params) = (
            track.kind,
            track
                .params
                .iter()
                .find(|p| p.pt() == pkt.header.payload_type)
                .copied(),
        );
        let Some(params) = params else { return };
        for v in self
            .peers
            .iter_mut()
            .filter(|p| !p.publisher && p.connected)
        {
            let Some(vt) = v.viewer_tracks.iter().find(|t| t.kind == kind) else {
                continue;
            };
            let Some(pt) = v.rtc.codec_config().match_params(params).map(|p| p.pt()) else {
                continue;
            };
            let ssrc: u32 = *pkt.header.ssrc;
            let offset = match v.offsets.iter().find(|(s, _)| *s == ssrc) {
                Some((_, o)) => *o,
                None => {
                    let o = (*pkt.seq_no).wrapping_sub(1);
                    v.offsets.push((ssrc, o));
                    o
                }
            };
            let seq: SeqNo = (*pkt.seq_no).wrapping_sub(offset).into();
            if let Some(tx) = v.rtc.direct_api().stream_tx_by_mid(vt.mid, None) {
                tx.write_rtp(
                    RtpWrite::new(
                        pt,
                        seq,
                        pkt.header.timestamp,
                        pkt.timestamp,
                        pkt.payload.clone(),
                    )
                    .marker(pkt.header.marker)
                    .ext_vals(ExtensionValues::default())
                    .nackable(kind == MediaKind::Video),
                );
                self.forwarded += 1;
            }
        }
        // Every Rtc gets time again, as the chat example does on every turn.
        let mut none = Vec::new();
        for p in &mut self.peers {
            let _ = p.rtc.handle_input(Input::Timeout(now));
            drain(p, &mut self.transmits, &mut none);
        }
    }
}

fn drain(p: &mut Peer, transmits: &mut VecDeque<Transmit>, packets: &mut Vec<RtpPacket>) {
    loop {
        match p.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                p.deadline = t;
                return;
            }
            Ok(Output::Transmit(t)) => transmits.push_back(t),
            Ok(Output::Event(Event::Connected)) => p.connected = true,
            Ok(Output::Event(Event::RtpPacket(pkt))) => {
                if p.publisher {
                    if let Some(rx) = p.rtc.direct_api().stream_rx(&pkt.header.ssrc) {
                        rx.suppress_nack(false);
                    }
                    packets.push(pkt);
                }
            }
            Ok(Output::Event(_)) => {}
            Err(_) => return,
        }
    }
}

impl Sfu for Naive {
    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        let Ok(r) = Receive::new(Protocol::Udp, src, dst, data) else {
            return;
        };
        let input = Input::Receive(now, r);
        let mut packets = Vec::new();
        if let Some(p) = self.peers.iter_mut().find(|p| p.rtc.accepts(&input)) {
            let _ = p.rtc.handle_input(input);
            drain(p, &mut self.transmits, &mut packets);
        }
        for pkt in packets {
            self.forward(now, &pkt);
        }
        self.tick_all(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.tick_all(now);
    }

    fn handle_command(&mut self, now: Instant, command: Command) -> Outcome {
        match command {
            Command::Publish(new, tracks) => {
                self.tracks = tracks;
                self.peers.push(Peer {
                    rtc: new.rtc,
                    session: new.session,
                    viewer_tracks: Vec::new(),
                    publisher: true,
                    connected: false,
                    deadline: now,
                    offsets: Vec::new(),
                });
                self.tick_all(now);
                Outcome::Published(Ok(()))
            }
            Command::Subscribe(new, tracks) => {
                self.peers.push(Peer {
                    rtc: new.rtc,
                    session: new.session,
                    viewer_tracks: tracks,
                    publisher: false,
                    connected: false,
                    deadline: now,
                    offsets: Vec::new(),
                });
                self.tick_all(now);
                Outcome::Subscribed(Ok(()))
            }
            Command::Describe(_) => Outcome::Described(
                self.peers
                    .iter()
                    .any(|p| p.publisher)
                    .then(|| self.tracks.clone()),
            ),
            Command::Close { session, .. } => {
                let before = self.peers.len();
                self.peers.retain(|p| p.session != session);
                Outcome::Closed(self.peers.len() != before)
            }
            _ => Outcome::Stats(self.stats()),
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<EngineEvent> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.peers.iter().map(|p| p.deadline).min()
    }

    fn stats(&self) -> Stats {
        let publishers = self.peers.iter().filter(|p| p.publisher).count();
        Stats {
            peers: self.peers.len(),
            publishers,
            viewers: self.peers.len() - publishers,
            packets_forwarded: self.forwarded,
            ..Stats::default()
        }
    }
}
