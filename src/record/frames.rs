//! RTP packets to coded video frames. [`Pictures`] gathers each picture's packets (one RTP
//! timestamp, ended by the marker bit), in order, and says whether anything was lost before
//! it; the codec's depacketizer ([`h264`], [`vp8`], [`vp9`], [`av1`]) turns a picture's
//! payloads into one sample. Opus needs none: one packet, one sample (RFC 7587).
//!
//! A picture waits for a packet it misses (a retransmission answering the engine's NACK) while
//! a few later pictures arrive; then it is lost. After a loss, VP8, VP9 and AV1 frames are
//! left out until the next keyframe: what follows refers to the lost frame, and a decoder
//! given it shows garbage until then. H.264 keeps every complete access unit, as before
//! (OBS, its main publisher, sends a keyframe every 1–2 s and decoders conceal the rest).

use std::collections::VecDeque;
use std::sync::Arc;

use super::entry::TrackSetup;
use super::{Media, av1, h264, vp8, vp9};

/// Pictures held while an earlier one misses a packet: 8 frames (270 ms at 30 fps) leave a
/// NACK and its retransmission time to arrive on most links.
const OPEN_PICTURES: usize = 8;
/// Packets one picture may have: ~5 MB, several times the largest keyframe WebRTC encoders
/// send; a publisher that never sets the marker bit cannot grow a picture past it.
const PICTURE_PACKETS: usize = 4096;

/// One coded frame, as a depacketizer makes it.
#[derive(Debug, Default)]
pub(crate) struct Frame {
    pub(crate) data: Vec<u8>,
    pub(crate) keyframe: bool,
    /// On a keyframe whose configuration is known: the sample entry a file starting here gets.
    pub(crate) setup: Option<TrackSetup>,
}

/// A picture's packets, in sequence order and complete.
pub(crate) struct Picture {
    pub(crate) ts: u32,
    pub(crate) payloads: Vec<Arc<[u8]>>,
    /// Nothing was lost between the previous picture handed out and this one.
    pub(crate) follows: bool,
}

struct Open {
    ts: u32,
    packets: Vec<(u64, Arc<[u8]>)>,
    marker: Option<u64>,
}

impl Open {
    fn first(&self) -> u64 {
        self.packets.first().map_or(u64::MAX, |p| p.0)
    }

    /// All its packets are here: from its first through the marker, with no hole.
    fn complete(&self, previous: Option<u64>) -> bool {
        let Some(marker) = self.marker else {
            return false;
        };
        let first = self.first();
        let starts_right = previous.is_none_or(|p| first == p + 1);
        starts_right && marker + 1 - first == self.packets.len() as u64
    }
}

/// The pictures being received, oldest first.
#[derive(Default)]
pub(crate) struct Pictures {
    open: VecDeque<Open>,
    /// The marker's sequence number of the last picture handed out (or given up, if it had
    /// one): the next picture starts right after it.
    end: Option<u64>,
    /// Packets up to this sequence number are too late: their picture is gone.
    late: Option<u64>,
    lost: bool,
}

impl Pictures {
    /// Takes one packet (`seq` extended, so it never wraps).
    pub(crate) fn push(&mut self, seq: u64, ts: u32, marker: bool, payload: Arc<[u8]>) {
        if self.late.is_some_and(|late| seq <= late) {
            return; // a duplicate, or too late for its picture
        }
        let at = match self.open.iter().position(|o| o.ts == ts) {
            Some(at) => at,
            None => {
                let at = self.open.iter().take_while(|o| o.first() < seq).count();
                let packets = Vec::new();
                self.open.insert(
                    at,
                    Open {
                        ts,
                        packets,
                        marker: None,
                    },
                );
                at
            }
        };
        let open = &mut self.open[at];
        if let Err(i) = open.packets.binary_search_by_key(&seq, |p| p.0) {
            open.packets.insert(i, (seq, payload));
        }
        if marker {
            open.marker = Some(seq);
        }
        if open.packets.len() > PICTURE_PACKETS {
            self.open.remove(at);
            self.lost = true;
        }
    }

