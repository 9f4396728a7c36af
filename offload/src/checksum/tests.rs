//! Differential tests: every kernel this CPU supports against an obviously
//! correct byte-pair reference and against etherparse's checksum.

use super::*;
use proptest::prelude::*;

/// The ones'-complement sum of big-endian byte pairs, the last odd byte
/// padded with zero, folded one carry at a time: RFC 1071 read literally.
fn reference_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = match pair {
            [hi, lo] => u16::from_be_bytes([*hi, *lo]),
            [hi] => u16::from_be_bytes([*hi, 0]),
            _ => unreachable!("chunks(2) yields one or two bytes"),
        };
        sum += u32::from(word);
        if sum > 0xffff {
            sum -= 0xffff;
        }
    }
    sum as u16
}

fn reference_checksum(data: &[u8]) -> u16 {
    !reference_sum(data)
}

/// etherparse sums native-endian words and returns the complement in native
/// order (the bytes it writes are `to_ne_bytes`); read those bytes as the
/// big-endian field value.
fn etherparse_checksum(data: &[u8]) -> u16 {
    let native = etherparse::checksum::Sum16BitWords::new()
        .add_slice(data)
        .ones_complement();
    u16::from_be_bytes(native.to_ne_bytes())
}

fn kernels() -> Vec<Kernel> {
    let kernels: Vec<Kernel> = Kernel::supported().collect();
    assert!(kernels.contains(&Kernel::Scalar));
    kernels
}

