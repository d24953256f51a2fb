//! Transport-wide feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1): which
//! numbered packets arrived, and when, on the receiver's clock.
//!
//! Read by us, not str0m: str0m 0.25's reader panics on some deltas (fuzz/README.md), and
//! this one is walked once, in time linear in its bytes (a run of 8,191 lost packets costs
//! one step), whatever the packet claims.

use super::Feedback;

/// Calls `f` with [`Feedback::TransportWide`] (how many packets it is on), then an [`Feedback::Arrival`] for every packet
/// the feedback `packet` (a whole RTPFB FMT 15 packet) says arrived. Malformed feedback ends
/// the walk; what was read before stands.
pub(super) fn read(packet: &[u8], mut f: impl FnMut(Feedback)) {
    if packet.len() < FIXED {
        return;
    }
    let base = u16::from_be_bytes([packet[12], packet[13]]);
    let count = u16::from_be_bytes([packet[14], packet[15]]);
    f(Feedback::TransportWide { count });
    let count = usize::from(count);
    let reference = i64::from(u32::from_be_bytes([0, packet[16], packet[17], packet[18]]));
    let chunks = &packet[FIXED..];
    // The chunks first (how many bytes they take), then the deltas that follow them.
    let Some(chunk_bytes) = walk(chunks, count, |_, _| true) else {
        return;
    };
    let mut deltas = &chunks[chunk_bytes..];
    let mut at_us = reference * REFERENCE_US;
    walk(chunks, count, |index, symbol| {
        let delta = match symbol {
            SMALL => deltas.first().map(|&d| (i64::from(d), 1)),
            LARGE => deltas
                .get(..2)
                .map(|d| (i64::from(i16::from_be_bytes([d[0], d[1]])), 2)),
            _ => return true, // not received: no delta
        };
        let Some((delta, len)) = delta else {
            return false;
        };
        deltas = &deltas[len..];
        at_us += delta * DELTA_US;
        f(Feedback::Arrival {
            seq: base.wrapping_add(index as u16),
            at_us,
        });
        true
    });
}

/// Walks the status of `count` packets in `chunks`, calling `f(index, symbol)` for each
/// packet that has one to say besides "not received" (runs of those are skipped whole), until
/// `f` returns false. Returns the bytes the chunks took, or `None` when they end too soon or
/// say something reserved.
fn walk(chunks: &[u8], count: usize, mut f: impl FnMut(usize, u8) -> bool) -> Option<usize> {
    let mut index = 0;
    let mut used = 0;
    while index < count {
        let chunk = chunks.get(used..used + 2)?;
        used += 2;
        let chunk = u16::from_be_bytes([chunk[0], chunk[1]]);
        if chunk & 0x8000 == 0 {
            // Run length: a 2-bit symbol, 13 bits of run.
            let symbol = (chunk >> 13 & 3) as u8;
            let run = usize::from(chunk & 0x1fff).min(count - index);
            if symbol == RESERVED {
                return None;
            }
            if symbol != NOT_RECEIVED {
                for i in index..index + run {
                    if !f(i, symbol) {
                        return Some(used);
                    }
                }
            }
            index += run;
        } else {
            // Status vector: fourteen 1-bit symbols, or seven 2-bit ones.
            let (bits, n) = if chunk & 0x4000 == 0 { (1, 14) } else { (2, 7) };
            for k in 0..n.min(count - index) {
                let symbol = (chunk >> (14 - bits * (k + 1)) & ((1 << bits) - 1)) as u8;
                if symbol == RESERVED {
                    return None;
                }
                if symbol != NOT_RECEIVED && !f(index + k, symbol) {
                    return Some(used);
                }
            }
            index += n.min(count - index);
        }
    }
    Some(used)
}

/// The common header, sender and media SSRC, base number, count, reference time and
/// feedback count.
const FIXED: usize = 20;
const NOT_RECEIVED: u8 = 0;
/// Received, with a one-byte delta (0–63.75 ms).
const SMALL: u8 = 1;
/// Received, with a two-byte signed delta.
const LARGE: u8 = 2;
const RESERVED: u8 = 3;
/// The reference time's unit (64 ms) and the deltas' (250 µs), in µs.
const REFERENCE_US: i64 = 64_000;
const DELTA_US: i64 = 250;

