//! Internet checksum throughput: each kernel this CPU supports against
//! etherparse and the internet-checksum crate, and against two limits of the
//! core measured in the same run: read bandwidth (summing u64 words with no
//! carries) and memcpy (for the fused copy-and-checksum).
//!
//! Run with
//! `cargo bench -p vswitch-benches --bench checksum -- --warm-up-time 1 --measurement-time 3`.
//! After criterion's groups two tables are printed, measured with a plain
//! best-of-N timing loop with the candidates interleaved: the ratios against
//! the peers and limits, and the fused copy against memcpy as a function of
//! the destination's distance from the source modulo 4 KiB. A filter that
//! matches no benchmark (`-- tables-only`) skips criterion and prints only
//! the tables.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use read_limit::Isa;
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

/// The read-bandwidth limit: a wrapping sum of u64 words, no carries, which
/// the compiler vectorises. Compiled for the default target and again for
/// the widest vector ISA the CPU has, since the kernels use those too.
#[allow(unsafe_code)]
mod read_limit {
    /// Which compilation of the loop to run.
    #[derive(Clone, Copy, Debug)]
    pub enum Isa {
        Baseline,
        #[cfg(target_arch = "x86_64")]
        Avx2,
        #[cfg(target_arch = "x86_64")]
        Avx512,
    }

    impl Isa {
        /// The widest compilation this CPU runs.
        pub fn widest() -> Isa {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if std::is_x86_feature_detected!("avx2") {
                    return Isa::Avx2;
                }
            }
            Isa::Baseline
        }

