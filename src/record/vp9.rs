//! VP9 pictures from their RTP packets (RFC 9628): each payload descriptor (flexible or
//! non-flexible mode) taken off, each layer frame joined from its B (begin) to its E (end)
//! packet, and a keyframe's uncompressed header read for the sample entry.
//!
//! A sample is one picture: what a viewer's decoder gets, every spatial layer the publisher
//! sends (the engine forwards them all). A picture of several layer frames is written as one
//! superframe (VP9 bitstream spec, Annex B) with the index that tells a decoder where each
//! frame ends.

use std::sync::Arc;

use mp4_atom::VpcC;

use super::entry::TrackSetup;
use super::frames::Frame;
use crate::h264::BitReader;

/// A superframe holds at most 8 frames (its index counts them in 3 bits).
const SUPERFRAME_FRAMES: usize = 8;

#[derive(Default)]
pub(crate) struct Depacketizer {
    /// The largest spatial layer's size in the last scalability structure the publisher sent.
    layer_size: Option<(u16, u16)>,
}

/// What a payload descriptor says, and the payload after it.
struct Descriptor<'a> {
    begin: bool,
    end: bool,
    /// The scalability structure's layer sizes, if this packet carries them.
    sizes: Option<Vec<(u16, u16)>>,
    payload: &'a [u8],
}

impl Depacketizer {
    /// The picture in one picture's payloads; `None` if a layer frame's start or end is
    /// missing or its descriptor is broken.
    pub(crate) fn frame(&mut self, payloads: &[Arc<[u8]>]) -> Option<Frame> {
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut current: Option<Vec<u8>> = None;
        for p in payloads {
            let d = descriptor(p)?;
            if let Some(size) = d.sizes.as_ref().and_then(|s| s.last()) {
                self.layer_size = Some(*size);
            }
            if d.begin {
                if current.is_some() {
                    return None; // the previous layer frame never ended
                }
                current = Some(Vec::new());
            }
            current.as_mut()?.extend_from_slice(d.payload);
            if d.end {
                frames.push(current.take()?);
            }
        }
        if current.is_some() || frames.is_empty() || frames.len() > SUPERFRAME_FRAMES {
            return None;
        }
        let header = keyframe_header(frames.first()?);
        let data = if frames.len() == 1 {
            frames.pop()?
        } else {
            superframe(&frames)
        };
        let setup = header.map(|(config, size)| TrackSetup::Vp {
            vp9: true,
            config,
            width: self.layer_size.unwrap_or(size).0,
            height: self.layer_size.unwrap_or(size).1,
        });
        Some(Frame {
            data,
            keyframe: setup.is_some(),
            setup,
        })
    }
}

fn descriptor(p: &[u8]) -> Option<Descriptor<'_>> {
    let first = *p.first()?;
    let flag = |bit: u8| first & bit != 0;
    let (picture_id, inter, layers, flexible) = (flag(0x80), flag(0x40), flag(0x20), flag(0x10));
    let (begin, end, structure) = (flag(0x08), flag(0x04), flag(0x02));
    let mut at = 1;
    if picture_id {
        at += if *p.get(at)? & 0x80 != 0 { 2 } else { 1 };
    }
    if layers {
        // TID, U, SID, D; and TL0PICIDX in non-flexible mode.
        at += if flexible { 1 } else { 2 };
    }
    if flexible && inter {
        // Up to three reference indices, each with N (another follows).
        for _ in 0..3 {
            let more = *p.get(at)? & 0x01 != 0;
            at += 1;
            if !more {
                break;
            }
        }
    }
    let mut sizes = None;
    if structure {
        let ss = *p.get(at)?;
        at += 1;
        let layers = usize::from(ss >> 5) + 1;
        if ss & 0x10 != 0 {
            let mut s = Vec::with_capacity(layers);
            for _ in 0..layers {
                let b = p.get(at..at + 4)?;
                s.push((
                    u16::from_be_bytes([b[0], b[1]]),
                    u16::from_be_bytes([b[2], b[3]]),
                ));
                at += 4;
            }
            sizes = Some(s);
        }
        if ss & 0x08 != 0 {
            let groups = *p.get(at)?;
            at += 1;
            for _ in 0..groups {
                let references = usize::from((*p.get(at)? >> 2) & 0x03);
                at += 1 + references;
            }
        }
    }
    Some(Descriptor {
        begin,
        end,
        sizes,
        payload: p.get(at..)?,
    })
}

/// For a frame that is a keyframe (shown, not a repeat): its `vpcC` and picture size, from its
/// uncompressed header (VP9 bitstream spec §6.2).
fn keyframe_header(frame: &[u8]) -> Option<(VpcC, (u16, u16))> {
    let mut r = BitReader::new(frame);
    if r.bits(2)? != 2 {
        return None; // frame_marker
    }
    let low = r.bits(1)?;
    let profile = (r.bits(1)? << 1 | low) as u8;
    if profile == 3 {
        r.bits(1)?;
    }
    let show_existing_frame = r.flag()?;
    let key = r.bits(1)? == 0;
    if show_existing_frame || !key {
        return None;
    }
    r.bits(2)?; // show_frame, error_resilient_mode
    if r.bits(24)? != 0x49_83_42 {
        return None;
    }
    let bit_depth = if profile < 2 {
        8
    } else if r.flag()? {
        12
    } else {
        10
    };
    let color_space = r.bits(3)?;
    let (full_range, subsampling) = if color_space != 7 {
        let full_range = r.flag()?;
        let subsampling = if profile == 1 || profile == 3 {
            let (x, y) = (r.flag()?, r.flag()?);
            r.bits(1)?;
            (x, y)
        } else {
            (true, true)
        };
        (full_range, subsampling)
    } else {
        if profile == 1 || profile == 3 {
            r.bits(1)?;
        }
        (true, (false, false))
    };
    let width = r.bits(16)? + 1;
    let height = r.bits(16)? + 1;
    let config = VpcC {
        profile,
        bit_depth,
        // vpcC: 1 is 4:2:0 (chroma sited with luma: VP9 does not say), 2 is 4:2:2, 3 4:4:4.
        chroma_subsampling: match subsampling {
            (true, true) | (false, true) => 1,
            (true, false) => 2,
            (false, false) => 3,
        },
        video_full_range_flag: full_range,
        // Unspecified, but for the matrix the color space names (ISO/IEC 23091-2 codes).
        color_primaries: 2,
        transfer_characteristics: 2,
        matrix_coefficients: match color_space {
            1 | 3 => 6,
            2 => 1,
            4 => 7,
            5 => 9,
            7 => 0,
            _ => 2,
        },
        ..VpcC::default()
    };
    Some((config, (width as u16, height as u16)))
}

