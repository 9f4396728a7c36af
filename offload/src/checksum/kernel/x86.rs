//! AVX2 and AVX-512 summing kernels for x86_64.
//!
//! Each vector is viewed as 64-bit lanes; every lane adds its low and high
//! 32-bit halves into a 64-bit accumulator lane. A 32-bit half is two
//! native-endian 16-bit words and 2^16 is 1 modulo 0xffff, so the lanes hold
//! the ones'-complement sum without any carry handling; the caller's fold
//! does the end-around carries once at the end. Each addend is below 2^33, so
//! a lane cannot overflow within a [`BLOCK`] of input: after each block the
//! lanes are reduced into a scalar with end-around carry.
//!
//! The functions are safe `#[target_feature]` functions: calling one from
//! code without the feature is `unsafe`, and the caller must have detected
//! the feature first (see `SupportedKernel` in the parent module).

use core::arch::x86_64::*;

use super::{add_carry, sum_scalar};

/// Bytes summed before the vector lanes are reduced. Every addend is below
/// 2^33 and covers 8 bytes of input (one 64-bit lane), so all the addends of
/// a block, over all lanes and accumulators together, total below
/// 2^33 * 2^29 = 2^62: no lane and no reduction of lanes can overflow.
const BLOCK: usize = 1 << 32;

// ---------------------------------------------------------------- AVX2

#[inline]
#[target_feature(enable = "avx2")]
fn lanes_avx2(acc: __m256i, v: __m256i) -> __m256i {
    let low = _mm256_and_si256(v, _mm256_set1_epi64x(0xffff_ffff));
    let high = _mm256_srli_epi64::<32>(v);
    _mm256_add_epi64(acc, _mm256_add_epi64(low, high))
}

#[inline]
#[target_feature(enable = "avx2")]
fn reduce_avx2(v: __m256i) -> u64 {
    let half = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let both = _mm_add_epi64(half, _mm_unpackhi_epi64(half, half));
    _mm_cvtsi128_si64(both) as u64
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_avx2(bytes: &[u8; 32]) -> __m256i {
    // SAFETY: `bytes` is a reference to 32 readable bytes, exactly the width
    // of the unaligned load.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn store_avx2(bytes: &mut [u8; 32], v: __m256i) {
    // SAFETY: `bytes` is an exclusive reference to 32 writable bytes, exactly
    // the width of the unaligned store.
    unsafe { _mm256_storeu_si256(bytes.as_mut_ptr().cast(), v) }
}

/// Bytes 0..32 are zero and 32..64 are 0xff: the 32 bytes starting at
/// `KEEP_LAST[k]` select the last `k` bytes of a vector.
static KEEP_LAST: [u8; 64] = {
    let mut mask = [0u8; 64];
    let mut i = 32;
    while i < 64 {
        mask[i] = 0xff;
        i += 1;
    }
    mask
};

/// The AVX2 summing kernel.
#[target_feature(enable = "avx2")]
pub(super) fn sum_avx2(data: &[u8]) -> u64 {
    if data.len() < 64 {
        return sum_scalar(data);
    }
    if data.len() <= BLOCK {
        return sum_block_avx2(data);
    }
    let mut total = 0u64;
    for block in data.chunks(BLOCK) {
        total = add_carry(total, sum_block_avx2(block));
    }
    total
}

/// Sums a block (the tail by a masked overlapping reload when the block has
/// at least 32 bytes).
#[inline]
#[target_feature(enable = "avx2")]
fn sum_block_avx2(block: &[u8]) -> u64 {
    let zero = _mm256_setzero_si256();
    let (mut a, mut b, mut c, mut d) = (zero, zero, zero, zero);
    let (quads, rest) = block.as_chunks::<128>();
    for quad in quads {
        let (vectors, _) = quad.as_chunks::<32>();
        if let [v0, v1, v2, v3] = vectors {
            a = lanes_avx2(a, load_avx2(v0));
            b = lanes_avx2(b, load_avx2(v1));
            c = lanes_avx2(c, load_avx2(v2));
            d = lanes_avx2(d, load_avx2(v3));
        }
    }
    let (vectors, tail) = rest.as_chunks::<32>();
    for v in vectors {
        b = lanes_avx2(b, load_avx2(v));
    }
    let tail_sum = match even_tail_avx2(block, tail.len()) {
        Some(v) => {
            c = lanes_avx2(c, v);
            match tail.len() & 1 {
                1 => block
                    .last()
                    .map_or(0, |&byte| u64::from(u16::from_ne_bytes([byte, 0]))),
                _ => 0,
            }
        }
        None => sum_scalar(tail),
    };
    let lanes = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    add_carry(reduce_avx2(lanes), tail_sum)
}

/// The even part of the last `tail_len` (< 32) bytes of `block`, as a vector
/// whose other bytes are zero: the 32 bytes ending where that part ends (an
/// even offset from the start, so words keep their pairing) reloaded and
/// masked. `None` if the block is shorter than 32 bytes; a final odd byte is
/// left to the caller.
#[inline]
#[target_feature(enable = "avx2")]
fn even_tail_avx2(block: &[u8], tail_len: usize) -> Option<__m256i> {
    let keep = tail_len & !1;
    let end = block.len() - (tail_len & 1);
    let window: &[u8; 32] = block.get(end.checked_sub(32)?..end)?.try_into().ok()?;
    let mask: &[u8; 32] = KEEP_LAST.get(keep..keep + 32)?.try_into().ok()?;
    Some(_mm256_and_si256(load_avx2(window), load_avx2(mask)))
}

/// The AVX2 fused copy-and-sum kernel: each vector is loaded once, stored to
/// `dst` and added. Copies `min(dst.len(), src.len())` bytes.
#[target_feature(enable = "avx2")]
pub(super) fn copy_and_sum_avx2(dst: &mut [u8], src: &[u8]) -> u64 {
    let len = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..len], &src[..len]);
    if len < 32 {
        return super::copy_and_sum_scalar(dst, src);
    }
    if len <= BLOCK {
        return copy_and_sum_block_avx2(dst, src);
    }
    let mut total = 0u64;
    for (dst, src) in dst.chunks_mut(BLOCK).zip(src.chunks(BLOCK)) {
        total = add_carry(total, copy_and_sum_block_avx2(dst, src));
    }
    total
}

