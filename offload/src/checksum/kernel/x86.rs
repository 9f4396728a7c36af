//! AVX2 and AVX-512 summing kernels for x86_64.
//!
//! Each vector is viewed as 64-bit lanes, and each lane's value `v` stands
//! for its two 32-bit halves, each two native-endian 16-bit words; since
//! 2^16 is 1 modulo 0xffff, the ones'-complement sum is (up to the final
//! fold) the plain integer sum of the halves. Three instructions per vector
//! keep that sum exactly: `wrap += v` (wrapping 64-bit add) and
//! `high += v >> 32`. At the end the sum of the low halves is
//! `wrap - (high << 32)` modulo 2^64, exact because it is below 2^64; the
//! caller's fold does the end-around carries once.
//!
//! Inputs are processed in [`BLOCK`]s so no exact sum can reach 2^64; after
//! each block the lanes are reduced into a scalar with end-around carry.
//!
//! The functions are safe `#[target_feature]` functions: calling one from
//! code without the feature is `unsafe`, and the caller must have detected
//! the feature first (see `SupportedKernel` in the parent module).

use core::arch::x86_64::*;

use super::{add_carry, sum_scalar};

/// Bytes summed before the vector lanes are reduced. A block holds at most
/// 2^29 64-bit lanes' worth of input, each contributing two halves below
/// 2^32, so the exact sums of low halves and of high halves over all lanes
/// and accumulators together stay below 2^61 each: nothing overflows.
const BLOCK: usize = 1 << 32;

// ---------------------------------------------------------------- AVX2

/// A 256-bit accumulator: wrapping lane sums and exact high-half sums.
#[derive(Clone, Copy)]
struct Acc256 {
    wrap: __m256i,
    high: __m256i,
}

