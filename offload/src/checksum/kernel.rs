//! Bulk summing kernels. Each returns a ones'-complement sum of `data` read as
//! native-endian 16-bit words (a final odd byte as if followed by a zero byte),
//! in a u64 that [`super::fold`] reduces to 16 bits.

/// A summing kernel. [`Kernel::detect`] picks the fastest one this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// Portable 64-bit words with end-around carry; runs everywhere.
    Scalar,
}

impl Kernel {
    /// Every kernel this build knows, supported by this CPU or not.
    pub const ALL: &'static [Kernel] = &[Kernel::Scalar];

    /// The fastest kernel this CPU supports.
    pub fn detect() -> Kernel {
        Kernel::Scalar
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Scalar => true,
        }
    }

    /// A short lower-case name (`scalar`, ...), for benches and logs.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
        }
    }

    #[inline]
    pub(super) fn sum_native(self, data: &[u8]) -> u64 {
        match self {
            Kernel::Scalar => sum_scalar(data),
        }
    }

    #[inline]
    pub(super) fn copy_and_sum_native(self, dst: &mut [u8], src: &[u8]) -> u64 {
        match self {
            Kernel::Scalar => {
                dst.copy_from_slice(src);
                sum_scalar(dst)
            }
        }
    }
}

/// Adds 64-bit words with end-around carry (2^64 is 1 modulo 0xffff, so the
/// carry out of bit 63 is added back at bit 0).
fn sum_scalar(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        let (sum, carry) = acc.overflowing_add(word);
        acc = sum + u64::from(carry);
    }
    let mut tail = [0u8; 8];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    let (sum, carry) = acc.overflowing_add(u64::from_ne_bytes(tail));
    sum + u64::from(carry)
}
