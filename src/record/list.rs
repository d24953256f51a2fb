//! A broadcast's recordings as the broadcaster page lists them: each file's name, UTC start,
//! duration and size. The duration is read from the file's own fragments (only those whose
//! `mdat` is complete), so a file a crash cut short shows what it really holds, and the file
//! being written shows what is on disk so far.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use mp4_atom::{Decode, Moof, Moov};

/// One recording file.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingFile {
    pub name: String,
    pub bytes: u64,
    /// Its start in UTC (from its name: the recorder names each segment by its start).
    pub start_unix: Option<u64>,
    pub duration_s: f64,
}

/// A `moov` or `moof` larger than this is not one of ours; the listing stops there.
const MAX_HEADER_BOX: u64 = 16 << 20;

/// Whether `name` can be a recording in a broadcast's directory: letters, digits, `-` and
/// `_`, then `.mp4`. Nothing else (no `/`, no `..`, no `%`) reaches the file system.
pub fn is_file_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".mp4") else {
        return false;
    };
    !stem.is_empty()
        && stem.len() <= 200
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The recordings in `dir`, oldest first; none if it does not exist.
pub fn list(dir: &Path) -> io::Result<Vec<RecordingFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // Nothing recorded yet (or a --record-dir that cannot exist: the status says why).
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !is_file_name(&name) || !entry.file_type()?.is_file() {
            continue;
        }
        let mut file = File::open(entry.path())?;
        let bytes = file.metadata()?.len();
        files.push(RecordingFile {
            start_unix: start_of(&name),
            duration_s: duration(&mut file, bytes).unwrap_or(0.0),
            bytes,
            name,
        });
    }
    files.sort_by(|a, b| (a.start_unix, &a.name).cmp(&(b.start_unix, &b.name)));
    Ok(files)
}

/// The UTC start in a name `<label>-YYYYMMDDTHHMMSSZ[-n].mp4` (the label may hold any of
/// the name's characters, so the stamp is found from the end).
fn start_of(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".mp4")?;
    let stem = match stem.rsplit_once('-') {
        Some((rest, n)) if n.len() < 4 && n.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => stem,
    };
    let s = stem.get(stem.len().checked_sub(16)?..)?;
    if s.as_bytes()[8] != b'T' || s.as_bytes()[15] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(9..11)?, n(11..13)?, n(13..15)?);
    // Howard Hinnant's days_from_civil (the inverse of segment::utc_stamp).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// The end of the last complete fragment, in seconds (the longest track).
fn duration(file: &mut File, len: u64) -> io::Result<f64> {
    let mut timescales: Vec<(u32, u32)> = Vec::new();
    let mut ends: Vec<(u32, u64)> = Vec::new();
    let mut pending: Vec<(u32, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos + 8 <= len {
        file.seek(SeekFrom::Start(pos))?;
        let mut head = [0u8; 16];
        file.read_exact(&mut head[..8])?;
        let size = match u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) {
            0 => len - pos,
            1 => {
                file.read_exact(&mut head[8..])?;
                u64::from_be_bytes(head[8..].try_into().expect("8 bytes"))
            }
            n => u64::from(n),
        };
        if size < 8 || pos + size > len {
            break; // cut short: the fragment being written when the server stopped
        }
        let kind = &head[4..8];
        if kind == b"moov" || kind == b"moof" {
            if size > MAX_HEADER_BOX {
                break;
            }
            let mut buf = vec![0u8; size as usize];
            file.seek(SeekFrom::Start(pos))?;
            file.read_exact(&mut buf)?;
            if kind == b"moov" {
                let moov = Moov::decode(&mut buf.as_slice()).map_err(io::Error::other)?;
                timescales = (moov.trak.iter())
                    .map(|t| (t.tkhd.track_id, t.mdia.mdhd.timescale))
                    .collect();
            } else {
                let moof = Moof::decode(&mut buf.as_slice()).map_err(io::Error::other)?;
                pending = (moof.traf.iter())
                    .map(|traf| {
                        let base = traf.tfdt.as_ref().map_or(0, |t| t.base_media_decode_time);
                        let run: u64 = (traf.trun.iter())
                            .flat_map(|t| t.samples.iter())
                            .map(|s| u64::from(s.duration.unwrap_or(0)))
                            .sum();
                        (traf.tfhd.track_id, base + run)
                    })
                    .collect();
            }
        } else if kind == b"mdat" {
            // The fragment's samples are on disk: it counts.
            for (track, end) in pending.drain(..) {
                match ends.iter_mut().find(|(t, _)| *t == track) {
                    Some((_, e)) => *e = (*e).max(end),
                    None => ends.push((track, end)),
                }
            }
        }
        pos += size;
    }
    Ok(ends
        .iter()
        .filter_map(|(track, end)| {
            let (_, scale) = timescales.iter().find(|(t, _)| t == track)?;
            Some(*end as f64 / f64::from((*scale).max(1)))
        })
        .fold(0.0, f64::max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_paths_or_other_characters_are_not_recordings() {
        assert!(is_file_name("broadcast-ab12cd-20261205T022500Z.mp4"));
        assert!(is_file_name("broadcast-ab12cd-20261205T022500Z-1.mp4"));
        for bad in [
            "../broadcasts.json",
            "..%2Fbroadcasts.json",
            "a/b.mp4",
            "../x.mp4",
            ".mp4",
            "x.mp4.json",
            "x .mp4",
            "broadcasts.json",
        ] {
            assert!(!is_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_start_is_read_back_from_the_name() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_780_000_000);
        let name = format!(
            "broadcast-ab12cd-{}-2.mp4",
            super::super::segment::utc_stamp(t)
        );
        assert_eq!(start_of(&name), Some(1_780_000_000));
        let with_t = format!("broadcast-T1-{}.mp4", super::super::segment::utc_stamp(t));
        assert_eq!(start_of(&with_t), Some(1_780_000_000));
        assert_eq!(start_of("broadcast-x.mp4"), None);
    }
}
