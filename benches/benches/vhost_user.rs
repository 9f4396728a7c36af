//! A frame from one guest to another through the vhost-user device side
//! (`vhost_user::queue::drain_tx` on the sender's transmit ring, the guest
//! port's queues, `fill_rx` into the receiver's buffers), against the
//! physical limit measured in the same run: memcpy of the same bytes.
//! Each case runs twice: with the frame copied out of the sender's memory
//! into a host buffer and from there into the receiver's buffers (two
//! copies a byte, so 2.0x memcpy is that path's floor), and, where the
//! frame can be lent (`drain_tx_lending`: a TCP TSO frame), with its
//! payload read straight out of the sender's buffers into the receiver's
//! (one copy, floor 1.0x).
//!
//! Cases: a 64 KiB frame (no offload asked, so never lent) into 4 KiB
//! mergeable buffers, one 1514-byte frame into one 2 KiB buffer,
//! (`65000-tso`) a 64 KiB TCP TSO frame toward a receiver with GUEST_TSO4,
//! into 4 KiB mergeable buffers, and (`65000-cut`) the same frame toward a
//! receiver that negotiated no offloads, whose port cuts it into 45
//! segments and computes their checksums on the way into 2 KiB buffers
//! (memcpy of the frame is the reference there too). The
//! rings are the guests' real split virtqueues in guest memory, driven by
//! the project's mock driver, whose own work (posting buffers, reaping
//! used entries) is left out of the time. A best-of-N table with the ratio is printed
//! before criterion's report. Nothing here asserts a time.
//! `VHOST_USER_BENCH_PROFILE=65000` (or `1514`, `65000-tso`, `65000-cut`)
//! runs only that case's frames, 10,000 of them, for a profiler
//! (callgrind, perf); `VHOST_USER_BENCH_LEND=1` lends them where they can
//! be lent.
//!
//! ```text
//! cargo bench -p vswitch-benches --bench vhost_user
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vswitch_benches::virtio_chain;
use vswitch_offload::testing::FrameBuilder;
use vswitch_ports::features::Features;
use vswitch_ports::guest::mock::{Desc, DriverQueue};
use vswitch_ports::guest::{CondvarNotifier, GuestPort, GuestPortConfig, LentMemory};
use vswitch_ports::vhost_user::{negotiate, queue};
use vswitch_ports::Port;

const HDR: usize = 12;

/// Two guests' memories and rings, a port each, and a prepared frame.
struct Pair {
    /// Shared, as a backend's memory snapshots are, so that payloads can
    /// be lent out of it.
    tx_mem: Arc<GuestMemoryMmap>,
    rx_mem: GuestMemoryMmap,
    frame_len: usize,
    buffer: u32,
    /// The receiver takes no offloads: its port cuts the frame and
    /// computes every checksum on the way in.
    cut: bool,
}

/// The MSS of the TSO frame cut for a receiver without offloads.
const MSS: usize = 1448;
/// Its Ethernet, IPv4 and TCP headers.
const TCP4_HEADERS: usize = 54;

const FRAME_AT: u64 = 0x10_0000;
const BUFFERS_AT: u64 = 0x10_0000;

