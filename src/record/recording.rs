//! One recording: a broadcast from a publish to its end (drops and resumes included), as a
//! series of segment files on one timeline.
//!
//! The first segment starts at the first H.264 keyframe whose parameter sets are known (audio
//! before it is left out, so the file opens on a picture); a new segment starts at the first
//! keyframe after `--record-segment`, or when the parameter sets change (the sample entry is
//! per file). Audio whose first packet comes after the segment started joins it until its
//! first fragment is written (a publisher's first video keyframe often beats its first audio
//! packet by milliseconds); audio that starts later than that is in the next segment, started
//! at the next keyframe. A broadcast without video is recorded audio-only once a second of
//! audio has come without any video.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::fmp4::{OPUS_TIMESCALE, TrackSetup, VIDEO_TIMESCALE};
use super::frames::H264Assembler;
use super::segment::Segment;
use super::timeline::{Timeline, Track};
use super::{Board, Media, Packet, Settings, Status, StopReason};
use crate::broadcast_key::BroadcastKey;

/// How long audio may come without video before the recording starts audio-only.
const AUDIO_ONLY_AFTER: Duration = Duration::from_secs(1);
/// How often the free space under `--record-dir` is measured (one `statvfs`): at 6 Mb/s a
/// second is 750 kB, far below any sensible `--record-min-free`.
const SPACE_CHECK: Duration = Duration::from_secs(1);

pub(crate) struct Recording {
    key: BroadcastKey,
    board: Arc<Board>,
    label: String,
    dir: PathBuf,
    origin: Instant,
    origin_wall: SystemTime,
    timeline: Timeline,
    h264: H264Assembler,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    seen_video: bool,
    seen_audio: bool,
    segment: Option<Segment>,
    /// Bytes of this broadcast's earlier files and closed segments, for `--record-max-bytes`.
    earlier_bytes: u64,
    stopped: bool,
    space_checked: Option<Instant>,
    /// The publisher's (route, epoch) of the last packet, and the timeline's epoch for it:
    /// each new one (a resume) is anchored afresh.
    publisher: Option<((usize, u64), u32)>,
    epoch: u32,
    pub(crate) last_arrival: Instant,
}

impl Recording {
    pub(crate) fn new(
        key: BroadcastKey,
        label: String,
        settings: &Settings,
        first: Instant,
    ) -> Self {
        let dir = settings.dir.join(&label);
        let earlier_bytes = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        info!(%label, dir = %dir.display(), "recording started");
        Self {
            key,
            board: settings.board.clone(),
            label,
            dir,
            origin: first,
            // The clock's wall time is read in io/ only; a second's precision names files.
            origin_wall: std::time::UNIX_EPOCH + Duration::from_secs(crate::clock::unix_now()),
            timeline: Timeline::new(first, VIDEO_TIMESCALE, OPUS_TIMESCALE),
            h264: H264Assembler::default(),
            sps: None,
            pps: None,
            seen_video: false,
            seen_audio: false,
            segment: None,
            earlier_bytes,
            stopped: false,
            space_checked: None,
            publisher: None,
            epoch: 0,
            last_arrival: first,
        }
    }

    pub(crate) fn handle(&mut self, mut p: Packet, settings: &Settings) {
        self.last_arrival = p.arrival;
        let publisher = Some((p.route, p.epoch));
        if self.publisher.is_some() && self.publisher != publisher {
            self.epoch += 1;
        }
        self.publisher = publisher;
        p.epoch = self.epoch;
        if self.stopped {
            return;
        }
        if self
            .space_checked
            .is_none_or(|t| p.arrival.saturating_duration_since(t) >= SPACE_CHECK)
        {
            self.space_checked = Some(p.arrival);
            // A file system we cannot measure is left to the writes to report.
            if let Ok(free) = super::space::free_bytes(&self.dir)
                && free < settings.min_free
            {
                self.stop(StopReason::FreeSpace {
                    free,
                    floor: settings.min_free,
                });
                return;
            }
        }
        let result = match p.media {
            Media::Opus => self.on_opus(p),
            Media::H264 => self.on_h264(p, settings),
        };
        if let Err(e) = result {
            self.stop(StopReason::WriteFailed(e.to_string()));
            return;
        }
        let written = self.earlier_bytes + self.segment.as_ref().map_or(0, Segment::bytes);
        if let Some(max) = settings.max_bytes.filter(|max| written >= *max) {
            self.stop(StopReason::ByteCap { max });
        }
    }

