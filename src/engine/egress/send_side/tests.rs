use super::*;

/// A viewer's link as the feedback shows it: packets of 1,250 bytes read back every 100 ms,
/// through a link of `capacity` bits/s (0: unlimited) whose queue they wait in; `extra_ms(i)`
/// is how much longer packet `i` took besides (jitter, a longer path), `None` lost.
struct Link {
    side: SendSide,
    sent: usize,
    /// Our clock, ms.
    ms: u64,
    capacity: u64,
    /// When the link is done with what it was given, µs on our clock.
    busy_us: i64,
    /// How far the viewer's clock is ahead of ours, µs.
    clock_us: i64,
}

impl Link {
    fn new() -> Self {
        Self {
            side: SendSide::new(Some(5)),
            sent: 0,
            ms: 0,
            capacity: 0,
            busy_us: 0,
            clock_us: 5_000_000,
        }
    }

    /// Sends the next 10 packets over a tenth of a second (1 Mb/s) and reads their
    /// feedback: the estimate it gave.
    fn tenth(&mut self, extra_ms: impl Fn(usize) -> Option<i64>) -> Option<u64> {
        self.tenth_of(10, extra_ms)
    }

    /// The same with `n` packets in the tenth.
    fn tenth_of(&mut self, n: u64, extra_ms: impl Fn(usize) -> Option<i64>) -> Option<u64> {
        self.read(n, extra_ms).map(|e| e.bps)
    }

    fn read(&mut self, n: u64, extra_ms: impl Fn(usize) -> Option<i64>) -> Option<Estimate> {
        let mut numbers = Vec::new();
        for k in 0..n {
            let ms = self.ms + k * 100 / n;
            let at = Duration::from_millis(ms);
            let seq = self.side.sent(at, 1250 - OVERHEAD_IN_TEST).unwrap().1;
            let mut out_us = ms as i64 * 1000;
            if let Some(each_us) = (1250 * 8 * 1_000_000u64).checked_div(self.capacity) {
                out_us = out_us.max(self.busy_us) + each_us as i64;
                self.busy_us = out_us;
            }
            numbers.push((self.sent, out_us, seq));
            self.sent += 1;
        }
        self.ms += 100;
        self.side.feedback(n as u16);
        for (i, out_us, seq) in numbers {
            // The viewer's clock is `clock_us` ahead of ours; the path takes 20 ms.
            if let Some(extra) = extra_ms(i) {
                let at_us = self.clock_us + out_us + (20 + extra) * 1000;
                self.side.arrived(seq, at_us);
            }
        }
        self.side.estimate()
    }
}

/// The tests count whole packets' bytes.
const OVERHEAD_IN_TEST: usize = 0;

#[test]
fn every_packet_is_numbered_in_one_sequence_when_the_viewer_negotiated_it() {
    let mut side = SendSide::new(Some(7));
    let got: Vec<_> = (0..3)
        .map(|i| side.sent(Duration::from_millis(i), 100))
        .collect();
    assert_eq!(got, [Some((7, 0)), Some((7, 1)), Some((7, 2))]);
    side.next = u16::MAX;
    assert_eq!(side.sent(Duration::ZERO, 100), Some((7, u16::MAX)));
    assert_eq!(side.sent(Duration::ZERO, 100), Some((7, 0)), "it wraps");
    assert_eq!(SendSide::new(None).sent(Duration::ZERO, 100), None);
}

#[test]
fn a_clear_link_is_estimated_at_one_and_a_half_times_what_arrives_and_never_falls_by_itself() {
    let mut link = Link::new();
    for _ in 0..9 {
        assert_eq!(link.tenth(|_| Some(0)), None, "most of a second first");
    }
    let mut last = 0;
    for _ in 0..20 {
        last = link.tenth(|_| Some(0)).unwrap();
    }
    assert_eq!(last, 1_510_000, "1 Mb/s arrives");
    // Less is sent (a smaller layer): the link still carries what it did.
    for _ in 0..20 {
        let sparse = link.tenth_of(5, |_| Some(0));
        assert_eq!(sparse, Some(1_510_000));
    }
}

#[test]
fn jitter_is_no_queue() {
    let mut link = Link::new();
    for _ in 0..20 {
        link.tenth(|_| Some(0));
    }
    // One packet late, then a whole feedback late once (a keyframe's burst).
    assert_eq!(
        link.tenth(|i| Some(if i % 10 == 3 { 80 } else { 0 })),
        Some(1_510_000)
    );
    let once = link.read(10, |_| Some(40)).unwrap();
    assert_eq!((once.bps, once.queued), (1_510_000, false));
    assert_eq!(link.tenth(|_| Some(0)), Some(1_510_000));
}

