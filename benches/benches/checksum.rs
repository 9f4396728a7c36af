//! Internet checksum throughput: each kernel this CPU supports against
//! etherparse and the internet-checksum crate, and against two limits of the
//! core measured in the same run: read bandwidth (summing u64 words with no
//! carries) and memcpy (for the fused copy-and-checksum).
//!
//! Run with
//! `cargo bench -p vswitch-benches --bench checksum -- --warm-up-time 1 --measurement-time 3`.
//! After criterion's groups a table of ratios is printed, measured with a
//! plain best-of-N timing loop over the same inputs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use vswitch_offload::checksum::{
    checksum, checksum_with, copy_and_checksum, copy_and_checksum_with, Kernel,
};

/// Frame sizes: a minimal frame, the IPv4 minimum MTU, the Ethernet MTU, a
/// jumbo frame and a full TSO frame.
const SIZES: [usize; 5] = [64, 576, 1500, 9000, 65536];

/// The ratio table adds the sizes of bare headers (an IPv4 header, IPv4 plus
/// TCP), the most frequent calls.
const TABLE_SIZES: [usize; 7] = [20, 40, 64, 576, 1500, 9000, 65536];

/// Deterministic non-trivial bytes.
fn test_data(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

fn etherparse_checksum(data: &[u8]) -> u16 {
    etherparse::checksum::Sum16BitWords::new()
        .add_slice(data)
        .ones_complement()
}

fn internet_checksum(data: &[u8]) -> [u8; 2] {
    internet_checksum::checksum(data)
}

/// The read-bandwidth limit: a wrapping sum of u64 words, no carries (the
/// compiler may vectorise it, which is what a limit should do).
fn read_limit(data: &[u8]) -> u64 {
    let (words, rest) = data.as_chunks::<8>();
    let sum = words.iter().fold(0u64, |acc, word| {
        acc.wrapping_add(u64::from_ne_bytes(*word))
    });
    sum.wrapping_add(rest.len() as u64)
}

fn memcpy(dst: &mut [u8], src: &[u8]) {
    dst.copy_from_slice(src);
}

fn criterion_groups(c: &mut Criterion) {
    let kernels: Vec<Kernel> = Kernel::supported().collect();
    for &size in &SIZES {
        let src = test_data(size);
        let mut dst = vec![0u8; size];
        let mut group = c.benchmark_group(format!("checksum/{size}"));
        group.throughput(Throughput::Bytes(size as u64));
        for &kernel in &kernels {
            group.bench_function(kernel.name(), |b| {
                b.iter(|| checksum_with(kernel, black_box(&src)))
            });
        }
        group.bench_function("etherparse", |b| {
            b.iter(|| etherparse_checksum(black_box(&src)))
        });
        group.bench_function("internet-checksum", |b| {
            b.iter(|| internet_checksum(black_box(&src)))
        });
        group.bench_function("read-limit", |b| b.iter(|| read_limit(black_box(&src))));
        group.bench_function("memcpy", |b| {
            b.iter(|| memcpy(black_box(&mut dst), black_box(&src)))
        });
        for &kernel in &kernels {
            group.bench_function(format!("copy_and_checksum/{}", kernel.name()), |b| {
                b.iter(|| copy_and_checksum_with(kernel, black_box(&mut dst), black_box(&src)))
            });
        }
        group.finish();
    }
}

/// Bytes per second of `f` over `bytes`-byte inputs: the best of several
/// samples, each timing enough calls to last about 2 ms.
fn throughput(bytes: usize, mut f: impl FnMut()) -> f64 {
    let calls = (4_000_000 / bytes.max(1)).clamp(64, 1_000_000);
    for _ in 0..calls {
        f();
    }
    let mut best = Duration::MAX;
    for _ in 0..25 {
        let start = Instant::now();
        for _ in 0..calls {
            f();
        }
        best = best.min(start.elapsed());
    }
    (bytes * calls) as f64 / best.as_secs_f64()
}

fn gbps(bytes_per_second: f64) -> String {
    format!("{:.1}", bytes_per_second / 1e9)
}

fn ratio_table() {
    let kernels: Vec<Kernel> = Kernel::supported().collect();
    println!();
    println!(
        "Ratios (GB/s = 1e9 bytes/s, best of 25 samples; detected kernel: {})",
        Kernel::detect().name()
    );
    println!(
        "{:>6} {:>7} {:>8} {:>11} {:>6} {:>10} {:>6} {:>9} {:>6} {:>8} {:>8} {:>6}",
        "size",
        "kernel",
        "GB/s",
        "etherparse",
        "x",
        "inet-csum",
        "x",
        "read-lim",
        "of",
        "copy+sum",
        "memcpy",
        "of"
    );
    for &size in &TABLE_SIZES {
        let src = test_data(size);
        let mut dst = vec![0u8; size];
        let etherparse = throughput(size, || {
            black_box(etherparse_checksum(black_box(&src)));
        });
        let inet = throughput(size, || {
            black_box(internet_checksum(black_box(&src)));
        });
        let read = throughput(size, || {
            black_box(read_limit(black_box(&src)));
        });
        let copy = throughput(size, || {
            memcpy(black_box(&mut dst), black_box(&src));
            black_box(&dst);
        });
        // "auto" is the public entry point with the detected kernel.
        let mut rows: Vec<(&str, f64, f64)> = Vec::new();
        for &kernel in &kernels {
            let sum = throughput(size, || {
                black_box(checksum_with(kernel, black_box(&src)));
            });
            let fused = throughput(size, || {
                black_box(copy_and_checksum_with(
                    kernel,
                    black_box(&mut dst),
                    black_box(&src),
                ));
            });
            rows.push((kernel.name(), sum, fused));
        }
        let auto = throughput(size, || {
            black_box(checksum(black_box(&src)));
        });
        let auto_fused = throughput(size, || {
            black_box(copy_and_checksum(black_box(&mut dst), black_box(&src)));
        });
        rows.push(("auto", auto, auto_fused));
        for (name, sum, fused) in rows {
            println!(
                "{:>6} {:>7} {:>8} {:>11} {:>6.2} {:>10} {:>6.2} {:>9} {:>6.2} {:>8} {:>8} {:>6.2}",
                size,
                name,
                gbps(sum),
                gbps(etherparse),
                sum / etherparse,
                gbps(inet),
                sum / inet,
                gbps(read),
                sum / read,
                gbps(fused),
                gbps(copy),
                fused / copy,
            );
        }
    }
    println!(
        "x = kernel / peer; of = kernel / limit (read-lim: wrapping u64 sum; memcpy: copy_from_slice)"
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    criterion_groups(&mut criterion);
    criterion.final_summary();
    let args: Vec<String> = std::env::args().collect();
    let listing = args.iter().any(|arg| arg == "--list" || arg == "--test");
    if !listing {
        ratio_table();
    }
}
