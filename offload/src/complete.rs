//! Checksum completion for a frame that is not segmented but whose TCP or
//! UDP checksum was left partial (virtio `NEEDS_CSUM`).
//!
//! The checksum field already holds a seed (usually the pseudo-header sum;
//! Linux and DPDK differ on whether it includes the length). Completion adds
//! the seed as it is: sum from `start` to the end of the frame, field
//! included, and store the complement at `start + offset`. A result of 0 is
//! stored as 0xffff, as Linux's `skb_checksum_help` does: for UDP 0 would
//! mean "no checksum", and for TCP both encodings of zero verify.
//!
//! ```
//! use vswitch_offload::complete::complete_checksum;
//! use vswitch_offload::PartialChecksum;
//!
//! // Four header bytes we do not sum, then a tiny "transport" area whose
//! // checksum field (at offset 2) holds a seed of 0x1234.
//! let mut frame = [0xaa, 0xbb, 0xcc, 0xdd, 0x00, 0x01, 0x12, 0x34, 0xf0, 0x0f];
//! let value = complete_checksum(&mut frame, PartialChecksum { start: 4, offset: 2 }).unwrap();
//! // 0x0001 + 0x1234 + 0xf00f = 0x10244 -> 0x0245, complemented 0xfdba.
//! assert_eq!(value, 0xfdba);
//! assert_eq!(&frame[6..8], &[0xfd, 0xba]);
//! ```

use crate::checksum::Checksum;
use crate::plan::PartialChecksum;

/// Why a partial checksum could not be completed. Each variant has a stable
/// counter name ([`ChecksumError::counter`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    /// The checksum field (2 bytes at `start + offset`) is not inside the frame.
    #[error("checksum field at {start} + {offset} must end within the {frame_len}-byte frame")]
    FieldOutOfFrame {
        /// Where summing starts.
        start: usize,
        /// Offset of the field after `start`.
        offset: usize,
        /// Length of the frame.
        frame_len: usize,
    },
    /// Source and destination of a copying completion differ in length.
    #[error("destination must be {expected} bytes like the source, found {found}")]
    LengthMismatch {
        /// Source length.
        expected: usize,
        /// Destination length.
        found: usize,
    },
}

impl ChecksumError {
    /// A stable name for the drop counter of this error.
    pub fn counter(&self) -> &'static str {
        match self {
            ChecksumError::FieldOutOfFrame { .. } => "checksum_field_out_of_frame",
            ChecksumError::LengthMismatch { .. } => "checksum_length_mismatch",
        }
    }
}

/// The offset of the checksum field, checked to lie within `len` bytes.
fn field_at(partial: PartialChecksum, len: usize) -> Result<usize, ChecksumError> {
    partial
        .start
        .checked_add(partial.offset)
        .filter(|at| at.checked_add(2).is_some_and(|end| end <= len))
        .ok_or(ChecksumError::FieldOutOfFrame {
            start: partial.start,
            offset: partial.offset,
            frame_len: len,
        })
}

fn store(frame: &mut [u8], at: usize, sum: &Checksum) -> u16 {
    let value = match sum.finish() {
        0 => 0xffff,
        value => value,
    };
    if let Some(field) = frame.get_mut(at..at + 2) {
        field.copy_from_slice(&value.to_be_bytes());
    }
    value
}

/// Completes the partial checksum of `frame` in place and returns the value
/// stored.
pub fn complete_checksum(frame: &mut [u8], partial: PartialChecksum) -> Result<u16, ChecksumError> {
    let at = field_at(partial, frame.len())?;
    let mut sum = Checksum::new();
    sum.add_bytes(frame.get(partial.start..).unwrap_or(&[]));
    Ok(store(frame, at, &sum))
}