#[test]
fn a_link_sent_more_than_it_carries_is_estimated_at_what_arrives_until_it_carries_more() {
    let mut link = Link::new();
    link.capacity = 1_000_000;
    for _ in 0..20 {
        assert!(!link.read(9, |_| Some(0)).is_some_and(|e| e.queued));
    }
    // 1.2 Mb/s: 20 ms more queue each tenth; the second feedback over 25 ms brings the
    // estimate down to 85 % of what arrives.
    let reads: Vec<Estimate> = (0..4)
        .map(|_| link.read(12, |_| Some(0)).unwrap())
        .collect();
    let queued: Vec<bool> = reads.iter().map(|e| e.queued).collect();
    assert_eq!(queued, [false, false, false, true], "{reads:?}");
    let down = reads[3].bps;
    assert!((800_000..=850_000).contains(&down), "{down}");
    // Less is sent: the queue drains, the estimate rises to what arrived when the link was
    // full, then by 2 % a second.
    for _ in 0..5 {
        link.tenth_of(8, |_| Some(0));
    }
    let at_ceiling = link.tenth_of(8, |_| Some(0)).unwrap();
    assert!((950_000..1_030_000).contains(&at_ceiling), "{at_ceiling}");
    for _ in 0..50 {
        link.tenth_of(9, |_| Some(0));
    }
    let later = link.tenth_of(9, |_| Some(0)).unwrap();
    let rose = later as f64 / at_ceiling as f64;
    assert!(
        (1.09..1.13).contains(&rose),
        "5 s later: {later} ({rose:.3})"
    );
    // The link carries more now (a probe of 1.2 Mb/s, no queue): the ceiling is gone.
    link.capacity = 2_000_000;
    for _ in 0..10 {
        link.tenth_of(12, |_| Some(0));
    }
    assert!(link.tenth_of(12, |_| Some(0)).unwrap() > 1_700_000);
}

#[test]
fn losing_more_than_a_tenth_of_the_packets_brings_the_estimate_down() {
    let mut link = Link::new();
    for _ in 0..20 {
        link.tenth(|_| Some(0));
    }
    assert_eq!(link.tenth(|i| (i % 10 != 0).then_some(0)), Some(1_510_000));
    let lossy = link.tenth(|i| (i % 10 > 1).then_some(0)).unwrap();
    assert!(lossy < 1_000_000, "2 of 10 lost: {lossy}");
}

#[test]
fn the_path_with_nothing_queued_is_the_least_delay_of_the_last_half_minute_or_so() {
    let mut link = Link::new();
    for _ in 0..20 {
        link.tenth(|_| Some(0));
    }
    // The path gets 50 ms longer: a queue at first, the new path within a minute.
    link.tenth(|_| Some(50));
    assert!(link.tenth(|_| Some(50)) < Some(1_000_000));
    let mut queued = 0;
    for _ in 0..600 {
        if link.tenth(|_| Some(50)) < Some(1_000_000) {
            queued += 1;
        }
    }
    assert!((200..600).contains(&queued), "{queued} tenths");
    // And from there up again, by 2 % a second (what arrived is all it showed carried).
    let back = (0..400).position(|_| link.tenth(|_| Some(50)) == Some(1_510_000));
    assert!(back.is_some_and(|t| t > 150), "{back:?} tenths");
}

#[test]
fn feedback_on_packets_never_sent_or_garbage_gives_no_estimate_and_no_panic() {
    let mut side = SendSide::new(Some(1));
    side.feedback(u16::MAX);
    for seq in [0, 1, 500, u16::MAX] {
        side.arrived(seq, i64::MAX);
        side.arrived(seq, i64::MIN);
    }
    assert_eq!(side.estimate(), None);
    side.sent(Duration::ZERO, 1000);
    side.arrived(0, i64::MIN);
    side.arrived(0, i64::MAX);
    side.arrived(0, 0);
    let _ = side.estimate();
}

/// A transport-wide feedback's reference time wraps (24 bits of 64 ms, every 12.4 days of
/// the viewer's clock), so its arrival times go back by that much; and a feedback may name
/// a time far ahead. Neither leaves the estimate wrong: before, the arrivals of the last
/// second before the wrap stayed first in the window, and what arrived after it was added
/// on, second after second (an estimate rising without bound); after a time far ahead,
/// every later arrival read as old, and there was no estimate for the rest of the session.
#[test]
fn the_estimate_goes_on_when_the_viewers_clock_goes_back() {
    const WRAP_US: i64 = (1 << 24) * 64_000;
    // 1 Mb/s arrives, and the estimate is 1.5 times that (nothing queues).
    let fits = |e: &Option<u64>| e.is_some_and(|bps| (1_000_000..=2_000_000).contains(&bps));
    let mut link = Link::new();
    link.clock_us = WRAP_US - 3_000_000;
    let before: Vec<_> = (0..30).map(|_| link.tenth(|_| Some(0))).collect();
    assert!(before[10..].iter().all(fits), "{before:?}");
    link.clock_us -= WRAP_US;
    let after: Vec<_> = (0..30).map(|_| link.tenth(|_| Some(0))).collect();
    assert!(
        after[10..].iter().all(fits),
        "the estimate as before within a second of the wrap: {after:?}"
    );

    // One feedback names a time an hour ahead; the next ones are on time again.
    let mut link = Link::new();
    for _ in 0..20 {
        link.tenth(|_| Some(0));
    }
    link.clock_us += 3_600_000_000;
    link.tenth(|_| Some(0));
    link.clock_us -= 3_600_000_000;
    let after: Vec<_> = (0..30).map(|_| link.tenth(|_| Some(0))).collect();
    assert!(
        after[10..].iter().all(fits),
        "the estimate as before after one far ahead: {after:?}"
    );
}
