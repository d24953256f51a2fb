//! H.264 Annex B: split a stream into access units (frames) and frames into NAL units.

/// One access unit of the fixture.
#[derive(Clone, Debug)]
pub struct AccessUnit {
    /// Annex B bytes, start codes included.
    pub data: Vec<u8>,
    pub keyframe: bool,
}

/// The NAL units of an Annex B buffer, without start codes (3- and 4-byte codes alike).
pub fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map(|n| n - 3).unwrap_or(data.len());
        // A 4-byte start code leaves one zero byte at the end of the previous unit.
        while end > s && data[end - 1] == 0 && k + 1 < starts.len() {
            end -= 1;
        }
        out.push(&data[s..end]);
    }
    out
}

/// Splits an Annex B stream into access units: a new unit begins at an access unit
/// delimiter, an SPS/PPS/SEI after a slice, or a slice whose first_mb_in_slice is 0.
pub fn access_units(stream: &[u8]) -> Vec<AccessUnit> {
    let mut units: Vec<AccessUnit> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut has_slice = false;
    let mut keyframe = false;
    for nal in nal_units(stream) {
        let Some(&header) = nal.first() else { continue };
        let kind = header & 0x1f;
        let is_slice = kind == 1 || kind == 5;
        // first_mb_in_slice == 0 is ue(v) "1" as the first bit of the slice header.
        let first_slice = is_slice && nal.get(1).is_some_and(|b| b & 0x80 != 0);
        let starts_unit = has_slice && (matches!(kind, 6..=9) || first_slice);
        if starts_unit {
            units.push(AccessUnit {
                data: std::mem::take(&mut current),
                keyframe,
            });
            has_slice = false;
            keyframe = false;
        }
        current.extend_from_slice(&[0, 0, 0, 1]);
        current.extend_from_slice(nal);
        has_slice |= is_slice;
        keyframe |= kind == 5;
    }
    if has_slice {
        units.push(AccessUnit {
            data: current,
            keyframe,
        });
    }
    units
}

/// The fixture clip: 4 s, 320x240, keyframe every 30 frames.
pub fn fixture() -> Vec<AccessUnit> {
    access_units(include_bytes!("../fixtures/testsrc2-320x240-baseline.h264"))
}

/// Two Annex B buffers hold the same NAL units (start code lengths may differ).
pub fn same_nal_units(a: &[u8], b: &[u8]) -> bool {
    nal_units(a) == nal_units(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_splits_into_120_frames_with_a_keyframe_every_30() {
        let units = fixture();
        assert_eq!(units.len(), 120);
        let keys: Vec<usize> = units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.keyframe)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(keys, vec![0, 30, 60, 90]);
        // SPS (7) and PPS (8) lead every keyframe.
        let first: Vec<u8> = nal_units(&units[30].data)
            .iter()
            .map(|n| n[0] & 0x1f)
            .collect();
        assert_eq!(&first[..2], &[7, 8]);
    }
}
