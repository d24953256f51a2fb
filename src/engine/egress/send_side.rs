//! A send-side estimate of what a viewer's link carries, from its transport-wide feedback
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01): every packet we seal for the viewer
//! carries a transport-wide number, and the viewer says when each arrived, 10–20 times a
//! second (Chromium and Firefox do once it is negotiated, and then send no REMB: a browser
//! leaves a packet that carries such a number out of its own estimate).
//!
//! How it reads the feedback (delay-based, as a congestion controller for video must be:
//! a link's queue shows long before it overflows):
//! - **The queue.** Each packet's (arrival − send) is its delay up to the two clocks'
//!   offset; the lowest over the last [`BASE_WINDOW`]s is the path with nothing queued. The
//!   queue a feedback shows is the *least* any packet it names waited past that, so one
//!   late packet's jitter (or a keyframe's own burst) is not a queue.
//! - **What arrives** ([`WINDOW_US`]): the bytes the viewer received over the last second, by
//!   its own arrival times: on a full link, what the link carries.
//! - **The estimate** goes down only when the link says it is full: [`OVERUSED_READS`]
//!   feedbacks in a row show a queue of [`QUEUED`] or more, or the feedback reports more than
//!   [`LOSS_PERCENT`] of the packets lost; it is then [`DOWN_PERCENT`] of what arrives. It
//!   goes up while nothing queues, to 1.5 times what arrives (as a browser's REMB does): a
//!   link is never said to carry much more than it was shown to (probe.rs shows it more),
//!   nor more than what arrived when it was last full (plus [`CEILING_RISES_PERCENT`] a
//!   second), until more than that arrives with no queue ([`LIFTED_PERCENT`]). In between
//!   (a small queue) it holds.

use std::collections::VecDeque;
use std::time::Duration;

/// The numbering of one viewer's packets and the estimate its feedback gives.
pub(super) struct SendSide {
    /// The id the viewer gave the transport-wide sequence number; `None`: not negotiated.
    id: Option<u8>,
    /// The next number to write.
    next: u16,
    /// (number, bytes, send time in µs since the egress clock's origin) of recent packets,
    /// at number % [`RING`]; allocated with the first packet.
    sent: Vec<(u16, u16, i64)>,
    /// The lowest delay seen in this bucket of [`BASE_WINDOW`] and the last one, µs, and
    /// when (arrival µs) this bucket began.
    base: (i64, i64, i64),
    /// The least queue the packets named in the feedback being read waited, µs, and how
    /// many it said were lost.
    least: Option<i64>,
    lost: u32,
    received: u32,
    /// (arrival µs, bytes) of what arrived over the last [`WINDOW_US`], their bytes, and
    /// the latest arrival.
    arrived: VecDeque<(i64, u16)>,
    bytes: u64,
    newest: i64,
    /// Feedbacks in a row that showed a queue.
    overused: u8,
    /// What arrived when the link last showed it was full (bits/s, and the arrival µs
    /// then): the estimate rises no higher than [`CEILING_RISES_PERCENT`] a second over it,
    /// until more arrives without a queue (a probe, or a larger layer, carried).
    ceiling: Option<(u64, i64)>,
    estimate: Option<u64>,
}

impl SendSide {
    pub(super) fn new(id: Option<u8>) -> Self {
        Self {
            id,
            next: 0,
            sent: Vec::new(),
            base: (i64::MAX, i64::MAX, i64::MIN),
            least: None,
            lost: 0,
            received: 0,
            arrived: VecDeque::new(),
            bytes: 0,
            newest: i64::MIN,
            overused: 0,
            ceiling: None,
            estimate: None,
        }
    }

    /// A packet of `len` bytes is sealed `since_origin` on the egress clock: the (extension
    /// id, number) to write on it, when the viewer negotiated it.
    pub(super) fn sent(&mut self, since_origin: Duration, len: usize) -> Option<(u8, u16)> {
        let id = self.id?;
        if self.sent.is_empty() {
            self.sent = vec![(0, 0, i64::MIN); RING];
        }
        let seq = self.next;
        self.next = seq.wrapping_add(1);
        let micros = since_origin.as_micros().min(i64::MAX as u128) as i64;
        let len = len.min(usize::from(u16::MAX)) as u16;
        self.sent[usize::from(seq) % RING] = (seq, len, micros);
        Some((id, seq))
    }

    /// A transport-wide feedback begins, on `count` packets.
    pub(super) fn feedback(&mut self, count: u16) {
        self.lost += u32::from(count);
    }

    /// The viewer's feedback says packet `seq` arrived at `at_us` (its clock, µs).
    pub(super) fn arrived(&mut self, seq: u16, at_us: i64) {
        self.lost = self.lost.saturating_sub(1);
        let Some(&(s, len, sent_us)) = self.sent.get(usize::from(seq) % RING) else {
            return;
        };
        if s != seq || sent_us == i64::MIN {
            return;
        }
        if at_us < self.newest.saturating_sub(CLOCK_JUMP_US) {
            // The viewer's clock went back: the 24-bit reference time wrapped, or an earlier
            // feedback named a time far ahead. What arrived before is on another timeline,
            // and every arrival after would be older than it: start again from this one.
            self.arrived.clear();
            self.bytes = 0;
            self.newest = i64::MIN;
            self.base = (i64::MAX, i64::MAX, i64::MIN);
            self.least = None;
        }
        self.received += 1;
        let delay = at_us.saturating_sub(sent_us);
        let (current, last, since) = &mut self.base;
        if at_us >= since.saturating_add(BASE_WINDOW_US) || at_us < *since {
            (*last, *current, *since) = (*current, delay, at_us);
        }
        *current = (*current).min(delay);
        let queue = delay.saturating_sub((*current).min(*last));
        self.least = Some(self.least.map_or(queue, |l| l.min(queue)));
        // What arrived over the last second, in the viewer's order of arrival.
        self.arrived.push_back((at_us, len));
        self.bytes += u64::from(len);
        self.newest = self.newest.max(at_us);
        while let Some(&(t, len)) = self.arrived.front()
            && (t <= self.newest.saturating_sub(WINDOW_US) || self.arrived.len() > MAX_ARRIVED)
        {
            self.arrived.pop_front();
            self.bytes -= u64::from(len);
        }
    }

