//! H.264 access units from their RTP packets (RFC 6184: single NAL units, STAP-A and FU-A),
//! as length-prefixed NAL units with the parameter sets taken out for the sample entry.

use std::sync::Arc;

use super::entry::TrackSetup;
use super::frames::Frame;

/// The parameter sets last seen: a keyframe sent without them still starts a file.
#[derive(Default)]
pub(crate) struct Depacketizer {
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
}

impl Depacketizer {
    /// The access unit in one picture's payloads; `None` if a fragment's start is missing.
    pub(crate) fn frame(&mut self, payloads: &[Arc<[u8]>]) -> Option<Frame> {
        let mut unit = Frame::default();
        let mut fu: Option<Vec<u8>> = None;
        for p in payloads {
            let Some(&header) = p.first() else {
                continue;
            };
            match header & 0x1f {
                1..=23 => self.add_nal(&mut unit, p),
                24 => {
                    let mut rest = &p[1..];
                    while rest.len() >= 2 {
                        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                        let nal = rest.get(2..2 + len)?;
                        self.add_nal(&mut unit, nal);
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
                        self.add_nal(&mut unit, &fu.take()?);
                    }
                }
                _ => {}
            }
        }
        if unit.data.is_empty() || fu.is_some() {
            return None;
        }
        if unit.keyframe
            && let (Some(sps), Some(pps)) = (&self.sps, &self.pps)
        {
            let info = crate::h264::parse_sps(sps);
            unit.setup = Some(TrackSetup::H264 {
                sps: sps.clone(),
                pps: pps.clone(),
                width: info.as_ref().map_or(0, |i| i.width as u16),
                height: info.as_ref().map_or(0, |i| i.height as u16),
            });
        }
        Some(unit)
    }

    fn add_nal(&mut self, unit: &mut Frame, nal: &[u8]) {
        match nal.first().map(|b| b & 0x1f) {
            Some(7) => self.sps = Some(nal.to_vec()),
            Some(8) => self.pps = Some(nal.to_vec()),
            // Access unit delimiters and filler carry nothing a file needs.
            Some(9 | 12) | None => {}
            Some(t) => {
                unit.keyframe |= t == 5;
                unit.data
                    .extend_from_slice(&(nal.len() as u32).to_be_bytes());
                unit.data.extend_from_slice(nal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Media;
    use super::super::frames::VideoFrames;
    use super::*;

    fn arc(b: &[u8]) -> Arc<[u8]> {
        Arc::from(b)
    }

    #[test]
    fn stap_a_and_fu_a_become_length_prefixed_nal_units() {
        let mut a = VideoFrames::new(Media::H264).expect("video");
        // STAP-A with SPS and PPS, then an IDR slice in two FU-A fragments.
        let stap = [24, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        a.push(10, 900, false, arc(&stap));
        a.push(11, 900, false, arc(&[0x7c, 0x85, 1, 2]));
        a.push(12, 900, true, arc(&[0x7c, 0x45, 3]));
        let (ts, unit) = a.poll().expect("unit");
        assert_eq!(ts, 900);
        assert!(unit.keyframe);
        let Some(TrackSetup::H264 { sps, pps, .. }) = unit.setup else {
            panic!("the parameter sets: {:?}", unit.setup);
        };
        assert_eq!((&sps[..], &pps[..]), (&[0x67, 0x42][..], &[0x68, 0xce][..]));
        assert_eq!(unit.data, [0, 0, 0, 4, 0x65, 1, 2, 3]);
    }

    #[test]
    fn a_unit_with_a_lost_packet_is_dropped_and_the_next_one_kept() {
        let mut a = VideoFrames::new(Media::H264).expect("video");
        a.push(1, 0, false, arc(&[0x7c, 0x85, 1]));
        a.push(3, 0, true, arc(&[0x7c, 0x45, 3]));
        for i in 0..8 {
            a.push(4 + i, 3000 * (1 + i as u32), true, arc(&[0x41, 9]));
        }
        let (ts, unit) = a.poll().expect("the next unit");
        assert_eq!(ts, 3000);
        assert!(!unit.keyframe);
        assert_eq!(unit.data, [0, 0, 0, 2, 0x41, 9]);
    }
}
