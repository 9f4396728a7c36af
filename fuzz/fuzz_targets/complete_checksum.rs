//! Checksum completion on arbitrary requests: four bytes of `start` and four
//! of `offset` (little-endian u32; a set top bit means "near usize::MAX", to
//! reach the overflow checks), then the frame.
//!
//! * `complete_checksum` and `complete_checksum_copy` never panic and agree
//!   (same result, same bytes);
//! * an error only when the 2-byte field does not end within the frame;
//! * on `Ok`, only the two field bytes change, and the stored value is the
//!   complement of the sum from `start` to the end with the seed in the field
//!   (0 stored as 0xffff). With the field at an even distance from `start`,
//!   as in every TCP or UDP header, that is: summing from `start` to the end,
//!   plus the seed, gives 0xffff (the checksum verifies against the
//!   pseudo-header the seed stood for). The sums are checked with a plain
//!   RFC 1071 sum written here, not with the engine's own checksum code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vswitch_offload::complete::{complete_checksum, complete_checksum_copy};
use vswitch_offload::PartialChecksum;

/// Ones'-complement sum of big-endian 16-bit words (odd byte padded), folded.
fn ones_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn fold_add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

fn position(raw: u32) -> usize {
    if raw & 0x8000_0000 != 0 {
        usize::MAX - (raw & 0x7fff_ffff) as usize
    } else {
        raw as usize
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((start, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Some((offset, frame)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let partial = PartialChecksum {
        start: position(u32::from_le_bytes(*start)),
        offset: position(u32::from_le_bytes(*offset)),
    };
    let fits = partial
        .start
        .checked_add(partial.offset)
        .and_then(|at| at.checked_add(2))
        .is_some_and(|end| end <= frame.len());

    let mut in_place = frame.to_vec();
    let mut copied = vec![0u8; frame.len()];
    let stored = complete_checksum(&mut in_place, partial);
    let stored_copy = complete_checksum_copy(&mut copied, frame, partial);
    assert_eq!(stored, stored_copy);
    let Ok(stored) = stored else {
        assert!(!fits, "a field within the frame must be accepted");
        assert_eq!(in_place, frame, "an error leaves the frame as it was");
        return;
    };
    assert!(fits, "a field beyond the frame must be refused");
    assert_eq!(in_place, copied);

    let at = partial.start + partial.offset;
    assert_eq!(&in_place[..at], &frame[..at]);
    assert_eq!(&in_place[at + 2..], &frame[at + 2..]);
    assert_eq!(u16::from_be_bytes([in_place[at], in_place[at + 1]]), stored);
    assert_ne!(stored, 0, "0 is stored as 0xffff");

    let before = ones_sum(&frame[partial.start..]);
    let expected = match !before {
        0 => 0xffff,
        v => v,
    };
    assert_eq!(stored, expected, "the complement of the sum with the seed");
    if partial.offset.is_multiple_of(2) {
        let seed = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let after = ones_sum(&in_place[partial.start..]);
        assert_eq!(
            fold_add(after, seed),
            0xffff,
            "the stored checksum verifies"
        );
    }
});
