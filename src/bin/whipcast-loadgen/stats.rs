//! What the load generator measures: per-SSRC sequence tracking (distinct packets delivered,
//! duplicates) from clear RTP headers, per-viewer counters shared with the main task through
//! atomics, percentiles, and the server's (and our own) CPU and memory from /proc. Loss is not
//! here: it needs the publisher's send count ([`crate::window`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Bits of sequence history kept for duplicate detection.
const WINDOW: u64 = 1024;

/// One SSRC's packets, from the clear RTP header (no decryption).
pub struct SeqCounter {
    pub ssrc: u32,
    /// Highest extended sequence number (a 64-bit count that survives 16-bit wrap-around).
    highest: u64,
    /// Distinct packets received, and repeats of ones already seen.
    pub received: u64,
    pub duplicates: u64,
    /// Bit `ext % WINDOW` is set when that packet arrived.
    seen: [u64; (WINDOW / 64) as usize],
}

impl SeqCounter {
    pub fn new(ssrc: u32, seq: u16) -> Self {
        // Start one wrap in, so a packet slightly older than the first stays positive.
        let ext = (1 << 16) + seq as u64;
        let mut c = Self {
            ssrc,
            highest: ext,
            received: 1,
            duplicates: 0,
            seen: [0; (WINDOW / 64) as usize],
        };
        c.set(ext);
        c
    }

    pub fn add(&mut self, seq: u16) {
        let delta = seq.wrapping_sub(self.highest as u16) as i16 as i64;
        let ext = (self.highest as i64 + delta).max(0) as u64;
        if ext > self.highest {
            if ext - self.highest >= WINDOW {
                self.seen = [0; (WINDOW / 64) as usize];
            } else {
                for e in self.highest + 1..ext {
                    self.clear(e);
                }
            }
            self.highest = ext;
            self.set(ext);
            self.received += 1;
        } else if self.highest - ext >= WINDOW {
            // Too old to tell; count it (this does not happen on loopback).
            self.received += 1;
        } else if self.is_set(ext) {
            self.duplicates += 1;
        } else {
            self.set(ext);
            self.received += 1;
        }
    }

    fn set(&mut self, ext: u64) {
        let b = ext % WINDOW;
        self.seen[(b / 64) as usize] |= 1 << (b % 64);
    }

    fn clear(&mut self, ext: u64) {
        let b = ext % WINDOW;
        self.seen[(b / 64) as usize] &= !(1 << (b % 64));
    }

    fn is_set(&self, ext: u64) -> bool {
        let b = ext % WINDOW;
        self.seen[(b / 64) as usize] & (1 << (b % 64)) != 0
    }
}

/// What one viewer task reports; written by the task, read by the main task at any time.
/// Times are µs since the run's epoch, 0 for "not yet".
#[derive(Default)]
pub struct Counters {
    /// Distinct media RTP packets (video and audio) received so far.
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    /// Retransmissions (RTX payload type), counted apart from the media streams.
    pub rtx: AtomicU64,
    pub started_us: AtomicU64,
    pub answered_us: AtomicU64,
    pub connected_us: AtomicU64,
    /// The first video RTP packet (every viewer) and the first complete video frame str0m
    /// handed up (full viewers only; sinks never depacketize).
    pub first_packet_us: AtomicU64,
    pub first_frame_us: AtomicU64,
    /// The last batch that brought media RTP, and the longest time between two such batches
    /// since the main task last reset it: a viewer that stalls mid-window shows here.
    pub last_rtp_us: AtomicU64,
    pub longest_silence_us: AtomicU64,
    /// Full viewers: frames whose marker and filler checked out, frames corrupt or out of
    /// order, frame numbers skipped.
    pub frames_ok: AtomicU64,
    pub frames_bad: AtomicU64,
    pub frames_missing: AtomicU64,
    /// Full viewers: frame latencies in ms since the last `take_latencies`.
    pub latencies_ms: Mutex<Vec<f64>>,
    /// Set when the viewer's task ended on its own (error, server closed the session).
    pub ended: AtomicBool,
    /// Set when the load generator itself made the viewer leave (soak churn): its silence
    /// afterwards is nobody's loss.
    pub left: AtomicBool,
}

impl Counters {
    pub fn take_latencies(&self) -> Vec<f64> {
        std::mem::take(&mut *self.latencies_ms.lock().expect("latency lock"))
    }

    /// join started → first video RTP packet.
    pub fn first_packet_ms(&self) -> Option<f64> {
        self.since_start_ms(&self.first_packet_us)
    }

    /// join started → first complete video frame (full viewers only).
    pub fn first_frame_ms(&self) -> Option<f64> {
        self.since_start_ms(&self.first_frame_us)
    }

    /// join started → the moment in `t` (answer received, ICE + DTLS connected, …).
    pub fn since_start_ms(&self, t: &AtomicU64) -> Option<f64> {
        let (p, t) = (self.started_us.load(Relaxed), t.load(Relaxed));
        (p > 0 && t > 0).then(|| t.saturating_sub(p) as f64 / 1000.0)
    }
}

/// Sums over many viewers at one moment.
#[derive(Clone, Copy, Default)]
pub struct Totals {
    pub received: u64,
    pub duplicates: u64,
    pub rtx: u64,
    pub frames_ok: u64,
    pub frames_bad: u64,
    pub frames_missing: u64,
}

