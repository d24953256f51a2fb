//! `src/h264.rs` directly: any bytes as an SPS NAL unit and as an RTP payload (single NAL
//! unit or STAP-A), never a panic; and SPSs written field by field (exp-Golomb codes,
//! scaling lists, every picture-order-count type, cropping, emulation-prevention bytes) whose
//! parsed size must be the one the fields give.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use whipcast::h264::{parse_sps, sps_in_rtp_payload};

#[derive(Arbitrary, Debug)]
struct Sps {
    /// Index into the profiles that carry chroma fields, or a profile without them.
    high: Option<u8>,
    profile: u8,
    constraints: u8,
    level: u8,
    id: u32,
    chroma_format: u8,
    separate_planes: bool,
    depths: (u32, u32),
    bypass: bool,
    /// Per list: present, and its deltas.
    scaling: Option<Vec<Option<Vec<i8>>>>,
    log2_frame_num: u32,
    poc: Poc,
    refs: u32,
    gaps: bool,
    width_mbs_minus1: u32,
    height_units_minus1: u32,
    frame_mbs_only: bool,
    adaptive: bool,
    direct: bool,
    crop: Option<(u32, u32, u32, u32)>,
    /// VUI and the rest, unparsed.
    tail: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Poc {
    Zero(u32),
    One {
        zero: bool,
        offset_non_ref: i32,
        offset_top_bottom: i32,
        cycle: Vec<i32>,
    },
    Two,
    Other(u32),
}

const HIGH: [u8; 13] = [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135];

#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    n: usize,
}

impl Bits {
    fn bit(&mut self, b: bool) {
        if self.n.is_multiple_of(8) {
            self.out.push(0);
        }
        if b {
            *self.out.last_mut().unwrap() |= 0x80 >> (self.n % 8);
        }
        self.n += 1;
    }
    fn bits(&mut self, v: u32, n: u32) {
        for i in (0..n).rev() {
            self.bit(v >> i & 1 == 1);
        }
    }
    /// Exp-Golomb; `v` at most 2^32 − 2, the largest code the parser takes.
    fn ue(&mut self, v: u32) {
        let v = v.min(u32::MAX - 1) as u64 + 1;
        let len = 64 - v.leading_zeros();
        for _ in 1..len {
            self.bit(false);
        }
        for i in (0..len).rev() {
            self.bit(v >> i & 1 == 1);
        }
    }
    fn se(&mut self, v: i32) {
        let v = v.clamp(-(1 << 30), 1 << 30) as i64;
        self.ue(if v > 0 { 2 * v - 1 } else { -2 * v } as u32);
    }
}

/// The SPS NAL unit the fields make, and the size they say (`None` when the numbers do
/// not fit in 32 bits or cropping takes more than the picture).
fn write(s: &Sps) -> (Vec<u8>, Option<(u32, u32)>) {
    let mut w = Bits::default();
    let profile = match s.high {
        Some(i) => HIGH[i as usize % HIGH.len()],
        None if HIGH.contains(&s.profile) => 66,
        None => s.profile,
    };
    w.bits(profile as u32, 8);
    w.bits(s.constraints as u32, 8);
    w.bits(s.level as u32, 8);
    w.ue(s.id);
    let mut chroma = 1;
    if s.high.is_some() {
        chroma = (s.chroma_format % 4) as u32;
        w.ue(chroma);
        if chroma == 3 {
            w.bit(s.separate_planes);
        }
        w.ue(s.depths.0);
        w.ue(s.depths.1);
        w.bit(s.bypass);
        w.bit(s.scaling.is_some());
        if let Some(lists) = &s.scaling {
            let n = if chroma == 3 { 12 } else { 8 };
            for i in 0..n {
                let list = lists.get(i).and_then(|l| l.as_ref());
                w.bit(list.is_some());
                if let Some(deltas) = list {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for j in 0..size {
                        if next != 0 {
                            let d = deltas.get(j).copied().unwrap_or(0) as i32;
                            w.se(d);
                            next = (last + d as i64 + 256) % 256;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    w.ue(s.log2_frame_num);
    match &s.poc {
        Poc::Zero(v) => {
            w.ue(0);
            w.ue(*v);
        }
        Poc::One {
            zero,
            offset_non_ref,
            offset_top_bottom,
            cycle,
        } => {
            w.ue(1);
            w.bit(*zero);
            w.se(*offset_non_ref);
            w.se(*offset_top_bottom);
            w.ue(cycle.len() as u32);
            for c in cycle {
                w.se(*c);
            }
        }
        Poc::Two => w.ue(2),
        Poc::Other(v) => w.ue(v.saturating_add(3)),
    }
    w.ue(s.refs);
    w.bit(s.gaps);
    w.ue(s.width_mbs_minus1);
    w.ue(s.height_units_minus1);
    w.bit(s.frame_mbs_only);
    if !s.frame_mbs_only {
        w.bit(s.adaptive);
    }
    w.bit(s.direct);
    w.bit(s.crop.is_some());
    let field = if s.frame_mbs_only { 1u64 } else { 2 };
    let (mut cx, mut cy) = (0u64, 0u64);
    if let Some((l, r, t, b)) = s.crop {
        for v in [l, r, t, b] {
            w.ue(v);
        }
        let clamp = |v: u32| v.min(u32::MAX - 1) as u64;
        let (ux, uy) = match chroma {
            0 => (1, field),
            1 => (2, 2 * field),
            2 => (2, field),
            _ => (1, field),
        };
        cx = ux * (clamp(l) + clamp(r));
        cy = uy * (clamp(t) + clamp(b));
    }
    let mut rbsp = w.out;
    rbsp.extend_from_slice(&s.tail);
    let width = (s.width_mbs_minus1.min(u32::MAX - 1) as u64 + 1) * 16;
    let height = field * (s.height_units_minus1.min(u32::MAX - 1) as u64 + 1) * 16;
    let fits = |v: u64| u32::try_from(v).ok();
    let size = (|| {
        Some((
            fits(width.checked_sub(cx)?)?,
            fits(height.checked_sub(cy)?)?,
        ))
    })();
    // Poc cycles past 255 are refused by the parser (and so is the size).
    let refused = matches!(&s.poc, Poc::One { cycle, .. } if cycle.len() > 255);
    (escape(&rbsp), if refused { None } else { size })
}

/// The NAL unit: header byte, then the RBSP with emulation-prevention bytes.
fn escape(rbsp: &[u8]) -> Vec<u8> {
    let mut out = vec![0x67];
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_sps(data).map(|i| i.profile_name());
    let _ = sps_in_rtp_payload(data);
    let Ok(sps) = Sps::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let (nal, size) = write(&sps);
    let parsed = parse_sps(&nal);
    if let Some(info) = parsed {
        assert_eq!(
            Some((info.width, info.height)),
            size,
            "parsed {info:?} from {sps:?}"
        );
    }
    // Small sizes always parse (larger ones may overflow the parser's 32-bit arithmetic
    // before cropping brings them back).
    let small = sps.width_mbs_minus1 < 1 << 20 && sps.height_units_minus1 < 1 << 20;
    if small && size.is_some() {
        assert!(parsed.is_some(), "valid SPS refused: {sps:?}");
    }
    // The same SPS found in a STAP-A.
    let mut stap = vec![0x18];
    stap.extend_from_slice(&(nal.len().min(0xffff) as u16).to_be_bytes());
    stap.extend_from_slice(&nal[..nal.len().min(0xffff)]);
    if nal.len() <= 0xffff {
        assert_eq!(sps_in_rtp_payload(&stap), parsed, "STAP-A and alone agree");
    }
});
