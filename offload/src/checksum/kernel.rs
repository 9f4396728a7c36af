//! Bulk summing kernels. Each returns a ones'-complement sum of `data` read as
//! native-endian 16-bit words (a final odd byte as if followed by a zero byte),
//! in a u64 that [`super::fold`] reduces to 16 bits.
//!
//! The kernel is chosen once per process by [`Kernel::detect`]: the fastest
//! one the CPU supports, unless the environment variable
//! `VSWITCH_CHECKSUM_KERNEL` names another (`scalar`, `avx2` or `avx512`).
//! The choice is cached in a static, so asking for it again costs one load.
//!
//! Unsafe code is confined to this module and its `x86` child: calls into
//! `#[target_feature]` functions, which are sound only once the CPU feature
//! has been detected, and the vector loads and stores themselves.

use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(target_arch = "x86_64")]
mod x86;

/// The environment variable that forces a kernel for the whole process
/// (`scalar`, `avx2` or `avx512`), read once, the first time
/// [`Kernel::detect`] runs.
pub const KERNEL_ENV_VAR: &str = "VSWITCH_CHECKSUM_KERNEL";

/// A summing kernel. [`Kernel::detect`] picks the fastest one this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// Portable 64-bit words with end-around carry; runs everywhere.
    Scalar,
    /// 256-bit vectors (x86_64 with AVX2).
    Avx2,
    /// 512-bit vectors with byte-masked loads for the tail (x86_64 with
    /// AVX-512F and AVX-512BW).
    Avx512,
}

/// [`Kernel::is_supported`]'s cached answers: 0 until the CPU was asked,
/// then bit 0 set and bit [`Kernel::code`] set for each kernel it runs.
static SUPPORTED: AtomicU8 = AtomicU8::new(0);

/// [`Kernel::detect`]'s cached answer: 0 until the first call, then
/// [`Kernel::code`] of the chosen kernel.
static DETECTED: AtomicU8 = AtomicU8::new(0);

impl Kernel {
    /// Every kernel this build knows, supported by this CPU or not.
    pub const ALL: &'static [Kernel] = &[Kernel::Scalar, Kernel::Avx2, Kernel::Avx512];

    /// The kernel every accumulator uses unless told otherwise: the fastest
    /// one this CPU supports, or the one named by the environment variable
    /// [`KERNEL_ENV_VAR`] (`VSWITCH_CHECKSUM_KERNEL=scalar|avx2|avx512`).
    ///
    /// A name the CPU cannot run selects [`Kernel::Scalar`] (as
    /// [`Checksum::with_kernel`](super::Checksum::with_kernel) does); an
    /// unknown name is ignored. The answer is computed on the first call and
    /// cached, so later calls cost one atomic load.
    #[inline]
    pub fn detect() -> Kernel {
        match Kernel::from_code(DETECTED.load(Ordering::Relaxed)) {
            Some(kernel) => kernel,
            None => Kernel::detect_and_cache(),
        }
    }

    #[cold]
    #[inline(never)]
    fn detect_and_cache() -> Kernel {
        let kernel = Kernel::choose(std::env::var(KERNEL_ENV_VAR).ok().as_deref());
        // Every thread computes the same answer, so a race only repeats work.
        DETECTED.store(kernel.code(), Ordering::Relaxed);
        kernel
    }

    /// The kernel [`Kernel::detect`] picks when [`KERNEL_ENV_VAR`] holds
    /// `forced` (or is unset, `None`).
    fn choose(forced: Option<&str>) -> Kernel {
        match forced.and_then(|name| Kernel::from_name(name.trim())) {
            Some(kernel) if kernel.is_supported() => kernel,
            Some(_) => Kernel::Scalar,
            None => Kernel::fastest_supported(),
        }
    }

    /// The fastest kernel this CPU supports, ignoring [`KERNEL_ENV_VAR`] and
    /// the cache (this asks the CPU every time).
    pub fn fastest_supported() -> Kernel {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .find(|kernel| kernel.is_supported())
            .unwrap_or(Kernel::Scalar)
    }

