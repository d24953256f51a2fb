//! A connected viewer's compound RTCP, after DTLS: SR, RR, SDES, BYE, APP, NACK, transport-cc,
//! PLI, FIR, REMB, XR and any other packet type, with lengths right or wrong, sealed with the
//! viewer's own SRTCP keys and delivered from its address, so it is opened and read by the
//! engine's own RTCP readers (`engine/feedback.rs`, `egress/repair.rs`): NACKed packets
//! resent, keyframe requests throttled to the publisher, REMB and round trips fed to layer
//! choice and probing (a report block can name the last SR the server really sent the
//! viewer, so the round trip is read), transport-wide feedback into the send-side estimate
//! (its first number can be one of the last the server really sent the viewer). Some compounds come from the publisher instead (str0m's RTCP
//! handling, the engine's BYE reader, `engine/bye.rs`). NACKs can name the sequence numbers
//! the viewer really just received, so they find packets to resend.

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
    compounds: Vec<Compound>,
    /// Virtual milliseconds after the packets (timers, resends, reports).
    settle_ms: u8,
}

#[derive(Arbitrary, Debug)]
struct Compound {
    from: From,
    packets: Vec<Rtcp>,
}

#[derive(Arbitrary, Debug)]
enum From {
    Viewer,
    Viewer2,
    Viewer3,
    Publisher,
}

/// An SSRC: one of the sending side's streams (the server's towards the viewer, or the
/// publisher's own), or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sel {
    Media(u8),
    Any(u32),
}

/// A sequence number: one the viewer received just now (minus a little), or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Seq {
    Recent(Sel, u8),
    Any(u16),
}

/// A transport-wide feedback's first number: one of the last 256 the server numbered the
/// viewer's packets with (so the send-side estimate finds the packets it names), or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Base {
    Recent(u8),
    Any(u16),
}

#[derive(Arbitrary, Debug)]
struct Block {
    ssrc: Sel,
    fraction_lost: u8,
    lost: u32,
    highest: u32,
    jitter: u32,
    report: Report,
}

/// What a report block says of the sender's last SR (LSR, DLSR).
#[derive(Arbitrary, Debug)]
enum Report {
    /// The last SR the server really sent this viewer, held this long (1/65536 s, so up to
    /// a second): a round trip the engine can read.
    LastSr(u16),
    Any {
        lsr: u32,
        dlsr: u32,
    },
}

#[derive(Arbitrary, Debug)]
enum Rtcp {
    Sr {
        sender: Sel,
        ntp: u64,
        rtp: u32,
        packets: u32,
        octets: u32,
        blocks: Vec<Block>,
    },
    Rr {
        sender: Sel,
        blocks: Vec<Block>,
    },
    Sdes(u8, Vec<u8>),
    Bye {
        ssrcs: Vec<Sel>,
        reason: Option<Vec<u8>>,
    },
    App(u8, Vec<u8>),
    Nack {
        sender: Sel,
        media: Sel,
        lost: Vec<(Seq, u16)>,
    },
    Twcc {
        sender: Sel,
        media: Sel,
        base: Base,
        count: u16,
        reference: u32,
        fb: u8,
        chunks: Vec<u16>,
        deltas: Vec<u8>,
    },
    Pli {
        sender: Sel,
        media: Sel,
    },
    Fir {
        sender: Sel,
        entries: Vec<(Sel, u8)>,
    },
    Remb {
        sender: Sel,
        exp: u8,
        mantissa: u32,
        ssrcs: Vec<Sel>,
    },
    /// Any transport (205) or payload-specific (206) feedback message.
    Feedback {
        payload_specific: bool,
        fmt: u8,
        sender: Sel,
        media: Sel,
        fci: Vec<u8>,
    },
    Xr(Vec<u8>),
    /// Any packet type and count, length field computed.
    Raw {
        first: u8,
        pt: u8,
        body: Vec<u8>,
    },
    /// Bytes as they are: length fields that lie, truncated packets.
    Bytes(Vec<u8>),
}

struct Ctx<'a> {
    publisher: bool,
    ssrcs: &'a [u32],
    seqs: &'a std::collections::HashMap<u32, u16>,
    /// The newest transport-wide number the server sent the viewer (world.rs).
    transport_wide: Option<u16>,
    /// The LSR of the last SR the server sent the viewer (world.rs).
    last_sr: Option<u32>,
}