impl Acc256 {
    #[inline]
    #[target_feature(enable = "avx2")]
    fn new() -> Acc256 {
        Acc256 {
            wrap: _mm256_setzero_si256(),
            high: _mm256_setzero_si256(),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn add(self, v: __m256i) -> Acc256 {
        Acc256 {
            wrap: _mm256_add_epi64(self.wrap, v),
            high: _mm256_add_epi64(self.high, _mm256_srli_epi64::<32>(v)),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn merge(self, other: Acc256) -> Acc256 {
        Acc256 {
            wrap: _mm256_add_epi64(self.wrap, other.wrap),
            high: _mm256_add_epi64(self.high, other.high),
        }
    }

    /// The sum of all halves of all lanes (below 2^62 within a block).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn total(self) -> u64 {
        let low = _mm256_sub_epi64(self.wrap, _mm256_slli_epi64::<32>(self.high));
        let lanes = _mm256_add_epi64(low, self.high);
        let half = _mm_add_epi64(
            _mm256_castsi256_si128(lanes),
            _mm256_extracti128_si256::<1>(lanes),
        );
        let both = _mm_add_epi64(half, _mm_unpackhi_epi64(half, half));
        _mm_cvtsi128_si64(both) as u64
    }
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
    let (mut a, mut b, mut c, mut d) = (Acc256::new(), Acc256::new(), Acc256::new(), Acc256::new());
    let (quads, rest) = block.as_chunks::<128>();
    for quad in quads {
        let (vectors, _) = quad.as_chunks::<32>();
        if let [v0, v1, v2, v3] = vectors {
            a = a.add(load_avx2(v0));
            b = b.add(load_avx2(v1));
            c = c.add(load_avx2(v2));
            d = d.add(load_avx2(v3));
        }
    }
    let (vectors, tail) = rest.as_chunks::<32>();
    for v in vectors {
        b = b.add(load_avx2(v));
    }
    let tail_sum = match even_tail_avx2(block, tail.len()) {
        Some(v) => {
            c = c.add(v);
            match tail.len() & 1 {
                1 => block
                    .last()
                    .map_or(0, |&byte| u64::from(u16::from_ne_bytes([byte, 0]))),
                _ => 0,
            }
        }
        None => sum_scalar(tail),
    };
    add_carry(a.merge(b).merge(c.merge(d)).total(), tail_sum)
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
/// `dst` and added. Copies `min(dst.len(), src.len())` bytes. (Aligning the
/// stores with a scalar head cost more than it saved at 64..1500 bytes.)
#[target_feature(enable = "avx2")]
pub(super) fn copy_and_sum_avx2(dst: &mut [u8], src: &[u8]) -> u64 {
    let len = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..len], &src[..len]);
    if len < 32 {
        return super::copy_and_sum_scalar(dst, src);
    }
    // One call site, so the block is inlined; every real input is one
    // block, one trip round the loop.
    let (mut dst, mut src) = (dst, src);
    let mut total = 0u64;
    loop {
        let n = dst.len().min(BLOCK);
        let (block_dst, dst_rest) = dst.split_at_mut(n);
        let (block_src, src_rest) = src.split_at(n);
        total = add_carry(total, copy_and_sum_block_avx2(block_dst, block_src));
        if dst_rest.is_empty() {
            return total;
        }
        (dst, src) = (dst_rest, src_rest);
    }
}

/// Whether the fused copy should walk its data from the end: when `dst`
/// lies a little (under 1 KiB) after `src` modulo 4 KiB, a forward walk's
/// loads share address bits 0..12 with stores it issued a few vectors
/// earlier, and the CPU stalls them as possible store-to-load forwarding
/// ("4K aliasing"; measured at 64 KiB: 35 instead of 56 GB/s). Walking
/// backward moves those stores behind the loads. The sum does not depend on
/// the order.
#[inline]
fn copies_backward(dst: &[u8], src: &[u8]) -> bool {
    let distance = (dst.as_ptr() as usize).wrapping_sub(src.as_ptr() as usize) & 4095;
    (1..1024).contains(&distance)
}

/// How many bytes (0..64) come before the first 64-byte boundary in `dst`.
#[inline]
fn aligning_head(dst: &[u8]) -> usize {
    (64 - (dst.as_ptr() as usize & 63)) & 63
}

/// A sum of bytes that start `head` bytes into the data: after an odd head
/// each of their 16-bit words straddles the data's word boundaries, so the
/// folded sum is byte-swapped (RFC 1071 section 2.B) to line them up.
#[inline]
fn shift_by_head(sum: u64, head: usize) -> u64 {
    if head & 1 == 1 {
        u64::from(crate::checksum::fold(sum).swap_bytes())
    } else {
        sum
    }
}

#[inline]
#[target_feature(enable = "avx2")]
fn copy_and_sum_block_avx2(dst: &mut [u8], src: &[u8]) -> u64 {
    let (mut a, mut b) = (Acc256::new(), Acc256::new());
    let backward = copies_backward(dst, src);
    let (dst_pairs, dst_rest) = dst.as_chunks_mut::<64>();
    let (src_pairs, src_rest) = src.as_chunks::<64>();
    let mut step = |d: &mut [u8; 64], s: &[u8; 64]| {
        let (dv, _) = d.as_chunks_mut::<32>();
        let (sv, _) = s.as_chunks::<32>();
        if let ([d0, d1], [s0, s1]) = (dv, sv) {
            let v0 = load_avx2(s0);
            let v1 = load_avx2(s1);
            store_avx2(d0, v0);
            store_avx2(d1, v1);
            a = a.add(v0);
            b = b.add(v1);
        }
    };
    let pairs = dst_pairs.iter_mut().zip(src_pairs);
    if backward {
        pairs.rev().for_each(|(d, s)| step(d, s));
    } else {
        pairs.for_each(|(d, s)| step(d, s));
    }
    let (dst_vectors, dst_tail) = dst_rest.as_chunks_mut::<32>();
    let (src_vectors, src_tail) = src_rest.as_chunks::<32>();
    for (d, s) in dst_vectors.iter_mut().zip(src_vectors) {
        let v = load_avx2(s);
        store_avx2(d, v);
        a = a.add(v);
    }
    let tail_len = src_tail.len();
    if tail_len == 0 {
        return a.merge(b).total();
    }
    // The last bytes by overlapping vectors, as in `sum_block_avx2`: the
    // last 32 bytes copied again (the bytes before the tail get the values
    // they already have), the tail's even part summed from a masked reload
    // and a final odd byte on its own. A scalar tail cost a memcpy call and
    // more than the whole 64-byte loop for a 1448-byte payload.
    let Some(even) = even_tail_avx2(src, tail_len) else {
        // A block shorter than one vector (only the last of several).
        return add_carry(
            a.merge(b).total(),
            super::copy_and_sum_scalar(dst_tail, src_tail),
        );
    };
    if let (Some(d), Some(s)) = (dst.last_chunk_mut::<32>(), src.last_chunk::<32>()) {
        store_avx2(d, load_avx2(s));
    }
    let odd = match (tail_len & 1, src.last()) {
        (1, Some(&byte)) => u64::from(u16::from_ne_bytes([byte, 0])),
        _ => 0,
    };
    add_carry(a.merge(b.add(even)).total(), odd)
}

// ------------------------------------------------------------- AVX-512

/// A 512-bit accumulator: wrapping lane sums and exact high-half sums.
#[derive(Clone, Copy)]
struct Acc512 {
    wrap: __m512i,
    high: __m512i,
}

impl Acc512 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn new() -> Acc512 {
        Acc512 {
            wrap: _mm512_setzero_si512(),
            high: _mm512_setzero_si512(),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn add(self, v: __m512i) -> Acc512 {
        Acc512 {
            wrap: _mm512_add_epi64(self.wrap, v),
            high: _mm512_add_epi64(self.high, _mm512_srli_epi64::<32>(v)),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn merge(self, other: Acc512) -> Acc512 {
        Acc512 {
            wrap: _mm512_add_epi64(self.wrap, other.wrap),
            high: _mm512_add_epi64(self.high, other.high),
        }
    }

    /// The sum of all halves of all lanes (below 2^62 within a block).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn total(self) -> u64 {
        let low = _mm512_sub_epi64(self.wrap, _mm512_slli_epi64::<32>(self.high));
        _mm512_reduce_add_epi64(_mm512_add_epi64(low, self.high)) as u64
    }
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

/// The mask selecting the first `len` (at most 64) bytes of a 64-byte vector.
#[inline]
fn byte_mask(len: usize) -> u64 {
    debug_assert!(len <= 64);
    u64::MAX.checked_shr(64 - len as u32).unwrap_or(0)
}

/// Loads `part` (at most 64 bytes) into the low bytes of a vector, the rest
/// zero.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn load_part_avx512(part: &[u8]) -> __m512i {
    let mask = byte_mask(part.len().min(64));
    // SAFETY: the mask selects the first min(part.len(), 64) bytes, all
    // inside `part`; masked-off bytes are neither read nor able to fault
    // (AVX-512BW masked loads suppress faults on disabled elements).
    unsafe { _mm512_maskz_loadu_epi8(mask, part.as_ptr().cast()) }
}

/// Stores the low `part.len()` (at most 64) bytes of `v` into `part`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn store_part_avx512(part: &mut [u8], v: __m512i) {
    let mask = byte_mask(part.len().min(64));
    // SAFETY: the mask selects the first min(part.len(), 64) bytes, all
    // inside the exclusively borrowed `part`; masked-off bytes are not
    // written.
    unsafe { _mm512_mask_storeu_epi8(part.as_mut_ptr().cast(), mask, v) }
}

/// The AVX-512 summing kernel.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn sum_avx512(data: &[u8]) -> u64 {
    if data.len() <= 64 {
        return Acc512::new().add(load_part_avx512(data)).total();
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
    let (mut a, mut b, mut c, mut d) = (Acc512::new(), Acc512::new(), Acc512::new(), Acc512::new());
    let (quads, rest) = block.as_chunks::<256>();
    for quad in quads {
        let (vectors, _) = quad.as_chunks::<64>();
        if let [v0, v1, v2, v3] = vectors {
            a = a.add(load_avx512(v0));
            b = b.add(load_avx512(v1));
            c = c.add(load_avx512(v2));
            d = d.add(load_avx512(v3));
        }
    }
    let (vectors, tail) = rest.as_chunks::<64>();
    for v in vectors {
        a = a.add(load_avx512(v));
    }
    if !tail.is_empty() {
        b = b.add(load_part_avx512(tail));
    }
    a.merge(b).merge(c.merge(d)).total()
}

/// The AVX-512 fused copy-and-sum kernel: each vector is loaded once, stored
/// to `dst` and added; the head (up to the first 64-byte boundary of `dst`,
/// so the stores are aligned) and the tail use masked loads and stores.
/// Copies `min(dst.len(), src.len())` bytes.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn copy_and_sum_avx512(dst: &mut [u8], src: &[u8]) -> u64 {
    let len = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..len], &src[..len]);
    if len <= 64 {
        let v = load_part_avx512(src);
        store_part_avx512(dst, v);
        return Acc512::new().add(v).total();
    }
    let head = aligning_head(dst);
    let (dst_head, dst) = dst.split_at_mut(head);
    let (src_head, src) = src.split_at(head);
    let v = load_part_avx512(src_head);
    store_part_avx512(dst_head, v);
    let head_sum = Acc512::new().add(v).total();
    let body = if dst.len() <= BLOCK {
        // Every real input: one block, without the chunking loop's setup.
        copy_and_sum_block_avx512(dst, src)
    } else {
        let mut body = 0u64;
        for (dst, src) in dst.chunks_mut(BLOCK).zip(src.chunks(BLOCK)) {
            body = add_carry(body, copy_and_sum_block_avx512(dst, src));
        }
        body
    };
    add_carry(head_sum, shift_by_head(body, head))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn copy_and_sum_block_avx512(dst: &mut [u8], src: &[u8]) -> u64 {
    let (mut a, mut b) = (Acc512::new(), Acc512::new());
    let backward = copies_backward(dst, src);
    let (dst_pairs, dst_rest) = dst.as_chunks_mut::<128>();
    let (src_pairs, src_rest) = src.as_chunks::<128>();
    let mut step = |d: &mut [u8; 128], s: &[u8; 128]| {
        let (dv, _) = d.as_chunks_mut::<64>();
        let (sv, _) = s.as_chunks::<64>();
        if let ([d0, d1], [s0, s1]) = (dv, sv) {
            let v0 = load_avx512(s0);
            let v1 = load_avx512(s1);
            store_avx512(d0, v0);
            store_avx512(d1, v1);
            a = a.add(v0);
            b = b.add(v1);
        }
    };
    let pairs = dst_pairs.iter_mut().zip(src_pairs);
    if backward {
        pairs.rev().for_each(|(d, s)| step(d, s));
    } else {
        pairs.for_each(|(d, s)| step(d, s));
    }
    let (dst_vectors, dst_tail) = dst_rest.as_chunks_mut::<64>();
    let (src_vectors, src_tail) = src_rest.as_chunks::<64>();
    for (d, s) in dst_vectors.iter_mut().zip(src_vectors) {
        let v = load_avx512(s);
        store_avx512(d, v);
        a = a.add(v);
    }
    if !src_tail.is_empty() {
        let v = load_part_avx512(src_tail);
        store_part_avx512(dst_tail, v);
        b = b.add(v);
    }
    a.merge(b).total()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::fold;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i * 131 + 7) as u8 ^ (i >> 8) as u8)
            .collect()
    }

    /// The kernels called directly (the dispatcher sends short inputs
    /// elsewhere), at every length up to 600, every start offset up to 64,
    /// against the scalar kernel.
    #[test]
    fn vector_kernels_match_scalar_at_every_length_and_offset() {
        let avx2 = std::is_x86_feature_detected!("avx2");
        let avx512 =
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw");
        let buffer = bytes(700);
        for offset in 0..64 {
            for len in 0..=600 {
                let data = &buffer[offset..offset + len];
                let expected = fold(sum_scalar(data));
                let mut dst = vec![0u8; len];
                if avx2 {
                    // SAFETY: avx2 was detected just above.
                    let sum = unsafe { sum_avx2(data) };
                    assert_eq!(fold(sum), expected, "avx2 +{offset} len {len}");
                    // SAFETY: avx2 was detected just above.
                    let sum = unsafe { copy_and_sum_avx2(&mut dst, data) };
                    assert_eq!(fold(sum), expected, "avx2 copy +{offset} len {len}");
                    assert_eq!(dst, data);
                }
                if avx512 {
                    dst.fill(0);
                    // SAFETY: avx512f and avx512bw were detected just above.
                    let sum = unsafe { sum_avx512(data) };
                    assert_eq!(fold(sum), expected, "avx512 +{offset} len {len}");
                    // SAFETY: avx512f and avx512bw were detected just above.
                    let sum = unsafe { copy_and_sum_avx512(&mut dst, data) };
                    assert_eq!(fold(sum), expected, "avx512 copy +{offset} len {len}");
                    assert_eq!(dst, data);
                }
            }
        }
    }

    /// The fused copies walk backward when the destination sits just after
    /// the source modulo 4 KiB; cover both directions and the boundaries.
    #[test]
    fn copies_match_in_both_directions() {
        let avx2 = std::is_x86_feature_detected!("avx2");
        let avx512 =
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw");
        for len in [0usize, 1, 127, 128, 129, 1000, 4000, 9001] {
            for distance in [0, 1, 2, 63, 64, 100, 256, 1023, 1024, 4095] {
                let base = len.next_multiple_of(4096) + distance;
                let mut buffer = vec![0u8; base + len];
                let (src_part, dst_part) = buffer.split_at_mut(base);
                src_part[..len].copy_from_slice(&bytes(len));
                let src = &src_part[..len];
                let dst = &mut dst_part[..len];
                assert_eq!(copies_backward(dst, src), (1..1024).contains(&distance));
                let expected = fold(sum_scalar(src));
                if avx2 {
                    dst.fill(0);
                    // SAFETY: avx2 was detected at the top of the test.
                    let sum = unsafe { copy_and_sum_avx2(dst, src) };
                    assert_eq!(fold(sum), expected, "avx2 len {len} distance {distance}");
                    assert_eq!(&*dst, src);
                }
                if avx512 {
                    dst.fill(0);
                    // SAFETY: avx512f and avx512bw were detected at the top.
                    let sum = unsafe { copy_and_sum_avx512(dst, src) };
                    assert_eq!(fold(sum), expected, "avx512 len {len} distance {distance}");
                    assert_eq!(&*dst, src);
                }
            }
        }
    }
}
