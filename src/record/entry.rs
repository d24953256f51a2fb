//! What a file's track carries ([`TrackSetup`], learnt from the stream) and the sample entry
//! that describes it in the init segment: `avc1` + `avcC`, `vp08`/`vp09` + `vpcC` (the VP
//! codec ISO binding), `av01` + `av1C` (the AV1 ISOBMFF binding), `Opus` + `dOps`.

use mp4_atom::{Audio, Av01, Av1c, Avc1, Avcc, Codec, Dops, Opus, Visual, Vp08, Vp09, VpcC};

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
    /// VP8 or VP9 (`vp9` false or true): the keyframe's profile, bit depth and chroma, and
    /// its picture size.
    Vp {
        vp9: bool,
        config: VpcC,
        width: u16,
        height: u16,
    },
    /// AV1: `av1C` from the sequence header (which it carries as its config OBU), and the
    /// largest picture that header allows.
    Av1 {
        config: Av1c,
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
            Self::H264 { width, height, .. }
            | Self::Vp { width, height, .. }
            | Self::Av1 { width, height, .. } => (*width, *height),
            Self::Opus => (0, 0),
        }
    }

    /// Whether a keyframe with setup `next` can go on in a file whose sample entry was made
    /// from `self`. A new picture size cannot for H.264 (a new SPS) or AV1 (a new sequence
    /// header, which must match `av1C`); VP8 and VP9 decoders take a new size from the
    /// keyframe (VP9 even from an inter frame), so a file goes on through a resolution change
    /// (a browser's, under load).
    pub(crate) fn continues_with(&self, next: &Self) -> bool {
        match (self, next) {
            (
                Self::Vp { vp9, config, .. },
                Self::Vp {
                    vp9: next_vp9,
                    config: next_config,
                    ..
                },
            ) => vp9 == next_vp9 && config == next_config,
            _ => self == next,
        }
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
            Self::Vp { vp9, config, .. } => {
                let vpcc = VpcC {
                    level: vp_level(width, height),
                    ..config.clone()
                };
                if *vp9 {
                    Vp09 {
                        visual,
                        vpcc,
                        btrt: None,
                        colr: None,
                        pasp: None,
                        spatial: None,
                    }
                    .into()
                } else {
                    Vp08 {
                        visual,
                        vpcc,
                        btrt: None,
                        colr: None,
                        pasp: None,
                        spatial: None,
                    }
                    .into()
                }
            }
            Self::Av1 { config, .. } => Av01 {
                visual,
                av1c: config.clone(),
                btrt: None,
                ccst: None,
                colr: None,
                pasp: None,
                taic: None,
                spatial: None,
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

/// The VP9 level (as 10 × the level number) a picture of this size at up to 30 fps needs:
/// the first one whose picture size and sample rate limits hold it (the VP9 levels table,
/// webmproject.org/vp9/levels). The frame rate is not in the stream; WebRTC sends up to 30.
/// The VP codec binding uses the same numbers for VP8.
fn vp_level(width: u16, height: u16) -> u8 {
    const LEVELS: [(u8, u64, u64); 14] = [
        (10, 36_864, 829_440),
        (11, 73_728, 2_764_800),
        (20, 122_880, 4_608_000),
        (21, 245_760, 9_216_000),
        (30, 552_960, 20_736_000),
        (31, 983_040, 36_864_000),
        (40, 2_228_224, 83_558_400),
        (41, 2_228_224, 160_432_128),
        (50, 8_912_896, 311_951_360),
        (51, 8_912_896, 588_251_136),
        (52, 8_912_896, 1_176_502_272),
        (60, 35_651_584, 1_176_502_272),
        (61, 35_651_584, 2_353_004_544),
        (62, 35_651_584, 4_706_009_088),
    ];
    let picture = u64::from(width) * u64::from(height);
    LEVELS
        .iter()
        .find(|(_, size, rate)| picture <= *size && picture * 30 <= *rate)
        .map_or(62, |(level, _, _)| *level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp_level_follows_the_picture_size_at_30_fps() {
        assert_eq!(vp_level(320, 180), 11);
        assert_eq!(vp_level(640, 360), 21);
        assert_eq!(vp_level(1280, 720), 31);
        assert_eq!(vp_level(1920, 1080), 40);
    }

    #[test]
    fn a_vp9_file_goes_on_through_a_new_size_and_an_av1_file_does_not() {
        let vp9 = |width| TrackSetup::Vp {
            vp9: true,
            config: VpcC::default(),
            width,
            height: 360,
        };
        assert!(vp9(640).continues_with(&vp9(480)));
        let av1 = |width| TrackSetup::Av1 {
            config: Av1c::default(),
            width,
            height: 360,
        };
        assert!(!av1(640).continues_with(&av1(480)));
    }
}