/// Copies `src` into `dst` and completes the partial checksum in `dst`,
/// summing the bytes as they are copied (one pass over memory). `src` is
/// left as it is. Returns the value stored.
pub fn complete_checksum_copy(
    dst: &mut [u8],
    src: &[u8],
    partial: PartialChecksum,
) -> Result<u16, ChecksumError> {
    if dst.len() != src.len() {
        return Err(ChecksumError::LengthMismatch {
            expected: src.len(),
            found: dst.len(),
        });
    }
    let at = field_at(partial, src.len())?;
    let (head_dst, tail_dst) = dst.split_at_mut(partial.start);
    let (head_src, tail_src) = src.split_at(partial.start);
    head_dst.copy_from_slice(head_src);
    let mut sum = Checksum::new();
    sum.copy_and_add(tail_dst, tail_src);
    Ok(store(dst, at, &sum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::testing::{build, FrameSpec, L4Spec};

    fn partial_of(frame: &[u8], l4_offset: usize, udp: bool) -> PartialChecksum {
        let _ = frame;
        PartialChecksum {
            start: l4_offset,
            offset: if udp { 6 } else { 16 },
        }
    }

    /// Seeds the checksum field with the pseudo-header sum over the full L4
    /// length (the Linux convention) and checks completion against smoltcp.
    #[test]
    fn completes_tcp_and_udp_over_both_ip_versions_with_vlans() {
        for udp in [false, true] {
            for ipv6 in [false, true] {
                for vlans in 0..=2 {
                    let spec = FrameSpec {
                        vlans,
                        ipv6,
                        ip_options: if ipv6 { 0 } else { 8 },
                        ext_headers: if ipv6 { 0b0111 } else { 0 },
                        l4: if udp {
                            L4Spec::Udp
                        } else {
                            L4Spec::Tcp { options: true }
                        },
                        payload_len: 1001,
                        ..FrameSpec::default()
                    };
                    let built = build(&spec);
                    let mut frame = built.frame.clone();
                    let partial = partial_of(&frame, built.layout.l4_offset, udp);
                    built.seed_partial(&mut frame, true);
                    assert!(
                        !built.l4_checksum_ok(&frame),
                        "seeded frame must not verify"
                    );
                    let mut copied = vec![0; frame.len()];
                    complete_checksum_copy(&mut copied, &frame, partial).unwrap();
                    complete_checksum(&mut frame, partial).unwrap();
                    assert_eq!(frame, copied);
                    assert!(
                        built.l4_checksum_ok(&frame),
                        "udp {udp} ipv6 {ipv6} vlans {vlans}"
                    );
                }
            }
        }
    }

    /// The DPDK convention seeds without the length: the completer adds the
    /// seed as it is, so the result differs from a length-seeded one by
    /// exactly the length, which proves the seed is not recomputed.
    #[test]
    fn adds_the_seed_as_it_is() {
        let mut frame = vec![0u8; 40];
        frame[20..22].copy_from_slice(&0x1000u16.to_be_bytes());
        let partial = PartialChecksum {
            start: 4,
            offset: 16,
        };
        let with_seed = complete_checksum(&mut frame.clone(), partial).unwrap();
        frame[20..22].copy_from_slice(&0x0000u16.to_be_bytes());
        let without = complete_checksum(&mut frame, partial).unwrap();
        assert_eq!(!with_seed, (!without).wrapping_add(0x1000));
    }

    #[test]
    fn a_zero_result_is_stored_as_ffff() {
        // The bytes sum to 0xffff, so the complement is 0.
        let mut frame = [0xff, 0xff, 0x00, 0x00];
        let value = complete_checksum(
            &mut frame,
            PartialChecksum {
                start: 0,
                offset: 2,
            },
        )
        .unwrap();
        assert_eq!(value, 0xffff);
        assert_eq!(frame, [0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn field_beyond_frame_is_an_error() {
        let mut frame = [0u8; 20];
        for (start, offset) in [(19, 0), (10, 9), (21, 0), (usize::MAX, 2), (2, usize::MAX)] {
            let err = complete_checksum(&mut frame, PartialChecksum { start, offset }).unwrap_err();
            assert!(
                matches!(err, ChecksumError::FieldOutOfFrame { .. }),
                "{err}"
            );
            assert_eq!(err.counter(), "checksum_field_out_of_frame");
        }
        let err = complete_checksum_copy(
            &mut [0; 3],
            &frame,
            PartialChecksum {
                start: 0,
                offset: 0,
            },
        )
        .unwrap_err();
        assert_eq!(
            err,
            ChecksumError::LengthMismatch {
                expected: 20,
                found: 3
            }
        );
        // A field ending exactly at the frame end is fine.
        complete_checksum(
            &mut frame,
            PartialChecksum {
                start: 10,
                offset: 8,
            },
        )
        .unwrap();
    }
}