/// `frames` as one superframe: the frames back to back, then the index (a marker byte, each
/// frame's size little-endian in as few bytes as the largest needs, the marker again).
fn superframe(frames: &[Vec<u8>]) -> Vec<u8> {
    let largest = frames.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let bytes = (4 - largest.leading_zeros() / 8).max(1) as usize;
    let marker = 0xc0 | ((bytes as u8 - 1) << 3) | (frames.len() as u8 - 1);
    let mut out: Vec<u8> = frames.concat();
    out.push(marker);
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes()[..bytes]);
    }
    out.push(marker);
    out
}

/// A profile-0 keyframe's uncompressed header: 640×360, BT.709, studio range.
#[cfg(test)]
pub(crate) const KEY_HEADER: [u8; 10] =
    [0x82, 0x49, 0x83, 0x42, 0x40, 0x27, 0xf0, 0x16, 0x70, 0x00];

#[cfg(test)]
mod tests {
    use super::super::Media;
    use super::super::frames::VideoFrames;
    use super::*;

    fn arc(b: &[u8]) -> Arc<[u8]> {
        Arc::from(b)
    }

    #[test]
    fn a_keyframe_header_gives_profile_bit_depth_chroma_and_size() {
        let (config, size) = keyframe_header(&KEY_HEADER).expect("a keyframe");
        assert_eq!(size, (640, 360));
        assert_eq!(
            (config.profile, config.bit_depth, config.chroma_subsampling),
            (0, 8, 1)
        );
        assert_eq!(config.matrix_coefficients, 1);
        // An inter frame (frame_type 1) is not a keyframe.
        assert!(keyframe_header(&[0x86, 0, 0, 0]).is_none());
    }

    #[test]
    fn non_flexible_mode_frame_across_packets_is_joined() {
        let mut v = VideoFrames::new(Media::Vp9).expect("video");
        // I (7-bit picture ID), L (+TL0PICIDX), B, V: one layer of 640×360 with no groups.
        let mut first = vec![0xaa, 0x05, 0x00, 0x00, 0x10, 0x02, 0x80, 0x01, 0x68];
        first.extend_from_slice(&KEY_HEADER[..6]);
        let mut last = vec![0xa4, 0x05, 0x00, 0x00];
        last.extend_from_slice(&KEY_HEADER[6..]);
        v.push(1, 0, false, arc(&first));
        v.push(2, 0, true, arc(&last));
        let (_, f) = v.poll().expect("the picture");
        assert_eq!(f.data, KEY_HEADER);
        assert!(f.keyframe);
        let Some(TrackSetup::Vp {
            vp9, width, height, ..
        }) = f.setup
        else {
            panic!("a setup");
        };
        assert_eq!((vp9, width, height), (true, 640, 360));
    }

    #[test]
    fn two_spatial_layers_become_one_superframe_with_its_index() {
        let mut v = VideoFrames::new(Media::Vp9).expect("video");
        // Flexible mode, picture ID; the base layer (SID 0) then SID 1 predicting it.
        v.push(
            1,
            0,
            false,
            arc(&[&[0xbc, 0x05, 0x00][..], &KEY_HEADER].concat()),
        );
        v.push(2, 0, true, arc(&[0xfc, 0x05, 0x02, 0x02, 0x86, 0x01, 0x02]));
        let (_, f) = v.poll().expect("the picture");
        assert!(f.keyframe);
        let frames = [&KEY_HEADER[..], &[0x86, 0x01, 0x02]].concat();
        assert_eq!(f.data[..13], frames[..]);
        assert_eq!(f.data[13..], [0xc1, 10, 3, 0xc1]);
    }

    #[test]
    fn after_a_lost_packet_pictures_are_left_out_until_the_next_keyframe() {
        let mut v = VideoFrames::new(Media::Vp9).expect("video");
        let key = |seq| (seq, [&[0x0c][..], &KEY_HEADER].concat());
        let inter = |seq: u64| (seq, vec![0x4c, 0x86, seq as u8]);
        let (s, k) = key(1);
        v.push(s, 0, true, arc(&k));
        assert!(v.poll().is_some_and(|(_, f)| f.keyframe));
        // Picture 2 lost whole; 3..=11 come: the first of them is given up on, none is kept.
        for seq in 3..=11 {
            let (s, p) = inter(seq);
            v.push(s, 3000 * seq as u32, true, arc(&p));
        }
        assert!(v.poll().is_none());
        let (s, k) = key(12);
        v.push(s, 36_000, true, arc(&k));
        assert!(v.poll().is_some_and(|(ts, f)| ts == 36_000 && f.keyframe));
        let (s, p) = inter(13);
        v.push(s, 39_000, true, arc(&p));
        assert!(v.poll().is_some_and(|(_, f)| !f.keyframe));
    }
}
