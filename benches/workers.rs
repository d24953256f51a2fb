//! One broadcast on one media worker and on two (`--workers 2`), side by side: one publisher
//! RTP packet (1,100-byte payload, SRTP) into the server and N SRTP copies out to a null
//! sink, timed on the wall clock.
//!
//! - `1-worker`: one `Engine` (fanout.rs's `whipcast` case, on the wall clock);
//! - `2-workers`: two engines placed as the server places them (tests/common/pair.rs): the
//!   publisher and half the viewers on the home, the other half on the second engine, which
//!   runs on a thread of its own and gets each packet from the home through a queue (tokio's
//!   unbounded channel, as io/span.rs) as the same `CachedPacket`. The time runs from the
//!   first packet of a batch into the home until both engines have sent every copy.
//!
//! Both are set up through real ICE and DTLS against str0m clients on the simulated network
//! (benches/support.rs), and after every batch each viewer was checked to have got exactly
//! one copy of each packet. On a machine with other work the wall clock counts it too: run
//! it on a quiet one (BENCHMARKS.md says how the figures were taken).
//!
//! `cargo bench --bench workers`

#![allow(clippy::disallowed_methods)] // a benchmark is a driver: it owns the clock

#[path = "../tests/common/pair.rs"]
mod pair;
#[path = "../tests/common/sim.rs"]
#[allow(dead_code)] // the benchmark uses a part of the test helpers
mod sim;
mod support;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pair::Pair;
use sim::{Sim, engine_config};
use support::{Fanout, Packet, Sink, emit};
use whipcast::engine::{Engine, SpanMessage};
use whipcast::offer::SessionSetup;

const VIEWERS: [usize; 2] = [1_000, 10_000];
/// Packets timed as one run (as in fanout.rs): ~107 ms of virtual time.
const BATCH: u64 = 32;

fn one(viewers: usize) -> Fanout<Engine> {
    let mut config = engine_config();
    config.max_viewers = viewers;
    Fanout::connect(Sim::new(config), viewers)
}

fn two(viewers: usize) -> Fanout<Pair> {
    let mut config = engine_config();
    config.max_viewers = viewers;
    let setup = SessionSetup::new(config.candidates.clone());
    let f = Fanout::connect(Sim::with_server(Pair::new(config), setup), viewers);
    let per_engine: Vec<usize> = f
        .sim
        .engine
        .engines
        .iter()
        .map(|e| e.stats().viewers)
        .collect();
    assert_eq!(
        per_engine,
        [viewers / 2, viewers - viewers / 2],
        "half the viewers on each engine"
    );
    f
}

/// Times `iters` publisher packets through one engine.
fn measure_one(f: &mut Fanout<Engine>, iters: u64) -> Duration {
    batches(f, iters, |f, batch| {
        let start = Instant::now();
        for p in batch {
            f.forward(p);
        }
        start.elapsed()
    })
}

/// Times `iters` publisher packets through two engines on two threads.
fn measure_two(f: &mut Fanout<Pair>, iters: u64) -> Duration {
    batches(f, iters, forward_on_two_threads)
}

/// Prepares, times and checks `iters` packets in batches; the clients' feedback in between
/// is not timed.
fn batches<S: sim::Sfu>(
    f: &mut Fanout<S>,
    iters: u64,
    mut timed: impl FnMut(&mut Fanout<S>, &[Packet]) -> Duration,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let batch = f.prepare(left.min(BATCH) as usize);
        left -= batch.len() as u64;
        total += timed(f, &batch);
        f.check(&batch);
        f.settle();
    }
    total
}

/// The home takes the batch on this thread and relays to the other engine, which seals and
/// sends its viewers' copies on a second thread meanwhile, as two workers do.
fn forward_on_two_threads(f: &mut Fanout<Pair>, batch: &[Packet]) -> Duration {
    let (publisher, server) = (f.publisher_addr, f.server);
    let [home, other] = &mut f.sim.engine.engines;
    let (sink, to_publisher) = (&mut f.sink, &mut f.to_publisher);
    let start = Instant::now();
    let mirrored = std::thread::scope(|s| {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, SpanMessage)>();
        let worker = s.spawn(move || {
            let mut sink = Sink::default();
            while let Some((now, m)) = rx.blocking_recv() {
                other.handle_span(now, m);
                emit(other, now, &mut sink, |_, _| false);
            }
            sink
        });
        for p in batch {
            for d in &p.datagrams {
                home.handle_datagram(p.now, publisher, server, d);
            }
            while let Some((_, m)) = home.poll_span() {
                let _ = tx.send((p.now, m));
            }
            emit(home, p.now, sink, |to, d| {
                if to == publisher {
                    to_publisher.push((to, d.to_vec()));
                    return true;
                }
                false
            });
        }
        drop(tx);
        worker.join().expect("the second worker")
    });
    let elapsed = start.elapsed();
    sink.datagrams += mirrored.datagrams;
    sink.bytes += mirrored.bytes;
    sink.rtp_to.extend(mirrored.rtp_to);
    elapsed
}

fn workers(c: &mut Criterion) {
    let mut group = c.benchmark_group("workers");
    for viewers in VIEWERS {
        group.throughput(Throughput::Elements(viewers as u64));
        let id = |name| BenchmarkId::new(name, viewers);
        let mut single = None;
        group.bench_function(id("1-worker"), |b| {
            let f = single.get_or_insert_with(|| one(viewers));
            b.iter_custom(|iters| measure_one(f, iters));
        });
        drop(single);
        let mut pair = None;
        group.bench_function(id("2-workers"), |b| {
            let f = pair.get_or_insert_with(|| two(viewers));
            b.iter_custom(|iters| measure_two(f, iters));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Ten samples are criterion's minimum; the N=10,000 cases take seconds per sample.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    targets = workers
}
criterion_main!(benches);
