//! Ethernet II header and 802.1Q / 802.1ad VLAN tags.

use super::error::{EthernetError, ParseError, VlanError};
use super::{read_u16, write_u16};

/// EtherType values the engine cares about.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// An 802.1Q VLAN tag (customer tag) follows.
    pub const VLAN: u16 = 0x8100;
    /// An 802.1ad VLAN tag (service tag, QinQ outer tag) follows.
    pub const QINQ: u16 = 0x88a8;

    /// Whether `value` announces a VLAN tag this parser understands.
    pub const fn is_vlan(value: u16) -> bool {
        value == VLAN || value == QINQ
    }
}

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
}

/// Length of the Ethernet II header without VLAN tags.
pub const HEADER_LEN: usize = 14;
/// Length of one VLAN tag.
pub const VLAN_TAG_LEN: usize = 4;
/// Most VLAN tags the parser walks (QinQ).
pub const MAX_VLAN_TAGS: u8 = 2;

/// A read/write view of an Ethernet II header at the start of a buffer.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking its length; accessors panic if it is
    /// shorter than [`HEADER_LEN`]. Prefer [`EthernetFrame::new_checked`].
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer after [`EthernetFrame::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, EthernetError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the buffer holds the 14-byte header.
    pub fn check_len(&self) -> Result<(), EthernetError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(EthernetError::Truncated {
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

    /// Destination MAC address.
    pub fn dst_addr(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        mac
    }

    /// Source MAC address.
    pub fn src_addr(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        mac
    }

    /// The EtherType (or TPID when a VLAN tag follows).
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    /// Everything after the 14-byte header (VLAN tags included, if any).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst_addr(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac);
    }

    /// Sets the source MAC address.
    pub fn set_src_addr(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, value);
    }

    /// Everything after the 14-byte header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// A read/write view of one 4-byte VLAN tag: the tag control information
/// (priority, drop eligibility, VLAN id) and the EtherType that follows it.
/// The TPID (0x8100 or 0x88a8) belongs to the header before it.
#[derive(Debug, Clone)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// Wraps a buffer without checking its length; accessors panic if it is
    /// shorter than [`VLAN_TAG_LEN`]. Prefer [`VlanTag::new_checked`].
    pub const fn new_unchecked(buffer: T) -> Self {
        VlanTag { buffer }
    }

    /// Wraps a buffer after [`VlanTag::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, VlanError> {
        let tag = Self::new_unchecked(buffer);
        tag.check_len()?;
        Ok(tag)
    }

    /// Checks that the buffer holds the 4-byte tag.
    pub fn check_len(&self) -> Result<(), VlanError> {
        let len = self.buffer.as_ref().len();
        if len < VLAN_TAG_LEN {
            return Err(VlanError::Truncated {
                offset: 0,
                required_len: VLAN_TAG_LEN,
                len,
            });
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The 16-bit tag control information.
    pub fn tci(&self) -> u16 {
        read_u16(self.buffer.as_ref(), 0)
    }

    /// Priority code point (3 bits).
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop eligible indicator.
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// VLAN identifier (12 bits).
    pub fn vlan_id(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// The EtherType after the tag (another TPID for QinQ).
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), 2)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    /// Sets the tag control information.
    pub fn set_tci(&mut self, tci: u16) {
        write_u16(self.buffer.as_mut(), 0, tci);
    }

    /// Sets the VLAN identifier (the low 12 bits of `vid`), keeping PCP and DEI.
    pub fn set_vlan_id(&mut self, vid: u16) {
        let tci = (self.tci() & 0xf000) | (vid & 0x0fff);
        self.set_tci(tci);
    }

    /// Sets the EtherType after the tag.
    pub fn set_ethertype(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), 2, value);
    }
}

/// The link-layer part of a frame: Ethernet header and up to
/// [`MAX_VLAN_TAGS`] VLAN tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct L2Header {
    /// Number of VLAN tags walked (0 to 2).
    pub vlan_tags: u8,
    /// The EtherType after the last tag walked. A VLAN TPID here means a
    /// third tag, which the parser does not walk.
    pub ethertype: u16,
    /// Where the EtherType field sits.
    pub ethertype_offset: usize,
    /// Length of the Ethernet header and its tags: where the network header starts.
    pub l3_offset: usize,
}

