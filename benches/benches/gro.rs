//! Receive coalescing: 44 TCP segments of 1448 bytes (one 64 KiB TSO frame's
//! worth, IPv4 with timestamps) merged into one frame, against the physical
//! floor of the same work: memcpy of the same 44 payloads into one buffer.
//!
//! The coalescer also verifies every IPv4 and TCP checksum and matches flow
//! headers, so the ratio says how close to copying speed that extra work is.
//! It builds the merged frame in a recycled chunk, as the switch does, and
//! the frame is dropped after each round, as a port's send drops it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, Criterion, Throughput};
use vswitch_offload::checksum::Checksum;
use vswitch_offload::gro::{
    Coalescer, Delivered, GroChecksum, GroConfig, GroOutput, SegmentChecksum,
};
use vswitch_offload::testing::{tcp_flags, FrameBuilder};
use vswitch_offload::{FrameLayout, L3Kind, L4Kind};
use vswitch_ports::buffer::ChunkPool;

const SEGMENTS: usize = 44;
const MSS: usize = 1448;

/// The segments, as a sender's TSO engine would emit them.
fn segments() -> Vec<Vec<u8>> {
    (0..SEGMENTS)
        .map(|i| {
            FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
                .dont_fragment(true)
                .ip_id(1000 + i as u16)
                .ports(40000, 443)
                .seq(7 + (i * MSS) as u32)
                .ack_number(99)
                .tcp_flags(tcp_flags::ACK)
                .window(512)
                // NOP, NOP, timestamps 1 and 2.
                .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
                .payload_with(MSS, |j| (i * 31 + j * 7) as u8)
                .build()
        })
        .collect()
}

/// Ethernet, 20-byte IPv4 header, 32-byte TCP header (timestamps).
const LAYOUT: FrameLayout = FrameLayout {
    vlan_tags: 0,
    l3_offset: 14,
    l3: L3Kind::Ipv4,
    l4_offset: 34,
    l4: Some(L4Kind::Tcp),
    payload_offset: 66,
    ipv6_fragment_header: None,
    is_fragment: false,
};

/// Where merged frames are built and delivered: recycled chunks, as the
/// switch's egress path gives them.
struct Pooled {
    pool: ChunkPool,
    delivered: usize,
}

impl Pooled {
    fn new() -> Self {
        Pooled {
            pool: ChunkPool::new(80 * 1024, 64, 4),
            delivered: 0,
        }
    }
}

impl<'a> GroOutput<&'a [u8]> for Pooled {
    fn buffer(&mut self, len: usize) -> BytesMut {
        self.pool.take(len)
    }

    fn deliver(&mut self, frame: Delivered<&'a [u8]>) {
        match frame {
            Delivered::Unchanged(frame) => self.delivered += black_box(frame).len(),
            Delivered::Merged(merged) => {
                let (buf, len) = merged.into_parts();
                let whole = buf.freeze();
                self.delivered += black_box(whole.slice(..len)).len();
                self.pool.give_back(whole);
            }
        }
    }
}

fn coalesce<'a>(gro: &mut Coalescer<&'a [u8]>, out: &mut Pooled, segs: &'a [Vec<u8>]) -> usize {
    out.delivered = 0;
    for s in segs {
        // The layout is opaque, as the parser's result is in the switch: a
        // constant one let the compiler fold its offsets into the
        // coalescer's checks, which no caller gets.
        let layout = black_box(&LAYOUT);
        gro.push(black_box(&s[..]), layout, SegmentChecksum::Unverified, out);
    }
    gro.flush_all(out);
    out.delivered
}

fn memcpy_payloads(dst: &mut Vec<u8>, segs: &[Vec<u8>]) -> usize {
    dst.clear();
    dst.extend_from_slice(&segs[0][..LAYOUT.payload_offset]);
    for s in segs {
        dst.extend_from_slice(&black_box(s)[LAYOUT.payload_offset..]);
    }
    black_box(dst).len()
}