impl Ctx<'_> {
    fn ssrc(&self, s: Sel) -> u32 {
        match s {
            Sel::Media(i) if !self.ssrcs.is_empty() => self.ssrcs[i as usize % self.ssrcs.len()],
            Sel::Media(i) => i as u32,
            Sel::Any(x) => x,
        }
    }

    /// An SSRC in a BYE. From the publisher, never its last media SSRC: a BYE for all of
    /// them ends the broadcast (tests/engine_liveness.rs
    /// `rtcp_bye_for_every_source_of_a_publisher_is_a_hang_up`), and building the world
    /// again costs about 40 ms, a few hundred executions; the BYE reader is reached all the
    /// same.
    fn bye_ssrc(&self, s: Sel) -> u32 {
        let ssrc = self.ssrc(s);
        if self.publisher && ssrc == self.ssrcs[self.ssrcs.len() - 1] {
            ssrc ^ 1
        } else {
            ssrc
        }
    }

    fn seq(&self, s: Seq) -> u16 {
        match s {
            Seq::Recent(ssrc, back) => {
                let last = self.seqs.get(&self.ssrc(ssrc)).copied().unwrap_or(0);
                last.wrapping_sub(back as u16 % 64)
            }
            Seq::Any(x) => x,
        }
    }

    fn base(&self, b: Base) -> u16 {
        match b {
            Base::Recent(back) => self.transport_wide.unwrap_or(0).wrapping_sub(back.into()),
            Base::Any(x) => x,
        }
    }
}

