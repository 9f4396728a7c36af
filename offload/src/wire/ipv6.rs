//! IPv6 header (RFC 8200) and the extension headers the parser walks:
//! hop-by-hop options (0), routing (43), fragment (44) and destination
//! options (60). Any other Next Header value ends the chain.

use super::error::Ipv6Error;
use super::protocol;
use super::{read_u16, read_u32, write_u16, write_u32};

mod field {
    pub const VER_TC_FLOW: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;
/// Length of the IPv6 fragment extension header.
pub const FRAGMENT_HEADER_LEN: usize = 8;

/// A read/write view of the fixed IPv6 header at the start of a buffer.
///
/// The buffer runs to the end of the frame: `payload_len` is not trusted
/// (guest TSO frames may carry 0 or a stale value).
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checks; accessors panic if it is shorter than
    /// [`HEADER_LEN`]. Prefer [`Ipv6Packet::new_checked`].
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer after [`Ipv6Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, Ipv6Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the fixed header fits and the version is 6. The
    /// extension chain is checked by [`Ipv6Packet::extension_chain`].
    pub fn check_len(&self) -> Result<(), Ipv6Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Ipv6Error::Truncated {
                offset: 0,
                required_len: HEADER_LEN,
                len,
            });
        }
        if self.version() != 6 {
            return Err(Ipv6Error::BadVersion {
                offset: 0,
                found: self.version(),
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
        self.b()[field::VER_TC_FLOW] >> 4
    }

    /// Traffic class (DSCP and ECN).
    pub fn traffic_class(&self) -> u8 {
        ((read_u16(self.b(), field::VER_TC_FLOW) >> 4) & 0xff) as u8
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        read_u32(self.b(), field::VER_TC_FLOW) & 0x000f_ffff
    }

    /// The Payload Length field as written (possibly 0 or stale in a TSO frame).
    pub fn payload_len(&self) -> u16 {
        read_u16(self.b(), field::PAYLOAD_LEN)
    }

    /// Next Header: the first extension header or the transport protocol.
    pub fn next_header(&self) -> u8 {
        self.b()[field::NEXT_HEADER]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.b()[field::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(&self.b()[field::SRC..field::SRC + 16]);
        a
    }

    /// Destination address.
    pub fn dst_addr(&self) -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(&self.b()[field::DST..field::DST + 16]);
        a
    }

    /// Everything after the fixed header (extension headers included), to
    /// the end of the buffer.
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }

    /// Walks the extension-header chain after the fixed header.
    ///
    /// Hop-by-hop (0), routing (43) and destination options (60) headers are
    /// `(Hdr Ext Len + 1) * 8` bytes long; a fragment header (44) is 8 bytes.
    /// Any other Next Header value ends the chain and is the transport
    /// protocol. A fragment header with a non-zero offset also ends it:
    /// what follows is the middle of a fragmented payload, not a header.
    pub fn extension_chain(&self) -> Result<Ipv6ExtChain, Ipv6Error> {
        let buf = self.b();
        let mut next = self.next_header();
        let mut offset = HEADER_LEN;
        let mut fragment = None;
        let mut ext_headers = 0u16;
        loop {
            let rest = buf.get(offset..).unwrap_or(&[]);
            match next {
                protocol::HOP_BY_HOP | protocol::IPV6_ROUTING | protocol::IPV6_DEST_OPTS => {
                    let ext =
                        Ipv6ExtHeader::new_checked(rest).map_err(|e| e.shifted(offset, next))?;
                    next = ext.next_header();
                    offset += ext.header_len();
                }
                protocol::IPV6_FRAGMENT => {
                    let frag = Ipv6FragmentHeader::new_checked(rest)
                        .map_err(|e| e.shifted(offset, next))?;
                    let info = Ipv6FragmentInfo {
                        offset,
                        frag_offset: frag.frag_offset(),
                        more_frags: frag.more_frags(),
                        ident: frag.ident(),
                    };
                    fragment.get_or_insert(info);
                    next = frag.next_header();
                    offset += FRAGMENT_HEADER_LEN;
                    if info.frag_offset != 0 {
                        ext_headers += 1;
                        return Ok(Ipv6ExtChain {
                            transport_offset: offset,
                            transport_protocol: next,
                            fragment,
                            non_first_fragment: true,
                            ext_headers,
                        });
                    }
                }
                _ => {
                    return Ok(Ipv6ExtChain {
                        transport_offset: offset,
                        transport_protocol: next,
                        fragment,
                        non_first_fragment: false,
                        ext_headers,
                    })
                }
            }
            ext_headers += 1;
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets the Payload Length field (length after the fixed 40-byte header,
    /// extension headers included).
    pub fn set_payload_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::PAYLOAD_LEN, value);
    }

    /// Sets Next Header.
    pub fn set_next_header(&mut self, value: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = value;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    /// Sets the traffic class, keeping version and flow label.
    pub fn set_traffic_class(&mut self, value: u8) {
        let raw = read_u32(self.buffer.as_mut(), field::VER_TC_FLOW);
        let raw = (raw & 0xf00f_ffff) | (u32::from(value) << 20);
        write_u32(self.buffer.as_mut(), field::VER_TC_FLOW, raw);
    }

    /// Everything after the fixed header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// Where a fragment header sits in an IPv6 extension chain and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6FragmentInfo {
    /// Offset of the fragment header from the start of the IPv6 header.
    pub offset: usize,
    /// Fragment offset in bytes.
    pub frag_offset: u16,
    /// More Fragments.
    pub more_frags: bool,
    /// Identification.
    pub ident: u32,
}

/// The result of walking an IPv6 extension-header chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6ExtChain {
    /// Offset of the first byte after the chain, from the start of the IPv6 header.
    pub transport_offset: usize,
    /// The Next Header value that ended the chain.
    pub transport_protocol: u8,
    /// The first fragment header, if the chain has one.
    pub fragment: Option<Ipv6FragmentInfo>,
    /// A fragment header with a non-zero offset ended the chain: the bytes
    /// at `transport_offset` are not a transport header.
    pub non_first_fragment: bool,
    /// Number of extension headers walked.
    pub ext_headers: u16,
}

/// A read view of a hop-by-hop, routing or destination-options extension
/// header: Next Header, Hdr Ext Len (in 8-byte units, not counting the first
/// 8 bytes), then options or routing data.
#[derive(Debug, Clone)]
pub struct Ipv6ExtHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6ExtHeader<T> {
    /// Wraps a buffer without checks; accessors panic if it is shorter than
    /// 2 bytes (and [`Ipv6ExtHeader::data`] if shorter than the header).
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6ExtHeader { buffer }
    }

    /// Wraps a buffer after [`Ipv6ExtHeader::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, Ipv6Error> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Checks that the length byte and then the whole header fit. The
    /// error's `header` field is 0; the chain walker fills in the type.
    pub fn check_len(&self) -> Result<(), Ipv6Error> {
        let len = self.buffer.as_ref().len();
        let required_len = if len < 2 { 2 } else { self.header_len() };
        if len < required_len {
            return Err(Ipv6Error::ExtensionTruncated {
                offset: 0,
                header: 0,
                required_len,
                len,
            });
        }
        Ok(())
    }

    /// Next Header.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// Hdr Ext Len as written.
    pub fn hdr_ext_len(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// The header length in bytes: `(hdr_ext_len + 1) * 8`.
    pub fn header_len(&self) -> usize {
        (usize::from(self.hdr_ext_len()) + 1) * 8
    }

    /// The options or routing data after the two fixed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[2..self.header_len()]
    }
}

/// A read/write view of an IPv6 fragment header (8 bytes).
#[derive(Debug, Clone)]
pub struct Ipv6FragmentHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6FragmentHeader<T> {
    /// Wraps a buffer without checks; accessors panic if it is shorter than
    /// [`FRAGMENT_HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6FragmentHeader { buffer }
    }