    /// Whether this CPU can run the kernel (the CPU is asked once per
    /// process; later calls cost one atomic load).
    #[inline]
    pub fn is_supported(self) -> bool {
        let mut bits = SUPPORTED.load(Ordering::Relaxed);
        if bits == 0 {
            bits = Kernel::probe_cpu();
        }
        bits & (1 << self.code()) != 0
    }

    /// Asks the CPU which kernels it runs and caches the answer in
    /// [`SUPPORTED`].
    #[cold]
    #[inline(never)]
    fn probe_cpu() -> u8 {
        let bits = Kernel::ALL
            .iter()
            .filter(|kernel| kernel.cpu_runs())
            .fold(1u8, |bits, kernel| bits | (1 << kernel.code()));
        SUPPORTED.store(bits, Ordering::Relaxed);
        bits
    }

    /// Whether the CPU has the features the kernel is compiled for.
    fn cpu_runs(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512 => false,
        }
    }

    /// The kernels of [`Kernel::ALL`] this CPU supports.
    pub fn supported() -> impl Iterator<Item = Kernel> {
        Kernel::ALL
            .iter()
            .copied()
            .filter(|kernel| kernel.is_supported())
    }

    /// A short lower-case name (`scalar`, `avx2`, `avx512`), for benches and logs.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }

    /// The kernel called `name` (as [`Kernel::name`] spells it, ASCII case
    /// ignored), if there is one.
    pub fn from_name(name: &str) -> Option<Kernel> {
        Kernel::ALL
            .iter()
            .copied()
            .find(|kernel| kernel.name().eq_ignore_ascii_case(name))
    }

    #[inline]
    fn code(self) -> u8 {
        match self {
            Kernel::Scalar => 1,
            Kernel::Avx2 => 2,
            Kernel::Avx512 => 3,
        }
    }

    #[inline]
    fn from_code(code: u8) -> Option<Kernel> {
        match code {
            1 => Some(Kernel::Scalar),
            2 => Some(Kernel::Avx2),
            3 => Some(Kernel::Avx512),
            _ => None,
        }
    }
}

/// A kernel this CPU is known to support. The only way to build one is
/// [`SupportedKernel::new`] (which checks [`Kernel::is_supported`]) or
/// [`SupportedKernel::detected`] (whose kernel [`Kernel::detect`] only picks
/// among supported ones), so running its `#[target_feature]` functions is
/// sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SupportedKernel(Kernel);

impl SupportedKernel {
    /// `kernel` if the CPU supports it, else the scalar kernel.
    #[inline]
    pub(super) fn new(kernel: Kernel) -> SupportedKernel {
        if kernel.is_supported() {
            SupportedKernel(kernel)
        } else {
            SupportedKernel(Kernel::Scalar)
        }
    }

    /// The kernel [`Kernel::detect`] chose for this process.
    #[inline]
    pub(super) fn detected() -> SupportedKernel {
        SupportedKernel(Kernel::detect())
    }

    #[inline]
    pub(super) fn kernel(self) -> Kernel {
        self.0
    }

