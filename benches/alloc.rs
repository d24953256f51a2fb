//! Allocations per viewer-packet on whipcast's fan-out path in steady state, counted by a
//! global allocator that wraps the system one. `cargo bench --bench alloc`
//!
//! Set `ALLOC_BACKTRACE=1` to print where one sampled allocation on the path comes from.

#![allow(clippy::disallowed_methods)]
// a benchmark is a driver: it owns the clock
// The counting allocator needs `unsafe impl GlobalAlloc`; it lives here, not in the crate.
#![allow(unsafe_code)]

#[path = "../tests/common/sim.rs"]
#[allow(dead_code)] // the benchmark uses a part of the test helpers
mod sim;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sim::{SERVER, Sim, engine_config};
use whipcast::engine::BroadcastKey;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);
static SAMPLE: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            if SAMPLE.swap(false, Ordering::Relaxed) {
                COUNTING.store(false, Ordering::Relaxed);
                eprintln!(
                    "sampled allocation of {} bytes:\n{}",
                    layout.size(),
                    std::backtrace::Backtrace::force_capture()
                );
                COUNTING.store(true, Ordering::Relaxed);
            }
        }
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    println!(
        "{:>8} {:>10} {:>12} {:>22}",
        "viewers", "packets", "allocations", "allocs/viewer-packet"
    );
    for viewers in [10usize, 100] {
        let mut config = engine_config();
        config.max_viewers = viewers;
        let mut sim = Sim::new(config);
        sim.latency = Duration::from_millis(1);
        let b = BroadcastKey(1);
        let publisher = sim.publish(b).unwrap();
        sim.run_for(Duration::from_millis(200));
        for _ in 0..viewers {
            sim.view(b).unwrap();
        }
        sim.run_for(Duration::from_millis(500));
        sim.send_frame(publisher, 0, true);
        sim.run_for(Duration::from_millis(100));
        let server = SERVER.parse().unwrap();
        let publisher_addr = sim.clients[publisher].addr;
        let (mut packets, mut n) = (0u64, 0u64);
        // Warm-up (fills RTX caches and queues), then count.
        for phase in 0..2 {
            let count = phase == 1;
            for _ in 0..1000 {
                n += 1;
                sim.now += Duration::from_micros(3_333);
                let datagrams = sim.capture_publisher_packet(publisher, n, 1_100);
                let now = sim.now;
                if count {
                    SAMPLE.store(
                        std::env::var("ALLOC_BACKTRACE").is_ok() && n == 1500,
                        Ordering::Relaxed,
                    );
                    COUNTING.store(true, Ordering::Relaxed);
                }
                for (src, d) in &datagrams {
                    sim.engine.handle_datagram(now, *src, server, d);
                }
                let mut back = Vec::new();
                while let Some(t) = sim.engine.poll_transmit() {
                    if t.destination == publisher_addr {
                        back.push(t.contents.to_vec());
                    }
                }
                COUNTING.store(false, Ordering::Relaxed);
                if count {
                    packets += 1;
                }
                for d in back {
                    sim.deliver(publisher_addr, &d);
                }
                if n % 300 == 0 {
                    sim.run_for(Duration::from_millis(20));
                }
            }
        }
        let allocs = ALLOCS.swap(0, Ordering::Relaxed);
        println!(
            "{viewers:>8} {packets:>10} {allocs:>12} {:>22.2}",
            allocs as f64 / (packets * viewers as u64) as f64
        );
    }
}
