//! AV1 OBUs (AV1 bitstream spec §5): their headers, `leb128` sizes, the low-overhead format a
//! sample is written in (every OBU with `obu_has_size_field`), and the two things the
//! recorder reads: the sequence header (for `av1C`) and whether a frame is a keyframe.

use mp4_atom::Av1c;

use crate::h264::BitReader;

pub(crate) const SEQUENCE_HEADER: u8 = 1;
pub(crate) const TEMPORAL_DELIMITER: u8 = 2;
pub(crate) const FRAME_HEADER: u8 = 3;
pub(crate) const REDUNDANT_FRAME_HEADER: u8 = 7;
pub(crate) const TILE_LIST: u8 = 8;
pub(crate) const FRAME: u8 = 6;
pub(crate) const PADDING: u8 = 15;

/// One OBU: its header byte, extension byte, and payload.
pub(crate) struct Obu<'a> {
    pub(crate) kind: u8,
    header: u8,
    extension: Option<u8>,
    pub(crate) payload: &'a [u8],
}

impl<'a> Obu<'a> {
    /// Reads an OBU that fills `bytes` (as RTP carries it), with or without its size field.
    pub(crate) fn parse(bytes: &'a [u8]) -> Option<Self> {
        let header = *bytes.first()?;
        if header & 0x80 != 0 {
            return None; // obu_forbidden_bit
        }
        let extension = (header & 0x04 != 0).then(|| bytes.get(1).copied());
        let extension = extension.map_or(Some(None), |e| e.map(Some))?;
        let mut rest = bytes.get(1 + usize::from(extension.is_some())..)?;
        if header & 0x02 != 0 {
            let (size, n) = leb128(rest)?;
            rest = rest.get(n..n.checked_add(size)?)?;
        }
        Some(Self {
            kind: (header >> 3) & 0x0f,
            header,
            extension,
            payload: rest,
        })
    }

    /// Appends it in the low-overhead format: the size field set and filled in.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.push(self.header | 0x02);
        out.extend(self.extension);
        write_leb128(out, self.payload.len());
        out.extend_from_slice(self.payload);
    }
}

/// A `leb128` number and how many bytes it took (at most 8).
pub(crate) fn leb128(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value: u64 = 0;
    for (i, b) in bytes.iter().take(8).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((usize::try_from(value).ok()?, i + 1));
        }
    }
    None
}

fn write_leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Whether a frame (or frame header) OBU's payload starts a key frame: `show_existing_frame`
/// 0 and `frame_type` KEY_FRAME (§5.9.2; WebRTC streams never use the reduced still-picture
/// header, whose frames are all keys).
pub(crate) fn starts_key_frame(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0xe0 == 0)
}