#[cfg(test)]
mod tests {
    use super::*;

    fn feedback(base: u16, count: u16, reference: u32, body: &[u8]) -> Vec<u8> {
        let words = (FIXED + body.len()).div_ceil(4) - 1;
        let mut p = vec![0x8f, 205, 0, words as u8, 0, 0, 0, 1, 0, 0, 0, 9];
        p.extend_from_slice(&base.to_be_bytes());
        p.extend_from_slice(&count.to_be_bytes());
        p.extend_from_slice(&reference.to_be_bytes()[1..]);
        p.push(0);
        p.extend_from_slice(body);
        p.resize((words + 1) * 4, 0);
        p
    }

    fn arrivals(packet: &[u8]) -> Vec<(u16, i64)> {
        let mut got = Vec::new();
        read(packet, |f| {
            if let Feedback::Arrival { seq, at_us } = f {
                got.push((seq, at_us));
            }
        });
        got
    }

    #[test]
    fn a_run_of_small_deltas_gives_each_arrival_from_the_reference_time() {
        // Packets 65534, 65535, 0: all received (run of 3, symbol 1), deltas 4, 8, 4
        // (1, 2, 1 ms) after reference 2 (128 ms).
        let p = feedback(65534, 3, 2, &[0x20, 0x03, 4, 8, 4]);
        assert_eq!(
            arrivals(&p),
            [(65534, 129_000), (65535, 131_000), (0, 132_000)]
        );
    }

    #[test]
    fn status_vectors_skip_lost_packets_and_read_large_and_negative_deltas() {
        // Seven 2-bit symbols: received small, not received, received large, then 4 lost;
        // then a 1-bit vector for 3 more: received, lost, received.
        let two_bit: u16 = 0xc000 | 0b01_00_10_00_00_00_00;
        // Fourteen 1-bit symbols: 1, 0, 1, then 0s.
        let one_bit: u16 = 0x8000 | 0b10_1000_0000_0000;
        let mut body = two_bit.to_be_bytes().to_vec();
        body.extend_from_slice(&one_bit.to_be_bytes());
        body.push(40); // +10 ms
        body.extend_from_slice(&(-20i16).to_be_bytes()); // −5 ms
        body.extend_from_slice(&[4, 8]);
        let p = feedback(100, 10, 0, &body);
        assert_eq!(
            arrivals(&p),
            [(100, 10_000), (102, 5_000), (107, 6_000), (109, 8_000)]
        );
    }

    #[test]
    fn a_huge_run_of_lost_packets_is_one_step_and_missing_deltas_end_the_walk() {
        // 57,337 lost in 7 runs of 8,191, then a run of 100 received with only 4 deltas.
        let mut body = Vec::new();
        for _ in 0..7 {
            body.extend_from_slice(&0x1fffu16.to_be_bytes());
        }
        body.extend_from_slice(&(0x2000u16 | 100).to_be_bytes());
        body.extend_from_slice(&[4, 4, 4, 4]);
        let p = feedback(0, 57_437, 0, &body);
        let got = arrivals(&p);
        assert_eq!(
            got,
            [
                (57_337, 1_000),
                (57_338, 2_000),
                (57_339, 3_000),
                (57_340, 4_000)
            ]
        );
        // The same chunks claiming 65,535 packets end too soon: nothing.
        assert_eq!(arrivals(&feedback(0, u16::MAX, 0, &body)), []);
        assert_eq!(arrivals(&feedback(0, 50, 0, &[0x20, 0x03])), []);
        // A reserved symbol: nothing.
        assert_eq!(arrivals(&feedback(0, 3, 0, &[0x60, 0x03, 4, 4, 4])), []);
        let mut heard = 0;
        read(&feedback(0, 3, 0, &[0x20, 0x03])[..12], |_| heard += 1);
        assert_eq!(heard, 0, "too short to be feedback");
    }
}
