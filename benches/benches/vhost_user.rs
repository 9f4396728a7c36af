//! A frame from one guest to another through the vhost-user device side
//! (`vhost_user::queue::drain_tx` on the sender's transmit ring, the guest
//! port's queues, `fill_rx` into the receiver's buffers), against the
//! physical limit measured in the same run: memcpy of the same bytes. The
//! path copies each byte twice (out of the sender's memory into a host
//! buffer, then into the receiver's buffers), so 2.0x memcpy is the floor
//! of this design; a single-copy path would be 1.0x.
//!
//! Cases: one 64 KiB TSO frame into 4 KiB mergeable buffers (a receiver
//! with GUEST_TSO4), and one 1514-byte frame into one 2 KiB buffer. The
//! rings are the guests' real split virtqueues in guest memory, driven by
//! the project's mock driver, whose own work (posting buffers, reaping
//! used entries) is left out of the time. A best-of-N table with the ratio is printed
//! before criterion's report. Nothing here asserts a time.
//! `VHOST_USER_BENCH_PROFILE=65000` (or `1514`) runs only that case's
//! frames, 10,000 of them, for a profiler (callgrind, perf).
//!
//! ```text
//! cargo bench -p vswitch-benches --bench vhost_user
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vswitch_ports::features::Features;
use vswitch_ports::guest::mock::{Desc, DriverQueue};
use vswitch_ports::guest::{CondvarNotifier, GuestPort, GuestPortConfig};
use vswitch_ports::vhost_user::{negotiate, queue};
use vswitch_ports::Port;

const HDR: usize = 12;

/// Two guests' memories and rings, a port each, and a prepared frame.
struct Pair {
    tx_mem: GuestMemoryMmap,
    rx_mem: GuestMemoryMmap,
    frame_len: usize,
    buffer: u32,
}

const FRAME_AT: u64 = 0x10_0000;
const BUFFERS_AT: u64 = 0x10_0000;

impl Pair {
    fn new(frame_len: usize, buffer: u32) -> Pair {
        let tx_mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 21)]).unwrap();
        let rx_mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 21)]).unwrap();
        // The frame the sender transmits: header (no offload work asked:
        // the bench measures moving bytes) and an Ethernet frame.
        let mut chain = vec![0u8; HDR + frame_len];
        chain[HDR..HDR + 6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        chain[HDR + 6..HDR + 12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        chain[HDR + 12..HDR + 14].copy_from_slice(&[0x88, 0xb5]);
        tx_mem.write_slice(&chain, GuestAddress(FRAME_AT)).unwrap();
        Pair {
            tx_mem,
            rx_mem,
            frame_len,
            buffer,
        }
    }

    /// Runs `rounds` frames from sender to receiver; returns the time the
    /// device side took.
    fn run(&self, rounds: usize) -> Duration {
        let acked = Features::VERSION_1
            | Features::MRG_RXBUF
            | Features::CSUM
            | Features::GUEST_CSUM
            | Features::HOST_TSO4
            | Features::GUEST_TSO4;
        let negotiated = negotiate(1, acked.bits()).unwrap();
        let config = || GuestPortConfig::new("g").mtu(9000).queue_len(64);
        let a = GuestPort::new(config(), negotiated, Arc::new(CondvarNotifier::new()));
        let b = GuestPort::new(config(), negotiated, Arc::new(CondvarNotifier::new()));
        let mut tx_drv = DriverQueue::new(
            &self.tx_mem,
            GuestAddress(0),
            256,
            GuestAddress(0x8_0000),
            0x1000,
        );
        let mut rx_drv = DriverQueue::new(
            &self.rx_mem,
            GuestAddress(0),
            256,
            GuestAddress(0x8_0000),
            0x1000,
        );
        let mut tx = tx_drv.device_queue();
        let mut rx = rx_drv.device_queue();
        let buffers = (HDR + self.frame_len).div_ceil(self.buffer as usize);
        // Frames per turn: the driver's side (posting, reaping) runs between
        // turns, outside the time measured.
        let per_turn = (200 / buffers).clamp(1, 16);
        let (mut heads, mut used, mut batch) = (Vec::new(), Vec::new(), Vec::new());
        let mut spent = Duration::ZERO;
        let mut done_frames = 0;
        while done_frames < rounds {
            let turn = per_turn.min(rounds - done_frames);
            for _ in 0..turn {
                tx_drv.post(&[Desc::readable(FRAME_AT, (HDR + self.frame_len) as u32)]);
                for i in 0..buffers {
                    let at = BUFFERS_AT + i as u64 * u64::from(self.buffer);
                    rx_drv.post(&[Desc::writable(at, self.buffer)]);
                }
            }
            let start = Instant::now();
            let sent = queue::drain_tx(
                1,
                &mut tx,
                &&self.tx_mem,
                a.queue(0).unwrap(),
                64,
                &mut heads,
            )
            .unwrap();
            a.receive(0, &mut batch, 64).unwrap();
            b.send_batch(0, &mut batch).unwrap();
            let got = queue::fill_rx(
                0,
                &mut rx,
                &&self.rx_mem,
                b.queue(0).unwrap(),
                64,
                &mut used,
            )
            .unwrap();
            spent += start.elapsed();
            assert_eq!((sent.frames, got.frames), (turn, turn));
            black_box(tx_drv.take_used());
            black_box(rx_drv.take_used());
            done_frames += turn;
        }
        spent
    }
}

fn memcpy(len: usize, rounds: usize) -> Duration {
    let src = vec![7u8; len];
    let mut dst = vec![0u8; len];
    let start = Instant::now();
    for _ in 0..rounds {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }
    start.elapsed()
}

fn table() {
    println!("guest to guest through the vhost-user device side, best of 7 (ns per frame)");
    println!(
        "{:>8} {:>10} {:>10} {:>8}",
        "frame", "path", "memcpy", "ratio"
    );
    for (len, buffer) in CASES {
        let pair = Pair::new(len, buffer);
        let rounds = if len > 10_000 { 2_000 } else { 20_000 };
        let (mut path, mut copy) = (Duration::MAX, Duration::MAX);
        for _ in 0..7 {
            path = path.min(pair.run(rounds));
            copy = copy.min(memcpy(HDR + len, rounds));
        }
        let per = |d: Duration| d.as_nanos() as f64 / rounds as f64;
        println!(
            "{:>8} {:>10.0} {:>10.0} {:>7.2}x",
            len,
            per(path),
            per(copy),
            per(path) / per(copy)
        );
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("vhost_user_guest_to_guest");
    for (len, buffer) in CASES {
        let pair = Pair::new(len, buffer);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("device_side", len), &pair, |b, pair| {
            b.iter_custom(|iters| pair.run(iters as usize))
        });
        group.bench_with_input(BenchmarkId::new("memcpy", len), &len, |b, &len| {
            b.iter_custom(|iters| memcpy(HDR + len, iters as usize))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

/// The two cases: frame length and receive buffer size.
const CASES: [(usize, u32); 2] = [(65_000, 4096), (1514, 2048)];

fn main() {
    if let Ok(case) = std::env::var("VHOST_USER_BENCH_PROFILE") {
        let Some(&(len, buffer)) = CASES.iter().find(|(len, _)| len.to_string() == case) else {
            eprintln!("VHOST_USER_BENCH_PROFILE: expected one of 65000, 1514, got {case:?}");
            std::process::exit(2);
        };
        let frames = 10_000;
        let spent = Pair::new(len, buffer).run(frames);
        println!(
            "{len}-byte frames: {:.0} ns per frame",
            spent.as_nanos() as f64 / frames as f64
        );
        return;
    }
    table();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