    /// The next picture in order, once it is complete; gives up on a picture that later
    /// ones have kept waiting too long.
    pub(crate) fn poll(&mut self) -> Option<Picture> {
        loop {
            let front = self.open.front()?;
            if front.complete(self.end) {
                let open = self.open.pop_front()?;
                (self.end, self.late) = (open.marker, open.marker);
                return Some(Picture {
                    ts: open.ts,
                    payloads: open.packets.into_iter().map(|(_, p)| p).collect(),
                    follows: !std::mem::take(&mut self.lost),
                });
            }
            if self.open.len() <= OPEN_PICTURES {
                return None;
            }
            let gone = self.open.pop_front()?;
            self.lost = true;
            // Its late packets are dropped; the next picture is checked against its end only
            // if its marker came (else the codec's start-of-frame flags are the check).
            self.late = gone.packets.last().map(|p| p.0).max(self.late);
            self.end = gone.marker;
        }
    }
}

/// One video track's depacketizer.
pub(crate) struct VideoFrames {
    media: Media,
    pictures: Pictures,
    codec: Codec,
    /// A picture was lost: frames wait for a keyframe (not for H.264).
    waiting: bool,
}

enum Codec {
    H264(h264::Depacketizer),
    Vp8,
    Vp9(vp9::Depacketizer),
    Av1(av1::Depacketizer),
}

impl VideoFrames {
    /// A depacketizer for `media`; `None` for audio.
    pub(crate) fn new(media: Media) -> Option<Self> {
        let codec = match media {
            Media::H264 => Codec::H264(h264::Depacketizer::default()),
            Media::Vp8 => Codec::Vp8,
            Media::Vp9 => Codec::Vp9(vp9::Depacketizer::default()),
            Media::Av1 => Codec::Av1(av1::Depacketizer::default()),
            Media::Opus => return None,
        };
        Some(Self {
            media,
            pictures: Pictures::default(),
            codec,
            // A stream joined mid-way has nothing to refer to before its first keyframe.
            waiting: true,
        })
    }

    pub(crate) fn media(&self) -> Media {
        self.media
    }

    pub(crate) fn push(&mut self, seq: u64, ts: u32, marker: bool, payload: Arc<[u8]>) {
        self.pictures.push(seq, ts, marker, payload);
    }

    /// The next frame (with its RTP timestamp) once its packets are all here.
    pub(crate) fn poll(&mut self) -> Option<(u32, Frame)> {
        loop {
            let picture = self.pictures.poll()?;
            let payloads = &picture.payloads;
            let frame = match &mut self.codec {
                Codec::H264(d) => match d.frame(payloads) {
                    Some(f) => return Some((picture.ts, f)),
                    None => continue,
                },
                Codec::Vp8 => vp8::frame(payloads),
                Codec::Vp9(d) => d.frame(payloads),
                Codec::Av1(d) => d.frame(payloads),
            };
            match frame {
                Some(f) if f.keyframe || (picture.follows && !self.waiting) => {
                    self.waiting = false;
                    return Some((picture.ts, f));
                }
                _ => self.waiting = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc(b: &[u8]) -> Arc<[u8]> {
        Arc::from(b)
    }

    fn seqs(p: &Picture) -> Vec<u8> {
        p.payloads.iter().map(|p| p[0]).collect()
    }

    #[test]
    fn a_picture_waits_for_a_retransmitted_packet_and_comes_out_in_order() {
        let mut p = Pictures::default();
        p.push(1, 0, false, arc(&[1]));
        p.push(3, 0, true, arc(&[3]));
        p.push(4, 3000, true, arc(&[4]));
        assert!(p.poll().is_none(), "packet 2 is missing");
        p.push(2, 0, false, arc(&[2]));
        let first = p.poll().expect("the first picture");
        assert_eq!(
            (first.ts, seqs(&first), first.follows),
            (0, vec![1, 2, 3], true)
        );
        let second = p.poll().expect("the second");
        assert_eq!(
            (second.ts, seqs(&second), second.follows),
            (3000, vec![4], true)
        );
    }

    #[test]
    fn a_picture_missing_a_packet_is_given_up_once_later_ones_pile_up() {
        let mut p = Pictures::default();
        p.push(1, 0, false, arc(&[1]));
        p.push(3, 0, true, arc(&[3]));
        for i in 0..OPEN_PICTURES as u32 {
            p.push(4 + u64::from(i), 3000 * (i + 1), true, arc(&[4 + i as u8]));
        }
        let next = p.poll().expect("the first complete picture");
        assert_eq!((next.ts, next.follows), (3000, false));
        assert!(p.poll().is_some_and(|n| n.follows));
        // Its late packet is too late.
        p.push(2, 0, false, arc(&[2]));
        assert!(p.poll().is_some_and(|n| n.ts == 9000));
    }
}
