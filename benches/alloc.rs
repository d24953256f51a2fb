//! Allocations in whipcast's engine in steady state, counted by a global allocator: per
//! viewer-packet on the fan-out path (the `fanout` bench's setup and step, `support.rs`), and
//! per viewer-second in the server's share of the STUN/RTCP exchange once a virtual second
//! (`Fanout::settle`, not the clients' share): together, whole virtual seconds of the server.
//!
//! `cargo bench --bench alloc`; with `ALLOC_BACKTRACE=1` it also records a backtrace of every
//! allocation in a few packets, then of every allocation but the most common size over two
//! seconds of packets (to catch periodic work such as RTCP reports), and prints them grouped
//! by the first frame in str0m or whipcast (the allocating call site).

// A benchmark is a driver: it owns the clock.
#![allow(clippy::disallowed_methods)]
// The counting allocator needs `unsafe impl GlobalAlloc`. It lives in this bench, not in the
// crate, and only forwards to the system allocator.
#![allow(unsafe_code)]

#[allow(dead_code)] // this bench does not use the naive baseline's part of the helpers
#[path = "../tests/common/sim.rs"]
mod sim;
#[allow(dead_code)] // the fan-out bench uses the rest
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use sim::{Sim, engine_config};
use support::Fanout;

/// Steady-state packets counted per N, after `Fanout::connect`'s warm-up.
const PACKETS: usize = 2_000;
/// Packets whose allocations are all traced with `ALLOC_BACKTRACE=1`.
const TRACED_PACKETS: usize = 4;
/// Packets (2 s) whose allocations, but for the most common size, are traced.
const TRACED_WINDOW: usize = 600;

static COUNTING: AtomicBool = AtomicBool::new(false);
static TRACING: AtomicBool = AtomicBool::new(false);
/// Set while the allocator itself runs code that allocates (capturing a backtrace).
static IN_HOOK: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Heap bytes currently allocated (always tracked).
static LIVE: AtomicI64 = AtomicI64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocations of this size are counted in `UNTRACED`, not traced (0: trace every size).
static UNTRACED_SIZE: AtomicUsize = AtomicUsize::new(0);
static UNTRACED: AtomicU64 = AtomicU64::new(0);
static TRACES: Mutex<Vec<(usize, Backtrace)>> = Mutex::new(Vec::new());
/// With `ALLOC_HEAP_SITES=1`: every live allocation's size and backtrace, by address, while
/// viewers connect; those freed while their sessions close are moved to `FREED`.
static LIVE_SITES: Mutex<Option<HashMap<usize, (usize, Backtrace)>>> = Mutex::new(None);
static CLOSING: AtomicBool = AtomicBool::new(false);
static FREED: Mutex<Vec<(usize, Backtrace)>> = Mutex::new(Vec::new());

struct Counting;

impl Counting {
    fn count(&self, size: usize) {
        if !COUNTING.load(Ordering::Relaxed) || IN_HOOK.load(Ordering::Relaxed) {
            return;
        }
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
        if TRACING.load(Ordering::Relaxed) && size == UNTRACED_SIZE.load(Ordering::Relaxed) {
            UNTRACED.fetch_add(1, Ordering::Relaxed);
        } else if TRACING.load(Ordering::Relaxed) {
            IN_HOOK.store(true, Ordering::Relaxed);
            let trace = Backtrace::force_capture();
            if let Ok(mut t) = TRACES.lock() {
                t.push((size, trace));
            }
            IN_HOOK.store(false, Ordering::Relaxed);
        }
    }

    fn born(&self, ptr: *mut u8, size: usize) {
        if IN_HOOK.load(Ordering::Relaxed) || ptr.is_null() {
            return;
        }
        IN_HOOK.store(true, Ordering::Relaxed);
        if let Ok(mut sites) = LIVE_SITES.lock()
            && let Some(sites) = sites.as_mut()
        {
            sites.insert(ptr as usize, (size, Backtrace::force_capture()));
        }
        IN_HOOK.store(false, Ordering::Relaxed);
    }

