//! The recorder from packets to a file: a [`Recording`] fed packets as the engine hands them
//! over, and the file it writes read back with `mp4-atom`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mp4_atom::{Decode, Encode, Ftyp, Moov};

use super::recording::Recording;
use super::{Board, Media, Packet, Settings};
use crate::broadcast_key::BroadcastKey;

/// A recording into a fresh temp dir, and its settings.
fn recording(name: &str) -> (Recording, Settings) {
    let dir = std::env::temp_dir().join(format!(
        "whipcast-unit-{name}-{}",
        crate::secret::random_token()
    ));
    let settings = Settings {
        dir,
        segment: Duration::from_secs(600),
        max_bytes: None,
        min_free: 0,
        board: Arc::new(Board::default()),
        idle: Duration::from_secs(10),
    };
    let start = crate::clock::now();
    let r = Recording::new(BroadcastKey(1), "test".into(), &settings, start);
    (r, settings)
}

fn packet(media: Media, seq: u64, ts: u32, payload: &[u8], arrival: Instant) -> Packet {
    Packet {
        broadcast: BroadcastKey(1),
        route: (0, 1),
        epoch: 0,
        media,
        seq,
        ts,
        marker: true,
        payload: Arc::from(payload),
        arrival,
        report: None,
    }
}

/// The sample entries' box types, per file of the broadcast (oldest first); the files are
/// removed.
fn files(settings: &Settings) -> Vec<Vec<String>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(settings.dir.join("test"))
        .expect("the broadcast's directory")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    let entries = paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).expect("the file");
            let buf = &mut std::io::Cursor::new(&bytes);
            Ftyp::decode(buf).expect("ftyp");
            let moov = Moov::decode(buf).expect("moov");
            (moov.trak.iter())
                .map(|t| {
                    let mut entry = Vec::new();
                    t.mdia.minf.stbl.stsd.codecs[0]
                        .encode(&mut entry)
                        .expect("encodes");
                    String::from_utf8_lossy(&entry[4..8]).into_owned()
                })
                .collect()
        })
        .collect();
    let _ = std::fs::remove_dir_all(&settings.dir);
    entries
}

/// An H.264 IDR access unit in one STAP-A: SPS, PPS, an IDR slice.
const IDR: [u8; 18] = [
    24, 0, 5, 0x67, 0x42, 0xe0, 0x1f, 0xda, 0, 4, 0x68, 0xce, 0x3c, 0x80, 0, 2, 0x65, 0x88,
];

#[test]
fn audio_whose_first_packet_follows_the_first_keyframe_is_in_the_file() {
    let (mut r, settings) = recording("late-audio");
    let t0 = crate::clock::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    // The keyframe opens the segment; the audio's first packet comes 2 ms later.
    r.handle(packet(Media::H264, 1, 0, &IDR, ms(0)), &settings);
    for i in 0..100u32 {
        let at = ms(2 + 20 * u64::from(i));
        r.handle(
            packet(Media::Opus, 100 + u64::from(i), i * 960, &[0xfc, 1], at),
            &settings,
        );
        if i % 3 == 0 {
            let unit = [0x41, 0x9a, i as u8];
            let video = packet(Media::H264, 2 + u64::from(i), (i + 1) * 1800, &unit, at);
            r.handle(video, &settings);
        }
    }
    r.finish();
    assert_eq!(files(&settings), [["avc1", "Opus"]]);
}

#[test]
fn vp9_and_av1_keyframes_start_files_with_their_sample_entries() {
    let vp9_key = [&[0x0c][..], &super::vp9::KEY_HEADER].concat();
    let sequence = super::obu::SEQUENCE_640X360;
    // W=2: the sequence header OBU with its length, then a key frame OBU.
    let av1_key = [
        &[0x28, sequence.len() as u8 + 1, 0x08][..],
        &sequence,
        &[0x30, 0x10],
    ]
    .concat();
    let cases = [
        (Media::Vp9, vp9_key, vec![0x4c, 0x86, 0x00], "vp09"),
        (Media::Av1, av1_key, vec![0x10, 0x30, 0x30], "av01"),
    ];
    for (media, key, inter, entry) in cases {
        let (mut r, settings) = recording(entry);
        let t0 = crate::clock::now();
        for i in 0..60u32 {
            let at = t0 + Duration::from_millis(20 * u64::from(i));
            r.handle(
                packet(Media::Opus, 1000 + u64::from(i), i * 960, &[0xfc, 1], at),
                &settings,
            );
            if i % 2 == 0 {
                let payload = if i == 0 { &key } else { &inter };
                r.handle(
                    packet(media, u64::from(i / 2), i * 1800, payload, at),
                    &settings,
                );
            }
        }
        r.finish();
        assert_eq!(files(&settings), [[entry, "Opus"]], "{media:?}");
    }
}