/// The copy plus the checksum pass every merged byte needs: the floor for a
/// coalescer that verifies checksums, with whatever kernel the checksum API
/// picked on this CPU.
fn memcpy_and_checksum(dst: &mut Vec<u8>, segs: &[Vec<u8>]) -> usize {
    let mut sum = Checksum::new();
    dst.clear();
    for s in segs {
        let start = dst.len();
        dst.extend_from_slice(&black_box(s)[LAYOUT.payload_offset..]);
        sum.add_bytes(&dst[start..]);
    }
    usize::from(black_box(sum.finish()))
}

fn coalescer<'a>(mode: GroChecksum) -> Coalescer<&'a [u8]> {
    Coalescer::new(GroConfig {
        checksum: mode,
        ..GroConfig::default()
    })
    .unwrap()
}

fn bench_gro(c: &mut Criterion) {
    let segs = segments();
    // Sanity: the 44 segments become one frame of all their payloads.
    let mut gro = coalescer(GroChecksum::Partial);
    let mut out = Pooled::new();
    assert_eq!(
        coalesce(&mut gro, &mut out, &segs),
        LAYOUT.payload_offset + SEGMENTS * MSS
    );
    assert_eq!(gro.stats().frames_merged, 1);

    let mut group = c.benchmark_group("gro/44x1448");
    group.throughput(Throughput::Bytes((SEGMENTS * MSS) as u64));
    for (name, mode) in [
        ("coalesce_partial_csum", GroChecksum::Partial),
        ("coalesce_full_csum", GroChecksum::Complete),
    ] {
        let mut gro = coalescer(mode);
        let mut out = Pooled::new();
        group.bench_function(name, |b| b.iter(|| coalesce(&mut gro, &mut out, &segs)));
    }
    let mut dst = Vec::with_capacity(65536);
    group.bench_function("memcpy_payloads", |b| {
        b.iter(|| memcpy_payloads(&mut dst, &segs))
    });
    group.bench_function("memcpy_and_checksum", |b| {
        b.iter(|| memcpy_and_checksum(&mut dst, &segs))
    });
    group.finish();
}

/// Nanoseconds per call of each closure: rounds of about 20 ms each run
/// the closures in turn, and each keeps its best round, so load from other
/// processes drifting over time hits all of them alike.
fn interleaved_ns_per_call(fs: &mut [&mut dyn FnMut() -> usize]) -> Vec<f64> {
    let mut best = vec![f64::INFINITY; fs.len()];
    for _ in 0..25 {
        for (f, best) in fs.iter_mut().zip(&mut best) {
            let mut calls = 0u64;
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(20) {
                black_box(f());
                calls += 1;
            }
            *best = best.min(start.elapsed().as_nanos() as f64 / calls as f64);
        }
    }
    best
}

fn print_ratios() {
    let segs = segments();
    let (mut dst1, mut dst2) = (Vec::with_capacity(65536), Vec::with_capacity(65536));
    let mut partial = coalescer(GroChecksum::Partial);
    let mut complete = coalescer(GroChecksum::Complete);
    let (mut out1, mut out2) = (Pooled::new(), Pooled::new());
    let times = interleaved_ns_per_call(&mut [
        &mut || memcpy_payloads(&mut dst1, &segs),
        &mut || memcpy_and_checksum(&mut dst2, &segs),
        &mut || coalesce(&mut partial, &mut out1, &segs),
        &mut || coalesce(&mut complete, &mut out2, &segs),
    ]);
    let (copy, copy_sum) = (times[0], times[1]);
    let bytes = (SEGMENTS * MSS) as f64;
    println!(
        "gro 44x1448: memcpy {:.2} us ({:.1} GB/s)",
        copy / 1e3,
        bytes / copy
    );
    println!(
        "gro 44x1448: memcpy + checksum ({} kernel) {:.2} us, {:.2}x the memcpy time",
        Checksum::new().kernel().name(),
        copy_sum / 1e3,
        copy_sum / copy
    );
    for (name, t) in [("partial csum", times[2]), ("full csum", times[3])] {
        println!(
            "gro 44x1448: coalesce ({name}) {:.2} us ({:.1} GB/s), {:.2}x the memcpy time, {:.2}x memcpy + checksum",
            t / 1e3,
            bytes / t,
            t / copy,
            t / copy_sum
        );
    }
}

criterion_group!(benches, bench_gro);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_ratios();
}
