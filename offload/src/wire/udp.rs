//! UDP header (RFC 768).

use super::error::UdpError;
use super::{read_u16, write_u16};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;
/// Offset of the checksum field in the UDP header (the `csum_offset` of a
/// partial UDP checksum).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM;

/// A read/write view of a UDP header at the start of a buffer. The Length
/// field is not trusted; [`UdpDatagram::payload`] runs to the end of the buffer.
#[derive(Debug, Clone)]
pub struct UdpDatagram<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpDatagram<T> {
    /// Wraps a buffer without checks; accessors panic if it is shorter than
    /// [`HEADER_LEN`]. Prefer [`UdpDatagram::new_checked`].
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpDatagram { buffer }
    }

    /// Wraps a buffer after [`UdpDatagram::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, UdpError> {
        let d = Self::new_unchecked(buffer);
        d.check_len()?;
        Ok(d)
    }

    /// Checks that the 8-byte header fits.
    pub fn check_len(&self) -> Result<(), UdpError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(UdpError::Truncated {
                offset: 0,
                required_len: HEADER_LEN,
                len,
            });
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The Length field as written (header plus payload).
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Whether the Length field is zero (never true of a valid datagram).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checksum as written (0 means none, over IPv4).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Everything after the header, to the end of the buffer.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpDatagram<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, value);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, value);
    }

    /// Sets the Length field.
    pub fn set_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, value);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_setters() {
        let mut buf = [0x00, 0x35, 0x04, 0xd2, 0x00, 0x0b, 0xaa, 0xbb, 1, 2, 3];
        let mut d = UdpDatagram::new_checked(&mut buf[..]).unwrap();
        assert_eq!((d.src_port(), d.dst_port()), (53, 1234));
        assert_eq!(d.len(), 11);
        assert!(!d.is_empty());
        assert_eq!(d.checksum(), 0xaabb);
        assert_eq!(d.payload(), &[1, 2, 3]);
        d.set_len(9);
        d.set_checksum(0xffff);
        d.set_src_port(7);
        d.set_dst_port(8);
        d.payload_mut()[0] = 9;
        assert_eq!(buf, [0, 7, 0, 8, 0, 9, 0xff, 0xff, 9, 2, 3]);
    }

    #[test]
    fn rejects_short_header() {
        let err = UdpDatagram::new_checked(&[0u8; 7][..]).unwrap_err();
        assert_eq!(
            err,
            UdpError::Truncated {
                offset: 0,
                required_len: 8,
                len: 7
            }
        );
        assert!(err.to_string().contains("UDP header at offset 0"));
    }
}
