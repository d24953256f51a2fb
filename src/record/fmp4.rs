//! Fragmented MP4 bytes: the init segment (`ftyp` + `moov` with an empty sample table and
//! `mvex`) and one fragment (`moof` + `mdat`) per call. The boxes are `mp4-atom`'s; what goes
//! in them (track layout, sample flags, the data offsets into `mdat`) is decided here; each
//! track's sample entry is [`TrackSetup::sample_entry`]'s.
//!
//! A file is the init segment followed by fragments, so it plays from its first byte and
//! every complete fragment is playable: a crash loses only the fragment being written.

use mp4_atom::{
    Dinf, Dref, Encode, Ftyp, Hdlr, Mdat, Mdhd, Mdia, Mfhd, Minf, Moof, Moov, Mvex, Mvhd, Smhd,
    Stbl, Stco, Stsd, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, TrunSamples, Url, Vmhd,
};

use super::entry::TrackSetup;

/// `sample_depends_on = 2` (an I-frame, a sync sample).
const SYNC_SAMPLE: u32 = 0x0200_0000;
/// `sample_depends_on = 1` and `sample_is_non_sync_sample`.
const NON_SYNC_SAMPLE: u32 = 0x0101_0000;

/// One coded frame in its codec's ISO binding (H.264: an access unit of length-prefixed NAL
/// units; VP8, VP9: a frame, VP9's spatial layers as one superframe; AV1: a temporal unit's
/// OBUs, each with its size; Opus: one packet).
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) duration: u32,
    pub(crate) keyframe: bool,
    pub(crate) data: Vec<u8>,
}

/// The samples of one track in one fragment, `base` being the first one's decode time in the
/// track's timescale, counted from the file's start.
pub(crate) struct Run<'a> {
    pub(crate) track_id: u32,
    pub(crate) base: u64,
    pub(crate) samples: &'a [Sample],
}

/// Seconds from 1904-01-01 (ISO BMFF's epoch) to 1970-01-01.
const SECONDS_1904_TO_1970: u64 = 2_082_844_800;

/// `ftyp` + `moov` for `tracks` (track IDs 1, 2, … in that order), whose `mvhd` creation time
/// is `started`, the segment's wall-clock start (players show it, e.g. ffprobe's
/// `creation_time`; it stays with the file when it is renamed).
pub(crate) fn init_segment(tracks: &[TrackSetup], started: std::time::SystemTime) -> Vec<u8> {
    let since_1970 = started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let created = since_1970 + SECONDS_1904_TO_1970;
    let ftyp = Ftyp {
        major_brand: b"iso6".into(),
        minor_version: 0,
        compatible_brands: vec![b"iso6".into(), b"iso5".into(), b"mp41".into()],
    };
    let moov = Moov {
        mvhd: Mvhd {
            creation_time: created,
            modification_time: created,
            timescale: 1000,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: tracks.len() as u32 + 1,
            ..Default::default()
        },
        mvex: Some(Mvex {
            mehd: None,
            trex: (1..=tracks.len() as u32)
                .map(|track_id| Trex {
                    track_id,
                    default_sample_description_index: 1,
                    ..Default::default()
                })
                .collect(),
        }),
        trak: tracks
            .iter()
            .zip(1..)
            .map(|(setup, track_id)| trak(setup, track_id))
            .collect(),
        ..Default::default()
    };
    let mut out = Vec::new();
    ftyp.encode(&mut out).expect("ftyp encodes into a Vec");
    moov.encode(&mut out).expect("moov encodes into a Vec");
    out
}

