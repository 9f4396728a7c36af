//! Big-endian header fields read and written at offsets, with every access
//! checked so that an inconsistent layout becomes an error, never a panic.

use super::SegmentError;

/// Reads the big-endian u16 at `at`.
#[inline]
pub(crate) fn get_u16(buf: &[u8], at: usize) -> Result<u16, SegmentError> {
    match buf.get(at..at.wrapping_add(2)) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(out_of_bounds(at, 2, buf.len())),
    }
}

/// Reads the big-endian u32 at `at`.
#[inline]
pub(crate) fn get_u32(buf: &[u8], at: usize) -> Result<u32, SegmentError> {
    match buf.get(at..at.wrapping_add(4)) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(out_of_bounds(at, 4, buf.len())),
    }
}

/// Reads the byte at `at`.
#[inline]
pub(crate) fn get_u8(buf: &[u8], at: usize) -> Result<u8, SegmentError> {
    buf.get(at)
        .copied()
        .ok_or_else(|| out_of_bounds(at, 1, buf.len()))
}

/// Writes `value` big-endian at `at`.
#[inline]
pub(crate) fn set_u16(buf: &mut [u8], at: usize, value: u16) -> Result<(), SegmentError> {
    let len = buf.len();
    match buf.get_mut(at..at.wrapping_add(2)) {
        Some(field) => {
            field.copy_from_slice(&value.to_be_bytes());
            Ok(())
        }
        None => Err(out_of_bounds(at, 2, len)),
    }
}

/// Writes `value` big-endian at `at`.
#[inline]
pub(crate) fn set_u32(buf: &mut [u8], at: usize, value: u32) -> Result<(), SegmentError> {
    let len = buf.len();
    match buf.get_mut(at..at.wrapping_add(4)) {
        Some(field) => {
            field.copy_from_slice(&value.to_be_bytes());
            Ok(())
        }
        None => Err(out_of_bounds(at, 4, len)),
    }
}

/// Writes the byte `value` at `at`.
#[inline]
pub(crate) fn set_u8(buf: &mut [u8], at: usize, value: u8) -> Result<(), SegmentError> {
    let len = buf.len();
    match buf.get_mut(at) {
        Some(byte) => {
            *byte = value;
            Ok(())
        }
        None => Err(out_of_bounds(at, 1, len)),
    }
}

/// Reads the 4-byte array at `at` (an IPv4 address).
#[inline]
pub(crate) fn get_array4(buf: &[u8], at: usize) -> Result<[u8; 4], SegmentError> {
    get_u32(buf, at).map(u32::to_be_bytes)
}

/// Reads the 16-byte array at `at` (an IPv6 address).
#[inline]
pub(crate) fn get_array16(buf: &[u8], at: usize) -> Result<[u8; 16], SegmentError> {
    buf.get(at..at.wrapping_add(16))
        .and_then(|s| <[u8; 16]>::try_from(s).ok())
        .ok_or_else(|| out_of_bounds(at, 16, buf.len()))
}

/// The `N` bytes at `at` as an array, so that the fields inside it are
/// written at constant offsets with no further checks.
#[inline]
pub(crate) fn window<const N: usize>(
    buf: &mut [u8],
    at: usize,
) -> Result<&mut [u8; N], SegmentError> {
    let len = buf.len();
    buf.get_mut(at..at.wrapping_add(N))
        .and_then(|s| <&mut [u8; N]>::try_from(s).ok())
        .ok_or_else(|| out_of_bounds(at, N, len))
}

fn out_of_bounds(at: usize, width: usize, len: usize) -> SegmentError {
    SegmentError::FieldOutOfBounds {
        offset: at,
        width,
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_big_endian() {
        let mut buf = [0u8; 6];
        set_u16(&mut buf, 0, 0x1234).unwrap();
        set_u32(&mut buf, 2, 0xdead_beef).unwrap();
        assert_eq!(buf, [0x12, 0x34, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(get_u16(&buf, 0).unwrap(), 0x1234);
        assert_eq!(get_u32(&buf, 2).unwrap(), 0xdead_beef);
        assert_eq!(get_array4(&buf, 2).unwrap(), [0xde, 0xad, 0xbe, 0xef]);
        let field: &mut [u8; 2] = window(&mut buf, 4).unwrap();
        *field = [1, 2];
        assert_eq!(buf[4..], [1, 2]);
    }

    #[test]
    fn out_of_bounds_is_an_error() {
        let mut buf = [0u8; 3];
        assert!(get_u16(&buf, 2).is_err());
        assert!(get_u32(&buf, 0).is_err());
        assert!(get_u16(&buf, usize::MAX).is_err());
        assert!(set_u16(&mut buf, 2, 1).is_err());
        assert!(set_u8(&mut buf, 3, 1).is_err());
        assert!(get_array16(&buf, 0).is_err());
        assert!(window::<2>(&mut buf, 2).is_err());
        assert!(window::<2>(&mut buf, usize::MAX).is_err());
    }
}
