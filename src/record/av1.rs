//! AV1 temporal units from their RTP packets (the AV1 RTP payload format, §4): each
//! packet's aggregation header (Z: its first OBU element continues the last packet's, Y: its
//! last one goes on in the next, W: how many elements, the last without a length; N: a new
//! coded video sequence), the OBUs put back together, and the sample written as the AV1
//! ISOBMFF binding wants it: low-overhead format (each OBU with its size field), without
//! temporal delimiters, padding, redundant frame headers or tile lists; a sync sample opens
//! with its sequence header, which `av1C` also carries.

use std::sync::Arc;

use super::entry::TrackSetup;
use super::frames::Frame;
use super::obu::{self, Obu};

/// The sequence header last seen: a keyframe sent without it still starts a file.
#[derive(Default)]
pub(crate) struct Depacketizer {
    sequence: Option<Sequence>,
}

struct Sequence {
    /// The OBU as written (with its size field): `av1C`'s config OBU.
    obu: Vec<u8>,
    setup: TrackSetup,
}

impl Depacketizer {
    /// The temporal unit in one picture's payloads; `None` if an OBU's start is missing or
    /// an OBU is malformed.
    pub(crate) fn frame(&mut self, payloads: &[Arc<[u8]>]) -> Option<Frame> {
        let mut data = Vec::new();
        let (mut keyframe, mut first_frame, mut with_sequence) = (false, true, false);
        for bytes in obus(payloads)? {
            let obu = Obu::parse(&bytes)?;
            match obu.kind {
                obu::TEMPORAL_DELIMITER
                | obu::PADDING
                | obu::REDUNDANT_FRAME_HEADER
                | obu::TILE_LIST => continue,
                obu::SEQUENCE_HEADER => {
                    let (mut config, (width, height)) = obu::sequence_header(obu.payload)?;
                    let mut written = Vec::new();
                    obu.write(&mut written);
                    config.config_obus = written.clone();
                    let setup = TrackSetup::Av1 {
                        config,
                        width,
                        height,
                    };
                    self.sequence = Some(Sequence {
                        obu: written,
                        setup,
                    });
                    with_sequence = true;
                }
                obu::FRAME | obu::FRAME_HEADER if first_frame => {
                    first_frame = false;
                    keyframe = obu::starts_key_frame(obu.payload);
                }
                _ => {}
            }
            obu.write(&mut data);
        }
        if data.is_empty() {
            return None;
        }
        let sequence = self.sequence.as_ref().filter(|_| keyframe);
        if let Some(s) = sequence.filter(|_| !with_sequence) {
            data.splice(0..0, s.obu.iter().copied());
        }
        Some(Frame {
            data,
            keyframe,
            setup: sequence.map(|s| s.setup.clone()),
        })
    }
}