fn trak(setup: &TrackSetup, track_id: u32) -> Trak {
    let (handler, name, volume) = if setup.is_video() {
        (b"vide", "VideoHandler", 0)
    } else {
        (b"soun", "SoundHandler", 1)
    };
    let (width, height) = setup.size();
    Trak {
        tkhd: Tkhd {
            track_id,
            enabled: true,
            in_movie: true,
            volume: volume.into(),
            width: width.into(),
            height: height.into(),
            ..Default::default()
        },
        mdia: Mdia {
            mdhd: Mdhd {
                timescale: setup.timescale(),
                language: "und".into(),
                ..Default::default()
            },
            hdlr: Hdlr {
                handler: handler.into(),
                name: name.into(),
            },
            minf: Minf {
                vmhd: setup.is_video().then(Vmhd::default),
                smhd: (!setup.is_video()).then(Smhd::default),
                dinf: Dinf {
                    dref: Dref {
                        entries: vec![Url::default().into()],
                    },
                },
                stbl: Stbl {
                    stsd: Stsd {
                        codecs: vec![setup.sample_entry()],
                    },
                    stco: Some(Stco::default()),
                    ..Default::default()
                },
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// `moof` + `mdat` holding `runs` (tracks without samples are left out).
pub(crate) fn fragment(sequence_number: u32, runs: &[Run<'_>]) -> Vec<u8> {
    let runs: Vec<&Run<'_>> = runs.iter().filter(|r| !r.samples.is_empty()).collect();
    let mut moof = Moof {
        mfhd: Mfhd { sequence_number },
        traf: runs
            .iter()
            .map(|run| Traf {
                tfhd: Tfhd {
                    track_id: run.track_id,
                    default_base_is_moof: true,
                    ..Default::default()
                },
                tfdt: Some(Tfdt {
                    base_media_decode_time: run.base,
                }),
                trun: vec![Trun {
                    data_offset: Some(0),
                    samples: TrunSamples::Explicit(
                        run.samples
                            .iter()
                            .map(|s| TrunEntry {
                                duration: Some(s.duration),
                                size: Some(s.data.len() as u32),
                                flags: Some(if s.keyframe {
                                    SYNC_SAMPLE
                                } else {
                                    NON_SYNC_SAMPLE
                                }),
                                cts: None,
                            })
                            .collect(),
                    ),
                }],
                ..Default::default()
            })
            .collect(),
    };
    // The data offsets count from the moof's first byte (default-base-is-moof) to each run's
    // first sample in the mdat; their own size does not depend on their value.
    let mut sized = Vec::new();
    moof.encode(&mut sized).expect("moof encodes into a Vec");
    let mut offset = sized.len() + 8;
    for (traf, run) in moof.traf.iter_mut().zip(&runs) {
        traf.trun[0].data_offset = Some(offset as i32);
        offset += run.samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    let mut data = Vec::with_capacity(offset - sized.len());
    for run in &runs {
        for s in run.samples {
            data.extend_from_slice(&s.data);
        }
    }
    let mut out = Vec::with_capacity(offset);
    moof.encode(&mut out).expect("moof encodes into a Vec");
    debug_assert_eq!(
        out.len(),
        sized.len(),
        "a data offset's value never changes its size"
    );
    Mdat { data }
        .encode(&mut out)
        .expect("mdat encodes into a Vec");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp4_atom::{Any, Decode};

    #[test]
    fn fragment_data_offsets_point_at_each_runs_samples() {
        let video = [Sample {
            duration: 3000,
            keyframe: true,
            data: vec![1; 10],
        }];
        let audio = [
            Sample {
                duration: 960,
                keyframe: true,
                data: vec![2; 3],
            },
            Sample {
                duration: 960,
                keyframe: true,
                data: vec![3; 4],
            },
        ];
        let bytes = fragment(
            7,
            &[
                Run {
                    track_id: 1,
                    base: 0,
                    samples: &video,
                },
                Run {
                    track_id: 2,
                    base: 0,
                    samples: &audio,
                },
            ],
        );
        let buf = &mut std::io::Cursor::new(&bytes);
        let Ok(Any::Moof(moof)) = Any::decode(buf) else {
            panic!("a moof first");
        };
        let offsets: Vec<usize> = moof
            .traf
            .iter()
            .map(|t| t.trun[0].data_offset.unwrap() as usize)
            .collect();
        assert_eq!(bytes[offsets[0]..offsets[0] + 10], [1; 10]);
        assert_eq!(bytes[offsets[1]..offsets[1] + 7], [2, 2, 2, 3, 3, 3, 3]);
    }

    #[test]
    fn init_segment_decodes_with_both_sample_entries_and_its_wall_clock_start() {
        let started = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_780_000_000);
        let bytes = init_segment(
            &[
                TrackSetup::H264 {
                    sps: vec![0x67, 0x42, 0xe0, 0x1f, 0xda],
                    pps: vec![0x68, 0xce, 0x3c, 0x80],
                    width: 320,
                    height: 240,
                },
                TrackSetup::Opus,
            ],
            started,
        );
        let buf = &mut std::io::Cursor::new(&bytes);
        Ftyp::decode(buf).expect("ftyp");
        let moov = Moov::decode(buf).expect("moov");
        assert_eq!(moov.trak.len(), 2);
        assert_eq!(moov.mvhd.creation_time, 1_780_000_000 + 2_082_844_800);
        assert_eq!(moov.mvex.expect("mvex").trex.len(), 2);
    }
}
