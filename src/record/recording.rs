//! One recording: a broadcast from a publish to its end (drops and resumes included), as a
//! series of segment files on one timeline.
//!
//! The first segment starts at the first video keyframe whose configuration is known (H.264
//! parameter sets, AV1 sequence header; audio before it is left out, so the file opens on a
//! picture); a new segment starts at the first keyframe after `--record-segment`, or when the
//! configuration changes (the sample entry is per file; VP8 and VP9 go on through a new
//! picture size). Audio whose first packet comes after the segment started joins it until its
//! first fragment is written (a publisher's first video keyframe often beats its first audio
//! packet by milliseconds); audio that starts later than that is in the next segment, started
//! at the next keyframe. A broadcast without video is recorded audio-only once a second of
//! audio has come without any video.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::entry::{OPUS_TIMESCALE, TrackSetup, VIDEO_TIMESCALE};
use super::frames::{Frame, VideoFrames};
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
    /// The video's depacketizer, and the epoch its packets are from.
    video: Option<(VideoFrames, u32)>,
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
            video: None,
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
            _ => self.on_video(p, settings),
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

    fn on_video(&mut self, p: Packet, settings: &Settings) -> std::io::Result<()> {
        self.seen_video = true;
        // A new codec or a resumed publisher (new sequence numbers) starts afresh.
        if self
            .video
            .as_ref()
            .is_none_or(|(v, e)| v.media() != p.media || *e != p.epoch)
        {
            self.video = VideoFrames::new(p.media).map(|v| (v, p.epoch));
        }
        let Some((video, _)) = &mut self.video else {
            return Ok(());
        };
        video.push(p.seq, p.ts, p.marker, p.payload);
        while let Some((ts, frame)) = self.video.as_mut().and_then(|(v, _)| v.poll()) {
            let t = (self.timeline).time(Track::Video, p.epoch, ts, p.arrival, p.report);
            self.on_frame(t, frame, settings)?;
        }
        Ok(())
    }

    /// A video frame at `t` (ticks on the timeline): into the segment, which a keyframe may
    /// start first.
    fn on_frame(&mut self, t: i64, frame: Frame, settings: &Settings) -> std::io::Result<()> {
        let t_us = t * 1_000_000 / i64::from(VIDEO_TIMESCALE);
        if let Some(setup) = frame.setup.filter(|_| frame.keyframe) {
            let due = match &self.segment {
                None => true,
                Some(s) => {
                    let video = s.setups().find(|s| s.is_video());
                    video.is_none_or(|v| !v.continues_with(&setup))
                        || (self.seen_audio && !s.setups().any(|s| *s == TrackSetup::Opus))
                        || t_us - s.start_us() >= settings.segment.as_micros() as i64
                }
            };
            if due {
                let mut tracks = vec![setup];
                if self.seen_audio {
                    tracks.push(TrackSetup::Opus);
                }
                self.open(tracks, t_us)?;
            }
        }
        match &mut self.segment {
            Some(s) if s.setups().next().is_some_and(TrackSetup::is_video) => {
                s.push(0, t, frame.keyframe, frame.data)
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
