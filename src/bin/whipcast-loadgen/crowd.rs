//! The viewers as a group: joining many with a bounded number of WHEP requests in flight,
//! waiting for them to connect and play, replacing some (the soak test), totals over all of
//! them (including ones that left, so counts never go backwards) and the join-storm numbers.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::http::Base;
use crate::peer::{Sessions, wait_until};
use crate::stats::{Counters, Totals, percentile};
use crate::viewer::{Target, Viewer};

/// WHEP requests in flight at once.
const IN_FLIGHT: usize = 32;

pub struct Crowd {
    base: Base,
    target: Target,
    epoch: Instant,
    sessions: Sessions,
    /// Viewers' sockets take the server's GSO runs whole (`--receiver-gro`).
    gro: bool,
    pub viewers: Vec<Viewer>,
    /// Counters of viewers that left, so totals stay monotonic.
    retired: Vec<Arc<Counters>>,
    /// Joins that failed (HTTP error, bad answer), with the first few reasons logged.
    pub failures: usize,
}

/// What a group of joins achieved.
#[derive(Default)]
pub struct JoinReport {
    pub requested: usize,
    /// WHEP answered; the rest failed (HTTP error, bad answer).
    pub joined: usize,
    pub connected: usize,
    /// Got a video RTP packet.
    pub playing: usize,
    /// Completed WHEP + ICE + DTLS per second, from the first POST to the last `Connected`.
    pub joins_per_s: f64,
    /// POST → first video RTP packet (every viewer), and POST → first complete video frame
    /// (full viewers only).
    pub first_packet_ms: Vec<f64>,
    pub first_frame_ms: Vec<f64>,
    /// POST → answer and POST → ICE + DTLS connected, for the breakdown of the above.
    pub answer_ms: Vec<f64>,
    pub connect_ms: Vec<f64>,
}

impl Crowd {
    pub fn new(
        base: &Base,
        target: Target,
        epoch: Instant,
        sessions: &Sessions,
        gro: bool,
    ) -> Self {
        Self {
            base: base.clone(),
            target,
            epoch,
            sessions: sessions.clone(),
            gro,
            viewers: Vec::new(),
            retired: Vec::new(),
            failures: 0,
        }
    }

