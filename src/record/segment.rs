//! One segment file: its name, the init segment, and the cutting of samples into fragments
//! that go to disk as soon as they are complete.
//!
//! The init segment goes to disk with the first fragment, not when the file is created: a
//! track whose first packet comes a moment after the segment started (a publisher's audio
//! that its first video keyframe beat by a few milliseconds) still joins the file
//! ([`Segment::add_track`]).
//!
//! A fragment is cut before a video keyframe once it holds a second, and in any case once it
//! holds two, so a crash or `kill -9` loses at most the last ~2 s (the bytes written are in
//! the page cache the moment `write_all` returns; a process crash cannot lose them).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::entry::TrackSetup;
use super::fmp4::{self, Run, Sample};

/// A fragment is cut at the first video keyframe after this much.
const FRAGMENT_MIN_US: i64 = 1_000_000;
/// …and at this much whatever comes: the most a crash can lose.
const FRAGMENT_MAX_US: i64 = 2_000_000;
/// Two samples further apart than this are a gap (a publisher drop): the earlier one gets a
/// nominal duration and the later one starts a fragment whose `tfdt` carries the gap.
const GAP_US: i64 = 1_000_000;

/// Per track: its setup, the sample waiting for its successor (which gives its duration),
/// and the samples of the fragment being gathered.
struct Track {
    setup: TrackSetup,
    /// The segment's start in this track's ticks on the recording's timeline.
    base: i64,
    pending: Option<(i64, bool, Vec<u8>)>,
    run: Vec<Sample>,
    run_base: Option<u64>,
}

/// An open segment file.
pub(crate) struct Segment {
    path: PathBuf,
    file: File,
    tracks: Vec<Track>,
    bytes: u64,
    sequence: u32,
    /// Timeline time (µs) of the fragment's first sample.
    fragment_start_us: Option<i64>,
    start_us: i64,
    /// The wall-clock start the init segment carries, until it is written.
    unwritten_init: Option<SystemTime>,
}

impl Segment {
    /// Creates `<dir>/<label>-<UTC start>.mp4` (a `-N` suffix if that name is taken).
    /// `start_us` is the segment's start on the recording's timeline.
    pub(crate) fn create(
        dir: &Path,
        label: &str,
        started: SystemTime,
        tracks: Vec<TrackSetup>,
        start_us: i64,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let stamp = utc_stamp(started);
        let mut n = 0;
        let (path, file) = loop {
            let name = match n {
                0 => format!("{label}-{stamp}.mp4"),
                n => format!("{label}-{stamp}-{n}.mp4"),
            };
            let path = dir.join(name);
            match File::options().write(true).create_new(true).open(&path) {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(e),
            }
        };
        let mut segment = Self {
            path,
            file,
            bytes: 0,
            tracks: Vec::new(),
            sequence: 0,
            fragment_start_us: None,
            start_us,
            unwritten_init: Some(started),
        };
        for setup in tracks {
            segment.add_track(setup);
        }
        Ok(segment)
    }

    /// Adds a track, if the init segment is not written yet; returns whether it was added.
    pub(crate) fn add_track(&mut self, setup: TrackSetup) -> bool {
        if self.unwritten_init.is_none() {
            return false;
        }
        self.tracks.push(Track {
            base: self.start_us * i64::from(setup.timescale()) / 1_000_000,
            setup,
            pending: None,
            run: Vec::new(),
            run_base: None,
        });
        true
    }

    /// Writes the init segment, with the tracks added so far, if it is not written yet.
    fn write_init(&mut self) -> io::Result<()> {
        let Some(started) = self.unwritten_init.take() else {
            return Ok(());
        };
        let setups: Vec<TrackSetup> = self.setups().cloned().collect();
        let init = fmp4::init_segment(&setups, started);
        self.file.write_all(&init)?;
        self.bytes += init.len() as u64;
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn start_us(&self) -> i64 {
        self.start_us
    }

    /// The setups the file was started with.
    pub(crate) fn setups(&self) -> impl Iterator<Item = &TrackSetup> {
        self.tracks.iter().map(|t| &t.setup)
    }

    /// Adds a sample of track `index` at `t` (its ticks on the recording's timeline). Samples
    /// before the segment's start, or not after the track's previous one, are dropped.
    pub(crate) fn push(
        &mut self,
        index: usize,
        t: i64,
        keyframe: bool,
        data: Vec<u8>,
    ) -> io::Result<()> {
        let Some(track) = self.tracks.get_mut(index) else {
            return Ok(());
        };
        if t < track.base || track.pending.as_ref().is_some_and(|p| t <= p.0) {
            return Ok(());
        }
        let rate = i64::from(track.setup.timescale());
        let t_us = t * 1_000_000 / rate;
        let mut gap = false;
        if let Some((pt, key, data)) = track.pending.take() {
            let mut duration = t - pt;
            if duration * 1_000_000 / rate > GAP_US {
                gap = true;
                duration = nominal_duration(&track.setup);
            }
            track.run_base.get_or_insert((pt - track.base) as u64);
            track.run.push(Sample {
                duration: duration as u32,
                keyframe: key,
                data,
            });
            let pt_us = pt * 1_000_000 / rate;
            self.fragment_start_us.get_or_insert(pt_us);
        }
        let age = self.fragment_start_us.map_or(0, |s| t_us - s);
        let video_key = keyframe && track.setup.is_video();
        track.pending = Some((t, keyframe, data));
        if gap || age >= FRAGMENT_MAX_US || (video_key && age >= FRAGMENT_MIN_US) {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the gathered samples as one fragment.
    fn flush(&mut self) -> io::Result<()> {
        self.fragment_start_us = None;
        if self.tracks.iter().all(|t| t.run.is_empty()) {
            return Ok(());
        }
        self.write_init()?;
        self.sequence += 1;
        let runs: Vec<Run<'_>> = self
            .tracks
            .iter()
            .zip(1..)
            .map(|(t, track_id)| Run {
                track_id,
                base: t.run_base.unwrap_or(0),
                samples: &t.run,
            })
            .collect();
        let bytes = fmp4::fragment(self.sequence, &runs);
        for t in &mut self.tracks {
            t.run.clear();
            t.run_base = None;
        }
        self.file.write_all(&bytes)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes the waiting samples (each with a nominal duration) and closes the file.
    pub(crate) fn close(mut self) -> io::Result<()> {
        for track in &mut self.tracks {
            if let Some((t, key, data)) = track.pending.take() {
                track.run_base.get_or_insert((t - track.base) as u64);
                track.run.push(Sample {
                    duration: nominal_duration(&track.setup) as u32,
                    keyframe: key,
                    data,
                });
            }
        }
        self.flush()?;
        self.write_init()?;
        self.file.sync_data()
    }
}

/// A frame at 30 fps, or an Opus packet of 20 ms: what publishers send.
fn nominal_duration(setup: &TrackSetup) -> i64 {
    if setup.is_video() { 3000 } else { 960 }
}

/// `YYYYMMDDTHHMMSSZ`, the UTC time in a segment's name (sorts by time; no `:` for Windows).
pub(crate) fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_stamp_is_the_civil_date() {
        let t = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        assert_eq!(utc_stamp(t), "20260528T202640Z");
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
    }
}
