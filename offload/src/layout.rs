//! Where the headers of a frame sit: the result of parsing a frame once, and
//! what segmentation, checksum completion, coalescing and RSS work from.
//!
//! A [`FrameLayout`] is plain data. It is produced by the parser in
//! [`crate::wire`] after every length in it was checked against the frame, so
//! code that receives one may index the frame with its offsets.

/// The network-layer protocol of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L3Kind {
    /// IPv4 (EtherType 0x0800).
    Ipv4,
    /// IPv6 (EtherType 0x86dd).
    Ipv6,
}

/// The transport protocol of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4Kind {
    /// TCP (protocol 6).
    Tcp,
    /// UDP (protocol 17).
    Udp,
}

/// Offsets and kinds of the headers of an Ethernet frame carrying IPv4 or
/// IPv6 and, where present, TCP or UDP.
///
/// Every offset is from the first byte of the Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameLayout {
    /// Number of VLAN tags (802.1Q or 802.1ad) after the MAC addresses, 0 to 2.
    pub vlan_tags: u8,
    /// Offset of the IP header (14 + 4 per VLAN tag).
    pub l3_offset: usize,
    /// IPv4 or IPv6.
    pub l3: L3Kind,
    /// Offset of the transport header: after IPv4 options or after the IPv6
    /// extension-header chain.
    pub l4_offset: usize,
    /// The transport protocol, or `None` for any other protocol (and for
    /// non-first IP fragments, whose transport header is not in the frame).
    pub l4: Option<L4Kind>,
    /// Offset of the transport payload: the total length of all headers.
    /// Equal to `l4_offset` when `l4` is `None`.
    pub payload_offset: usize,
    /// For IPv6, the offset of a fragment extension header if the chain has one.
    pub ipv6_fragment_header: Option<usize>,
    /// For IPv4, whether the packet is a fragment (MF set or offset non-zero);
    /// for IPv6, whether a fragment header is present.
    pub is_fragment: bool,
}

impl FrameLayout {
    /// Length of the Ethernet header with its VLAN tags.
    pub fn l2_len(&self) -> usize {
        self.l3_offset
    }

    /// Length of the IP header (options or extension headers included).
    pub fn l3_len(&self) -> usize {
        self.l4_offset - self.l3_offset
    }

    /// Length of the transport header (TCP options included).
    pub fn l4_len(&self) -> usize {
        self.payload_offset - self.l4_offset
    }

    /// Length of all headers, Ethernet to transport.
    pub fn header_len(&self) -> usize {
        self.payload_offset
    }
}

impl FrameLayout {
    /// The same layout after `delta` bytes were inserted (positive) or
    /// removed (negative) before the IP header, as pushing or popping one
    /// VLAN tag does; `tags` is the new number of VLAN tags. Returns `None`
    /// if an offset would fall below the Ethernet header.
    pub fn shifted(&self, delta: isize, tags: u8) -> Option<FrameLayout> {
        let shift = |offset: usize| offset.checked_add_signed(delta);
        let l3_offset = shift(self.l3_offset)?;
        if l3_offset < crate::wire::ethernet::HEADER_LEN {
            return None;
        }
        Some(FrameLayout {
            vlan_tags: tags,
            l3_offset,
            l3: self.l3,
            l4_offset: shift(self.l4_offset)?,
            l4: self.l4,
            payload_offset: shift(self.payload_offset)?,
            ipv6_fragment_header: match self.ipv6_fragment_header {
                Some(offset) => Some(shift(offset)?),
                None => None,
            },
            is_fragment: self.is_fragment,
        })
    }
}