#[inline]
#[target_feature(enable = "avx2")]
fn copy_and_sum_block_avx2(dst: &mut [u8], src: &[u8]) -> u64 {
    let zero = _mm256_setzero_si256();
    let (mut a, mut b) = (zero, zero);
    let (dst_pairs, dst_rest) = dst.as_chunks_mut::<64>();
    let (src_pairs, src_rest) = src.as_chunks::<64>();
    for (d, s) in dst_pairs.iter_mut().zip(src_pairs) {
        let (dv, _) = d.as_chunks_mut::<32>();
        let (sv, _) = s.as_chunks::<32>();
        if let ([d0, d1], [s0, s1]) = (dv, sv) {
            let v0 = load_avx2(s0);
            let v1 = load_avx2(s1);
            store_avx2(d0, v0);
            store_avx2(d1, v1);
            a = lanes_avx2(a, v0);
            b = lanes_avx2(b, v1);
        }
    }
    let (dst_vectors, dst_tail) = dst_rest.as_chunks_mut::<32>();
    let (src_vectors, src_tail) = src_rest.as_chunks::<32>();
    for (d, s) in dst_vectors.iter_mut().zip(src_vectors) {
        let v = load_avx2(s);
        store_avx2(d, v);
        a = lanes_avx2(a, v);
    }
    let vector_sum = reduce_avx2(_mm256_add_epi64(a, b));
    add_carry(vector_sum, super::copy_and_sum_scalar(dst_tail, src_tail))
}

// ------------------------------------------------------------- AVX-512

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn lanes_avx512(acc: __m512i, v: __m512i) -> __m512i {
    let low = _mm512_and_si512(v, _mm512_set1_epi64(0xffff_ffff));
    let high = _mm512_srli_epi64::<32>(v);
    _mm512_add_epi64(acc, _mm512_add_epi64(low, high))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn load_avx512(bytes: &[u8; 64]) -> __m512i {
    // SAFETY: `bytes` is a reference to 64 readable bytes, exactly the width
    // of the unaligned load.
    unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn store_avx512(bytes: &mut [u8; 64], v: __m512i) {
    // SAFETY: `bytes` is an exclusive reference to 64 writable bytes, exactly
    // the width of the unaligned store.
    unsafe { _mm512_storeu_si512(bytes.as_mut_ptr().cast(), v) }
}

/// The mask selecting the first `len` bytes of a 64-byte vector (`len` < 64).
#[inline]
fn tail_mask(len: usize) -> u64 {
    debug_assert!(len < 64);
    (1u64 << (len & 63)) - 1
}

/// Loads `tail` (fewer than 64 bytes) into the low bytes of a vector, the
/// rest zero.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn load_tail_avx512(tail: &[u8]) -> __m512i {
    let mask = tail_mask(tail.len());
    // SAFETY: the mask selects exactly the first tail.len() (< 64) bytes, all
    // inside `tail`; masked-off bytes are neither read nor able to fault
    // (AVX-512BW masked loads suppress faults on disabled elements).
    unsafe { _mm512_maskz_loadu_epi8(mask, tail.as_ptr().cast()) }
}

/// Stores the low `tail.len()` (< 64) bytes of `v` into `tail`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn store_tail_avx512(tail: &mut [u8], v: __m512i) {
    let mask = tail_mask(tail.len());
    // SAFETY: the mask selects exactly the first tail.len() (< 64) bytes, all
    // inside the exclusively borrowed `tail`; masked-off bytes are not written.
    unsafe { _mm512_mask_storeu_epi8(tail.as_mut_ptr().cast(), mask, v) }
}