/// Appends one RTCP packet: the common header (count or FMT, type, length) and the body,
/// padded to 32 bits.
fn packet(out: &mut Vec<u8>, count: u8, pt: u8, body: &[u8]) {
    let words = body.len().div_ceil(4);
    out.push(0x80 | (count & 0x1f));
    out.push(pt);
    out.extend_from_slice(&(words as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.extend(std::iter::repeat_n(0, words * 4 - body.len()));
}

fn blocks(c: &Ctx, body: &mut Vec<u8>, blocks: &[Block]) {
    for b in blocks {
        body.extend_from_slice(&c.ssrc(b.ssrc).to_be_bytes());
        body.push(b.fraction_lost);
        body.extend_from_slice(&b.lost.to_be_bytes()[1..]);
        let (lsr, dlsr) = match b.report {
            Report::LastSr(held) => (c.last_sr.unwrap_or(0), u32::from(held)),
            Report::Any { lsr, dlsr } => (lsr, dlsr),
        };
        for v in [b.highest, b.jitter, lsr, dlsr] {
            body.extend_from_slice(&v.to_be_bytes());
        }
    }
}

fn write(c: &Ctx, p: &Rtcp, out: &mut Vec<u8>) {
    let be = |v: u32| v.to_be_bytes();
    match p {
        Rtcp::Sr {
            sender,
            ntp,
            rtp,
            packets,
            octets,
            blocks: bs,
        } => {
            let bs = &bs[..bs.len().min(31)];
            let mut body = be(c.ssrc(*sender)).to_vec();
            body.extend_from_slice(&ntp.to_be_bytes());
            for v in [*rtp, *packets, *octets] {
                body.extend_from_slice(&be(v));
            }
            blocks(c, &mut body, bs);
            packet(out, bs.len() as u8, 200, &body);
        }
        Rtcp::Rr { sender, blocks: bs } => {
            let bs = &bs[..bs.len().min(31)];
            let mut body = be(c.ssrc(*sender)).to_vec();
            blocks(c, &mut body, bs);
            packet(out, bs.len() as u8, 201, &body);
        }
        Rtcp::Sdes(count, body) => packet(out, *count, 202, body),
        Rtcp::Bye { ssrcs, reason } => {
            let ssrcs = &ssrcs[..ssrcs.len().min(31)];
            let mut body: Vec<u8> = ssrcs.iter().flat_map(|s| be(c.bye_ssrc(*s))).collect();
            if let Some(r) = reason {
                let r = &r[..r.len().min(255)];
                body.push(r.len() as u8);
                body.extend_from_slice(r);
            }
            packet(out, ssrcs.len() as u8, 203, &body);
        }
        Rtcp::App(sub, body) => packet(out, *sub, 204, body),
        Rtcp::Nack {
            sender,
            media,
            lost,
        } => {
            let mut body = be(c.ssrc(*sender)).to_vec();
            body.extend_from_slice(&be(c.ssrc(*media)));
            for (pid, blp) in lost {
                body.extend_from_slice(&c.seq(*pid).to_be_bytes());
                body.extend_from_slice(&blp.to_be_bytes());
            }
            packet(out, 1, 205, &body);
        }
        Rtcp::Twcc {
            sender,
            media,
            base,
            count,
            reference,
            fb,
            chunks,
            deltas,
        } => {
            let mut body = be(c.ssrc(*sender)).to_vec();
            body.extend_from_slice(&be(c.ssrc(*media)));
            body.extend_from_slice(&c.base(*base).to_be_bytes());
            body.extend_from_slice(&count.to_be_bytes());
            body.extend_from_slice(&reference.to_be_bytes()[1..]);
            body.push(*fb);
            for ch in chunks {
                body.extend_from_slice(&ch.to_be_bytes());
            }
            body.extend_from_slice(deltas);
            packet(out, 15, 205, &body);
        }
        Rtcp::Pli { sender, media } => {
            let mut body = be(c.ssrc(*sender)).to_vec();
            body.extend_from_slice(&be(c.ssrc(*media)));
            packet(out, 1, 206, &body);
        }
        Rtcp::Fir { sender, entries } => {
            let mut body = be(c.ssrc(*sender)).to_vec();
            body.extend_from_slice(&[0; 4]);
            for (ssrc, seq) in entries {
                body.extend_from_slice(&be(c.ssrc(*ssrc)));
                body.extend_from_slice(&[*seq, 0, 0, 0]);
            }
            packet(out, 4, 206, &body);
        }
        Rtcp::Remb {
            sender,
            exp,
            mantissa,
            ssrcs,
        } => {
            let ssrcs = &ssrcs[..ssrcs.len().min(255)];
            let mut body = be(c.ssrc(*sender)).to_vec();
            body.extend_from_slice(&[0; 4]);
            body.extend_from_slice(b"REMB");
            body.push(ssrcs.len() as u8);
            let v = ((*exp as u32 & 0x3f) << 18) | (mantissa & 0x3ffff);
            body.extend_from_slice(&v.to_be_bytes()[1..]);
            for s in ssrcs {
                body.extend_from_slice(&be(c.ssrc(*s)));
            }
            packet(out, 15, 206, &body);
        }
        Rtcp::Feedback {
            payload_specific,
            fmt,
            sender,
            media,
            fci,
        } => {
            let mut body = be(c.ssrc(*sender)).to_vec();
            body.extend_from_slice(&be(c.ssrc(*media)));
            body.extend_from_slice(fci);
            packet(out, *fmt, if *payload_specific { 206 } else { 205 }, &body);
        }
        Rtcp::Xr(body) => packet(out, 0, 207, body),
        Rtcp::Raw { first, pt, body } => {
            let words = body.len().div_ceil(4);
            out.push(*first);
            out.push(*pt);
            out.extend_from_slice(&(words as u16).to_be_bytes());
            out.extend_from_slice(body);
            out.extend(std::iter::repeat_n(0, words * 4 - body.len()));
        }
        Rtcp::Bytes(b) => out.extend_from_slice(b),
    }
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fuzz_target!(|input: Input| {
    WORLD.with(|w| {
        let mut w = w.borrow_mut();
        let w = w.get_or_insert_with(World::simulcast);
        // At most 8 datagrams an input: more only make each execution longer.
        for compound in input.compounds.iter().take(8) {
            let publisher = matches!(compound.from, From::Publisher);
            let ctx = Ctx {
                publisher,
                ssrcs: if publisher {
                    &w.publisher_ssrcs
                } else {
                    &w.viewer_ssrcs
                },
                seqs: &w.viewer_seq,
                transport_wide: w.viewer_transport_wide,
                last_sr: w.viewer_sr,
            };
            let mut rtcp = Vec::new();
            for p in compound.packets.iter().take(16) {
                write(&ctx, p, &mut rtcp);
            }
            rtcp.truncate(1400);
            w.rtcp(publisher, rtcp);
        }
        w.settle(input.settle_ms as u64 % 50);
    });
});
