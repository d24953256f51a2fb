//! RTP packets to coded frames: H.264 access units (RFC 6184: single NAL units, STAP-A and
//! FU-A) as length-prefixed NAL units with the parameter sets taken out for the sample entry,
//! and Opus packets as they come (one packet, one sample; RFC 7587).

/// An H.264 access unit put back together from its RTP packets.
#[derive(Debug, Default)]
pub(crate) struct AccessUnit {
    pub(crate) ts: u32,
    /// NAL units, each behind its 4-byte big-endian length (avcC `length_size` 4).
    pub(crate) data: Vec<u8>,
    pub(crate) keyframe: bool,
    pub(crate) sps: Option<Vec<u8>>,
    pub(crate) pps: Option<Vec<u8>>,
}

/// Packets of the access unit being received, in arrival order.
#[derive(Default)]
pub(crate) struct H264Assembler {
    ts: Option<u32>,
    packets: Vec<(u64, std::sync::Arc<[u8]>)>,
}

impl H264Assembler {
    /// Takes one packet; returns the access unit it completes (marker bit), or the previous
    /// one when this packet starts a new timestamp without the old one's marker (a lost
    /// last packet: the unit is still returned if its sequence numbers have no hole).
    pub(crate) fn push(
        &mut self,
        seq: u64,
        ts: u32,
        marker: bool,
        payload: std::sync::Arc<[u8]>,
    ) -> Option<AccessUnit> {
        let mut done = None;
        if self.ts.is_some_and(|t| t != ts) {
            done = self.finish();
        }
        self.ts = Some(ts);
        self.packets.push((seq, payload));
        if marker {
            // A unit completed by this packet wins over an abandoned earlier one.
            return self.finish().or(done);
        }
        done
    }

    fn finish(&mut self) -> Option<AccessUnit> {
        let ts = self.ts.take()?;
        let mut packets = std::mem::take(&mut self.packets);
        packets.sort_by_key(|(seq, _)| *seq);
        packets.dedup_by_key(|(seq, _)| *seq);
        let contiguous = packets.windows(2).all(|w| w[1].0 == w[0].0 + 1);
        if !contiguous {
            return None;
        }
        let mut unit = AccessUnit {
            ts,
            ..Default::default()
        };
        let mut fu: Option<Vec<u8>> = None;
        for (_, p) in &packets {
            let Some(&header) = p.first() else {
                continue;
            };
            match header & 0x1f {
                1..=23 => unit.add_nal(p),
                24 => {
                    let mut rest = &p[1..];
                    while rest.len() >= 2 {
                        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                        let nal = rest.get(2..2 + len)?;
                        unit.add_nal(nal);
                        rest = &rest[2 + len..];
                    }
                }
                28 => {
                    let &fu_header = p.get(1)?;
                    if fu_header & 0x80 != 0 {
                        fu = Some(vec![(header & 0xe0) | (fu_header & 0x1f)]);
                    }
                    // A fragment whose start was lost cannot be rebuilt.
                    fu.as_mut()?.extend_from_slice(&p[2..]);
                    if fu_header & 0x40 != 0 {
                        unit.add_nal(&fu.take()?);
                    }
                }
                _ => {}
            }
        }
        (!unit.data.is_empty() && fu.is_none()).then_some(unit)
    }
}

impl AccessUnit {
    fn add_nal(&mut self, nal: &[u8]) {
        match nal.first().map(|b| b & 0x1f) {
            Some(7) => self.sps = Some(nal.to_vec()),
            Some(8) => self.pps = Some(nal.to_vec()),
            // Access unit delimiters and filler carry nothing a file needs.
            Some(9 | 12) | None => {}
            Some(t) => {
                self.keyframe |= t == 5;
                self.data
                    .extend_from_slice(&(nal.len() as u32).to_be_bytes());
                self.data.extend_from_slice(nal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn arc(b: &[u8]) -> Arc<[u8]> {
        Arc::from(b)
    }

    #[test]
    fn stap_a_and_fu_a_become_length_prefixed_nal_units() {
        let mut a = H264Assembler::default();
        // STAP-A with SPS and PPS, then an IDR slice in two FU-A fragments.
        let stap = [24, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        assert!(a.push(10, 900, false, arc(&stap)).is_none());
        assert!(a.push(11, 900, false, arc(&[0x7c, 0x85, 1, 2])).is_none());
        let unit = a.push(12, 900, true, arc(&[0x7c, 0x45, 3])).expect("unit");
        assert!(unit.keyframe);
        assert_eq!(unit.sps.as_deref(), Some(&[0x67, 0x42][..]));
        assert_eq!(unit.pps.as_deref(), Some(&[0x68, 0xce][..]));
        assert_eq!(unit.data, [0, 0, 0, 4, 0x65, 1, 2, 3]);
    }

    #[test]
    fn a_unit_with_a_lost_packet_is_dropped() {
        let mut a = H264Assembler::default();
        assert!(a.push(1, 0, false, arc(&[0x7c, 0x85, 1])).is_none());
        assert!(a.push(3, 0, true, arc(&[0x7c, 0x45, 3])).is_none());
        let unit = a
            .push(4, 3000, true, arc(&[0x41, 9]))
            .expect("the next unit");
        assert!(!unit.keyframe);
        assert_eq!(unit.data, [0, 0, 0, 2, 0x41, 9]);
    }
}