    fn died(&self, ptr: *mut u8) {
        if IN_HOOK.load(Ordering::Relaxed) {
            return;
        }
        IN_HOOK.store(true, Ordering::Relaxed);
        if let Ok(mut sites) = LIVE_SITES.lock()
            && let Some(sites) = sites.as_mut()
            && let Some(site) = sites.remove(&(ptr as usize))
            && CLOSING.load(Ordering::Relaxed)
            && let Ok(mut freed) = FREED.lock()
        {
            freed.push(site);
        }
        IN_HOOK.store(false, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only atomics, and tracing is single-threaded here (the bench has one thread).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count(layout.size());
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which `System.alloc` shares.
        let ptr = unsafe { System.alloc(layout) };
        self.born(ptr, layout.size());
        ptr
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count(layout.size());
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        self.born(ptr, layout.size());
        ptr
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count(new_size);
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        self.died(ptr);
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        self.born(new, new_size);
        new
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        self.died(ptr);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let trace = std::env::var_os("ALLOC_BACKTRACE").is_some();
    println!(
        "allocations in whipcast's engine, steady state: the fan-out path (handle_datagram → \
         poll_transmit drained) per viewer-packet, and its STUN/RTCP work (the viewers' consent \
         checks and reports, once a virtual second) per viewer-second"
    );
    println!(
        " viewers  packets  seconds  allocations         bytes  allocs/viewer-packet   \
         bytes/viewer-pkt    stun/rtcp  allocs/viewer-second"
    );
    let mut sites = Vec::new();
    for viewers in [10usize, 100] {
        let mut config = engine_config();
        config.max_viewers = viewers;
        let mut f = Fanout::connect(Sim::new(config), viewers);
        f.meter = |on| COUNTING.store(on, Ordering::Relaxed);
        let start = f.sim.now;
        ALLOCS.store(0, Ordering::Relaxed);
        BYTES.store(0, Ordering::Relaxed);
        let (mut done, mut feedback) = (0, 0);
        while done < PACKETS {
            let batch = f.prepare(32.min(PACKETS - done));
            COUNTING.store(true, Ordering::Relaxed);
            for p in &batch {
                f.forward(p);
            }
            COUNTING.store(false, Ordering::Relaxed);
            done += batch.len();
            f.check(&batch);
            let before = ALLOCS.load(Ordering::Relaxed);
            f.settle();
            feedback += ALLOCS.load(Ordering::Relaxed) - before;
        }
        let seconds = (f.sim.now - start).as_secs_f64();
        let (allocs, bytes) = (
            ALLOCS.load(Ordering::Relaxed) - feedback,
            BYTES.load(Ordering::Relaxed),
        );
        let vp = (PACKETS * viewers) as f64;
        println!(
            "{viewers:>8} {PACKETS:>8} {seconds:>8.2} {allocs:>12} {bytes:>13} {:>21.3} {:>18.0} {feedback:>12} {:>21.2}",
            allocs as f64 / vp,
            bytes as f64 / vp,
            feedback as f64 / (viewers as f64 * seconds)
        );
        if trace {
            sites.push((viewers, traced_sites(&mut f)));
        }
    }
    heap_per_viewer();
    for (viewers, (all, common, window, untraced)) in sites {
        println!(
            "\nallocation sites, {viewers} viewers, per publisher packet, every allocation in {TRACED_PACKETS} packets:"
        );
        print_sites(&all, TRACED_PACKETS);
        println!(
            "\n{viewers} viewers, every allocation but the {common}-byte ones in {TRACED_WINDOW} packets \
             ({:.2} {common}-byte allocations per packet were not traced):",
            untraced as f64 / TRACED_WINDOW as f64
        );
        print_sites(&window, TRACED_WINDOW);
    }
}

/// The server's heap per connected, playing viewer, after a full-size keyframe went to all
/// of them: what the process frees when the server closes every viewer session (the
/// simulated clients, in the same process, stay as they are), divided by the number of
/// viewers.
fn heap_per_viewer() {
    println!("\nserver heap per viewer (freed when its session closes), after warm-up");
    println!(
        "{:>8} {:>14} {:>16} {:>14} {:>16}",
        "viewers", "Rust heap", "bytes/viewer", "malloc heap", "bytes/viewer"
    );
    let sites = std::env::var_os("ALLOC_HEAP_SITES").is_some();
    let runs: &[usize] = if sites { &[100] } else { &[100, 500] };
    for &viewers in runs {
        let mut config = engine_config();
        config.max_viewers = viewers;
        if sites {
            *LIVE_SITES.lock().expect("sites lock") = Some(HashMap::new());
        }
        let mut f = Fanout::connect(Sim::new(config), viewers);
        // A full-size keyframe first, so per-viewer queues are as large as they get.
        let keyframe = f.prepare_keyframe();
        f.forward(&keyframe);
        f.check(std::slice::from_ref(&keyframe));
        f.settle();
        let loaded = LIVE.load(Ordering::Relaxed);
        let malloc_loaded = malloc_in_use();
        let first = f.sim.clients.len() - viewers;
        CLOSING.store(true, Ordering::Relaxed);
        for c in first..f.sim.clients.len() {
            assert!(f.sim.close(c, false), "viewer session closed");
        }
        while f.sim.engine.poll_transmit().is_some() {}
        CLOSING.store(false, Ordering::Relaxed);
        let freed = loaded - LIVE.load(Ordering::Relaxed);
        let malloc_freed = malloc_loaded - malloc_in_use();
        println!(
            "{viewers:>8} {freed:>14} {:>16} {malloc_freed:>14} {:>16}",
            freed / viewers as i64,
            malloc_freed / viewers as i64
        );
        if sites {
            // Dropped outside the lock: its own deallocations pass through `died`.
            let live = LIVE_SITES.lock().expect("sites lock").take();
            drop(live);
            let freed = std::mem::take(&mut *FREED.lock().expect("freed lock"));
            let mut by_site = Sites::new();
            for (size, bt) in freed {
                let e = by_site.entry(site_of(&bt.to_string())).or_default();
                e.0 += 1;
                e.1 += size;
            }
            let mut rows: Vec<_> = by_site.into_iter().collect();
            rows.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
            println!("\nheap freed per viewer by allocating site (largest first):");
            for ((site, callers), (n, bytes)) in rows {
                println!(
                    "{:>8} B in {:>5.1} allocations  {site}\n{callers}",
                    bytes / viewers,
                    n as f64 / viewers as f64
                );
            }
        }
    }
}

/// Bytes glibc's malloc has handed out and not taken back: Rust's allocations (which go
/// through `System`, i.e. malloc) and those C code makes directly (AWS-LC's DTLS state).
fn malloc_in_use() -> i64 {
    // SAFETY: `mallinfo2` only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks as i64
}

/// Allocation count and bytes per (call site, callers).
type Sites = BTreeMap<(String, String), (usize, usize)>;

fn print_sites(sites: &Sites, packets: usize) {
    for ((site, callers), (n, bytes)) in sites {
        println!(
            "{:>8.3} × {:>6.0} B  {site}\n{callers}",
            *n as f64 / packets as f64,
            *bytes as f64 / *n as f64
        );
    }
}

/// Traces every allocation in [`TRACED_PACKETS`] packets, then every allocation but the most
/// common size in [`TRACED_WINDOW`] packets. Returns both site lists, that size and how many
/// allocations of it went untraced.
fn traced_sites(f: &mut Fanout<whipcast::engine::Engine>) -> (Sites, usize, Sites, u64) {
    let (all, sizes) = trace_packets(f, TRACED_PACKETS);
    let common = mode(&sizes);
    UNTRACED_SIZE.store(common, Ordering::Relaxed);
    UNTRACED.store(0, Ordering::Relaxed);
    let (window, _) = trace_packets(f, TRACED_WINDOW);
    UNTRACED_SIZE.store(0, Ordering::Relaxed);
    (all, common, window, UNTRACED.load(Ordering::Relaxed))
}

fn mode(sizes: &[usize]) -> usize {
    let mut counts = BTreeMap::<usize, usize>::new();
    for &s in sizes {
        *counts.entry(s).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map_or(0, |(s, _)| s)
}

/// Runs `packets` packets with a backtrace per traced allocation; returns the sites and the
/// size of every traced allocation.
fn trace_packets(f: &mut Fanout<whipcast::engine::Engine>, packets: usize) -> (Sites, Vec<usize>) {
    let mut done = 0;
    while done < packets {
        let batch = f.prepare(32.min(packets - done));
        COUNTING.store(true, Ordering::Relaxed);
        TRACING.store(true, Ordering::Relaxed);
        for p in &batch {
            f.forward(p);
        }
        TRACING.store(false, Ordering::Relaxed);
        COUNTING.store(false, Ordering::Relaxed);
        done += batch.len();
        f.check(&batch);
        f.settle();
    }
    let traces = std::mem::take(&mut *TRACES.lock().expect("trace lock"));
    let sizes = traces.iter().map(|(s, _)| *s).collect();
    let mut sites = Sites::new();
    for (size, bt) in traces {
        let e = sites.entry(site_of(&bt.to_string())).or_default();
        e.0 += 1;
        e.1 += size;
    }
    (sites, sizes)
}

/// The first frame in str0m or whipcast code (with its source line), and the few frames
/// above it in those crates, from a formatted backtrace.
fn site_of(trace: &str) -> (String, String) {
    let mut frames: Vec<(String, String)> = Vec::new();
    let mut lines = trace.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((_, name)) = line.trim().split_once(": ") else {
            continue;
        };
        let at = match lines.peek() {
            Some(l) if l.trim_start().starts_with("at ") => lines
                .next()
                .map(|l| short_path(l.trim_start().trim_start_matches("at ")))
                .unwrap_or_default(),
            _ => String::new(),
        };
        frames.push((name.to_string(), at));
    }
    let ours = |name: &str| {
        ["str0m", "whipcast", "dimpl", "aws_lc"]
            .iter()
            .any(|c| name.contains(c))
    };
    let mut ours_frames = frames.iter().filter(|(n, _)| ours(n));
    let Some((name, at)) = ours_frames
        .next()
        .or_else(|| frames.iter().find(|(n, _)| n.contains("support::")))
    else {
        return (
            "(outside str0m, whipcast and the bench)".into(),
            String::new(),
        );
    };
    let callers: Vec<String> = ours_frames
        .take(5)
        .map(|(n, a)| format!("                    ← {n} ({a})"))
        .collect();
    (format!("{name} ({at})"), callers.join("\n"))
}

/// `…/str0m-0.25.0/src/rtp/srtp.rs:251:9` → `str0m-0.25.0/src/rtp/srtp.rs:251`.
fn short_path(at: &str) -> String {
    let at = at.rsplit_once(':').map_or(at, |(p, _col)| p);
    match at.rfind("/src/") {
        Some(i) => {
            let crate_start = at[..i].rfind('/').map_or(0, |j| j + 1);
            at[crate_start..].to_string()
        }
        None => at.to_string(),
    }
}