/// The AVX-512 summing kernel.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn sum_avx512(data: &[u8]) -> u64 {
    if data.len() < 64 {
        let lanes = lanes_avx512(_mm512_setzero_si512(), load_tail_avx512(data));
        return _mm512_reduce_add_epi64(lanes) as u64;
    }
    if data.len() <= BLOCK {
        return sum_block_avx512(data);
    }
    let mut total = 0u64;
    for block in data.chunks(BLOCK) {
        total = add_carry(total, sum_block_avx512(block));
    }
    total
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn sum_block_avx512(block: &[u8]) -> u64 {
    let zero = _mm512_setzero_si512();
    let (mut a, mut b, mut c, mut d) = (zero, zero, zero, zero);
    let (quads, rest) = block.as_chunks::<256>();
    for quad in quads {
        let (vectors, _) = quad.as_chunks::<64>();
        if let [v0, v1, v2, v3] = vectors {
            a = lanes_avx512(a, load_avx512(v0));
            b = lanes_avx512(b, load_avx512(v1));
            c = lanes_avx512(c, load_avx512(v2));
            d = lanes_avx512(d, load_avx512(v3));
        }
    }
    let (vectors, tail) = rest.as_chunks::<64>();
    for v in vectors {
        a = lanes_avx512(a, load_avx512(v));
    }
    if !tail.is_empty() {
        b = lanes_avx512(b, load_tail_avx512(tail));
    }
    let lanes = _mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d));
    _mm512_reduce_add_epi64(lanes) as u64
}

/// The AVX-512 fused copy-and-sum kernel: each vector is loaded once, stored
/// to `dst` and added; the tail uses masked loads and stores. Copies
/// `min(dst.len(), src.len())` bytes.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn copy_and_sum_avx512(dst: &mut [u8], src: &[u8]) -> u64 {
    let len = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..len], &src[..len]);
    if len <= BLOCK {
        return copy_and_sum_block_avx512(dst, src);
    }
    let mut total = 0u64;
    for (dst, src) in dst.chunks_mut(BLOCK).zip(src.chunks(BLOCK)) {
        total = add_carry(total, copy_and_sum_block_avx512(dst, src));
    }
    total
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn copy_and_sum_block_avx512(dst: &mut [u8], src: &[u8]) -> u64 {
    let zero = _mm512_setzero_si512();
    let (mut a, mut b) = (zero, zero);
    let (dst_pairs, dst_rest) = dst.as_chunks_mut::<128>();
    let (src_pairs, src_rest) = src.as_chunks::<128>();
    for (d, s) in dst_pairs.iter_mut().zip(src_pairs) {
        let (dv, _) = d.as_chunks_mut::<64>();
        let (sv, _) = s.as_chunks::<64>();
        if let ([d0, d1], [s0, s1]) = (dv, sv) {
            let v0 = load_avx512(s0);
            let v1 = load_avx512(s1);
            store_avx512(d0, v0);
            store_avx512(d1, v1);
            a = lanes_avx512(a, v0);
            b = lanes_avx512(b, v1);
        }
    }
    let (dst_vectors, dst_tail) = dst_rest.as_chunks_mut::<64>();
    let (src_vectors, src_tail) = src_rest.as_chunks::<64>();
    for (d, s) in dst_vectors.iter_mut().zip(src_vectors) {
        let v = load_avx512(s);
        store_avx512(d, v);
        a = lanes_avx512(a, v);
    }
    if !src_tail.is_empty() {
        let v = load_tail_avx512(src_tail);
        store_tail_avx512(dst_tail, v);
        b = lanes_avx512(b, v);
    }
    _mm512_reduce_add_epi64(_mm512_add_epi64(a, b)) as u64
}
