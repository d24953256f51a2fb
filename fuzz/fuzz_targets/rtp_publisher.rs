//! A connected publisher's RTP, after DTLS: packets built from the input (any payload type
//! and SSRC, CSRCs, one- and two-byte header extensions, H.264 single NAL units, STAP-A and
//! FU-A, SPSs, padding, sequence and timestamp jumps), sealed with the publisher's own SRTP
//! keys and delivered from its address, so they take the path OBS's packets take: demux,
//! str0m's SRTP and RTP parsing, the router (keyframe and SPS detection, GOP cache), the
//! rewrite and seal for the connected viewer. A few publisher RTCP packets ride along.

#![no_main]

#[path = "../../tests/common/sim.rs"]
#[allow(dead_code)]
mod sim;
#[path = "common/world.rs"]
#[allow(dead_code)]
mod world;

use std::cell::RefCell;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

use world::World;

#[derive(Arbitrary, Debug)]
struct Input {
    packets: Vec<Packet>,
    /// Virtual milliseconds after the packets (timers, the viewer's feedback).
    settle_ms: u8,
}

#[derive(Arbitrary, Debug)]
struct Packet {
    stream: Stream,
    pt: Pt,
    marker: bool,
    seq: Step,
    timestamp: TsStep,
    csrcs: u8,
    extension: Option<Extension>,
    payload: Payload,
    padding: u8,
}

#[derive(Arbitrary, Debug)]
enum Stream {
    Video,
    Audio,
    Other(u32),
}

#[derive(Arbitrary, Debug)]
enum Pt {
    H264,
    Opus,
    Any(u8),
}

/// How the extended sequence number moves from the stream's last packet.
#[derive(Arbitrary, Debug)]
enum Step {
    Next,
    Same,
    Small(i8),
    Jump(i16),
    Far(i32),
}

#[derive(Arbitrary, Debug)]
enum TsStep {
    Same,
    Frame,
    Delta(i32),
    Absolute(u32),
}