    /// The end of a feedback: the estimate, once most of a second has arrived; `None` before
    /// and when the feedback named no packet of ours.
    pub(super) fn estimate(&mut self) -> Option<Estimate> {
        let least = self.least.take();
        let (lost, received) = (
            std::mem::take(&mut self.lost),
            std::mem::take(&mut self.received),
        );
        let least = least?;
        // What arrived after the oldest arrival kept, over the time since it.
        let &(oldest, len) = self.arrived.front()?;
        let span = self.newest.saturating_sub(oldest);
        if span < MIN_SPAN_US {
            return None;
        }
        let arriving = (self.bytes - u64::from(len)) * 8 * 1_000_000 / span as u64;
        self.overused = if least >= QUEUED.as_micros() as i64 {
            self.overused.saturating_add(1)
        } else {
            0
        };
        let queued = self.overused >= OVERUSED_READS;
        let lossy = u64::from(lost) * 100 > u64::from(lost + received) * LOSS_PERCENT;
        let estimate = self.estimate.unwrap_or(arriving * 3 / 2);
        let estimate = if queued || lossy {
            self.ceiling = Some((arriving, self.newest));
            estimate.min(arriving * DOWN_PERCENT / 100)
        } else if least < CLEAR.as_micros() as i64 {
            if (self.ceiling).is_some_and(|(c, _)| arriving * 100 > c * LIFTED_PERCENT) {
                self.ceiling = None;
            }
            let most = self.ceiling.map_or(u64::MAX, |(c, at)| {
                let ms = self.newest.saturating_sub(at).clamp(0, 600_000_000) as u64 / 1000;
                c + c * CEILING_RISES_PERCENT * ms / 100_000
            });
            estimate.max((arriving * 3 / 2 + 10_000).min(most))
        } else {
            estimate
        };
        self.estimate = Some(estimate);
        Some(Estimate {
            bps: estimate,
            queued,
            ours: true,
            full_bps: self.ceiling.map(|(c, _)| c),
        })
    }
}

/// What a viewer's transport-wide feedback says of its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// What it carries, bits per second.
    pub bps: u64,
    /// What it is sent queues on the way (the last [`OVERUSED_READS`] feedbacks showed a
    /// queue of [`QUEUED`] or more): more than it carries for now. One that stands for
    /// seconds on a layer is more than that layer fits (layers.rs), whatever the estimate.
    pub queued: bool,
    /// Ours (from transport-wide feedback), not a viewer's REMB: on a full link it is
    /// already [`DOWN_PERCENT`] of what arrives.
    pub ours: bool,
    /// What arrived when the link last showed it was full (bits/s): what it carries at most,
    /// until more arrives without a queue. `None`: it has not been full, or not since it
    /// carried more.
    pub full_bps: Option<u64>,
}

/// Packets whose send times are kept: ~0.7 s of a 2.5 Mb/s layer with a probe's copies on
/// it; feedback names each within a tenth of a second or two.
const RING: usize = 1024;
/// What arrives is measured over this long.
const WINDOW_US: i64 = 1_000_000;
/// No estimate before this much has arrived: a start burst (the cached keyframe and the GOP
/// since it, paced at ~40 Mb/s) is not what the link carries.
const MIN_SPAN_US: i64 = 900_000;
/// At most this many arrivals are kept for it (a bound whatever the feedback says).
const MAX_ARRIVED: usize = 4096;
/// An arrival this far before the newest one is on a new timeline of the viewer's clock: a
/// transport-wide feedback's reference time is 24 bits of 64 ms, and wraps every 12.4 days.
const CLOCK_JUMP_US: i64 = 10_000_000;
/// The lowest delay is kept over one to two of these: a path that got longer is learnt
/// within a minute, and the two clocks drift apart by at most a few milliseconds in it.
const BASE_WINDOW_US: i64 = 30_000_000;
/// A queue this long means the link is full: above the jitter of a home link and of a busy
/// machine's receiving thread, well under a home router's queue (100–500 ms), so the
/// estimate comes down before that queue overflows.
const QUEUED: Duration = Duration::from_millis(25);
/// Feedbacks in a row that must show it (each names 50–250 ms of packets).
const OVERUSED_READS: u8 = 2;
/// Under this the link is clear and the estimate may rise.
const CLEAR: Duration = Duration::from_millis(10);
/// Packets reported lost, percent, that mean the link is full.
const LOSS_PERCENT: u64 = 10;
/// More than this share (percent) of what arrived when the link was last full, arriving
/// with no queue: the link carries more now.
const LIFTED_PERCENT: u64 = 110;
/// How fast (percent a second) the estimate may rise over what arrived when the link was
/// last full: a link that showed it full once (a queue that was not the link's: a busy
/// receiver) gets the estimate that starts a probe (probe.rs) within a few seconds; one
/// that is full shows it again at its next probe, 4–8 s later, well under a layer's step.
const CEILING_RISES_PERCENT: u64 = 2;
/// A full link is estimated at this share of what arrives (percent): its queue drains.
const DOWN_PERCENT: u64 = 85;

#[cfg(test)]
mod tests;