    /// Joins `n` viewers, `full` of them full viewers spread evenly over the join order (the
    /// last one included: the server serves viewers one after another, so the first ones
    /// alone would flatter the latency), and waits up to `limit` for
    /// all of them to connect and get video. The new viewers are appended to `viewers`.
    pub async fn join(&mut self, n: usize, full: usize, limit: Duration) -> JoinReport {
        let start = Instant::now();
        let gate = Arc::new(Semaphore::new(IN_FLIGHT));
        let step = n.checked_div(full).map_or(usize::MAX, |s| s.max(1));
        let is_full = |i: usize| (i + 1).is_multiple_of(step) && (i + 1) / step <= full;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let full = is_full(i);
                let (gate, base, target) = (gate.clone(), self.base.clone(), self.target.clone());
                let (epoch, sessions, gro) = (self.epoch, self.sessions.clone(), self.gro);
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.expect("semaphore");
                    Viewer::join(&base, &target, full, gro, epoch, &sessions).await
                })
            })
            .collect();
        let first = self.viewers.len();
        for t in tasks {
            match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(v) => self.viewers.push(v),
                Err(e) => {
                    self.failures += 1;
                    crate::peer::log_limited(format_args!("join failed: {e}"));
                }
            }
        }
        let new = &self.viewers[first..];
        let done = |v: &Viewer| {
            let c = &v.counters;
            let video = if v.full {
                &c.first_frame_us
            } else {
                &c.first_packet_us
            };
            c.ended.load(Relaxed) || video.load(Relaxed) > 0
        };
        let remaining = limit.saturating_sub(start.elapsed());
        if !wait_until(|| new.iter().all(done), remaining).await {
            eprintln!("some viewers did not get video within {limit:?}");
        }
        let start_us = crate::peer::micros_since(self.epoch, start);
        let connected: Vec<u64> = new
            .iter()
            .map(|v| v.counters.connected_us.load(Relaxed))
            .filter(|&t| t > 0)
            .collect();
        let last = connected.iter().copied().max().unwrap_or(start_us);
        let span_s = last.saturating_sub(start_us) as f64 / 1e6;
        JoinReport {
            requested: n,
            joined: new.len(),
            connected: connected.len(),
            playing: new
                .iter()
                .filter(|v| v.counters.first_packet_us.load(Relaxed) > 0)
                .count(),
            joins_per_s: if span_s > 0.0 {
                connected.len() as f64 / span_s
            } else {
                f64::NAN
            },
            first_packet_ms: new
                .iter()
                .filter_map(|v| v.counters.first_packet_ms())
                .collect(),
            first_frame_ms: new
                .iter()
                .filter_map(|v| v.counters.first_frame_ms())
                .collect(),
            answer_ms: new
                .iter()
                .filter_map(|v| v.counters.since_start_ms(&v.counters.answered_us))
                .collect(),
            connect_ms: new
                .iter()
                .filter_map(|v| v.counters.since_start_ms(&v.counters.connected_us))
                .collect(),
        }
    }

    /// Replaces the `k` oldest sink viewers with new ones (full viewers stay).
    pub async fn churn(&mut self, k: usize, limit: Duration) -> JoinReport {
        let mut leaving = Vec::with_capacity(k);
        let mut i = 0;
        while i < self.viewers.len() && leaving.len() < k {
            if self.viewers[i].full {
                i += 1;
            } else {
                leaving.push(self.viewers.remove(i));
            }
        }
        let k = leaving.len();
        for v in &leaving {
            v.counters.left.store(true, Relaxed);
            v.stop();
            self.sessions.delete(&self.base, &v.location).await;
        }
        self.retired.extend(leaving.into_iter().map(|v| v.counters));
        self.join(k, 0, limit).await
    }

    /// One full viewer joins alone, waits for its first complete frame, and leaves: the
    /// time to first frame of one person pressing play on a loaded server (ms).
    pub async fn probe(&mut self) -> Option<f64> {
        let v = Viewer::join(
            &self.base,
            &self.target,
            true,
            self.gro,
            self.epoch,
            &self.sessions,
        )
        .await;
        let v = match v {
            Ok(v) => v,
            Err(e) => {
                self.failures += 1;
                crate::peer::log_limited(format_args!("probe failed: {e}"));
                return None;
            }
        };
        let c = &v.counters;
        wait_until(
            || c.first_frame_us.load(Relaxed) > 0 || c.ended.load(Relaxed),
            Duration::from_secs(5),
        )
        .await;
        let ttff = c.first_frame_ms();
        v.stop();
        self.sessions.delete(&self.base, &v.location).await;
        // Not retired: its packets would skew the window's totals after the fact.
        ttff
    }

    /// Totals over every viewer, current and retired.
    pub fn totals(&self) -> Totals {
        let current = self.viewers.iter().map(|v| &*v.counters);
        Totals::of(current.chain(self.retired.iter().map(|c| &**c)))
    }

    /// The current viewers' counters.
    pub fn counters(&self) -> impl Iterator<Item = &Arc<Counters>> {
        self.viewers.iter().map(|v| &v.counters)
    }

    /// Frame latencies the full viewers collected since the last call.
    pub fn take_latencies(&self) -> Vec<f64> {
        self.viewers
            .iter()
            .flat_map(|v| v.counters.take_latencies())
            .collect()
    }

    /// Viewers whose task has ended (the server closed them, or an error).
    pub fn ended(&self) -> usize {
        self.viewers
            .iter()
            .filter(|v| v.counters.ended.load(Relaxed))
            .count()
    }

    pub fn stop_all(&self) {
        for v in &self.viewers {
            v.stop();
        }
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl JoinReport {
    pub fn first_packet(&self, p: f64) -> f64 {
        percentile(&mut self.first_packet_ms.clone(), p)
    }

    pub fn first_frame(&self, p: f64) -> f64 {
        percentile(&mut self.first_frame_ms.clone(), p)
    }

    /// Adds another group's joins (soak: every churn's).
    pub fn absorb(&mut self, r: JoinReport) {
        self.requested += r.requested;
        self.joined += r.joined;
        self.connected += r.connected;
        self.playing += r.playing;
        self.first_packet_ms.extend(r.first_packet_ms);
        self.first_frame_ms.extend(r.first_frame_ms);
        self.answer_ms.extend(r.answer_ms);
        self.connect_ms.extend(r.connect_ms);
    }

    pub fn answer(&self, p: f64) -> f64 {
        percentile(&mut self.answer_ms.clone(), p)
    }

    pub fn connect(&self, p: f64) -> f64 {
        percentile(&mut self.connect_ms.clone(), p)
    }
}