    /// Wraps a buffer after [`Ipv6FragmentHeader::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, Ipv6Error> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Checks that the 8-byte header fits.
    pub fn check_len(&self) -> Result<(), Ipv6Error> {
        let len = self.buffer.as_ref().len();
        if len < FRAGMENT_HEADER_LEN {
            return Err(Ipv6Error::ExtensionTruncated {
                offset: 0,
                header: protocol::IPV6_FRAGMENT,
                required_len: FRAGMENT_HEADER_LEN,
                len,
            });
        }
        Ok(())
    }

    /// Next Header.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), 2) & 0xfff8
    }

    /// More Fragments.
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), 2) & 1 != 0
    }

    /// Identification.
    pub fn ident(&self) -> u32 {
        read_u32(self.buffer.as_ref(), 4)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6FragmentHeader<T> {
    /// Sets Next Header and clears the reserved byte.
    pub fn set_next_header(&mut self, value: u8) {
        let b = self.buffer.as_mut();
        b[0] = value;
        b[1] = 0;
    }

    /// Sets the fragment offset in bytes; the low three bits are dropped
    /// (callers pass multiples of 8).
    pub fn set_frag_offset(&mut self, bytes: u16) {
        let raw = read_u16(self.buffer.as_ref(), 2);
        write_u16(self.buffer.as_mut(), 2, (bytes & 0xfff8) | (raw & 1));
    }

    /// Sets or clears More Fragments (and the reserved bits).
    pub fn set_more_frags(&mut self, value: bool) {
        let raw = read_u16(self.buffer.as_ref(), 2) & 0xfff8;
        write_u16(self.buffer.as_mut(), 2, raw | u16::from(value));
    }

    /// Sets Identification.
    pub fn set_ident(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), 4, value);
    }
}

