//! What a file's track carries ([`TrackSetup`], learnt from the stream) and the sample entry
//! that describes it in the init segment: `avc1` + `avcC`, `Opus` + `dOps`.

use mp4_atom::{Audio, Avc1, Avcc, Codec, Dops, Opus, Visual};

/// RTP's (and so the file's) clock for video: every RTP video codec runs at 90 kHz.
pub(crate) const VIDEO_TIMESCALE: u32 = 90_000;
/// Opus always runs at 48 kHz on RTP (RFC 7587), whatever the encoder's internal rate.
pub(crate) const OPUS_TIMESCALE: u32 = 48_000;
/// The pre-skip Opus encoders use at 48 kHz (libopus' lookahead, RFC 7845 §4.2): players drop
/// that many decoded samples at the start.
const OPUS_PRE_SKIP: u16 = 312;

/// A track's codec and what its sample entry says, as seen in-band at a keyframe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TrackSetup {
    /// H.264 with the parameter sets seen in-band (avcC), and the picture size from the SPS.
    H264 {
        sps: Vec<u8>,
        pps: Vec<u8>,
        width: u16,
        height: u16,
    },
    Opus,
}

impl TrackSetup {
    pub(crate) fn timescale(&self) -> u32 {
        match self {
            Self::Opus => OPUS_TIMESCALE,
            _ => VIDEO_TIMESCALE,
        }
    }

    pub(crate) fn is_video(&self) -> bool {
        !matches!(self, Self::Opus)
    }

    /// The picture size the track header and sample entry give.
    pub(crate) fn size(&self) -> (u16, u16) {
        match self {
            Self::H264 { width, height, .. } => (*width, *height),
            Self::Opus => (0, 0),
        }
    }

    /// Whether a keyframe with setup `next` can go on in a file whose sample entry was made
    /// from `self` (a new SPS or PPS cannot).
    pub(crate) fn continues_with(&self, next: &Self) -> bool {
        self == next
    }

    /// The sample entry (`stsd` child) for this track.
    pub(crate) fn sample_entry(&self) -> Codec {
        let (width, height) = self.size();
        let visual = Visual {
            data_reference_index: 1,
            width,
            height,
            horizresolution: 72.into(),
            vertresolution: 72.into(),
            frame_count: 1,
            compressor: "".into(),
            depth: 24,
        };
        match self {
            Self::H264 { sps, pps, .. } => Avc1 {
                visual,
                avcc: Avcc {
                    configuration_version: 1,
                    avc_profile_indication: sps.get(1).copied().unwrap_or(66),
                    profile_compatibility: sps.get(2).copied().unwrap_or(0),
                    avc_level_indication: sps.get(3).copied().unwrap_or(31),
                    length_size: 4,
                    sequence_parameter_sets: vec![sps.clone()],
                    picture_parameter_sets: vec![pps.clone()],
                    ext: None,
                },
                btrt: None,
                colr: None,
                pasp: None,
                taic: None,
                fiel: None,
                spatial: Default::default(),
            }
            .into(),
            Self::Opus => Opus {
                audio: Audio {
                    data_reference_index: 1,
                    // WebRTC signals Opus as two channels (RFC 7587 §7); a mono encoder's
                    // packets decode to both.
                    channel_count: 2,
                    sample_size: 16,
                    sample_rate: 48000.into(),
                },
                dops: Dops {
                    output_channel_count: 2,
                    pre_skip: OPUS_PRE_SKIP,
                    input_sample_rate: 48000,
                    output_gain: 0,
                    channel_mapping: None,
                },
                btrt: None,
            }
            .into(),
        }
    }
}
