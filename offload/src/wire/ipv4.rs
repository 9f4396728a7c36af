//! IPv4 header (RFC 791) with options.

use super::error::Ipv4Error;
use super::{read_u16, read_u32, write_u16};
use crate::checksum::checksum;

mod field {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// Length of the IPv4 header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Length of the IPv4 header with the most options (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A read/write view of an IPv4 header at the start of a buffer.
///
/// The buffer runs to the end of the frame: `total_len` is not trusted
/// (guest TSO frames may carry 0 or a stale value), so
/// [`Ipv4Packet::payload`] is everything after the header.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checks; accessors panic if it is shorter than
    /// [`MIN_HEADER_LEN`] and options accessors if shorter than the header.
    /// Prefer [`Ipv4Packet::new_checked`].
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer after [`Ipv4Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, Ipv4Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the version (4), the IHL (at least 5) and that the whole
    /// header, options included, fits the buffer.
    pub fn check_len(&self) -> Result<(), Ipv4Error> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(Ipv4Error::Truncated {
                offset: 0,
                required_len: MIN_HEADER_LEN,
                len,
            });
        }
        if self.version() != 4 {
            return Err(Ipv4Error::BadVersion {
                offset: 0,
                found: self.version(),
            });
        }
        if self.ihl() < 5 {
            return Err(Ipv4Error::BadIhl {
                offset: 0,
                found: self.ihl(),
            });
        }
        if len < self.header_len() {
            return Err(Ipv4Error::Truncated {
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

    /// The version nibble.
    pub fn version(&self) -> u8 {
        self.b()[field::VER_IHL] >> 4
    }

    /// The header length in 32-bit words.
    pub fn ihl(&self) -> u8 {
        self.b()[field::VER_IHL] & 0x0f
    }

    /// The header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.ihl()) * 4
    }

    /// DSCP (6 bits).
    pub fn dscp(&self) -> u8 {
        self.b()[field::DSCP_ECN] >> 2
    }

    /// ECN (2 bits).
    pub fn ecn(&self) -> u8 {
        self.b()[field::DSCP_ECN] & 0x03
    }

    /// The Total Length field as written (possibly 0 or stale in a TSO frame).
    pub fn total_len(&self) -> u16 {
        read_u16(self.b(), field::TOTAL_LEN)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        read_u16(self.b(), field::IDENT)
    }

    /// Don't Fragment.
    pub fn dont_frag(&self) -> bool {
        read_u16(self.b(), field::FLAGS_FRAG) & FLAG_DF != 0
    }

    /// More Fragments.
    pub fn more_frags(&self) -> bool {
        read_u16(self.b(), field::FLAGS_FRAG) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.b(), field::FLAGS_FRAG) & FRAG_OFFSET_MASK) << 3
    }

    /// Whether this is a fragment: MF set or a non-zero offset.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }

    /// Header checksum as written.
    pub fn checksum(&self) -> u16 {
        read_u16(self.b(), field::CHECKSUM)
    }

    /// Source address.
    pub fn src_addr(&self) -> [u8; 4] {
        read_u32(self.b(), field::SRC).to_be_bytes()
    }

    /// Destination address.
    pub fn dst_addr(&self) -> [u8; 4] {
        read_u32(self.b(), field::DST).to_be_bytes()
    }

    /// The options: bytes 20 to the header length.
    pub fn options(&self) -> &[u8] {
        &self.b()[MIN_HEADER_LEN..self.header_len()]
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_len()]
    }

    /// Everything after the header, to the end of the buffer.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }

    /// Whether the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum(self.header()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the Total Length field.
    pub fn set_total_len(&mut self, value: u16) {
        write_u16(self.m(), field::TOTAL_LEN, value);
    }

    /// Sets Identification.
    pub fn set_ident(&mut self, value: u16) {
        write_u16(self.m(), field::IDENT, value);
    }

    /// Sets or clears Don't Fragment.
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flag(FLAG_DF, value);
    }

    /// Sets or clears More Fragments.
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flag(FLAG_MF, value);
    }

    fn set_flag(&mut self, flag: u16, value: bool) {
        let raw = read_u16(self.m(), field::FLAGS_FRAG);
        let raw = if value { raw | flag } else { raw & !flag };
        write_u16(self.m(), field::FLAGS_FRAG, raw);
    }

    /// Sets the fragment offset, in bytes. The field holds 8-byte units, so
    /// the low three bits of `bytes` are dropped; callers pass multiples of 8.
    pub fn set_frag_offset(&mut self, bytes: u16) {
        let raw = read_u16(self.m(), field::FLAGS_FRAG);
        let raw = (raw & !FRAG_OFFSET_MASK) | ((bytes >> 3) & FRAG_OFFSET_MASK);
        write_u16(self.m(), field::FLAGS_FRAG, raw);
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, value: u8) {
        self.m()[field::TTL] = value;
    }

    /// Sets the protocol.
    pub fn set_protocol(&mut self, value: u8) {
        self.m()[field::PROTOCOL] = value;
    }

    /// Sets the header checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.m(), field::CHECKSUM, value);
    }

    /// Computes the header checksum (options included) and stores it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum(self.header());
        self.set_checksum(sum);
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
    use crate::wire::protocol;

    // OFFLOAD_RULES test vector: checksum 0xe345.
    const VECTOR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x28, 0x1f, 0xfd, 0x40, 0x00, 0x80, 0x06, 0x00, 0x00, 0xc0, 0xa8, 0x3b,
        0x0a, 0xc0, 0xa8, 0x3b, 0x32,
    ];

    #[test]
    fn reads_the_test_vector_and_fills_its_checksum() {
        let mut buf = VECTOR;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 0x28);
        assert_eq!(p.ident(), 0x1ffd);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 0x80);
        assert_eq!(p.protocol(), protocol::TCP);
        assert_eq!(p.src_addr(), [192, 168, 59, 10]);
        assert_eq!(p.dst_addr(), [192, 168, 59, 50]);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert_eq!(p.checksum(), 0xe345);
        assert!(p.verify_checksum());
    }

    #[test]
    fn setters_touch_only_their_bits() {
        let mut buf = VECTOR;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_total_len(1500);
        p.set_ident(0xbeef);
        p.set_more_frags(true);
        p.set_frag_offset(1480);
        assert!(p.dont_frag());
        assert!(p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        p.set_dont_frag(false);
        p.set_more_frags(false);
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.is_fragment());
        p.set_frag_offset(0);
        assert!(!p.is_fragment());
        assert_eq!(p.total_len(), 1500);
        assert_eq!(p.ident(), 0xbeef);
        p.set_ttl(3);
        p.set_protocol(protocol::UDP);
        assert_eq!((p.ttl(), p.protocol()), (3, 17));
    }

    #[test]
    fn options_are_part_of_the_header() {
        let mut buf = VECTOR.to_vec();
        buf[0] = 0x46;
        buf.splice(20..20, [1, 1, 1, 0]);
        buf.extend_from_slice(b"data");
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), b"data");
    }

    #[test]
    fn rejects_bad_version_ihl_and_truncation() {
        let mut buf = VECTOR;
        buf[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..]).unwrap_err(),
            Ipv4Error::BadVersion {
                offset: 0,
                found: 6
            }
        );
        buf[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..]).unwrap_err(),
            Ipv4Error::BadIhl {
                offset: 0,
                found: 4
            }
        );
        buf[0] = 0x46;
        let err = Ipv4Packet::new_checked(&buf[..]).unwrap_err();
        assert_eq!(
            err,
            Ipv4Error::Truncated {
                offset: 0,
                required_len: 24,
                len: 20
            }
        );
        assert!(err.to_string().starts_with("IPv4 header at offset 0"));
        assert!(Ipv4Packet::new_checked(&buf[..19]).is_err());
    }
}