impl Ipv6Error {
    /// The same error moved `base` bytes further, an extension-header error
    /// labelled with its type `header`.
    fn shifted(self, base: usize, header: u8) -> Self {
        match self {
            Ipv6Error::ExtensionTruncated {
                offset,
                required_len,
                len,
                ..
            } => Ipv6Error::ExtensionTruncated {
                offset: offset.saturating_add(base),
                header,
                required_len,
                len,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(next: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x60, 0x12, 0x34, 0x56, 0, 0, next, 64];
        v.extend((1..=16u8).chain(101..=116u8));
        v.extend_from_slice(ext);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn fixed_header_fields_and_setters() {
        let mut buf = header(protocol::TCP, &[], &[0; 20]);
        let mut p = Ipv6Packet::new_checked(&mut buf[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0x01);
        assert_eq!(p.flow_label(), 0x23456);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr()[0], 1);
        assert_eq!(p.dst_addr()[15], 116);
        p.set_payload_len(20);
        p.set_traffic_class(0xab);
        p.set_hop_limit(1);
        p.set_next_header(protocol::UDP);
        assert_eq!(p.payload_len(), 20);
        assert_eq!(p.traffic_class(), 0xab);
        assert_eq!(p.flow_label(), 0x23456);
        assert_eq!(p.version(), 6);
        assert_eq!((p.hop_limit(), p.next_header()), (1, 17));
        assert_eq!(p.payload().len(), 20);
    }

    #[test]
    fn walks_hop_by_hop_routing_fragment_destination() {
        let mut ext = vec![protocol::IPV6_ROUTING, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[protocol::IPV6_FRAGMENT, 1, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[0; 8]);
        ext.extend_from_slice(&[protocol::IPV6_DEST_OPTS, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]);
        ext.extend_from_slice(&[protocol::UDP, 0, 1, 4, 0, 0, 0, 0]);
        let buf = header(protocol::HOP_BY_HOP, &ext, &[0; 8]);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        let chain = p.extension_chain().unwrap();
        assert_eq!(chain.transport_offset, 40 + 40);
        assert_eq!(chain.transport_protocol, protocol::UDP);
        assert_eq!(chain.ext_headers, 4);
        assert!(!chain.non_first_fragment);
        let frag = chain.fragment.unwrap();
        assert_eq!(frag.offset, 64);
        assert_eq!(frag.frag_offset, 0);
        assert!(frag.more_frags);
        assert_eq!(frag.ident, 0xdeadbeef);
    }

    #[test]
    fn non_first_fragment_ends_the_chain() {
        let ext = [protocol::TCP, 0, 0x05, 0xc8, 0, 0, 0, 7];
        let buf = header(protocol::IPV6_FRAGMENT, &ext, &[0; 3]);
        let chain = Ipv6Packet::new_checked(&buf[..])
            .unwrap()
            .extension_chain()
            .unwrap();
        assert!(chain.non_first_fragment);
        assert_eq!(chain.transport_offset, 48);
        assert_eq!(chain.fragment.unwrap().frag_offset, 0x5c8);
    }

    #[test]
    fn unknown_next_header_ends_the_chain() {
        // 51 (authentication header) is not walked.
        let buf = header(51, &[protocol::TCP, 4, 0, 0], &[]);
        let chain = Ipv6Packet::new_checked(&buf[..])
            .unwrap()
            .extension_chain()
            .unwrap();
        assert_eq!((chain.transport_offset, chain.transport_protocol), (40, 51));
    }

    #[test]
    fn truncated_extension_reports_type_and_offset() {
        let ext = [protocol::TCP, 2, 0, 0, 0, 0, 0, 0, 0, 0];
        let buf = header(protocol::IPV6_DEST_OPTS, &ext, &[]);
        let err = Ipv6Packet::new_checked(&buf[..])
            .unwrap()
            .extension_chain()
            .unwrap_err();
        assert_eq!(
            err,
            Ipv6Error::ExtensionTruncated {
                offset: 40,
                header: 60,
                required_len: 24,
                len: 10
            }
        );
        assert!(err.to_string().contains("extension header 60 at offset 40"));
        let buf = header(protocol::HOP_BY_HOP, &[6], &[]);
        let err = Ipv6Packet::new_checked(&buf[..])
            .unwrap()
            .extension_chain()
            .unwrap_err();
        assert_eq!(
            err,
            Ipv6Error::ExtensionTruncated {
                offset: 40,
                header: 0,
                required_len: 2,
                len: 1
            }
        );
    }

    #[test]
    fn fragment_header_setters() {
        let mut buf = [0u8; 8];
        let mut f = Ipv6FragmentHeader::new_checked(&mut buf[..]).unwrap();
        f.set_next_header(protocol::UDP);
        f.set_frag_offset(1448);
        f.set_more_frags(true);
        f.set_ident(0x01020304);
        assert_eq!(f.frag_offset(), 1448);
        assert!(f.more_frags());
        f.set_frag_offset(2896);
        assert!(f.more_frags());
        assert_eq!(f.frag_offset(), 2896);
        assert_eq!(f.ident(), 0x01020304);
        assert_eq!(f.next_header(), 17);
        assert!(Ipv6FragmentHeader::new_checked(&buf[..7]).is_err());
    }

    #[test]
    fn rejects_bad_version_and_short_header() {
        let mut buf = header(protocol::TCP, &[], &[]);
        assert!(Ipv6Packet::new_checked(&buf[..39]).is_err());
        buf[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&buf[..]).unwrap_err(),
            Ipv6Error::BadVersion {
                offset: 0,
                found: 4
            }
        );
    }
}