    /// Whether the recording stopped (a cap, the disk) while its broadcast goes on.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    fn on_opus(&mut self, p: Packet) -> std::io::Result<()> {
        self.seen_audio = true;
        let t = (self.timeline).time(Track::Audio, p.epoch, p.ts, p.arrival, p.report);
        if self.segment.is_none()
            && !self.seen_video
            && p.arrival.saturating_duration_since(self.origin) >= AUDIO_ONLY_AFTER
        {
            let start_us = t * 1_000_000 / i64::from(OPUS_TIMESCALE);
            self.open(vec![TrackSetup::Opus], start_us)?;
        }
        let Some(segment) = &mut self.segment else {
            return Ok(());
        };
        let position = segment.setups().position(|s| *s == TrackSetup::Opus);
        let opus = match position {
            Some(i) => i,
            // Audio that starts just after the segment (its first packet beaten by the first
            // video keyframe) joins it while nothing is written; later audio waits for the
            // next segment, which the next keyframe starts.
            None if segment.add_track(TrackSetup::Opus) => segment.setups().count() - 1,
            None => return Ok(()),
        };
        segment.push(opus, t, true, p.payload.to_vec())
    }

    fn on_h264(&mut self, p: Packet, settings: &Settings) -> std::io::Result<()> {
        self.seen_video = true;
        let Some(unit) = self.h264.push(p.seq, p.ts, p.marker, p.payload) else {
            return Ok(());
        };
        let mut changed = false;
        if let Some(sps) = unit.sps {
            changed |= self.sps.as_ref() != Some(&sps);
            self.sps = Some(sps);
        }
        if let Some(pps) = unit.pps {
            changed |= self.pps.as_ref() != Some(&pps);
            self.pps = Some(pps);
        }
        let (epoch, arrival, report) = (p.epoch, p.arrival, p.report);
        let t = (self.timeline).time(Track::Video, epoch, unit.ts, arrival, report);
        let t_us = t * 1_000_000 / i64::from(VIDEO_TIMESCALE);
        if unit.keyframe
            && let (Some(sps), Some(pps)) = (&self.sps, &self.pps)
        {
            let due = match &self.segment {
                None => true,
                Some(s) => {
                    changed
                        || !s.setups().any(|s| matches!(s, TrackSetup::H264 { .. }))
                        || (self.seen_audio && !s.setups().any(|s| *s == TrackSetup::Opus))
                        || t_us - s.start_us() >= settings.segment.as_micros() as i64
                }
            };
            if due {
                let info = crate::h264::parse_sps(sps);
                let mut tracks = vec![TrackSetup::H264 {
                    sps: sps.clone(),
                    pps: pps.clone(),
                    width: info.as_ref().map_or(0, |i| i.width as u16),
                    height: info.as_ref().map_or(0, |i| i.height as u16),
                }];
                if self.seen_audio {
                    tracks.push(TrackSetup::Opus);
                }
                self.open(tracks, t_us)?;
            }
        }
        match &mut self.segment {
            Some(s) if s.setups().next().is_some_and(|s| s != &TrackSetup::Opus) => {
                s.push(0, t, unit.keyframe, unit.data)
            }
            _ => Ok(()),
        }
    }

    /// Closes the current segment (if any) and starts the next at `start_us`.
    fn open(&mut self, tracks: Vec<TrackSetup>, start_us: i64) -> std::io::Result<()> {
        if let Some(s) = self.segment.take() {
            self.earlier_bytes += s.bytes();
            s.close()?;
        }
        let started = self.origin_wall + Duration::from_micros(start_us.max(0) as u64);
        let segment = Segment::create(&self.dir, &self.label, started, tracks, start_us)?;
        info!(label = %self.label, file = %segment.path().display(), "recording segment started");
        let file = segment.path().file_name().unwrap_or_default();
        let file = file.to_string_lossy().into_owned();
        self.board
            .set_status(self.key, Some(Status::Recording { file }));
        self.segment = Some(segment);
        Ok(())
    }

    /// Stops recording (what is written stays playable); the broadcast goes on.
    fn stop(&mut self, reason: StopReason) {
        warn!(label = %self.label, dir = %self.dir.display(), %reason, "recording stopped (the broadcast goes on)");
        self.stopped = true;
        if let Some(s) = self.segment.take() {
            let _ = s.close();
        }
        self.board
            .set_status(self.key, Some(Status::Stopped(reason)));
    }

    /// Writes what is waiting and closes the file: the recording has ended.
    pub(crate) fn finish(mut self) {
        if !self.stopped {
            self.board.set_status(self.key, None);
        }
        if let Some(s) = self.segment.take() {
            let path = s.path().to_owned();
            match s.close() {
                Ok(()) => info!(label = %self.label, file = %path.display(), "recording ended"),
                Err(e) => {
                    warn!(label = %self.label, error = %e, "recording ended with a write error")
                }
            }
        }
    }
}
