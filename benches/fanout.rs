//! Fan-out cost: one publisher RTP packet (1,100-byte payload, SRTP) into the server and N
//! SRTP copies out to a null sink, for whipcast's engine and for a naive str0m SFU
//! (`naive.rs`), and for whipcast with str0m sealing the viewers' media
//! (`whipcast-str0m-srtp`, the path before whipcast sealed it itself). All are set up through real ICE and DTLS against str0m clients on the
//! simulated network; the timing covers only the server's part and runs on the thread's CPU
//! clock (other work on a shared machine does not count). Virtual time advances 3.33 ms per
//! packet after 3.3 s of warm-up, so the RTX caches are full. Throughput is per
//! viewer-packet. Each case checks what it measures: `whipcast` sealed every viewer itself
//! and `whipcast-str0m-srtp` none (the engine's `viewers_sealed`), and after every batch each
//! viewer got exactly one copy of each packet (`Fanout::check`). `whipcast-recording` is
//! `whipcast` with `--record`'s tap: each publisher packet also handed to a running recorder
//! thread (issue 27; its own work is on its thread, not timed here: benches/record.rs).
//!
//! `cargo bench --bench fanout` (BENCHMARKS.md has the latest results)

#![allow(clippy::disallowed_methods)] // a benchmark is a driver: it owns the clock

mod naive;
#[path = "../tests/common/sim.rs"]
#[allow(dead_code)] // the benchmark uses a part of the test helpers
mod sim;
mod support;

use std::time::Duration;

use cpu_time::ThreadTime;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sim::{Sfu, Sim, engine_config};
use support::Fanout;
use whipcast::engine::Engine;
use whipcast::offer::SessionSetup;

const VIEWERS: [usize; 4] = [1, 10, 100, 1000];
/// Packets prepared ahead and timed as one run: ~107 ms of virtual time, short enough that
/// the publisher's STUN and RTCP answers are not late, long enough that reading the CPU clock
/// (a syscall) is noise.
const BATCH: u64 = 32;

/// whipcast; with `str0m_seals`, viewers' media goes through str0m's send path instead of
/// whipcast's own SRTP (as for sessions that negotiated AES-CM), to show what that saves.
fn whipcast(viewers: usize, str0m_seals: bool, record: bool) -> Fanout<Engine> {
    let mut config = engine_config();
    config.max_viewers = viewers;
    let mut sim = Sim::new(config);
    sim.str0m_seals_viewers = str0m_seals;
    if record {
        sim.engine.set_recorder(recorder());
    }
    let mut f = Fanout::connect(sim, viewers);
    // The case measures the path its name says: whipcast sealed every viewer's media itself,
    // or str0m sealed all of it.
    let sealed = f.sim.stats().viewers_sealed;
    assert_eq!(
        sealed,
        if str0m_seals { 0 } else { viewers },
        "viewers_sealed"
    );
    f
}

/// A recorder thread writing under a fresh temporary directory.
fn recorder() -> whipcast::record::Tap {
    let dir = std::env::temp_dir().join(format!(
        "whipcast-bench-fanout-{}",
        whipcast::secret::random_token()
    ));
    let registry = whipcast::registry::Registry::open(&dir).expect("a registry");
    let settings = whipcast::record::Settings {
        dir: dir.join("rec"),
        segment: Duration::from_secs(600),
        max_bytes: None,
        min_free: 0,
        board: Default::default(),
        idle: Duration::from_secs(30),
    };
    let registry = std::sync::Arc::new(std::sync::Mutex::new(registry));
    whipcast::record::start(settings, registry).expect("the recorder starts")
}

fn naive(viewers: usize) -> Fanout<naive::Naive> {
    let setup = SessionSetup::new(engine_config().candidates);
    Fanout::connect(Sim::with_server(naive::Naive::default(), setup), viewers)
}

/// Times `iters` publisher packets through the server; preparing them and the clients'
/// feedback in between are not timed.
fn measure<S: Sfu>(f: &mut Fanout<S>, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let batch = f.prepare(left.min(BATCH) as usize);
        left -= batch.len() as u64;
        let start = ThreadTime::now();
        for p in &batch {
            f.forward(p);
        }
        total += start.elapsed();
        f.check(&batch);
        f.settle();
    }
    total
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for viewers in VIEWERS {
        group.throughput(Throughput::Elements(viewers as u64));
        let id = |name| BenchmarkId::new(name, viewers);
        // Set up lazily, so a filter (`-- fanout/naive/10`) skips the others' handshakes.
        for (name, str0m_seals, record) in [
            ("whipcast", false, false),
            ("whipcast-recording", false, true),
            ("whipcast-str0m-srtp", true, false),
        ] {
            let mut ours = None;
            group.bench_function(id(name), |b| {
                let f = ours.get_or_insert_with(|| whipcast(viewers, str0m_seals, record));
                b.iter_custom(|iters| measure(f, iters));
            });
        }
        let mut theirs = None;
        group.bench_function(id("naive"), |b| {
            let f = theirs.get_or_insert_with(|| naive(viewers));
            b.iter_custom(|iters| measure(f, iters));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Ten samples are criterion's minimum; the N=1000 cases take seconds per sample.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    targets = fanout
}
criterion_main!(benches);