impl L2Header {
    /// Walks the Ethernet header and its VLAN tags (0x8100 or 0x88a8, in
    /// any order, at most two).
    pub fn parse(frame: &[u8]) -> Result<L2Header, ParseError> {
        let eth = EthernetFrame::new_checked(frame)?;
        let mut ethertype = eth.ethertype();
        let mut ethertype_offset = field::ETHERTYPE;
        let mut offset = HEADER_LEN;
        let mut vlan_tags = 0u8;
        while ethertype::is_vlan(ethertype) && vlan_tags < MAX_VLAN_TAGS {
            let rest = frame.get(offset..).unwrap_or(&[]);
            let tag =
                VlanTag::new_checked(rest).map_err(|e| ParseError::from(e).shifted(offset))?;
            ethertype = tag.ethertype();
            ethertype_offset = offset + 2;
            offset += VLAN_TAG_LEN;
            vlan_tags += 1;
        }
        Ok(L2Header {
            vlan_tags,
            ethertype,
            ethertype_offset,
            l3_offset: offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertypes: &[u16]) -> Vec<u8> {
        let mut f = vec![0xaa; 12];
        for (i, et) in ethertypes.iter().enumerate() {
            f.extend_from_slice(&et.to_be_bytes());
            if i + 1 < ethertypes.len() {
                f.extend_from_slice(&(0x2000u16 | (i as u16 + 10)).to_be_bytes());
            }
        }
        f.extend_from_slice(&[0u8; 20]);
        f
    }

    #[test]
    fn ethernet_accessors_and_setters_round_trip() {
        let mut buf = frame(&[ethertype::IPV4]);
        let mut eth = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        eth.set_dst_addr([1, 2, 3, 4, 5, 6]);
        eth.set_src_addr([7, 8, 9, 10, 11, 12]);
        eth.set_ethertype(ethertype::IPV6);
        assert_eq!(eth.dst_addr(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(eth.src_addr(), [7, 8, 9, 10, 11, 12]);
        assert_eq!(eth.ethertype(), ethertype::IPV6);
        assert_eq!(eth.payload().len(), 20);
        assert_eq!(&buf[12..14], &[0x86, 0xdd]);
    }

    #[test]
    fn ethernet_too_short_is_an_error() {
        let err = EthernetFrame::new_checked(&[0u8; 13][..]).unwrap_err();
        assert_eq!(
            err,
            EthernetError::Truncated {
                offset: 0,
                required_len: 14,
                len: 13
            }
        );
        assert!(err.to_string().contains("expected 14 bytes, found 13"));
    }

    #[test]
    fn vlan_tag_fields() {
        let mut buf = [0xb0, 0x64, 0x08, 0x00];
        let mut tag = VlanTag::new_checked(&mut buf[..]).unwrap();
        assert_eq!(tag.pcp(), 5);
        assert!(tag.dei());
        assert_eq!(tag.vlan_id(), 100);
        assert_eq!(tag.ethertype(), ethertype::IPV4);
        tag.set_vlan_id(0xfff);
        tag.set_ethertype(ethertype::IPV6);
        assert_eq!(tag.pcp(), 5);
        assert_eq!(tag.vlan_id(), 0xfff);
        assert_eq!(buf, [0xbf, 0xff, 0x86, 0xdd]);
    }

    #[test]
    fn walks_zero_one_two_tags_and_stops_at_three() {
        let l2 = L2Header::parse(&frame(&[ethertype::IPV4])).unwrap();
        assert_eq!((l2.vlan_tags, l2.l3_offset, l2.ethertype), (0, 14, 0x0800));
        let l2 = L2Header::parse(&frame(&[ethertype::VLAN, ethertype::IPV6])).unwrap();
        assert_eq!((l2.vlan_tags, l2.l3_offset, l2.ethertype), (1, 18, 0x86dd));
        let l2 =
            L2Header::parse(&frame(&[ethertype::QINQ, ethertype::VLAN, ethertype::IPV4])).unwrap();
        assert_eq!((l2.vlan_tags, l2.l3_offset, l2.ethertype), (2, 22, 0x0800));
        assert_eq!(l2.ethertype_offset, 20);
        let l2 = L2Header::parse(&frame(&[
            ethertype::VLAN,
            ethertype::VLAN,
            ethertype::VLAN,
            ethertype::IPV4,
        ]))
        .unwrap();
        assert_eq!((l2.vlan_tags, l2.l3_offset, l2.ethertype), (2, 22, 0x8100));
    }

    #[test]
    fn truncated_vlan_tag_reports_its_offset() {
        let mut f = frame(&[ethertype::VLAN, ethertype::IPV4]);
        f.truncate(16);
        let err = L2Header::parse(&f).unwrap_err();
        assert_eq!(
            err,
            ParseError::Vlan(VlanError::Truncated {
                offset: 14,
                required_len: 4,
                len: 2
            })
        );
    }
}
