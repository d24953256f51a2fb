//! What the load generator measures: packets per SSRC for loss, times for percentiles, and
//! the server's CPU and memory from /proc.

use std::collections::HashMap;

/// Received RTP packets of one SSRC, from the clear RTP header (no decryption).
#[derive(Default, Clone)]
pub struct SeqCounter {
    received: u64,
    /// Extended sequence numbers: first and highest seen.
    first: Option<u64>,
    highest: u64,
    cycles: u64,
    last16: Option<u16>,
}

impl SeqCounter {
    pub fn add(&mut self, seq: u16) {
        if let Some(last) = self.last16 {
            // Wrap-around: a small new value after a large one.
            if seq < 0x4000 && last > 0xc000 {
                self.cycles += 1 << 16;
            }
        }
        self.last16 = Some(seq);
        let ext = self.cycles + seq as u64;
        self.first.get_or_insert(ext);
        self.highest = self.highest.max(ext);
        self.received += 1;
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.highest - f + 1)
    }
}

/// Per-viewer tallies, merged at the end.
#[derive(Default, Clone)]
pub struct Tally {
    pub by_ssrc: HashMap<u32, SeqCounter>,
}

impl Tally {
    pub fn packets(&self) -> u64 {
        self.by_ssrc.values().map(SeqCounter::received).sum()
    }

    pub fn expected(&self) -> u64 {
        self.by_ssrc.values().map(SeqCounter::expected).sum()
    }
}

pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[i]
}

/// CPU time (user + system) of a process in seconds, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / clock_ticks())
}

/// Resident memory of a process in MB, from /proc/<pid>/status.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

pub fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// USER_HZ: 100 on every Linux this runs on (sysconf would need libc).
fn clock_ticks() -> f64 {
    100.0
}