impl Pair {
    fn new(frame_len: usize, buffer: u32, tcp: bool, cut: bool) -> Pair {
        let tx_mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 21)]).unwrap();
        let rx_mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 21)]).unwrap();
        let chain = if tcp {
            // A TCP/IPv4 TSO frame with a partial checksum, as a Linux
            // guest hands it over.
            let frame = FrameBuilder::tcp4([198, 18, 0, 1], [198, 18, 0, 2])
                .macs([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .payload_with(frame_len - TCP4_HEADERS, |i| i as u8)
                .gso(MSS as u16);
            virtio_chain(&frame.hdr(), &frame.build())
        } else {
            // Header (no offload work asked: the bench measures moving
            // bytes) and an Ethernet frame.
            let mut chain = vec![0u8; HDR + frame_len];
            chain[HDR..HDR + 6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
            chain[HDR + 6..HDR + 12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
            chain[HDR + 12..HDR + 14].copy_from_slice(&[0x88, 0xb5]);
            chain
        };
        tx_mem.write_slice(&chain, GuestAddress(FRAME_AT)).unwrap();
        Pair {
            tx_mem: Arc::new(tx_mem),
            rx_mem,
            frame_len,
            buffer,
            cut,
        }
    }

    /// Runs `rounds` frames from sender to receiver, lending their
    /// payloads with `lend`; returns the time the device side took.
    fn run(&self, rounds: usize, lend: bool) -> Duration {
        let lent: Arc<dyn LentMemory> = Arc::new(self.tx_mem.clone());
        let acked = Features::VERSION_1
            | Features::MRG_RXBUF
            | Features::CSUM
            | Features::GUEST_CSUM
            | Features::HOST_TSO4
            | Features::GUEST_TSO4;
        let negotiated = negotiate(1, acked.bits()).unwrap();
        let plain = negotiate(1, (Features::VERSION_1 | Features::MRG_RXBUF).bits()).unwrap();
        let mtu = if self.cut { 1500 } else { 9000 };
        let config = || GuestPortConfig::new("g").mtu(mtu).queue_len(64);
        let a = GuestPort::new(config(), negotiated, Arc::new(CondvarNotifier::new()));
        let b_features = if self.cut { plain } else { negotiated };
        let b = GuestPort::new(config(), b_features, Arc::new(CondvarNotifier::new()));
        let mut tx_drv = DriverQueue::new(
            &*self.tx_mem,
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
        // One buffer a segment when the receiver's port cuts the frame.
        let buffers = if self.cut {
            (self.frame_len - TCP4_HEADERS).div_ceil(MSS)
        } else {
            (HDR + self.frame_len).div_ceil(self.buffer as usize)
        };
        // What the receive side counts as frames: each segment is one.
        let buffers_per_frame = if self.cut { buffers } else { 1 };
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
            // A lent chain comes back to the sender's used ring on the
            // drain after the receiver took its bytes: inside the time.
            let tx_mem = &*self.tx_mem;
            let sent = if lend {
                queue::drain_tx_lending(
                    1,
                    &mut tx,
                    &tx_mem,
                    &lent,
                    a.queue(0).unwrap(),
                    64,
                    &mut heads,
                )
            } else {
                queue::drain_tx(1, &mut tx, &tx_mem, a.queue(0).unwrap(), 64, &mut heads)
            }
            .unwrap();
            a.receive(0, &mut batch, 64).unwrap();
            b.send_batch(0, &mut batch).unwrap();
            // A frame cut into segments is more frames than one call's
            // budget: call again while there is more.
            let mut got = 0;
            loop {
                let filled = queue::fill_rx(
                    0,
                    &mut rx,
                    &&self.rx_mem,
                    b.queue(0).unwrap(),
                    64,
                    &mut used,
                )
                .unwrap();
                got += filled.frames;
                if !filled.more {
                    break;
                }
            }
            spent += start.elapsed();
            assert_eq!((sent.frames, got), (turn, turn * buffers_per_frame));
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

/// A case: its name, frame length, receive buffer size, whether the
/// frame is a TCP TSO frame, and whether the receiver's port cuts it.
struct Case {
    name: &'static str,
    len: usize,
    buffer: u32,
    tcp: bool,
    cut: bool,
}

const CASES: [Case; 4] = [
    Case {
        name: "65000",
        len: 65_000,
        buffer: 4096,
        tcp: false,
        cut: false,
    },
    Case {
        name: "1514",
        len: 1514,
        buffer: 2048,
        tcp: false,
        cut: false,
    },
    Case {
        name: "65000-tso",
        len: 65_000,
        buffer: 4096,
        tcp: true,
        cut: false,
    },
    Case {
        name: "65000-cut",
        len: 65_000,
        buffer: 2048,
        tcp: true,
        cut: true,
    },
];

impl Case {
    fn pair(&self) -> Pair {
        Pair::new(self.len, self.buffer, self.tcp, self.cut)
    }
}

fn table() {
    println!("guest to guest through the vhost-user device side, best of 7 (ns per frame)");
    println!(
        "{:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "case", "copied", "lent", "memcpy", "copied/m", "lent/m"
    );
    for case in &CASES {
        let pair = case.pair();
        let rounds = if case.len > 10_000 { 2_000 } else { 20_000 };
        let (mut copied, mut lent, mut copy) = (Duration::MAX, Duration::MAX, Duration::MAX);
        for _ in 0..7 {
            copied = copied.min(pair.run(rounds, false));
            if case.tcp {
                lent = lent.min(pair.run(rounds, true));
            }
            copy = copy.min(memcpy(HDR + case.len, rounds));
        }
        let per = |d: Duration| d.as_nanos() as f64 / rounds as f64;
        let (lent, lent_ratio) = if case.tcp {
            (
                format!("{:.0}", per(lent)),
                format!("{:.2}x", per(lent) / per(copy)),
            )
        } else {
            ("-".to_string(), "-".to_string())
        };
        println!(
            "{:>10} {:>10.0} {:>10} {:>10.0} {:>7.2}x {:>8}",
            case.name,
            per(copied),
            lent,
            per(copy),
            per(copied) / per(copy),
            lent_ratio
        );
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("vhost_user_guest_to_guest");
    for case in &CASES {
        let pair = case.pair();
        let len = case.len;
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(
            BenchmarkId::new("device_side", case.name),
            &pair,
            |b, pair| b.iter_custom(|iters| pair.run(iters as usize, false)),
        );
        if case.tcp {
            group.bench_with_input(
                BenchmarkId::new("device_side_lent", case.name),
                &pair,
                |b, pair| b.iter_custom(|iters| pair.run(iters as usize, true)),
            );
        }
        group.bench_with_input(BenchmarkId::new("memcpy", case.name), &len, |b, &len| {
            b.iter_custom(|iters| memcpy(HDR + len, iters as usize))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(case) = std::env::var("VHOST_USER_BENCH_PROFILE") {
        let Some(found) = CASES.iter().find(|known| known.name == case) else {
            let names: Vec<&str> = CASES.iter().map(|known| known.name).collect();
            eprintln!(
                "VHOST_USER_BENCH_PROFILE: expected one of {}, got {case:?}",
                names.join(", ")
            );
            std::process::exit(2);
        };
        let frames = 10_000;
        let lend = std::env::var_os("VHOST_USER_BENCH_LEND").is_some_and(|v| v == "1");
        let spent = found.pair().run(frames, lend);
        println!(
            "{case}: {:.0} ns per frame",
            spent.as_nanos() as f64 / frames as f64
        );
        return;
    }
    table();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
