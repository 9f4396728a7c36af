//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Every TCP, UDP and IPv4 header checksum the engine writes goes through this
//! module, so it is built for speed: the bulk summing runs in a kernel chosen
//! once at run time (see [`Kernel`]), while the arithmetic that glues pieces
//! together (odd lengths, split buffers, pseudo-headers) lives here, in safe code.
//!
//! Kernels: [`Kernel::Scalar`] everywhere; [`Kernel::Avx2`] and
//! [`Kernel::Avx512`] on x86_64 CPUs that have those features, detected on
//! first use without needing `-C target-cpu`. The environment variable
//! `VSWITCH_CHECKSUM_KERNEL=scalar|avx2|avx512` ([`KERNEL_ENV_VAR`]) forces
//! one for the whole process; [`Checksum::with_kernel`], [`checksum_with`]
//! and [`copy_and_checksum_with`] pick one per call, for tests and benches.
//!
//! ```
//! use vswitch_offload::checksum::{checksum, Checksum};
//!
//! // RFC 1071, section 3: these bytes sum to 0xddf2, so the checksum is 0x220d.
//! let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
//! assert_eq!(checksum(&data), 0x220d);
//!
//! // The same, fed in pieces split at an odd offset.
//! let mut sum = Checksum::new();
//! sum.add_bytes(&data[..3]);
//! sum.add_bytes(&data[3..]);
//! assert_eq!(sum.sum(), 0xddf2);
//! assert_eq!(sum.finish(), 0x220d);
//! ```

// The kernels are the only unsafe code in the crate: `#[target_feature]`
// calls and vector loads and stores, each with its SAFETY argument.
#[allow(unsafe_code)]
mod kernel;

pub(crate) use kernel::add_carry;
use kernel::SupportedKernel;
pub use kernel::{Kernel, KERNEL_ENV_VAR};

/// Folds a wide ones'-complement accumulator to 16 bits (end-around carry).
///
/// Adding a value to itself rotated by half its width puts the sum of its
/// two halves in the top half, with the carry out of the bottom half already
/// added in: one end-around-carry addition in three instructions. A non-zero
/// input never folds to zero, so -0 (0xffff) stays -0.
#[inline]
pub(crate) fn fold(sum: u64) -> u16 {
    let sum32 = (sum.wrapping_add(sum.rotate_left(32)) >> 32) as u32;
    (sum32.wrapping_add(sum32.rotate_left(16)) >> 16) as u16
}

/// Converts a folded sum of native-endian 16-bit words into the sum of
/// big-endian (network order) words. The ones'-complement sum commutes with
/// byte swapping (RFC 1071, section 2.B), so one swap at the end suffices.
#[inline]
fn native_to_network(folded: u16) -> u16 {
    u16::from_be(folded)
}

/// An incremental Internet-checksum accumulator.
///
/// Feed it slices split at any point (odd lengths included), 16-bit and
/// 32-bit words, or other accumulators; the result is the same as one call
/// to [`checksum`] over the concatenation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    /// Ones'-complement sum of big-endian 16-bit words, not yet folded.
    sum: u64,
    /// True when an odd number of bytes has been added, so the next byte is
    /// the low half of a 16-bit word.
    odd: bool,
    kernel: SupportedKernel,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    /// An empty accumulator that sums with the kernel detected for this CPU.
    #[inline]
    pub fn new() -> Self {
        Checksum {
            sum: 0,
            odd: false,
            kernel: SupportedKernel::detected(),
        }
    }

    /// An empty accumulator that sums with `kernel` (for tests and benches).
    ///
    /// A kernel the CPU does not support is replaced by the scalar kernel.
    #[inline]
    pub fn with_kernel(kernel: Kernel) -> Self {
        Checksum {
            sum: 0,
            odd: false,
            kernel: SupportedKernel::new(kernel),
        }
    }

    /// The kernel this accumulator sums with.
    pub fn kernel(&self) -> Kernel {
        self.kernel.kernel()
    }

    /// Adds `data`, continuing at whatever byte position the previous data
    /// ended (an odd-length slice leaves the next byte in the low half).
    #[inline]
    pub fn add_bytes(&mut self, data: &[u8]) -> &mut Self {
        if data.is_empty() {
            return self;
        }
        let partial = native_to_network(fold(self.kernel.sum_native(data)));
        self.add_aligned(partial, data.len());
        self
    }

    /// Copies `src` into `dst` and adds the copied bytes, in one pass over
    /// memory.
    ///
    /// # Panics
    /// If `dst` and `src` differ in length (as `copy_from_slice` does).
    #[inline]
    pub fn copy_and_add(&mut self, dst: &mut [u8], src: &[u8]) -> &mut Self {
        assert_eq!(
            dst.len(),
            src.len(),
            "copy_and_add: destination is {} bytes, source {}",
            dst.len(),
            src.len()
        );
        if src.is_empty() {
            return self;
        }
        let partial = native_to_network(fold(self.kernel.copy_and_sum_native(dst, src)));
        self.add_aligned(partial, src.len());
        self
    }

    /// Adds `len` bytes whose sum a kernel returned as is
    /// ([`copy_and_sum_native`]): native-endian words, not folded.
    #[inline]
    pub(crate) fn add_native(&mut self, native: u64, len: usize) -> &mut Self {
        self.add_aligned(native_to_network(fold(native)), len);
        self
    }

    #[inline]
    fn add_aligned(&mut self, partial: u16, len: usize) {
        // A piece that starts at an odd position has every byte in the other
        // half of its word: swapping the folded partial sum moves them back.
        let partial = if self.odd {
            partial.swap_bytes()
        } else {
            partial
        };
        self.sum += u64::from(partial);
        self.odd ^= len % 2 == 1;
    }

    /// Adds a 16-bit word given in host order (as it would appear, big-endian,
    /// on the wire). Must be called at an even byte position.
    #[inline]
    pub fn add_u16(&mut self, word: u16) -> &mut Self {
        debug_assert!(!self.odd, "add_u16 at an odd byte position");
        self.sum += u64::from(word);
        self
    }

    /// Adds a 32-bit word given in host order (two big-endian 16-bit words on
    /// the wire). Must be called at an even byte position.
    #[inline]
    pub fn add_u32(&mut self, word: u32) -> &mut Self {
        debug_assert!(!self.odd, "add_u32 at an odd byte position");
        self.sum += u64::from(word >> 16) + u64::from(word & 0xffff);
        self
    }

    /// Adds the bytes summed by `other`, as if they followed the bytes
    /// already added here.
    #[inline]
    pub fn add_checksum(&mut self, other: &Checksum) -> &mut Self {
        self.add_aligned(other.sum(), usize::from(other.odd));
        self
    }

    /// The folded ones'-complement sum, not complemented: the value a partial
    /// checksum field holds (for example a pseudo-header sum).
    #[inline]
    pub fn sum(&self) -> u16 {
        fold(self.sum)
    }

    /// The checksum to store in a header field: the complement of [`sum`](Self::sum).
    #[inline]
    pub fn finish(&self) -> u16 {
        !self.sum()
    }
}

