//! Toeplitz hashing: the table-driven fast path against the bit-serial
//! reference of the RSS specification, on the two input sizes that matter
//! (IPv4 with ports, 12 bytes; IPv6 with ports, 36 bytes).
//!
//! Criterion reports each time; after it, a short paired timing of the same
//! closures prints the speed-up of the table over the reference.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use vswitch_offload::rss::{toeplitz_hash, ToeplitzTable, DEFAULT_KEY};

fn inputs() -> [(&'static str, Vec<u8>); 2] {
    let v4: Vec<u8> = vec![66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6];
    let v6: Vec<u8> = (0..36u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    [("ipv4_tcp_12B", v4), ("ipv6_tcp_36B", v6)]
}

fn bench_toeplitz(c: &mut Criterion) {
    let table = ToeplitzTable::new(&DEFAULT_KEY);
    for (name, input) in inputs() {
        let mut group = c.benchmark_group(format!("toeplitz/{name}"));
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function("bit_serial_reference", |b| {
            b.iter(|| toeplitz_hash(black_box(&DEFAULT_KEY), black_box(&input)))
        });
        group.bench_function("table", |b| {
            b.iter(|| black_box(&table).hash(black_box(&input)))
        });
        group.finish();
    }
}

/// Best-of-rounds nanoseconds per call of `f`.
fn ns_per_call(mut f: impl FnMut() -> u32) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..15 {
        let mut calls = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(20) {
            for _ in 0..256 {
                black_box(f());
            }
            calls += 256;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / calls as f64);
    }
    best
}

fn print_ratios() {
    let table = ToeplitzTable::new(&DEFAULT_KEY);
    for (name, input) in inputs() {
        let reference = ns_per_call(|| toeplitz_hash(black_box(&DEFAULT_KEY), black_box(&input)));
        let fast = ns_per_call(|| black_box(&table).hash(black_box(&input)));
        println!(
            "toeplitz {name}: reference {reference:.1} ns, table {fast:.2} ns, speed-up {:.1}x",
            reference / fast
        );
    }
}

criterion_group!(benches, bench_toeplitz);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_ratios();
}
