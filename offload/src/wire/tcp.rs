//! TCP header (RFC 9293) with options.

use super::error::TcpError;
use super::{read_u16, read_u32, write_u16, write_u32};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

/// Length of the TCP header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Length of the TCP header with the most options (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;
/// Offset of the checksum field in the TCP header (the `csum_offset` of a
/// partial TCP checksum).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM;

/// TCP flag bits in byte 13 of the header.
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
}

/// A read/write view of a TCP header at the start of a buffer; the buffer
/// runs to the end of the frame, so [`TcpSegment::payload`] is everything
/// after the header.
#[derive(Debug, Clone)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wraps a buffer without checks; accessors panic if it is shorter than
    /// [`MIN_HEADER_LEN`], option accessors if shorter than the header.
    /// Prefer [`TcpSegment::new_checked`].
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpSegment { buffer }
    }

    /// Wraps a buffer after [`TcpSegment::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, TcpError> {
        let s = Self::new_unchecked(buffer);
        s.check_len()?;
        Ok(s)
    }

    /// Checks the data offset (at least 5) and that the header, options
    /// included, fits the buffer.
    pub fn check_len(&self) -> Result<(), TcpError> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(TcpError::Truncated {
                offset: 0,
                required_len: MIN_HEADER_LEN,
                len,
            });
        }
        if self.data_offset() < 5 {
            return Err(TcpError::BadDataOffset {
                offset: 0,
                found: self.data_offset(),
            });
        }
        if len < self.header_len() {
            return Err(TcpError::Truncated {
                offset: 0,
                required_len: self.header_len(),
                len,
            });
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.b(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.b(), field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        read_u32(self.b(), field::SEQ)
    }

    /// Acknowledgment number.
    pub fn ack(&self) -> u32 {
        read_u32(self.b(), field::ACK)
    }

    /// Data offset: the header length in 32-bit words.
    pub fn data_offset(&self) -> u8 {
        self.b()[field::DATA_OFFSET] >> 4
    }

    /// The header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.data_offset()) * 4
    }

    /// The flag byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.b()[field::FLAGS]
    }

    /// Window.
    pub fn window(&self) -> u16 {
        read_u16(self.b(), field::WINDOW)
    }

    /// Checksum as written.
    pub fn checksum(&self) -> u16 {
        read_u16(self.b(), field::CHECKSUM)
    }

    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        read_u16(self.b(), field::URGENT)
    }

    /// The options: bytes 20 to the header length.
    pub fn options(&self) -> &[u8] {
        &self.b()[MIN_HEADER_LEN..self.header_len()]
    }

    /// Everything after the header, to the end of the buffer.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpSegment<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the source port.
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(self.m(), field::SRC_PORT, value);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(self.m(), field::DST_PORT, value);
    }

    /// Sets the sequence number.
    pub fn set_seq(&mut self, value: u32) {
        write_u32(self.m(), field::SEQ, value);
    }

    /// Sets the acknowledgment number.
    pub fn set_ack(&mut self, value: u32) {
        write_u32(self.m(), field::ACK, value);
    }

    /// Sets the flag byte.
    pub fn set_flags(&mut self, value: u8) {
        self.m()[field::FLAGS] = value;
    }

    /// Sets the window.
    pub fn set_window(&mut self, value: u16) {
        write_u16(self.m(), field::WINDOW, value);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.m(), field::CHECKSUM, value);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent(&mut self, value: u16) {
        write_u16(self.m(), field::URGENT, value);
    }

    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.m()[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(data_offset: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 2];
        v.push(data_offset << 4);
        v.push(flags::ACK | flags::PSH);
        v.extend_from_slice(&[0xff, 0xff, 0x12, 0x34, 0, 0]);
        v.resize(usize::from(data_offset).max(5) * 4, 1);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn fields_options_payload() {
        let buf = segment(8, b"abc");
        let s = TcpSegment::new_checked(&buf[..]).unwrap();
        assert_eq!((s.src_port(), s.dst_port()), (12345, 80));
        assert_eq!((s.seq(), s.ack()), (1, 2));
        assert_eq!(s.header_len(), 32);
        assert_eq!(s.options(), &[1; 12]);
        assert_eq!(s.flags(), flags::ACK | flags::PSH);
        assert_eq!(s.window(), 0xffff);
        assert_eq!(s.checksum(), 0x1234);
        assert_eq!(s.payload(), b"abc");
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = segment(5, b"");
        let mut s = TcpSegment::new_checked(&mut buf[..]).unwrap();
        s.set_seq(0xfffffff0);
        s.set_ack(7);
        s.set_flags(flags::FIN | flags::CWR);
        s.set_checksum(0xabcd);
        s.set_window(100);
        s.set_urgent(9);
        s.set_src_port(1);
        s.set_dst_port(2);
        assert_eq!(s.seq(), 0xfffffff0);
        assert_eq!(s.ack(), 7);
        assert_eq!(s.flags(), flags::FIN | flags::CWR);
        assert_eq!(s.checksum(), 0xabcd);
        assert_eq!((s.window(), s.urgent()), (100, 9));
        assert_eq!((s.src_port(), s.dst_port()), (1, 2));
        assert_eq!(s.data_offset(), 5);
    }

    #[test]
    fn rejects_short_and_bad_data_offset() {
        let buf = segment(4, b"");
        assert_eq!(
            TcpSegment::new_checked(&buf[..]).unwrap_err(),
            TcpError::BadDataOffset {
                offset: 0,
                found: 4
            }
        );
        let buf = segment(15, b"");
        assert!(TcpSegment::new_checked(&buf[..59]).is_err());
        let err = TcpSegment::new_checked(&buf[..19]).unwrap_err();
        assert_eq!(
            err,
            TcpError::Truncated {
                offset: 0,
                required_len: 20,
                len: 19
            }
        );
    }
}
