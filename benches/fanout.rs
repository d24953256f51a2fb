//! Fan-out cost: one publisher RTP packet through the real engine to N connected viewers
//! (decrypt once, rewrite and encrypt N times), drained to a null sink. Socket-free; virtual
//! time advances 3.33 ms per packet (a 300 packets/s stream), after a warm-up long enough to
//! fill the viewers' RTX caches. Throughput is per viewer-packet.
//!
//! `cargo bench --bench fanout`

#![allow(clippy::disallowed_methods)] // a benchmark is a driver: it owns the clock

mod naive;
#[path = "../tests/common/sim.rs"]
#[allow(dead_code)] // the benchmark uses a part of the test helpers
mod sim;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sim::{SERVER, Sfu, Sim, engine_config};
use whipcast::engine::BroadcastKey;
use whipcast::offer::SessionSetup;

const B: BroadcastKey = BroadcastKey(1);
const PACKET_INTERVAL: Duration = Duration::from_micros(3_333);
/// Video payload per packet, as in a 2.5 Mb/s stream.
const PAYLOAD: usize = 1_100;

struct Setup<S: Sfu> {
    sim: Sim<S>,
    publisher: usize,
    n: u64,
}

fn setup_whipcast(viewers: usize) -> Setup<whipcast::engine::Engine> {
    let mut config = engine_config();
    config.max_viewers = viewers;
    setup(Sim::new(config), viewers)
}

fn setup_naive(viewers: usize) -> Setup<naive::Naive> {
    let setup_rtc = SessionSetup::new(engine_config().candidates);
    setup(
        Sim::with_server(naive::Naive::default(), setup_rtc),
        viewers,
    )
}

fn setup<S: Sfu>(mut sim: Sim<S>, viewers: usize) -> Setup<S> {
    sim.latency = Duration::from_millis(1);
    let publisher = sim.publish(B).expect("publish");
    sim.run_for(Duration::from_millis(200));
    for _ in 0..viewers {
        sim.view(B).expect("view");
    }
    sim.run_for(Duration::from_millis(500));
    let mut s = Setup {
        sim,
        publisher,
        n: 0,
    };
    // Start every viewer on a keyframe, then warm up: 3 s of packets fill the RTX caches.
    let kf = s.sim.send_frame(publisher, 0, true);
    black_box(kf);
    s.sim.run_for(Duration::from_millis(100));
    for _ in 0..900 {
        forward_one(&mut s);
    }
    s.sim.run_for(Duration::from_millis(100));
    if std::env::var("FANOUT_DEBUG").is_ok() {
        let d = s.sim.capture_publisher_packet(s.publisher, 5000, PAYLOAD);
        eprintln!(
            "captured {} datagrams; stats {:?}; viewers connected {}",
            d.len(),
            s.sim.engine.stats(),
            s.sim.clients.iter().filter(|c| c.connected).count()
        );
    }
    s
}

/// One publisher packet into the engine and every resulting datagram out; returns how many.
fn forward_one<S: Sfu>(s: &mut Setup<S>) -> usize {
    s.n += 1;
    s.sim.now += PACKET_INTERVAL;
    let datagrams = s.sim.capture_publisher_packet(s.publisher, s.n, PAYLOAD);
    let server = SERVER.parse().unwrap();
    let now = s.sim.now;
    let mut out = 0;
    for (src, d) in &datagrams {
        s.sim.engine.handle_datagram(now, *src, server, d);
    }
    if s.sim.engine.poll_timeout().is_some_and(|t| t <= now) {
        s.sim.engine.handle_timeout(now);
    }
    while let Some(t) = s.sim.engine.poll_transmit() {
        out += black_box(t.contents.len()).min(1);
    }
    out
}

/// The publisher's next datagrams holding one RTP packet (str0m may hand out the packet a
/// tick later, or an RTCP report alone).
fn next_rtp<S: Sfu>(s: &mut Setup<S>) -> Vec<(std::net::SocketAddr, Vec<u8>)> {
    loop {
        s.n += 1;
        s.sim.now += PACKET_INTERVAL;
        let d = s.sim.capture_publisher_packet(s.publisher, s.n, PAYLOAD);
        if d.iter().any(|(_, p)| {
            p.len() > 12 && p[0] & 0xc0 == 0x80 && !(64..=95).contains(&(p[1] & 0x7f))
        }) {
            return d;
        }
        // Deliver what was not media (RTCP) and let time pass.
        for (src, p) in &d {
            s.sim
                .engine
                .handle_datagram(s.sim.now, *src, SERVER.parse().unwrap(), p);
        }
        while s.sim.engine.poll_transmit().is_some() {}
    }
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for viewers in [1usize, 10, 100, 1000] {
        group.throughput(Throughput::Elements(viewers as u64));
        let mut ours = setup_whipcast(viewers);
        group.bench_with_input(
            BenchmarkId::new("whipcast", viewers),
            &viewers,
            |b, &viewers| b.iter_custom(|iters| measure(&mut ours, iters, viewers)),
        );
        drop(ours);
        let mut naive = setup_naive(viewers);
        group.bench_with_input(
            BenchmarkId::new("naive", viewers),
            &viewers,
            |b, &viewers| b.iter_custom(|iters| measure(&mut naive, iters, viewers)),
        );
    }
    group.finish();
}

/// Times `iters` publisher packets through the server, each drained to a null sink.
fn measure<S: Sfu>(s: &mut Setup<S>, iters: u64, viewers: usize) -> Duration {
    let mut total = Duration::ZERO;
    let publisher_addr = s.sim.clients[s.publisher].addr;
    let mut to_publisher = Vec::new();
    for i in 0..iters {
        // Outside the timing: keep viewers' consent and feedback flowing.
        if i % 500 == 499 {
            s.sim.run_for(Duration::from_millis(20));
        }
        let datagrams = next_rtp(s);
        let server = SERVER.parse().unwrap();
        let now = s.sim.now;
        let start = Instant::now();
        for (src, d) in &datagrams {
            s.sim.engine.handle_datagram(now, *src, server, d);
        }
        let mut sent = 0;
        while let Some(t) = s.sim.engine.poll_transmit() {
            if t.destination == publisher_addr {
                to_publisher.push(t.contents.to_vec());
            } else {
                sent += black_box(&t).contents.len().min(1);
            }
        }
        total += start.elapsed();
        // Outside the timing: the publisher needs its STUN answers and RTCP.
        for d in to_publisher.drain(..) {
            s.sim.deliver(publisher_addr, &d);
        }
        assert!(
            sent >= viewers,
            "every viewer got the packet: {sent} < {viewers}"
        );
    }
    total
}

criterion_group!(benches, fanout);
criterion_main!(benches);