    /// The native-endian ones'-complement sum of `data`, unfolded.
    #[inline]
    pub(super) fn sum_native(self, data: &[u8]) -> u64 {
        match self.0 {
            Kernel::Scalar => sum_scalar(data),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if data.len() < AVX2_MIN_LEN => sum_scalar(data),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a SupportedKernel holds Avx2 only if Kernel::is_supported
            // (is_x86_feature_detected!("avx2"), cached by probe_cpu) said yes,
            // in SupportedKernel::new or in Kernel::detect's choice, so the
            // avx2 code may run.
            Kernel::Avx2 => unsafe { x86::sum_avx2(data) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a SupportedKernel holds Avx512 only if
            // Kernel::is_supported found AVX-512F and AVX-512BW on this CPU
            // (SupportedKernel::new, Kernel::detect), so the avx512 code may run.
            Kernel::Avx512 => unsafe { x86::sum_avx512(data) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512 => sum_scalar(data),
        }
    }

    /// Copies `src` into `dst` (equal lengths) and returns the native-endian
    /// ones'-complement sum of the bytes copied, unfolded.
    #[inline]
    pub(super) fn copy_and_sum_native(self, dst: &mut [u8], src: &[u8]) -> u64 {
        debug_assert_eq!(dst.len(), src.len());
        match self.0 {
            Kernel::Scalar => copy_and_sum_scalar(dst, src),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in sum_native, Avx2 here means AVX2 was detected by
            // Kernel::is_supported before this SupportedKernel was built.
            Kernel::Avx2 => unsafe { x86::copy_and_sum_avx2(dst, src) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in sum_native, Avx512 here means AVX-512F and
            // AVX-512BW were detected by Kernel::is_supported.
            Kernel::Avx512 => unsafe { x86::copy_and_sum_avx512(dst, src) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512 => copy_and_sum_scalar(dst, src),
        }
    }
}

/// Below this many bytes the AVX2 kernel's setup and reduction cost more
/// than the scalar loop (measured: scalar is faster at 64 bytes, slower at
/// 576), so short inputs stay scalar and skip a call.
#[cfg(target_arch = "x86_64")]
const AVX2_MIN_LEN: usize = 128;

/// Ones'-complement addition of two 64-bit values: 2^64 is 1 modulo 0xffff,
/// so the carry out of bit 63 is added back at bit 0 (it cannot carry again:
/// after a carry the wrapped sum is at most 2^64 - 2).
#[inline(always)]
pub(crate) fn add_carry(a: u64, b: u64) -> u64 {
    let (sum, carry) = a.overflowing_add(b);
    sum + u64::from(carry)
}

#[inline(always)]
fn ne_u64(bytes: &[u8; 8]) -> u64 {
    u64::from_ne_bytes(*bytes)
}

/// Sums fewer than 8 bytes: a 4-byte, a 2-byte and a 1-byte piece, each
/// native-endian at an even offset, the lone byte as the first byte of a
/// 16-bit word. The result is below 2^33.
#[inline(always)]
fn sum_short_tail(rest: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut rest = rest;
    if let [a, b, c, d, more @ ..] = rest {
        sum += u64::from(u32::from_ne_bytes([*a, *b, *c, *d]));
        rest = more;
    }
    if let [a, b, more @ ..] = rest {
        sum += u64::from(u16::from_ne_bytes([*a, *b]));
        rest = more;
    }
    if let [a] = rest {
        sum += u64::from(u16::from_ne_bytes([*a, 0]));
    }
    sum
}

/// Adds 64-bit words with end-around carry, four independent accumulators
/// so the carry chains overlap.
pub(super) fn sum_scalar(data: &[u8]) -> u64 {
    if data.len() < 64 {
        // Headers: up to seven words and a short tail, one carry chain.
        let (words, tail) = data.as_chunks::<8>();
        return words.iter().fold(sum_short_tail(tail), |acc, word| {
            add_carry(acc, ne_u64(word))
        });
    }
    let (blocks, rest) = data.as_chunks::<32>();
    let (mut a, mut b, mut c, mut d) = (0u64, 0u64, 0u64, 0u64);
    for block in blocks {
        let (words, _) = block.as_chunks::<8>();
        if let [w0, w1, w2, w3] = words {
            a = add_carry(a, ne_u64(w0));
            b = add_carry(b, ne_u64(w1));
            c = add_carry(c, ne_u64(w2));
            d = add_carry(d, ne_u64(w3));
        }
    }
    let mut acc = add_carry(add_carry(a, b), add_carry(c, d));
    let (words, tail) = rest.as_chunks::<8>();
    for word in words {
        acc = add_carry(acc, ne_u64(word));
    }
    add_carry(acc, sum_short_tail(tail))
}

/// Copies and sums 8-byte words in one pass (the scalar fused kernel).
///
/// Never inlined: inlined into the dispatcher, its loop made every vector
/// call save and restore four registers on the way through.
#[inline(never)]
pub(super) fn copy_and_sum_scalar(dst: &mut [u8], src: &[u8]) -> u64 {
    let len = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..len], &src[..len]);
    let (dst_pairs, dst_rest) = dst.as_chunks_mut::<16>();
    let (src_pairs, src_rest) = src.as_chunks::<16>();
    let (mut a, mut b) = (0u64, 0u64);
    for (d, s) in dst_pairs.iter_mut().zip(src_pairs) {
        *d = *s;
        if let ([w0, w1], _) = s.as_chunks::<8>() {
            a = add_carry(a, ne_u64(w0));
            b = add_carry(b, ne_u64(w1));
        }
    }
    dst_rest.copy_from_slice(src_rest);
    add_carry(add_carry(a, b), sum_scalar(src_rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &kernel in Kernel::ALL {
            assert_eq!(Kernel::from_name(kernel.name()), Some(kernel));
        }
        assert_eq!(Kernel::from_name("AVX2"), Some(Kernel::Avx2));
        assert_eq!(Kernel::from_name("sse"), None);
    }

    #[test]
    fn environment_variable_forces_a_kernel() {
        assert_eq!(Kernel::choose(None), Kernel::fastest_supported());
        assert_eq!(Kernel::choose(Some("scalar")), Kernel::Scalar);
        assert_eq!(Kernel::choose(Some(" Scalar\n")), Kernel::Scalar);
        assert_eq!(Kernel::choose(Some("neon")), Kernel::fastest_supported());
        for &kernel in Kernel::ALL {
            let expected = if kernel.is_supported() {
                kernel
            } else {
                Kernel::Scalar
            };
            assert_eq!(Kernel::choose(Some(kernel.name())), expected);
        }
    }

    #[test]
    fn detect_is_supported_and_cached() {
        let first = Kernel::detect();
        assert!(first.is_supported());
        assert_eq!(
            Kernel::from_code(DETECTED.load(Ordering::Relaxed)),
            Some(first)
        );
        assert_eq!(Kernel::detect(), first);
    }

    #[test]
    fn scalar_is_always_supported_and_unsupported_falls_back() {
        assert!(Kernel::Scalar.is_supported());
        assert!(Kernel::supported().any(|k| k == Kernel::Scalar));
        for &kernel in Kernel::ALL {
            let chosen = SupportedKernel::new(kernel).kernel();
            if kernel.is_supported() {
                assert_eq!(chosen, kernel);
            } else {
                assert_eq!(chosen, Kernel::Scalar);
            }
        }
    }

    #[test]
    fn cached_support_matches_the_cpu() {
        for &kernel in Kernel::ALL {
            assert_eq!(kernel.is_supported(), kernel.cpu_runs(), "{kernel:?}");
        }
        assert_ne!(SUPPORTED.load(Ordering::Relaxed), 0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fastest_matches_cpu_features() {
        let expected = if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
        {
            Kernel::Avx512
        } else if std::is_x86_feature_detected!("avx2") {
            Kernel::Avx2
        } else {
            Kernel::Scalar
        };
        assert_eq!(Kernel::fastest_supported(), expected);
    }

    #[test]
    fn short_tail_pads_the_odd_byte() {
        assert_eq!(sum_short_tail(&[]), 0);
        assert_eq!(
            sum_short_tail(&[0xab]),
            u64::from(u16::from_ne_bytes([0xab, 0]))
        );
        assert_eq!(
            sum_short_tail(&[1, 2, 3, 4, 5, 6, 7]),
            u64::from(u32::from_ne_bytes([1, 2, 3, 4]))
                + u64::from(u16::from_ne_bytes([5, 6]))
                + u64::from(u16::from_ne_bytes([7, 0]))
        );
    }

    #[test]
    fn add_carry_wraps_end_around() {
        assert_eq!(add_carry(u64::MAX, 1), 1);
        assert_eq!(add_carry(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(add_carry(5, 7), 12);
    }
}
