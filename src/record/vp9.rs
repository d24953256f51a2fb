//! VP9 pictures from their RTP packets (RFC 9628): each payload descriptor (flexible or
//! non-flexible mode) taken off, each layer frame joined from its B (begin) to its E (end)
//! packet, and a keyframe's uncompressed header read for the sample entry.
//!
//! A sample is one picture as a viewer sees it. A viewer gets every spatial layer the
//! publisher sends (the engine forwards them all) and shows the top one, so the sample is the
//! picture's top layer frame with the lower ones it predicts from (the descriptor's D bit:
//! with `L3T3_KEY`, WebRTC's usual mode, only on key pictures). Several frames are written
//! as one superframe (VP9 bitstream spec, Annex B) with the index that tells a decoder where
//! each ends, a lower layer's key frame marked not shown (for a key frame that bit changes
//! nothing else in the header), so players that output every shown frame (FFmpeg) show the
//! top layer only, as browsers do. Lower inter frames (full inter-layer prediction, `L3T3`)
//! cannot be hidden that simply and stay shown.
//!
//! A lower layer left out of the file breaks its chain of references until the next key
//! picture: if the top layer goes (the publisher's bandwidth or CPU fell) and the one below
//! becomes the top, its frames predict from frames the file lacks, so they are not frames
//! (and the recording waits for a keyframe, as after a loss) rather than garbage.

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
    /// The spatial layers (bit `1 << SID`) each of whose frames since the last key picture
    /// is in the file: the only ones a frame written now may predict from.
    chains: u8,
}

/// What a payload descriptor says, and the payload after it.
struct Descriptor<'a> {
    begin: bool,
    end: bool,
    /// SID: the spatial layer (0 without layer indices).
    sid: u8,
    /// D: the layer frame predicts from the layer below in the same picture.
    inter_layer: bool,
    /// The scalability structure's layer sizes, if this packet carries them.
    sizes: Option<Vec<(u16, u16)>>,
    payload: &'a [u8],
}

