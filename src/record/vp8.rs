//! VP8 frames from their RTP packets (RFC 7741): each payload descriptor taken off, the
//! frame's partitions joined, and a keyframe's header read for the sample entry.

use std::sync::Arc;

use mp4_atom::VpcC;

use super::entry::TrackSetup;
use super::frames::Frame;

/// The frame in one picture's payloads; `None` if its start is missing (the first payload
/// must start partition 0: S=1, PID=0).
pub(crate) fn frame(payloads: &[Arc<[u8]>]) -> Option<Frame> {
    let mut data = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let (start, rest) = descriptor(p)?;
        if (i == 0) != start {
            // The first packet must start the frame, and no later one can.
            return None;
        }
        data.extend_from_slice(rest);
    }
    // The frame tag (RFC 6386 §9.1): bit 0 is 0 on a keyframe, bits 1–3 are the version
    // (the profile); a keyframe's start code and 14-bit width and height follow it.
    let tag = *data.first()?;
    let keyframe = tag & 1 == 0;
    let mut setup = None;
    if keyframe {
        if data.get(3..6)? != [0x9d, 0x01, 0x2a] {
            return None;
        }
        let width = u16::from_le_bytes([data[6], *data.get(7)?]) & 0x3fff;
        let height = u16::from_le_bytes([*data.get(8)?, *data.get(9)?]) & 0x3fff;
        setup = Some(TrackSetup::Vp {
            vp9: false,
            config: VpcC {
                profile: (tag >> 1) & 0x07,
                bit_depth: 8,
                // 4:2:0, chroma sited with luma as in VP8's reconstruction (RFC 6386 §2).
                chroma_subsampling: 1,
                // BT.601 YCbCr (RFC 6386 §9.2; ISO/IEC 23091-2 code 6), studio range.
                color_primaries: 2,
                transfer_characteristics: 2,
                matrix_coefficients: 6,
                ..VpcC::default()
            },
            width,
            height,
        });
    }
    Some(Frame {
        data,
        keyframe,
        setup,
    })
}

/// Whether the descriptor starts the frame (S=1 and partition 0), and the payload after it.
fn descriptor(p: &[u8]) -> Option<(bool, &[u8])> {
    let first = *p.first()?;
    let start = first & 0x10 != 0 && first & 0x07 == 0;
    let mut at = 1;
    if first & 0x80 != 0 {
        // X: I (picture ID), L (TL0PICIDX), T/K (TID/KEYIDX) say which bytes follow.
        let ext = *p.get(at)?;
        at += 1;
        if ext & 0x80 != 0 {
            let long = *p.get(at)? & 0x80 != 0;
            at += if long { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1;
        }
        if ext & 0x30 != 0 {
            at += 1;
        }
    }
    Some((start, p.get(at..)?))
}

#[cfg(test)]
mod tests {
    use super::super::Media;
    use super::super::frames::VideoFrames;
    use super::*;

    fn arc(b: &[u8]) -> Arc<[u8]> {
        Arc::from(b)
    }

    /// A keyframe of 640×360 (version 0) in two packets, the descriptors with a 15-bit
    /// picture ID, TL0PICIDX and TID.
    fn keyframe() -> [Vec<u8>; 2] {
        let header = [0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
        let mut first = vec![0x90, 0xe0, 0x80, 0x01, 0x07, 0x20];
        first.extend_from_slice(&header);
        let second = vec![0x80, 0xe0, 0x80, 0x01, 0x07, 0x20, 0xaa, 0xbb];
        [first, second]
    }

    #[test]
    fn a_keyframe_across_packets_is_joined_and_gives_its_size_and_profile() {
        let mut v = VideoFrames::new(Media::Vp8).expect("video");
        let [a, b] = keyframe();
        v.push(7, 90, false, arc(&a));
        v.push(8, 90, true, arc(&b));
        let (ts, f) = v.poll().expect("the frame");
        assert_eq!(ts, 90);
        assert!(f.keyframe);
        assert_eq!(f.data[..3], [0x50, 0x01, 0x00]);
        assert_eq!(f.data[10..], [0xaa, 0xbb]);
        let Some(TrackSetup::Vp {
            vp9,
            config,
            width,
            height,
        }) = f.setup
        else {
            panic!("a setup");
        };
        assert_eq!((vp9, config.profile, width, height), (false, 0, 640, 360));
    }

    #[test]
    fn after_a_lost_packet_frames_are_left_out_until_the_next_keyframe() {
        let mut v = VideoFrames::new(Media::Vp8).expect("video");
        let [a, b] = keyframe();
        v.push(1, 0, false, arc(&a));
        v.push(2, 0, true, arc(&b));
        assert!(v.poll().is_some_and(|(_, f)| f.keyframe));
        // An inter frame whose second packet (seq 4) is lost, then two whole inter frames.
        let inter = |s: u8| vec![s, 0x01, 0x02, 0x03];
        v.push(3, 3000, false, arc(&inter(0x10)));
        v.push(5, 3000, true, arc(&inter(0x00)));
        for i in 0..9u32 {
            v.push(6 + u64::from(i), 6000 + 3000 * i, true, arc(&inter(0x10)));
        }
        assert!(
            v.poll().is_none(),
            "inter frames after the loss are left out"
        );
        v.push(15, 90_000, false, arc(&a));
        v.push(16, 90_000, true, arc(&b));
        assert!(v.poll().is_some_and(|(ts, f)| ts == 90_000 && f.keyframe));
        v.push(17, 93_000, true, arc(&inter(0x10)));
        assert!(v.poll().is_some_and(|(_, f)| !f.keyframe));
    }

    #[test]
    fn a_frame_whose_first_packet_is_missing_is_not_a_frame() {
        let [_, b] = keyframe();
        assert!(frame(&[Arc::from(&b[..])]).is_none());
    }
}