/// A buffer of `len` pseudo-random bytes starting `offset` bytes into a
/// larger allocation, so the kernels see every start alignment.
fn offset_buffer(seed: u64, offset: usize, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..offset + len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn rfc1071_section3_vector() {
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(reference_sum(&data), 0xddf2);
    for kernel in kernels() {
        assert_eq!(checksum_with(kernel, &data), 0x220d, "{kernel:?}");
        let mut sum = Checksum::with_kernel(kernel);
        sum.add_bytes(&data);
        assert_eq!(sum.sum(), 0xddf2, "{kernel:?}");
    }
    assert_eq!(checksum(&data), 0x220d);
    assert_eq!(etherparse_checksum(&data), 0x220d);
}

#[test]
fn ipv4_header_vector() {
    let header = [
        0x45, 0x00, 0x00, 0x28, 0x1f, 0xfd, 0x40, 0x00, 0x80, 0x06, 0x00, 0x00, 0xc0, 0xa8, 0x3b,
        0x0a, 0xc0, 0xa8, 0x3b, 0x32,
    ];
    for kernel in kernels() {
        assert_eq!(checksum_with(kernel, &header), 0xe345, "{kernel:?}");
    }
    let mut with_checksum = header;
    with_checksum[10..12].copy_from_slice(&0xe345u16.to_be_bytes());
    assert_eq!(checksum(&with_checksum), 0, "a valid header sums to -0");
}

#[test]
fn empty_and_tiny_inputs() {
    for kernel in kernels() {
        assert_eq!(checksum_with(kernel, &[]), 0xffff, "{kernel:?}");
        assert_eq!(checksum_with(kernel, &[0x12]), !0x1200, "{kernel:?}");
        assert_eq!(checksum_with(kernel, &[0x12, 0x34]), !0x1234, "{kernel:?}");
        assert_eq!(checksum_with(kernel, &[0, 0, 0]), 0xffff, "{kernel:?}");
    }
}

#[test]
fn every_length_up_to_600_at_every_alignment() {
    let buffer = offset_buffer(0x5eed, 64, 600);
    for kernel in kernels() {
        for offset in 0..64 {
            for len in (0..=600).step_by(if offset % 7 == 0 { 1 } else { 13 }) {
                let data = &buffer[offset..offset + len];
                assert_eq!(
                    checksum_with(kernel, data),
                    reference_checksum(data),
                    "{kernel:?} offset {offset} len {len}"
                );
            }
        }
    }
}

#[test]
fn copy_at_every_destination_alignment() {
    // The vector kernels align their stores with a head of 0..63 bytes, odd
    // ones included; cover each head with lengths around the vector widths.
    let src_buffer = offset_buffer(0xc0b1, 64, 1600);
    for kernel in kernels() {
        for src_offset in [0, 1, 2, 5] {
            for dst_offset in 0..64 {
                for len in [0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200, 255, 1500] {
                    let src = &src_buffer[src_offset..src_offset + len];
                    let mut dst_buffer = vec![0u8; dst_offset + len];
                    let dst = &mut dst_buffer[dst_offset..];
                    assert_eq!(
                        copy_and_checksum_with(kernel, dst, src),
                        reference_checksum(src),
                        "{kernel:?} src+{src_offset} dst+{dst_offset} len {len}"
                    );
                    assert_eq!(&dst_buffer[dst_offset..], src);
                }
            }
        }
    }
}

#[test]
fn carry_storms_all_ones() {
    let big = vec![0xffu8; 3 * 65536 + 7];
    let mut lengths: Vec<usize> = (0..300).collect();
    lengths.extend([
        511,
        512,
        513,
        1023,
        1024,
        1500,
        4095,
        4096,
        9000,
        65534,
        65535,
        65536,
        65537,
        70000,
        131071,
        131072,
        131073,
        3 * 65536 + 7,
    ]);
    for kernel in kernels() {
        for &len in &lengths {
            for offset in [0, 1] {
                let Some(data) = big.get(offset..offset + len) else {
                    continue;
                };
                let expected = reference_checksum(data);
                assert_eq!(
                    checksum_with(kernel, data),
                    expected,
                    "{kernel:?} len {len} offset {offset}"
                );
                let mut dst = vec![0u8; len];
                assert_eq!(copy_and_checksum_with(kernel, &mut dst, data), expected);
                assert_eq!(&dst[..], data);
            }
        }
    }
}

#[test]
fn rfc1624_section4_example() {
    // The rest of the header sums to 0xcd7a; a field changes 0x5555 -> 0x3285.
    let old = [0xcd, 0x7a, 0x55, 0x55];
    let new = [0xcd, 0x7a, 0x32, 0x85];
    assert_eq!(checksum(&old), 0xdd2f);
    assert_eq!(checksum(&new), 0x0000);
    // Equation 3 gives 0x0000 where equation 2 would give -0 (0xffff).
    assert_eq!(update_u16(0xdd2f, 0x5555, 0x3285), 0x0000);
    assert_eq!(update_u32(0xdd2f, 0xcd7a_5555, 0xcd7a_3285), 0x0000);
}

#[test]
fn pseudo_header_ipv4_known_values() {
    // 192.168.59.10 -> 192.168.59.50, TCP, 20 bytes.
    let sum = pseudo_header_ipv4([192, 168, 59, 10], [192, 168, 59, 50], 6, 20);
    let bytes = [192, 168, 59, 10, 192, 168, 59, 50, 0, 6, 0, 20];
    assert_eq!(sum.sum(), reference_sum(&bytes));
}

#[test]
fn kernel_of_an_accumulator() {
    assert_eq!(Checksum::new().kernel(), Kernel::detect());
    assert_eq!(
        Checksum::with_kernel(Kernel::Scalar).kernel(),
        Kernel::Scalar
    );
    for &kernel in Kernel::ALL {
        let chosen = Checksum::with_kernel(kernel).kernel();
        assert!(chosen == kernel || (!kernel.is_supported() && chosen == Kernel::Scalar));
    }
}

#[test]
fn words_equal_their_bytes() {
    let mut words = Checksum::new();
    words.add_u16(0x1234).add_u32(0xdead_beef).add_u16(0xffff);
    let mut bytes = Checksum::new();
    bytes.add_bytes(&[0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff]);
    assert_eq!(words.sum(), bytes.sum());
    assert_eq!(words.finish(), bytes.finish());
}

/// `fold` read as arithmetic: the residue modulo 0xffff, except that a
/// non-zero multiple of 0xffff is -0 (0xffff), never +0.
fn reference_fold(sum: u64) -> u16 {
    match (sum, sum % 0xffff) {
        (0, _) => 0,
        (_, 0) => 0xffff,
        (_, residue) => residue as u16,
    }
}

#[test]
fn fold_corner_cases() {
    for sum in [
        0,
        1,
        0xffff,
        0x1_0000,
        0x1_fffe,
        0xffff_ffff,
        0x1_0000_0000,
        0xffff_0001,
        0x0001_ffff_ffff,
        u64::MAX,
        u64::MAX - 1,
        1 << 63,
    ] {
        assert_eq!(fold(sum), reference_fold(sum), "{sum:#x}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn fold_is_end_around_carry(sum in any::<u64>(), small in 0u64..0x3_0000) {
        prop_assert_eq!(fold(sum), reference_fold(sum));
        prop_assert_eq!(fold(small), reference_fold(small));
    }

    #[test]
    fn kernels_match_reference_and_etherparse(
        seed in any::<u64>(),
        offset in 0usize..128,
        len in prop_oneof![0usize..200, 0usize..2000, 0usize..70000],
    ) {
        let buffer = offset_buffer(seed, offset, len);
        let data = &buffer[offset..];
        let expected = reference_checksum(data);
        prop_assert_eq!(etherparse_checksum(data), expected);
        prop_assert_eq!(checksum(data), expected);
        for kernel in kernels() {
            prop_assert_eq!(checksum_with(kernel, data), expected, "{:?}", kernel);
        }
    }

    #[test]
    fn split_anywhere_equals_one_shot(
        seed in any::<u64>(),
        len in 0usize..5000,
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let data = offset_buffer(seed, 0, len);
        let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(len + 1)).collect();
        points.sort_unstable();
        let expected = reference_checksum(&data);
        for kernel in kernels() {
            let mut sum = Checksum::with_kernel(kernel);
            let mut start = 0;
            for &point in points.iter().chain(std::iter::once(&len)) {
                sum.add_bytes(&data[start..point]);
                start = point;
            }
            prop_assert_eq!(sum.finish(), expected, "{:?} cuts {:?}", kernel, points);

            // The same pieces summed in separate accumulators and combined.
            let mut combined = Checksum::with_kernel(kernel);
            let mut start = 0;
            for &point in points.iter().chain(std::iter::once(&len)) {
                let mut piece = Checksum::with_kernel(kernel);
                piece.add_bytes(&data[start..point]);
                combined.add_checksum(&piece);
                start = point;
            }
            prop_assert_eq!(combined.finish(), expected, "{:?} combined", kernel);
        }
    }

    #[test]
    fn copy_and_checksum_equals_copy_then_checksum(
        seed in any::<u64>(),
        src_offset in 0usize..64,
        dst_offset in 0usize..64,
        len in prop_oneof![0usize..300, 0usize..70000],
        split in any::<prop::sample::Index>(),
    ) {
        let buffer = offset_buffer(seed, src_offset, len);
        let src = &buffer[src_offset..];
        let expected = reference_checksum(src);
        for kernel in kernels() {
            let mut dst_buffer = vec![0x5au8; dst_offset + len + 64];
            let dst = &mut dst_buffer[dst_offset..dst_offset + len];
            prop_assert_eq!(copy_and_checksum_with(kernel, dst, src), expected, "{:?}", kernel);
            prop_assert_eq!(&dst_buffer[dst_offset..dst_offset + len], src);
            // Bytes around the destination are untouched (masked tails).
            prop_assert!(dst_buffer[..dst_offset].iter().all(|&b| b == 0x5a));
            prop_assert!(dst_buffer[dst_offset + len..].iter().all(|&b| b == 0x5a));

            // Fused copy mixed with plain adds, split at an arbitrary (odd) point.
            let point = split.index(len + 1);
            let mut dst = vec![0u8; len];
            let mut sum = Checksum::with_kernel(kernel);
            sum.add_bytes(&src[..point]);
            sum.copy_and_add(&mut dst[point..], &src[point..]);
            prop_assert_eq!(sum.finish(), expected);
            prop_assert_eq!(&dst[point..], &src[point..]);
        }
    }

    #[test]
    fn update_u16_equals_recompute(
        seed in any::<u64>(),
        words in 2usize..40,
        field in any::<prop::sample::Index>(),
        new in any::<u16>(),
    ) {
        // Word 0 is 0x45xx like an IPv4 header, so the header never sums to
        // zero (the only case where -0 and +0 checksums differ).
        let mut header = offset_buffer(seed, 0, 2 * words);
        header[0] = 0x45;
        let at = 2 + 2 * field.index(words - 1);
        let old = u16::from_be_bytes([header[at], header[at + 1]]);
        let old_checksum = checksum(&header);
        header[at..at + 2].copy_from_slice(&new.to_be_bytes());
        prop_assert_eq!(update_u16(old_checksum, old, new), checksum(&header));
    }

    #[test]
    fn update_u32_equals_recompute(
        seed in any::<u64>(),
        words in 3usize..40,
        field in any::<prop::sample::Index>(),
        new in any::<u32>(),
    ) {
        let mut header = offset_buffer(seed, 0, 2 * words);
        header[0] = 0x45;
        let at = 2 + 2 * field.index(words - 2);
        let old = u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let old_checksum = checksum(&header);
        header[at..at + 4].copy_from_slice(&new.to_be_bytes());
        prop_assert_eq!(update_u32(old_checksum, old, new), checksum(&header));
    }

    #[test]
    fn update_handles_the_zero_checksum_corner(rest in 1u16..=0xffff, new in any::<u16>()) {
        // Choose the old field so the new header sums to exactly 0xffff, the
        // case where equation 2 of RFC 1624 yields -0 instead of 0x0000.
        let target = 0xffffu16.wrapping_sub(rest);
        let header = |field: u16| {
            let mut bytes = [0u8; 4];
            bytes[..2].copy_from_slice(&rest.to_be_bytes());
            bytes[2..].copy_from_slice(&field.to_be_bytes());
            bytes
        };
        let old_checksum = checksum(&header(new));
        prop_assert_eq!(update_u16(old_checksum, new, target), checksum(&header(target)));
        prop_assert_eq!(checksum(&header(target)), 0x0000);
    }

    #[test]
    fn pseudo_header_ipv4_matches_bytes(
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
        protocol in any::<u8>(),
        l4_len in any::<u16>(),
        payload_seed in any::<u64>(),
        payload_len in 0usize..1600,
    ) {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&[0, protocol]);
        bytes.extend_from_slice(&l4_len.to_be_bytes());
        let mut sum = pseudo_header_ipv4(src, dst, protocol, l4_len);
        prop_assert_eq!(sum.sum(), reference_sum(&bytes));

        let payload = offset_buffer(payload_seed, 0, payload_len);
        bytes.extend_from_slice(&payload);
        sum.add_bytes(&payload);
        prop_assert_eq!(sum.finish(), reference_checksum(&bytes));
    }

    #[test]
    fn pseudo_header_ipv6_matches_bytes(
        src in any::<[u8; 16]>(),
        dst in any::<[u8; 16]>(),
        next_header in any::<u8>(),
        l4_len in any::<u32>(),
        payload_seed in any::<u64>(),
        payload_len in 0usize..1600,
    ) {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&l4_len.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, next_header]);
        let mut sum = pseudo_header_ipv6(src, dst, next_header, l4_len);
        prop_assert_eq!(sum.sum(), reference_sum(&bytes));

        let payload = offset_buffer(payload_seed, 0, payload_len);
        bytes.extend_from_slice(&payload);
        sum.add_bytes(&payload);
        prop_assert_eq!(sum.finish(), reference_checksum(&bytes));
    }
}
