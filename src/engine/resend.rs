//! Viewers' NACKs, answered by whipcast for the viewers it seals for: the lost numbers are
//! read from the viewer's SRTCP, mapped back through its consumer's offsets to the publisher
//! packet (kept once per broadcast in the router's ring) and sealed again for that viewer.

use super::peer::{Peer, Role, live};
use super::router::CachedPacket;
use super::{Engine, PeerKey};

impl Engine {
    /// Answers the NACKs in a viewer's SRTCP datagram: each lost number is mapped back to
    /// the publisher packet it carried, which is sealed and sent again.
    pub(super) fn answer_nacks(&mut self, v: PeerKey, data: &[u8]) {
        let mut lost = std::mem::take(&mut self.scratch_lost);
        lost.clear();
        let mut rtcp = std::mem::take(&mut self.scratch_rtcp);
        if let Some(Peer {
            broadcast,
            role: Role::Viewer(consumers),
            egress: Some(egress),
            media_path,
            ..
        }) = live(&mut self.peers, v)
        {
            self.counters.nacks_received += egress.lost(data, &mut rtcp, &mut lost);
            let route = self.router.route(*broadcast);
            for &(stream, seq16) in &lost {
                let (Some(route), Some(path)) = (route, *media_path) else {
                    break;
                };
                let Some(consumer) = egress
                    .mid(stream)
                    .and_then(|mid| consumers.iter().find(|c| c.mid == mid))
                else {
                    continue;
                };
                let Some((epoch, source, seq)) = consumer.source_of(seq16) else {
                    continue;
                };
                let packet = route
                    .tracks
                    .iter()
                    .find(|t| t.kind == consumer.kind)
                    .filter(|_| epoch == route.epoch)
                    .and_then(|t| t.recent(source));
                let Some((p, pt)) = packet.and_then(|p| Some((p, consumer.mapped_pt(p.pt)?)))
                else {
                    continue;
                };
                let again = CachedPacket {
                    seq,
                    ts: consumer.ts_out(p.ts),
                    pt,
                    marker: p.marker,
                    payload: p.payload.clone(),
                };
                if egress.resend(stream, &again, path, &mut self.outbox) {
                    self.counters.retransmissions += 1;
                }
            }
        }
        self.scratch_lost = lost;
        self.scratch_rtcp = rtcp;
    }
}

/// Calls `f(media SSRC, sequence number)` for every packet a compound RTCP packet NACKs
/// (RFC 4585 §6.2.1); returns how many NACK messages it held. Malformed input ends the walk.
pub(super) fn for_each_nack(mut rtcp: &[u8], mut f: impl FnMut(u32, u16)) -> u64 {
    let mut messages = 0;
    while rtcp.len() >= 4 {
        let len = (usize::from(u16::from_be_bytes([rtcp[2], rtcp[3]])) + 1) * 4;
        if len > rtcp.len() {
            break;
        }
        let (packet, rest) = rtcp.split_at(len);
        if packet[1] == PT_RTPFB && packet[0] & 0x1f == FMT_NACK && packet.len() >= 12 {
            messages += 1;
            let media = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
            for fci in packet[12..].chunks_exact(4) {
                let pid = u16::from_be_bytes([fci[0], fci[1]]);
                let blp = u16::from_be_bytes([fci[2], fci[3]]);
                f(media, pid);
                for bit in 0..16u16 {
                    if blp & (1 << bit) != 0 {
                        f(media, pid.wrapping_add(bit + 1));
                    }
                }
            }
        }
        rtcp = rest;
    }
    messages
}

const PT_RTPFB: u8 = 205;
const FMT_NACK: u8 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nack_bitmasks_name_every_lost_packet() {
        // RR (ignored), then a NACK for SSRC 7: pid 100 with 101 and 116 lost too.
        let mut rtcp = vec![0x80, 201, 0, 1, 0, 0, 0, 1];
        rtcp.extend_from_slice(&[0x81, 205, 0, 3, 0, 0, 0, 1, 0, 0, 0, 7, 0, 100, 0x80, 0x01]);
        let mut lost = Vec::new();
        assert_eq!(for_each_nack(&rtcp, |s, q| lost.push((s, q))), 1);
        assert_eq!(lost, vec![(7, 100), (7, 101), (7, 116)]);
    }

    #[test]
    fn truncated_rtcp_is_ignored() {
        let rtcp = [0x81, 205, 0, 9, 0, 0, 0, 1, 0, 0, 0, 7];
        assert_eq!(for_each_nack(&rtcp, |_, _| panic!("nothing to read")), 0);
    }
}
