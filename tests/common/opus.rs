//! Opus audio the tests can hear: the 440 Hz tone fixture (`tests/fixtures/README.md`) as
//! 20 ms packets, the silence frame a publisher that sends nothing audible uses, and how loud
//! audio is: packets decoded by GStreamer (`tests/gst/opus_level.py`), or a browser's
//! `totalAudioEnergy`. `as_sent.rs` compares packets byte for byte.

use std::path::Path;
use std::process::Command;

/// A 20 ms Opus frame of digital silence (CELT, fullband, mono; RFC 6716 §3.1): what a
/// publisher that keeps the audio stream alive without sound sends.
pub const SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

/// Loudness a decoded stream must reach to count as heard: the tone is at −21 dBFS RMS,
/// silence at −∞ (−700 in GStreamer's `level`), so −50 dBFS leaves room for codec loss and
/// a Chromium fake microphone's quieter beep, and none for silence or comfort noise.
pub const AUDIBLE_DBFS: f64 = -50.0;

/// The mean square level (0 silence, 1 full scale) of audio that gained `energy` of
/// `totalAudioEnergy` over `seconds` of `totalSamplesDuration` (WebRTC stats: the sum of
/// audioLevel² × duration); 0 when no time passed.
pub fn mean_square(energy: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { energy / seconds } else { 0.0 }
}

/// Whether a mean square level is at least [`AUDIBLE_DBFS`].
pub fn audible_energy(mean_square: f64) -> bool {
    10.0 * mean_square.log10() >= AUDIBLE_DBFS
}

/// The fixture's Opus packets (4 s of a 440 Hz tone, 20 ms each), in order.
pub fn tone() -> Vec<Vec<u8>> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sine-440hz-48k-mono.opus");
    let ogg = std::fs::read(&path).expect("the Opus fixture");
    let packets = ogg_packets(&ogg);
    assert!(
        packets.first().is_some_and(|p| p.starts_with(b"OpusHead"))
            && packets.get(1).is_some_and(|p| p.starts_with(b"OpusTags")),
        "{} is an Ogg Opus file",
        path.display()
    );
    packets[2..].to_vec()
}

/// The packets of an Ogg stream with one logical stream (RFC 3533): each page's segment
/// table gives lacing values, and a value below 255 ends a packet.
fn ogg_packets(mut ogg: &[u8]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut current = Vec::new();
    while !ogg.is_empty() {
        assert!(ogg.starts_with(b"OggS"), "an Ogg page");
        let segments = ogg[26] as usize;
        let (table, mut body) = ogg[27..].split_at(segments);
        let mut length = 27 + segments;
        for &lace in table {
            let (data, rest) = body.split_at(lace as usize);
            current.extend_from_slice(data);
            body = rest;
            length += lace as usize;
            if lace < 255 {
                packets.push(std::mem::take(&mut current));
            }
        }
        ogg = &ogg[length..];
    }
    packets
}

/// The loudest 100 ms of `packets` decoded (GStreamer `opusdec ! level`), in dBFS RMS.
pub fn loudest_dbfs(packets: &[Vec<u8>]) -> f64 {
    let dir = super::server::temp_dir("opus");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("received.opus-packets");
    // Each packet as a 2-byte big-endian length and its bytes.
    let mut framed = Vec::new();
    for p in packets {
        framed.extend_from_slice(&(p.len() as u16).to_be_bytes());
        framed.extend_from_slice(p);
    }
    std::fs::write(&file, framed).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gst/opus_level.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(&file)
        .output()
        .expect("python3 runs (apt-get install python3-gi)");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "opus_level.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a level in dBFS: {stdout}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tone_fixture_is_4_s_of_20_ms_packets() {
        let tone = tone();
        assert!((200..=201).contains(&tone.len()), "{}", tone.len());
        // The TOC says the frame size (RFC 6716 Table 2, in 0.1 ms) and, by its code, the
        // frame count (§3.2: code 3, which CBR uses to pad, has the count in byte 1).
        let duration = |p: &[u8]| {
            let config = p[0] >> 3;
            let size = match config {
                0..=11 => [100, 200, 400, 600][config as usize % 4],
                12..=15 => [100, 200][config as usize % 2],
                _ => [25, 50, 100, 200][config as usize % 4],
            };
            let count = match p[0] & 3 {
                0 => 1,
                1 | 2 => 2,
                _ => p[1] & 0x3f,
            };
            size * u32::from(count)
        };
        assert!(tone.iter().all(|p| duration(p) == 200), "20 ms per packet");
    }
}