/// `av1C` (without its config OBUs) and the largest picture from a sequence header OBU's
/// payload (§5.5).
pub(crate) fn sequence_header(payload: &[u8]) -> Option<(Av1c, (u16, u16))> {
    let mut r = BitReader::new(payload);
    let seq_profile = r.bits(3)? as u8;
    r.bits(1)?; // still_picture
    let reduced = r.flag()?;
    let (mut level, mut tier) = (0, false);
    let mut decoder_model = None;
    if reduced {
        level = r.bits(5)? as u8;
    } else {
        if r.flag()? {
            // timing_info
            r.bits(32)?;
            r.bits(32)?;
            if r.flag()? {
                r.ue()?; // num_ticks_per_picture_minus_1
            }
            if r.flag()? {
                // decoder_model_info: buffer_delay_length_minus_1 and what follows
                let delay_bits = r.bits(5)? + 1;
                r.bits(32)?;
                r.bits(10)?;
                decoder_model = Some(delay_bits);
            }
        }
        let initial_display_delay = r.flag()?;
        let points = r.bits(5)? + 1;
        for i in 0..points {
            r.bits(12)?; // operating_point_idc
            let l = r.bits(5)? as u8;
            let t = l > 7 && r.flag()?;
            if i == 0 {
                (level, tier) = (l, t);
            }
            if let Some(bits) = decoder_model
                && r.flag()?
            {
                r.bits(bits)?;
                r.bits(bits)?;
                r.bits(1)?;
            }
            if initial_display_delay && r.flag()? {
                r.bits(4)?;
            }
        }
    }
    let width_bits = r.bits(4)? + 1;
    let height_bits = r.bits(4)? + 1;
    let width = r.bits(width_bits)? + 1;
    let height = r.bits(height_bits)? + 1;
    if !reduced && r.flag()? {
        r.bits(7)?; // delta_frame_id_length_minus_2, additional_frame_id_length_minus_1
    }
    r.bits(3)?; // use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter
    if !reduced {
        r.bits(4)?; // interintra and masked compound, warped motion, dual filter
        let order_hint = r.flag()?;
        if order_hint {
            r.bits(2)?; // enable_jnt_comp, enable_ref_frame_mvs
        }
        let screen_content = if r.flag()? { 2 } else { r.bits(1)? };
        if screen_content > 0 && !r.flag()? {
            r.bits(1)?; // seq_force_integer_mv
        }
        if order_hint {
            r.bits(3)?;
        }
    }
    r.bits(3)?; // enable_superres, enable_cdef, enable_restoration
    // color_config (§5.5.2)
    let high_bitdepth = r.flag()?;
    let twelve_bit = seq_profile == 2 && high_bitdepth && r.flag()?;
    let monochrome = seq_profile != 1 && r.flag()?;
    let (mut primaries, mut transfer, mut matrix) = (2, 2, 2);
    if r.flag()? {
        (primaries, transfer, matrix) = (r.bits(8)?, r.bits(8)?, r.bits(8)?);
    }
    let (subsampling, position) = if monochrome {
        ((true, true), 0)
    } else if (primaries, transfer, matrix) == (1, 13, 0) {
        ((false, false), 0) // sRGB: 4:4:4
    } else {
        r.bits(1)?; // color_range
        let subsampling = match seq_profile {
            0 => (true, true),
            1 => (false, false),
            _ if twelve_bit => {
                let x = r.flag()?;
                (x, x && r.flag()?)
            }
            _ => (true, false),
        };
        let position = if subsampling == (true, true) {
            r.bits(2)? as u8
        } else {
            0
        };
        (subsampling, position)
    };
    let config = Av1c {
        seq_profile,
        seq_level_idx_0: level,
        seq_tier_0: tier,
        high_bitdepth,
        twelve_bit,
        monochrome,
        chroma_subsampling_x: subsampling.0,
        chroma_subsampling_y: subsampling.1,
        chroma_sample_position: position,
        initial_presentation_delay: None,
        config_obus: Vec::new(),
    };
    Some((config, (width as u16, height as u16)))
}

/// A sequence header payload for 640×360, main profile, 8-bit 4:2:0, level 3.0 (index 4), one
/// operating point, screen content tools chosen per frame, order hints on.
#[cfg(test)]
pub(crate) const SEQUENCE_640X360: [u8; 11] = [
    0x00, 0x00, 0x00, 0x24, 0xc4, 0xff, 0x67, 0x30, 0x9e, 0x60, 0x10,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_header_gives_av1c_and_the_largest_picture() {
        let (c, size) = sequence_header(&SEQUENCE_640X360).expect("parses");
        assert_eq!(size, (640, 360));
        assert_eq!((c.seq_profile, c.seq_level_idx_0), (0, 4));
        assert_eq!((c.high_bitdepth, c.monochrome), (false, false));
        assert!(c.chroma_subsampling_x && c.chroma_subsampling_y);
    }

    #[test]
    fn an_obu_is_rewritten_with_its_size_field_and_leb128_round_trips() {
        let obu = Obu::parse(&[0x30, 1, 2, 3]).expect("a frame OBU without size");
        assert_eq!(obu.kind, FRAME);
        let mut out = Vec::new();
        obu.write(&mut out);
        assert_eq!(out, [0x32, 3, 1, 2, 3]);
        let mut big = Vec::new();
        write_leb128(&mut big, 300);
        assert_eq!(big, [0xac, 0x02]);
        assert_eq!(leb128(&big), Some((300, 2)));
    }
}
