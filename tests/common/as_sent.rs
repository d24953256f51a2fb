//! A str0m viewer's media against its publisher's, byte for byte: the H.264 frames it
//! received were sent, unchanged and in order, and its Opus packets are a run of those sent,
//! none of them silence.

use super::annexb::same_nal_units;
use super::opus::SILENCE;
use std::sync::Mutex;

use super::udp_client::{Client, Received, Shared};

/// Checks that the first `n` of `got` (a viewer's frames) are sent frames, byte for byte, in
/// order: the first may be the cached keyframe; after it the viewer resumes at the next
/// keyframe, and from there every frame follows the one before.
pub fn frames_as_sent(sent: &[Received], got: &[Received], n: usize) -> Result<(), String> {
    if got.len() < n {
        return Err(format!("{} frames received, fewer than {n}", got.len()));
    }
    if !got[0].keyframe {
        return Err("the first frame is not a keyframe".into());
    }
    let mut index = Vec::new();
    let mut from = 0;
    for (k, g) in got.iter().take(n).enumerate() {
        let i = (from..sent.len())
            .find(|&i| same_nal_units(&sent[i].data, &g.data))
            .ok_or(format!("received frame {k} is no sent frame after #{from}"))?;
        index.push(i);
        from = i + 1;
    }
    if !(got[1].keyframe || index[1] == index[0] + 1) {
        return Err(format!("a resume not at a keyframe: {index:?}"));
    }
    match index[1..].windows(2).find(|w| w[1] != w[0] + 1) {
        Some(w) => Err(format!("frame #{} lost or reordered: {index:?}", w[0] + 1)),
        None => Ok(()),
    }
}

/// Checks that `got` (a viewer's Opus payloads, in arrival order) is a run of `sent` (what
/// the publisher wrote, in order), unchanged, of at least `min` packets, and not silence.
pub fn audio_as_sent(sent: &[Vec<u8>], got: &[Vec<u8>], min: usize) -> Result<(), String> {
    if got.len() < min {
        return Err(format!("{} audio packets, fewer than {min}", got.len()));
    }
    let silent = got.iter().filter(|p| p.as_slice() == SILENCE).count();
    if silent > 0 {
        return Err(format!(
            "{silent} of {} audio packets are silence",
            got.len()
        ));
    }
    // The first packet received may have been sent more than once (a looped fixture).
    let mut why = String::from("the first audio packet received was never sent");
    for start in (0..sent.len()).filter(|&i| sent[i] == got[0]) {
        let run = &sent[start..];
        why = match got.iter().zip(run).position(|(g, s)| g != s) {
            None if run.len() >= got.len() => return Ok(()),
            None => format!("{} packets received, {} sent", got.len(), run.len()),
            Some(i) => format!(
                "audio packet {i} differs from the one sent ({} bytes, {} sent)",
                got[i].len(),
                run[i].len()
            ),
        };
    }
    Err(why)
}

/// Checks that `viewer` got at least `frames` video frames and `packets` Opus packets, each
/// as the publisher that keeps `sent` sent it.
pub fn viewer_got_as_sent(
    sent: &Mutex<Shared>,
    viewer: &Client,
    frames: usize,
    packets: usize,
) -> Result<(), String> {
    let (sent, got) = (sent.lock().unwrap(), viewer.shared.lock().unwrap());
    frames_as_sent(&sent.frames, &got.frames, frames).map_err(|e| format!("video: {e}"))?;
    audio_as_sent(&sent.audio, &got.audio, packets).map_err(|e| format!("audio: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_silence_is_not_heard() {
        let sent = super::super::opus::tone();
        assert_eq!(audio_as_sent(&sent, &sent[10..70], 50), Ok(()));
        let silence = vec![SILENCE.to_vec(); 60];
        assert!(audio_as_sent(&silence, &silence, 50).is_err());
    }
}