/// The Internet checksum of `data`: the complement of the folded
/// ones'-complement sum of its big-endian 16-bit words, a final odd byte
/// padded with zero (RFC 1071).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    one_shot(SupportedKernel::detected().sum_native(data))
}

/// The stored checksum of a whole buffer from its kernel sum: one fold and
/// one swap, without the accumulator's bookkeeping (the most frequent call
/// is a 20..60-byte header).
#[inline]
fn one_shot(native_sum: u64) -> u16 {
    !native_to_network(fold(native_sum))
}

/// [`checksum`] computed with a given kernel (for tests and benches); a
/// kernel the CPU does not support is replaced by the scalar kernel.
#[inline]
pub fn checksum_with(kernel: Kernel, data: &[u8]) -> u16 {
    one_shot(SupportedKernel::new(kernel).sum_native(data))
}

/// Copies `src` into `dst` and returns the checksum of the bytes copied,
/// reading memory once.
///
/// # Panics
/// If `dst` and `src` differ in length.
#[inline]
pub fn copy_and_checksum(dst: &mut [u8], src: &[u8]) -> u16 {
    Checksum::new().copy_and_add(dst, src).finish()
}

/// Copies `src` into `dst` (of the same length) with the detected kernel and returns the ones'-complement sum of
/// the bytes copied as the kernel leaves it: native-endian 16-bit words, not
/// folded. A caller that sums a few header words the same way adds them to
/// it and folds once ([`fold`], then `u16::from_be` for network order; a
/// check against 0xffff needs no swap).
#[inline]
pub(crate) fn copy_and_sum_native(dst: &mut [u8], src: &[u8]) -> u64 {
    SupportedKernel::detected().copy_and_sum_native(dst, src)
}

/// [`copy_and_checksum`] computed with a given kernel (for tests and
/// benches); a kernel the CPU does not support is replaced by the scalar kernel.
///
/// # Panics
/// If `dst` and `src` differ in length.
#[inline]
pub fn copy_and_checksum_with(kernel: Kernel, dst: &mut [u8], src: &[u8]) -> u16 {
    Checksum::with_kernel(kernel)
        .copy_and_add(dst, src)
        .finish()
}

/// The pseudo-header sum for TCP or UDP over IPv4 (RFC 793 section 3.1,
/// RFC 768): source and destination address, zero, protocol, L4 length.
#[inline]
pub fn pseudo_header_ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4_len: u16) -> Checksum {
    let mut sum = Checksum::new();
    sum.add_u32(u32::from_be_bytes(src))
        .add_u32(u32::from_be_bytes(dst))
        .add_u16(u16::from(protocol))
        .add_u16(l4_len);
    sum
}

/// The pseudo-header sum for TCP or UDP over IPv6 (RFC 8200 section 8.1):
/// source and destination address, upper-layer length (32 bits), zero, next header.
#[inline]
pub fn pseudo_header_ipv6(src: [u8; 16], dst: [u8; 16], next_header: u8, l4_len: u32) -> Checksum {
    let mut sum = Checksum::new();
    for chunk in src.chunks_exact(4).chain(dst.chunks_exact(4)) {
        sum.add_u32(u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
    }
    sum.add_u32(l4_len).add_u16(u16::from(next_header));
    sum
}

/// RFC 1624 equation 3: the new checksum of a header whose stored checksum
/// was `old_checksum` after one 16-bit field changed from `old` to `new`.
///
/// `HC' = ~(~HC + ~m + m')`. Unlike equation 2 it never produces a -0
/// (0xffff) result from a non-zero sum, which is the corner case section 3
/// of RFC 1624 warns about.
#[inline]
pub fn update_u16(old_checksum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!old_checksum) + u64::from(!old) + u64::from(new))
}

/// RFC 1624 equation 3 applied to a 32-bit field (two 16-bit words), for
/// example an IPv4 address or a TCP sequence number.
#[inline]
pub fn update_u32(old_checksum: u16, old: u32, new: u32) -> u16 {
    let hc = u64::from(!old_checksum);
    let m = u64::from(!(old >> 16) as u16) + u64::from(!(old as u16));
    let m_new = u64::from(new >> 16) + u64::from(new & 0xffff);
    !fold(hc + m + m_new)
}

#[cfg(test)]
mod tests;