/// The OBUs in one temporal unit's payloads, each whole (as RTP carries them: maybe without
/// a size field); `None` if a fragment's start or end is missing.
fn obus(payloads: &[Arc<[u8]>]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut partial: Option<Vec<u8>> = None;
    for p in payloads {
        let aggregation = *p.first()?;
        let continues = aggregation & 0x80 != 0;
        let goes_on = aggregation & 0x40 != 0;
        let count = usize::from((aggregation >> 4) & 0x03);
        let mut rest = &p[1..];
        let mut n = 0;
        while !rest.is_empty() {
            n += 1;
            let element = if n == count {
                std::mem::take(&mut rest)
            } else {
                let (len, at) = obu::leb128(rest)?;
                let element = rest.get(at..at.checked_add(len)?)?;
                rest = &rest[at + len..];
                element
            };
            if n == 1 && continues {
                partial.as_mut()?.extend_from_slice(element);
            } else if partial.replace(element.to_vec()).is_some() {
                return None; // the last packet said its OBU goes on; this one starts anew
            }
            if !(rest.is_empty() && goes_on) {
                out.push(partial.take()?);
            }
        }
    }
    partial.is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::super::Media;
    use super::super::frames::VideoFrames;
    use super::*;

    fn arc(b: &[u8]) -> Arc<[u8]> {
        Arc::from(b)
    }

    /// A key temporal unit as WebRTC sends it: packet 1 has the sequence header (with its
    /// length) and the start of a frame OBU (the last element, W=2), which packet 2 ends.
    fn key_unit() -> [Vec<u8>; 2] {
        let mut first = vec![0x68, obu::SEQUENCE_640X360.len() as u8 + 1, 0x08];
        first.extend_from_slice(&obu::SEQUENCE_640X360);
        first.extend_from_slice(&[0x30, 0x10, 0xaa]);
        let second = vec![0x90, 0xbb, 0xcc];
        [first, second]
    }

    #[test]
    fn a_key_unit_across_packets_is_written_with_size_fields_and_its_av1c() {
        let mut v = VideoFrames::new(Media::Av1).expect("video");
        let [a, b] = key_unit();
        v.push(1, 0, false, arc(&a));
        v.push(2, 0, true, arc(&b));
        let (_, f) = v.poll().expect("the unit");
        assert!(f.keyframe);
        let mut sequence = vec![0x0a, obu::SEQUENCE_640X360.len() as u8];
        sequence.extend_from_slice(&obu::SEQUENCE_640X360);
        let frame = [0x32, 4, 0x10, 0xaa, 0xbb, 0xcc];
        assert_eq!(f.data, [&sequence[..], &frame].concat());
        let Some(TrackSetup::Av1 {
            config,
            width,
            height,
        }) = f.setup
        else {
            panic!("a setup");
        };
        assert_eq!((width, height), (640, 360));
        assert_eq!(config.config_obus, sequence);
    }

    #[test]
    fn temporal_delimiters_are_dropped_and_a_key_unit_without_its_header_gets_it() {
        let mut d = Depacketizer::default();
        let [a, b] = key_unit();
        assert!(d.frame(&[arc(&a), arc(&b)]).is_some());
        // W=0: every element with its length; a temporal delimiter, then a key frame OBU.
        let f = d
            .frame(&[arc(&[0x00, 1, 0x10, 2, 0x30, 0x10])])
            .expect("a unit");
        assert!(f.keyframe && f.setup.is_some());
        assert_eq!(f.data[..2], [0x0a, obu::SEQUENCE_640X360.len() as u8]);
        assert_eq!(f.data[f.data.len() - 3..], [0x32, 1, 0x10]);
        // An inter frame (frame_type 1).
        let f = d.frame(&[arc(&[0x10, 0x30, 0x30])]).expect("a unit");
        assert!(!f.keyframe && f.setup.is_none());
        assert_eq!(f.data, [0x32, 1, 0x30]);
    }

    #[test]
    fn after_a_lost_packet_units_are_left_out_until_the_next_keyframe() {
        let mut v = VideoFrames::new(Media::Av1).expect("video");
        let [a, b] = key_unit();
        v.push(1, 0, false, arc(&a));
        v.push(2, 0, true, arc(&b));
        assert!(v.poll().is_some_and(|(_, f)| f.keyframe));
        // A unit whose first packet (seq 3) is lost: the rest continues an OBU (Z=1).
        v.push(4, 3000, true, arc(&[0x90, 0x01]));
        for seq in 5..=13u64 {
            v.push(seq, 3000 * seq as u32, true, arc(&[0x10, 0x30, 0x30]));
        }
        assert!(
            v.poll().is_none(),
            "inter units after the loss are left out"
        );
        v.push(14, 90_000, false, arc(&a));
        v.push(15, 90_000, true, arc(&b));
        assert!(v.poll().is_some_and(|(ts, f)| ts == 90_000 && f.keyframe));
    }

    #[test]
    fn a_continuation_whose_start_is_missing_is_not_a_unit() {
        assert!(obus(&[arc(&[0x90, 0x01])]).is_none());
        // Y=1 on the last packet: the OBU never ends.
        assert!(obus(&[arc(&[0x50, 0x30, 0x10])]).is_none());
    }
}
