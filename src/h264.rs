//! Just enough H.264 to describe what a publisher really sends: the profile and picture size
//! from its SPS. OBS always signals `42e01f` in SDP whatever its encoder produces
//! (notes/whip-whep-obs.md §B.2), so the SPS is the only truthful source.

/// What an SPS says about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub width: u32,
    pub height: u32,
}

impl SpsInfo {
    /// The profile's common name.
    pub fn profile_name(&self) -> &'static str {
        match (self.profile_idc, self.constraint_flags & 0x40 != 0) {
            (66, true) => "Constrained Baseline",
            (66, false) => "Baseline",
            (77, _) => "Main",
            (88, _) => "Extended",
            (100, _) => "High",
            (110, _) => "High 10",
            (122, _) => "High 4:2:2",
            (244, _) => "High 4:4:4",
            _ => "other",
        }
    }
}

/// Finds an SPS in one RTP payload (single NAL unit or STAP-A) and parses it.
pub fn sps_in_rtp_payload(payload: &[u8]) -> Option<SpsInfo> {
    let first = *payload.first()?;
    match first & 0x1f {
        NAL_SPS => parse_sps(payload),
        NAL_STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() >= 2 {
                let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let nal = rest.get(2..2 + len)?;
                if nal.first().is_some_and(|b| b & 0x1f == NAL_SPS) {
                    return parse_sps(nal);
                }
                rest = &rest[2 + len..];
            }
            None
        }
        _ => None,
    }
}

/// Parses an SPS NAL unit (with its one-byte NAL header), ITU-T H.264 §7.3.2.1.1.
pub fn parse_sps(nal: &[u8]) -> Option<SpsInfo> {
    let rbsp = unescape(nal.get(1..)?);
    let mut r = BitReader {
        data: &rbsp,
        pos: 0,
    };
    let profile_idc = r.bits(8)? as u8;
    let constraint_flags = r.bits(8)? as u8;
    let level_idc = r.bits(8)? as u8;
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bits(1)?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bits(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.bits(1)? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bits(1)? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bits(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()?.checked_add(1)?;
    let height_map_units = r.ue()?.checked_add(1)?;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?; // mb_adaptive_frame_field_flag
    }
    r.bits(1)?; // direct_8x8_inference_flag
    let (mut crop_x, mut crop_y) = (0, 0);
    if r.bits(1)? == 1 {
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let (unit_x, unit_y): (u32, u32) = match chroma_format_idc {
            0 => (1, 2 - frame_mbs_only),
            1 => (2, 2 * (2 - frame_mbs_only)),
            2 => (2, 2 - frame_mbs_only),
            _ => (1, 2 - frame_mbs_only),
        };
        crop_x = unit_x.checked_mul(left.checked_add(right)?)?;
        crop_y = unit_y.checked_mul(top.checked_add(bottom)?)?;
    }
    let width = width_mbs.checked_mul(16)?.checked_sub(crop_x)?;
    let height = (2 - frame_mbs_only)
        .checked_mul(height_map_units)?
        .checked_mul(16)?
        .checked_sub(crop_y)?;
    Some(SpsInfo {
        profile_idc,
        constraint_flags,
        level_idc,
        width,
        height,
    })
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + r.se()? + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// Removes emulation-prevention bytes (00 00 03 → 00 00).
fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0;
    for &b in data {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Big-endian bits from a byte string (also read by the recorder's VP9 and AV1 headers).
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// The next `n` bits (at most 32) as a number; `None` past the end.
    pub(crate) fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | bit as u32;
            self.pos += 1;
        }
        Some(v)
    }

    pub(crate) fn flag(&mut self) -> Option<bool> {
        Some(self.bits(1)? == 1)
    }

    /// Exp-Golomb unsigned (AV1's `uvlc` is the same code); values past 2^31 are treated as
    /// malformed.
    pub(crate) fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Option<i64> {
        let k = self.ue()? as i64;
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_1280x720_high_profile_sps() {
        // x264 SPS for 1280x720 High@3.1.
        let sps = [
            0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00,
            0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
        ];
        let info = parse_sps(&sps).expect("valid SPS");
        assert_eq!((info.width, info.height), (1280, 720));
        assert_eq!(info.profile_name(), "High");
    }

    #[test]
    fn parses_a_320x240_constrained_baseline_sps() {
        let sps = [
            0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
            0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0xa4, 0x80,
        ];
        let info = parse_sps(&sps).expect("valid SPS");
        assert_eq!((info.width, info.height), (320, 240));
        assert_eq!(info.profile_name(), "Constrained Baseline");
    }

    #[test]
    fn truncated_or_garbage_sps_is_none_not_a_panic() {
        let sps = [0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb];
        for cut in 0..sps.len() {
            let _ = parse_sps(&sps[..cut]);
        }
        assert_eq!(sps_in_rtp_payload(&[0x78, 0xff, 0xff, 0x67]), None);
        assert_eq!(parse_sps(&[0x67, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }
}