impl Depacketizer {
    /// The picture in one picture's payloads; `None` if a layer frame's start or end is
    /// missing or its descriptor is broken.
    pub(crate) fn frame(&mut self, payloads: &[Arc<[u8]>]) -> Option<Frame> {
        // Each layer frame, lowest first, with its SID and D bit.
        let mut frames: Vec<(u8, bool, Vec<u8>)> = Vec::new();
        let mut current: Option<(u8, bool, Vec<u8>)> = None;
        for p in payloads {
            let d = descriptor(p)?;
            if let Some(size) = d.sizes.as_ref().and_then(|s| s.last()) {
                self.layer_size = Some(*size);
            }
            if d.begin {
                if current.is_some() {
                    return None; // the previous layer frame never ended
                }
                current = Some((d.sid, d.inter_layer, Vec::new()));
            }
            current.as_mut()?.2.extend_from_slice(d.payload);
            if d.end {
                frames.push(current.take()?);
            }
        }
        if current.is_some() {
            return None;
        }
        // The top frame and those it predicts from, down to one that predicts from none.
        let from = frames.iter().rposition(|(_, d, _)| !d).unwrap_or(0);
        let layers = |frames: &[(u8, bool, Vec<u8>)]| {
            frames.iter().fold(0u8, |bits, (sid, _, _)| bits | 1 << sid)
        };
        let present = layers(&frames);
        let kept = frames.split_off(from);
        let written = layers(&kept);
        let mut frames: Vec<Vec<u8>> = kept.into_iter().map(|(_, _, f)| f).collect();
        if frames.is_empty() || frames.len() > SUPERFRAME_FRAMES {
            return None;
        }
        let header = keyframe_header(frames.first()?);
        if header.is_some() {
            self.chains = written;
        } else if written & !self.chains != 0 {
            return None; // it predicts from its layer's past, which the file lacks
        } else {
            self.chains &= !(present & !written);
        }
        let data = if frames.len() == 1 {
            frames.pop()?
        } else {
            let below = frames.len() - 1;
            frames[..below].iter_mut().for_each(|f| hide_key_frame(f));
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
    let (mut sid, mut inter_layer) = (0, false);
    if layers {
        // TID, U, SID, D; and TL0PICIDX in non-flexible mode.
        let indices = *p.get(at)?;
        (sid, inter_layer) = ((indices >> 1) & 0x07, indices & 0x01 != 0);
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
        sid,
        inter_layer,
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

/// Clears a key frame's `show_frame` (§6.2: after `frame_type`; profile 3 has one more bit
/// before them). A decoder still decodes and keeps it; it only does not output it.
fn hide_key_frame(frame: &mut [u8]) {
    let Some(first) = frame.first_mut() else {
        return;
    };
    let profile_3 = *first & 0x30 == 0x30;
    let (show_existing, key, show) = if profile_3 {
        (0x04, 0x02, 0x01)
    } else {
        (0x08, 0x04, 0x02)
    };
    if *first & 0xc0 == 0x80 && *first & (show_existing | key) == 0 {
        *first &= !show;
    }
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
    fn a_key_picture_of_two_layers_is_a_superframe_showing_the_top_one() {
        let mut v = VideoFrames::new(Media::Vp9).expect("video");
        // Flexible mode, picture ID; the base layer (SID 0) then SID 1 predicting it (D=1).
        v.push(
            1,
            0,
            false,
            arc(&[&[0xbc, 0x05, 0x00][..], &KEY_HEADER].concat()),
        );
        v.push(2, 0, true, arc(&[0xfc, 0x05, 0x03, 0x02, 0x86, 0x01, 0x02]));
        let (_, f) = v.poll().expect("the picture");
        assert!(f.keyframe);
        let mut hidden = KEY_HEADER;
        hidden[0] = 0x80; // show_frame cleared
        let frames = [&hidden[..], &[0x86, 0x01, 0x02]].concat();
        assert_eq!(f.data[..13], frames[..]);
        assert_eq!(f.data[13..], [0xc1, 10, 3, 0xc1]);
        // The next picture's top layer predicts only from its own past (D=0): alone.
        v.push(3, 3000, false, arc(&[0xfc, 0x06, 0x00, 0x02, 0x86, 0x07]));
        v.push(4, 3000, true, arc(&[0xfc, 0x06, 0x02, 0x02, 0x86, 0x09]));
        let (_, f) = v.poll().expect("the next picture");
        assert_eq!((f.keyframe, &f.data[..]), (false, &[0x86, 0x09][..]));
    }

    /// Two layers' key picture, as in the test above: the top one predicts from the base.
    fn two_layers() -> VideoFrames {
        let mut v = VideoFrames::new(Media::Vp9).expect("video");
        let key = [&[0xbc, 0x05, 0x00][..], &KEY_HEADER].concat();
        v.push(1, 0, false, arc(&key));
        v.push(2, 0, true, arc(&[0xfc, 0x05, 0x03, 0x02, 0x86, 0x01]));
        assert!(v.poll().is_some_and(|(_, f)| f.keyframe));
        v
    }

    #[test]
    fn a_base_layer_left_on_top_is_not_a_frame_when_its_past_is_not_in_the_file() {
        let mut v = two_layers();
        v.push(3, 3000, false, arc(&[0xfc, 0x06, 0x00, 0x02, 0x86, 0x07]));
        v.push(4, 3000, true, arc(&[0xfc, 0x06, 0x02, 0x02, 0x86, 0x09]));
        assert!(v.poll().is_some_and(|(_, f)| f.data == [0x86, 0x09]));
        // The top layer goes: the base frame left predicts from base frames never written.
        v.push(5, 6000, true, arc(&[0xfc, 0x07, 0x00, 0x02, 0x86, 0x0b]));
        assert!(v.poll().is_none(), "not a frame");
        // As after a loss, nothing until a keyframe.
        v.push(6, 9000, false, arc(&[0xfc, 0x08, 0x00, 0x02, 0x86, 0x0d]));
        v.push(7, 9000, true, arc(&[0xfc, 0x08, 0x02, 0x02, 0x86, 0x0f]));
        assert!(v.poll().is_none());
        let key = [&[0xbc, 0x09, 0x00][..], &KEY_HEADER].concat();
        v.push(8, 12_000, true, arc(&key));
        assert!(v.poll().is_some_and(|(_, f)| f.keyframe));
    }

    #[test]
    fn every_layer_is_kept_when_each_predicts_from_the_one_below() {
        let mut v = two_layers();
        // Full inter-layer prediction (`L3T3`): both layers written, every picture.
        v.push(3, 3000, false, arc(&[0xfc, 0x06, 0x00, 0x02, 0x86, 0x03]));
        v.push(4, 3000, true, arc(&[0xfc, 0x06, 0x03, 0x02, 0x86, 0x05]));
        let (_, f) = v.poll().expect("both layers");
        assert_eq!(f.data, [0x86, 0x03, 0x86, 0x05, 0xc1, 2, 2, 0xc1]);
        // So the base layer may become the top one: its past is in the file.
        v.push(5, 6000, true, arc(&[0xfc, 0x07, 0x00, 0x02, 0x86, 0x07]));
        let (_, f) = v.poll().expect("the base layer alone");
        assert_eq!(f.data, [0x86, 0x07]);
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