#[derive(Arbitrary, Debug)]
enum Extension {
    /// RFC 8285 one-byte elements (id 1–14; 15 stops parsing).
    OneByte(Vec<(u8, Vec<u8>)>),
    /// RFC 8285 two-byte elements.
    TwoByte(Vec<(u8, Vec<u8>)>),
    /// Any profile and bytes (length in words computed).
    Raw(u16, Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Raw(Vec<u8>),
    /// One NAL unit: its header byte, then the body.
    Nal(u8, Vec<u8>),
    StapA(Vec<(u8, Vec<u8>)>),
    FuA {
        start: bool,
        end: bool,
        nal: u8,
        body: Vec<u8>,
    },
    /// An SPS from parts: profile, constraint flags, level, then the rest of the RBSP.
    Sps {
        profile: u8,
        constraints: u8,
        level: u8,
        rest: Vec<u8>,
        in_stap: bool,
    },
    /// An IDR slice alone (a keyframe without parameter sets).
    Idr(Vec<u8>),
}

fn header(w: &mut World, p: &Packet) -> (Vec<u8>, usize, u32) {
    let ssrc = match p.stream {
        Stream::Video => w.publisher_ssrcs[0],
        Stream::Audio => w.publisher_ssrcs[w.publisher_ssrcs.len() - 1],
        Stream::Other(s) => s,
    };
    let pt = match p.pt {
        Pt::H264 => 96,
        Pt::Opus => 111,
        Pt::Any(pt) => pt & 0x7f,
    };
    let last = w.last_ts.entry(ssrc).or_insert(90_000);
    *last = match p.timestamp {
        TsStep::Same => *last,
        TsStep::Frame => last.wrapping_add(3000),
        TsStep::Delta(d) => last.wrapping_add_signed(d),
        TsStep::Absolute(t) => t,
    };
    let cc = p.csrcs % 16;
    let mut b = vec![0x80 | (p.padding > 0) as u8 * 0x20 | (p.extension.is_some() as u8) << 4 | cc];
    b.push(pt | (p.marker as u8) << 7);
    b.extend_from_slice(&[0, 0]); // the sequence number: World::publisher_rtp writes it
    b.extend_from_slice(&last.to_be_bytes());
    b.extend_from_slice(&ssrc.to_be_bytes());
    for i in 0..cc as u32 {
        b.extend_from_slice(&(0x1000 + i).to_be_bytes());
    }
    if let Some(ext) = &p.extension {
        let (profile, mut body) = match ext {
            Extension::OneByte(elems) => {
                let mut body = Vec::new();
                for (id, v) in elems.iter().take(16) {
                    let v = &v[..v.len().min(16)];
                    if v.is_empty() {
                        body.push(0);
                        continue;
                    }
                    body.push((id % 16) << 4 | (v.len() as u8 - 1));
                    body.extend_from_slice(v);
                }
                (0xBEDE, body)
            }
            Extension::TwoByte(elems) => {
                let mut body = Vec::new();
                for (id, v) in elems.iter().take(16) {
                    let v = &v[..v.len().min(255)];
                    body.push(*id);
                    body.push(v.len() as u8);
                    body.extend_from_slice(v);
                }
                (0x1000, body)
            }
            Extension::Raw(profile, body) => (*profile, body[..body.len().min(1024)].to_vec()),
        };
        while body.len() % 4 != 0 {
            body.push(0);
        }
        b.extend_from_slice(&profile.to_be_bytes());
        b.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
        b.append(&mut body);
    }
    let header_len = b.len();
    (b, header_len, ssrc)
}

fn payload(p: &Payload, out: &mut Vec<u8>) {
    match p {
        Payload::Raw(v) => out.extend_from_slice(v),
        Payload::Nal(h, body) => {
            out.push(*h);
            out.extend_from_slice(body);
        }
        Payload::StapA(nals) => {
            out.push(0x18);
            for (h, body) in nals {
                let len = (body.len() + 1).min(u16::MAX as usize);
                out.extend_from_slice(&(len as u16).to_be_bytes());
                out.push(*h);
                out.extend_from_slice(&body[..len - 1]);
            }
        }
        Payload::FuA {
            start,
            end,
            nal,
            body,
        } => {
            out.push(0x60 | 28);
            out.push((*start as u8) << 7 | (*end as u8) << 6 | (nal & 0x1f));
            out.extend_from_slice(body);
        }
        Payload::Sps {
            profile,
            constraints,
            level,
            rest,
            in_stap,
        } => {
            let mut sps = vec![0x67, *profile, *constraints, *level];
            sps.extend_from_slice(rest);
            if *in_stap {
                out.push(0x18);
                out.extend_from_slice(&(sps.len() as u16).to_be_bytes());
                out.extend_from_slice(&sps);
                out.extend_from_slice(&[0, 4, 0x68, 0xce, 0x3c, 0x80]);
                out.extend_from_slice(&[0, 2, 0x65, 0x88]);
            } else {
                out.extend_from_slice(&sps);
            }
        }
        Payload::Idr(body) => {
            out.push(0x65);
            out.extend_from_slice(body);
        }
    }
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fuzz_target!(|input: Input| {
    WORLD.with(|w| {
        let mut w = w.borrow_mut();
        let w = w.get_or_insert_with(World::new);
        // At most 8 packets an input: more only make each execution longer.
        for p in input.packets.iter().take(8) {
            let (mut rtp, header_len, _) = header(w, p);
            payload(&p.payload, &mut rtp);
            if p.padding > 0 {
                rtp.extend(std::iter::repeat_n(0, p.padding as usize - 1));
                rtp.push(p.padding);
            }
            rtp.truncate(1500);
            let step = match p.seq {
                Step::Next => 1,
                Step::Same => 0,
                Step::Small(d) => d as i32,
                Step::Jump(d) => d as i32,
                Step::Far(d) => d,
            };
            w.publisher_rtp(rtp, header_len, step);
        }
        w.settle(input.settle_ms as u64 % 50);
    });
});