impl Totals {
    pub fn of<'a>(all: impl IntoIterator<Item = &'a Counters>) -> Self {
        let mut t = Self::default();
        for c in all {
            t.received += c.received.load(Relaxed);
            t.duplicates += c.duplicates.load(Relaxed);
            t.rtx += c.rtx.load(Relaxed);
            t.frames_ok += c.frames_ok.load(Relaxed);
            t.frames_bad += c.frames_bad.load(Relaxed);
            t.frames_missing += c.frames_missing.load(Relaxed);
        }
        t
    }

    /// Each count's growth since `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            received: self.received.saturating_sub(before.received),
            duplicates: self.duplicates.saturating_sub(before.duplicates),
            rtx: self.rtx.saturating_sub(before.rtx),
            frames_ok: self.frames_ok.saturating_sub(before.frames_ok),
            frames_bad: self.frames_bad.saturating_sub(before.frames_bad),
            frames_missing: self.frames_missing.saturating_sub(before.frames_missing),
        }
    }
}

/// Nearest-rank percentile, `p` in 0..=1 (NaN for no values).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = (p * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// A process's CPU time and memory, and the host's UDP drop counters, at one moment.
#[derive(Clone)]
pub struct Sample {
    /// Per core (busy, total) jiffies from /proc/stat: how busy each core was, whoever ran.
    pub cores: Vec<(u64, u64)>,
    pub at: Instant,
    pub server_cpu_s: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub own_cpu_s: Option<f64>,
    pub udp_rcvbuf_errors: Option<u64>,
    pub udp_sndbuf_errors: Option<u64>,
    /// Datagrams dropped on a full receive buffer (/proc/net/udp `drops`): on the server's
    /// UDP port, and on every other socket (ours, mostly).
    pub server_socket_drops: Option<u64>,
    pub other_socket_drops: Option<u64>,
}

impl Sample {
    pub fn take(server: Option<u32>, server_port: Option<u16>, ticks: f64) -> Self {
        let udp = udp_errors();
        let drops = socket_drops(server_port);
        Self {
            cores: core_jiffies(),
            at: Instant::now(),
            server_cpu_s: server.and_then(|p| cpu_seconds(&p.to_string(), ticks)),
            server_rss_mb: server.and_then(rss_mb),
            own_cpu_s: cpu_seconds("self", ticks),
            udp_rcvbuf_errors: udp.map(|u| u.0),
            udp_sndbuf_errors: udp.map(|u| u.1),
            server_socket_drops: drops.map(|d| d.0),
            other_socket_drops: drops.map(|d| d.1),
        }
    }

    /// How busy each core was between two samples (everything on it, %).
    pub fn core_busy_since(&self, before: &Self) -> Vec<f64> {
        self.cores
            .iter()
            .zip(&before.cores)
            .map(|(&(b1, t1), &(b0, t0))| {
                let t = t1.saturating_sub(t0);
                if t == 0 {
                    f64::NAN
                } else {
                    b1.saturating_sub(b0) as f64 * 100.0 / t as f64
                }
            })
            .collect()
    }

    /// (server CPU %, our CPU %) of one core between two samples.
    pub fn cpu_percent_since(&self, before: &Self) -> (f64, f64) {
        let wall = self.at.duration_since(before.at).as_secs_f64();
        let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if wall > 0.0 => (b - a) / wall * 100.0,
            _ => f64::NAN,
        };
        (
            pct(before.server_cpu_s, self.server_cpu_s),
            pct(before.own_cpu_s, self.own_cpu_s),
        )
    }
}

/// utime + stime of `/proc/<pid>/stat` in seconds.
fn cpu_seconds(pid: &str, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / ticks)
}

/// VmRSS of a process in MB.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// (RcvbufErrors, SndbufErrors) from the `Udp:` lines of /proc/net/snmp.
fn udp_errors() -> Option<(u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let field = |name: &str| {
        let i = names.split_whitespace().position(|n| n == name)?;
        values.split_whitespace().nth(i)?.parse().ok()
    };
    Some((field("RcvbufErrors")?, field("SndbufErrors")?))
}

/// (busy, total) jiffies of each `cpuN` line of /proc/stat; idle and iowait are not busy.
fn core_jiffies() -> Vec<(u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Receive-buffer drops summed over the host's UDP sockets (/proc/net/udp and udp6, last
/// column): (those bound to `server_port`, all others).
fn socket_drops(server_port: Option<u16>) -> Option<(u64, u64)> {
    let mut sums = (0, 0);
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            let Some(drops) = f.last().and_then(|d| d.parse::<u64>().ok()) else {
                continue;
            };
            if port.is_some() && port == server_port {
                sums.0 += drops;
            } else {
                sums.1 += drops;
            }
        }
    }
    Some(sums)
}

/// USER_HZ from `getconf CLK_TCK` (no libc here), 100 when that fails.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_duplicates_and_wrap() {
        let mut c = SeqCounter::new(1, 65_530);
        for s in [65_531u16, 65_533, 65_535, 0, 1, 1, 65_532, 3] {
            c.add(s);
        }
        // 65530..=3 is 10 packets; 65534 and 2 never came; 1 came twice.
        assert_eq!((c.received, c.duplicates), (8, 1));
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }
}