        pub fn name(self) -> &'static str {
            match self {
                Isa::Baseline => "read-limit/baseline",
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => "read-limit/avx2",
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => "read-limit/avx512",
            }
        }
    }

    #[inline(always)]
    fn wrapping_sum(data: &[u8]) -> u64 {
        let (words, rest) = data.as_chunks::<8>();
        let sum = words.iter().fold(0u64, |acc, word| {
            acc.wrapping_add(u64::from_ne_bytes(*word))
        });
        sum.wrapping_add(rest.len() as u64)
    }

    #[inline(never)]
    fn baseline(data: &[u8]) -> u64 {
        wrapping_sum(data)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(never)]
    #[target_feature(enable = "avx2")]
    fn avx2(data: &[u8]) -> u64 {
        wrapping_sum(data)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    fn avx512(data: &[u8]) -> u64 {
        wrapping_sum(data)
    }

    /// Sums `data` with the given compilation; an ISA is only ever one that
    /// [`Isa::widest`] returned or the baseline.
    #[inline]
    pub fn run(isa: Isa, data: &[u8]) -> u64 {
        match isa {
            Isa::Baseline => baseline(data),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::Avx2 comes from Isa::widest, which returns it only
            // after is_x86_feature_detected!("avx2").
            Isa::Avx2 => unsafe { avx2(data) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::Avx512 comes from Isa::widest, which returns it
            // only after is_x86_feature_detected!("avx512f").
            Isa::Avx512 => unsafe { avx512(data) },
        }
    }
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
        let mut limits = vec![Isa::Baseline, Isa::widest()];
        limits.dedup_by_key(|isa| isa.name());
        for isa in limits {
            group.bench_function(isa.name(), |b| {
                b.iter(|| read_limit::run(isa, black_box(&src)))
            });
        }
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

/// Samples per candidate in the ratio table; the best one counts.
const ROUNDS: usize = 30;

/// One contender in the ratio table: runs its operation `calls` times.
type Candidate<'a> = Box<dyn FnMut(usize) + 'a>;

/// Bytes per second of each candidate over `bytes`-byte inputs: the best of
/// [`ROUNDS`] samples, each timing enough calls to last about 1 ms. The
/// candidates take turns sample by sample, so a burst of load from other
/// processes slows all of them rather than skewing one ratio.
fn throughputs(bytes: usize, candidates: &mut [Candidate<'_>]) -> Vec<f64> {
    let calls = (2_000_000 / bytes.max(1)).clamp(64, 200_000);
    for candidate in candidates.iter_mut() {
        candidate(calls);
    }
    let mut best = vec![Duration::MAX; candidates.len()];
    for _ in 0..ROUNDS {
        for (candidate, best) in candidates.iter_mut().zip(&mut best) {
            let start = Instant::now();
            candidate(calls);
            *best = (*best).min(start.elapsed());
        }
    }
    best.iter()
        .map(|time| (bytes * calls) as f64 / time.as_secs_f64())
        .collect()
}

/// A candidate that checksums (or reads) `src` with `f`.
fn reader<'a, T>(src: &'a [u8], f: impl Fn(&[u8]) -> T + 'a) -> Candidate<'a> {
    Box::new(move |calls| {
        for _ in 0..calls {
            black_box(f(black_box(src)));
        }
    })
}

/// A candidate that copies `src` into its own buffer with `f`.
fn copier<'a, T>(src: &'a [u8], f: impl Fn(&mut [u8], &[u8]) -> T + 'a) -> Candidate<'a> {
    let mut dst = vec![0u8; src.len()];
    Box::new(move |calls| {
        for _ in 0..calls {
            black_box(f(black_box(&mut dst), black_box(src)));
        }
    })
}

fn gbps(bytes_per_second: f64) -> String {
    format!("{:.1}", bytes_per_second / 1e9)
}

fn ratio_table() {
    let kernels: Vec<Kernel> = Kernel::supported().collect();
    let isa = Isa::widest();
    println!();
    println!(
        "Ratios (GB/s = 1e9 bytes/s, best of {ROUNDS} interleaved samples; detected kernel: {}; read limit: {})",
        Kernel::detect().name(),
        isa.name()
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
        // Candidates 0..4 are the peers and limits; then, per kernel and
        // for "auto" (the public entry points with the detected kernel), a
        // checksum and a copy-and-checksum.
        let mut candidates: Vec<Candidate<'_>> = vec![
            reader(&src, etherparse_checksum),
            reader(&src, internet_checksum),
            reader(&src, move |data| read_limit::run(isa, data)),
            copier(&src, memcpy),
        ];
        let mut names: Vec<&str> = Vec::new();
        for &kernel in &kernels {
            candidates.push(reader(&src, move |data| checksum_with(kernel, data)));
            candidates.push(copier(&src, move |dst, src| {
                copy_and_checksum_with(kernel, dst, src)
            }));
            names.push(kernel.name());
        }
        candidates.push(reader(&src, checksum));
        candidates.push(copier(&src, copy_and_checksum));
        names.push("auto");

        let rates = throughputs(size, &mut candidates);
        let [etherparse, inet, read, copy, ref ours @ ..] = rates[..] else {
            unreachable!("four peers and limits come first");
        };
        for (name, pair) in names.iter().zip(ours.chunks_exact(2)) {
            let [sum, fused] = pair else {
                unreachable!("chunks_exact(2)");
            };
            println!(
                "{:>6} {:>7} {:>8} {:>11} {:>6.2} {:>10} {:>6.2} {:>9} {:>6.2} {:>8} {:>8} {:>6.2}",
                size,
                name,
                gbps(*sum),
                gbps(etherparse),
                sum / etherparse,
                gbps(inet),
                sum / inet,
                gbps(read),
                sum / read,
                gbps(*fused),
                gbps(copy),
                fused / copy,
            );
        }
    }
    println!(
        "x = kernel / peer; of = kernel / limit (read-lim: wrapping u64 sum; memcpy: copy_from_slice)"
    );
}

/// A candidate that copies `src` with `f` into its own buffer, placed so
/// that the destination starts `distance` bytes (modulo 4 KiB) after `src`.
fn copier_at<'a, T>(
    src: &'a [u8],
    distance: usize,
    f: impl Fn(&mut [u8], &[u8]) -> T + 'a,
) -> Candidate<'a> {
    let mut buffer = vec![0u8; src.len() + 8192];
    let want = (src.as_ptr() as usize + distance) % 4096;
    let start = (want + 4096 - buffer.as_ptr() as usize % 4096) % 4096;
    Box::new(move |calls| {
        let dst = &mut buffer[start..start + src.len()];
        for _ in 0..calls {
            black_box(f(black_box(&mut *dst), black_box(src)));
        }
    })
}

/// Fused copy against memcpy at 64 KiB as a function of where the
/// destination sits relative to the source modulo 4 KiB: loads that share
/// address bits 0..12 with recent stores stall ("4K aliasing").
fn distance_table() {
    let size = 65536;
    let src = test_data(size);
    println!();
    println!("copy_and_checksum (detected kernel) vs memcpy at {size} B, by (dst - src) mod 4096");
    println!(
        "{:>9} {:>9} {:>8} {:>6}",
        "distance", "copy+sum", "memcpy", "of"
    );
    for distance in [0usize, 32, 64, 128, 256, 512, 1024, 2048, 4032] {
        let mut candidates = vec![
            copier_at(&src, distance, copy_and_checksum),
            copier_at(&src, distance, memcpy),
        ];
        let rates = throughputs(size, &mut candidates);
        if let [fused, copy] = rates[..] {
            println!(
                "{:>9} {:>9} {:>8} {:>6.2}",
                distance,
                gbps(fused),
                gbps(copy),
                fused / copy
            );
        }
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    criterion_groups(&mut criterion);
    criterion.final_summary();
    let args: Vec<String> = std::env::args().collect();
    let listing = args.iter().any(|arg| arg == "--list" || arg == "--test");
    if !listing {
        ratio_table();
        distance_table();
    }
}
