//! Parse errors, one enum per layer, gathered in [`ParseError`].
//!
//! Every variant names the offset (from the start of the buffer the view was
//! built over; from the start of the frame when it comes out of
//! [`FrameLayout::parse`](crate::layout::FrameLayout::parse)), what was
//! expected and what was found.

use thiserror::Error;

/// The header a parse error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The Ethernet II header (MAC addresses and EtherType).
    Ethernet,
    /// An 802.1Q or 802.1ad VLAN tag.
    Vlan,
    /// The IPv4 header with its options.
    Ipv4,
    /// The fixed IPv6 header.
    Ipv6,
    /// An IPv6 extension header.
    Ipv6Extension,
    /// The TCP header with its options.
    Tcp,
    /// The UDP header.
    Udp,
}

impl core::fmt::Display for Layer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Layer::Ethernet => "Ethernet",
            Layer::Vlan => "VLAN",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Ipv6Extension => "IPv6 extension",
            Layer::Tcp => "TCP",
            Layer::Udp => "UDP",
        })
    }
}

/// An Ethernet header that does not fit the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum EthernetError {
    /// Fewer bytes than the 14-byte header.
    #[error("Ethernet header at offset {offset}: expected {required_len} bytes, found {len}")]
    Truncated {
        /// Where the header starts.
        offset: usize,
        /// Bytes the header needs (14).
        required_len: usize,
        /// Bytes available from `offset` on.
        len: usize,
    },
}

/// A VLAN tag that does not fit the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum VlanError {
    /// Fewer bytes than the 4-byte tag (TCI and inner EtherType).
    #[error("VLAN tag at offset {offset}: expected {required_len} bytes, found {len}")]
    Truncated {
        /// Where the tag starts.
        offset: usize,
        /// Bytes the tag needs (4).
        required_len: usize,
        /// Bytes available from `offset` on.
        len: usize,
    },
}

/// A malformed IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum Ipv4Error {
    /// The header (20 bytes, or IHL * 4 with options) does not fit.
    #[error("IPv4 header at offset {offset}: expected {required_len} bytes, found {len}")]
    Truncated {
        /// Where the header starts.
        offset: usize,
        /// Bytes the header needs.
        required_len: usize,
        /// Bytes available from `offset` on.
        len: usize,
    },
    /// The version nibble is not 4.
    #[error("IPv4 header at offset {offset}: expected version 4, found {found}")]
    BadVersion {
        /// Where the header starts.
        offset: usize,
        /// The version found.
        found: u8,
    },
    /// IHL below 5 (a header shorter than 20 bytes).
    #[error(
        "IPv4 header at offset {offset}: expected IHL of at least 5 (20 bytes), found {found}"
    )]
    BadIhl {
        /// Where the header starts.
        offset: usize,
        /// The IHL found, in 32-bit words.
        found: u8,
    },
}

/// A malformed IPv6 header or extension-header chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum Ipv6Error {
    /// The fixed 40-byte header does not fit.
    #[error("IPv6 header at offset {offset}: expected {required_len} bytes, found {len}")]
    Truncated {
        /// Where the header starts.
        offset: usize,
        /// Bytes the header needs (40).
        required_len: usize,
        /// Bytes available from `offset` on.
        len: usize,
    },
    /// The version nibble is not 6.
    #[error("IPv6 header at offset {offset}: expected version 6, found {found}")]
    BadVersion {
        /// Where the header starts.
        offset: usize,
        /// The version found.
        found: u8,
    },
    /// An extension header runs past the end of the buffer.
    #[error(
        "IPv6 extension header {header} at offset {offset}: expected {required_len} bytes, found {len}"
    )]
    ExtensionTruncated {
        /// Where the extension header starts.
        offset: usize,
        /// Its type (the previous header's Next Header value).
        header: u8,
        /// Bytes it needs (2 to read its length, then its full length).
        required_len: usize,
        /// Bytes available from `offset` on.
        len: usize,
    },
}

impl Ipv6Error {
    /// The layer: [`Layer::Ipv6Extension`] for a truncated extension header,
    /// else [`Layer::Ipv6`].
    pub fn layer(&self) -> Layer {
        match self {
            Ipv6Error::ExtensionTruncated { .. } => Layer::Ipv6Extension,
            _ => Layer::Ipv6,
        }
    }
}

/// A malformed TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum TcpError {
    /// The header (20 bytes, or data offset * 4 with options) does not fit.
    #[error("TCP header at offset {offset}: expected {required_len} bytes, found {len}")]
    Truncated {
        /// Where the header starts.
        offset: usize,
        /// Bytes the header needs.
        required_len: usize,
        /// Bytes available from `offset` on.
        len: usize,
    },
    /// Data offset below 5 (a header shorter than 20 bytes).
    #[error(
        "TCP header at offset {offset}: expected data offset of at least 5 (20 bytes), found {found}"
    )]
    BadDataOffset {
        /// Where the header starts.
        offset: usize,
        /// The data offset found, in 32-bit words.
        found: u8,
    },
}

/// A UDP header that does not fit the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum UdpError {
    /// Fewer bytes than the 8-byte header.
    #[error("UDP header at offset {offset}: expected {required_len} bytes, found {len}")]
    Truncated {
        /// Where the header starts.
        offset: usize,
        /// Bytes the header needs (8).
        required_len: usize,
        /// Bytes available from `offset` on.
        len: usize,
    },
}

/// Why a frame could not be parsed into a [`FrameLayout`](crate::layout::FrameLayout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum ParseError {
    /// The Ethernet header is malformed.
    #[error(transparent)]
    Ethernet(#[from] EthernetError),
    /// A VLAN tag is malformed.
    #[error(transparent)]
    Vlan(#[from] VlanError),
    /// The IPv4 header is malformed.
    #[error(transparent)]
    Ipv4(#[from] Ipv4Error),
    /// The IPv6 header or its extension chain is malformed.
    #[error(transparent)]
    Ipv6(#[from] Ipv6Error),
    /// The TCP header is malformed.
    #[error(transparent)]
    Tcp(#[from] TcpError),
    /// The UDP header is malformed.
    #[error(transparent)]
    Udp(#[from] UdpError),
    /// Not an error in the frame: it carries something other than IPv4 or
    /// IPv6 (ARP, LLDP, a third VLAN tag, ...). Callers pass such frames on
    /// untouched.
    #[error(
        "EtherType at offset {offset}: expected 0x0800 (IPv4) or 0x86dd (IPv6), found {ethertype:#06x}"
    )]
    NotIp {
        /// Where the EtherType field sits.
        offset: usize,
        /// The EtherType found.
        ethertype: u16,
        /// Length of the Ethernet header and its VLAN tags: where the
        /// network header starts.
        l2_len: usize,
    },
}

impl ParseError {
    /// The layer the error is about.
    pub fn layer(&self) -> Layer {
        match self {
            ParseError::Ethernet(_) | ParseError::NotIp { .. } => Layer::Ethernet,
            ParseError::Vlan(_) => Layer::Vlan,
            ParseError::Ipv4(_) => Layer::Ipv4,
            ParseError::Ipv6(e) => e.layer(),
            ParseError::Tcp(_) => Layer::Tcp,
            ParseError::Udp(_) => Layer::Udp,
        }
    }

    /// The offset the error is about.
    pub fn offset(&self) -> usize {
        match *self {
            ParseError::Ethernet(EthernetError::Truncated { offset, .. })
            | ParseError::Vlan(VlanError::Truncated { offset, .. })
            | ParseError::Ipv4(Ipv4Error::Truncated { offset, .. })
            | ParseError::Ipv4(Ipv4Error::BadVersion { offset, .. })
            | ParseError::Ipv4(Ipv4Error::BadIhl { offset, .. })
            | ParseError::Ipv6(Ipv6Error::Truncated { offset, .. })
            | ParseError::Ipv6(Ipv6Error::BadVersion { offset, .. })
            | ParseError::Ipv6(Ipv6Error::ExtensionTruncated { offset, .. })
            | ParseError::Tcp(TcpError::Truncated { offset, .. })
            | ParseError::Tcp(TcpError::BadDataOffset { offset, .. })
            | ParseError::Udp(UdpError::Truncated { offset, .. })
            | ParseError::NotIp { offset, .. } => offset,
        }
    }

    /// Whether the frame is simply not IPv4/IPv6 (as opposed to malformed).
    pub fn is_not_ip(&self) -> bool {
        matches!(self, ParseError::NotIp { .. })
    }

    /// Whether the error is a header cut short by the end of the frame.
    pub fn is_truncated(&self) -> bool {
        matches!(
            self,
            ParseError::Ethernet(EthernetError::Truncated { .. })
                | ParseError::Vlan(VlanError::Truncated { .. })
                | ParseError::Ipv4(Ipv4Error::Truncated { .. })
                | ParseError::Ipv6(Ipv6Error::Truncated { .. })
                | ParseError::Ipv6(Ipv6Error::ExtensionTruncated { .. })
                | ParseError::Tcp(TcpError::Truncated { .. })
                | ParseError::Udp(UdpError::Truncated { .. })
        )
    }

    /// The same error with every offset moved `base` bytes further: turns an
    /// error from a view over a sub-slice into one relative to the frame.
    pub fn shifted(self, base: usize) -> Self {
        fn s(offset: usize, base: usize) -> usize {
            offset.saturating_add(base)
        }
        match self {
            ParseError::Ethernet(EthernetError::Truncated {
                offset,
                required_len,
                len,
            }) => EthernetError::Truncated {
                offset: s(offset, base),
                required_len,
                len,
            }
            .into(),
            ParseError::Vlan(VlanError::Truncated {
                offset,
                required_len,
                len,
            }) => VlanError::Truncated {
                offset: s(offset, base),
                required_len,
                len,
            }
            .into(),
            ParseError::Ipv4(Ipv4Error::Truncated {
                offset,
                required_len,
                len,
            }) => Ipv4Error::Truncated {
                offset: s(offset, base),
                required_len,
                len,
            }
            .into(),
            ParseError::Ipv4(Ipv4Error::BadVersion { offset, found }) => Ipv4Error::BadVersion {
                offset: s(offset, base),
                found,
            }
            .into(),
            ParseError::Ipv4(Ipv4Error::BadIhl { offset, found }) => Ipv4Error::BadIhl {
                offset: s(offset, base),
                found,
            }
            .into(),
            ParseError::Ipv6(Ipv6Error::Truncated {
                offset,
                required_len,
                len,
            }) => Ipv6Error::Truncated {
                offset: s(offset, base),
                required_len,
                len,
            }
            .into(),
            ParseError::Ipv6(Ipv6Error::BadVersion { offset, found }) => Ipv6Error::BadVersion {
                offset: s(offset, base),
                found,
            }
            .into(),
            ParseError::Ipv6(Ipv6Error::ExtensionTruncated {
                offset,
                header,
                required_len,
                len,
            }) => Ipv6Error::ExtensionTruncated {
                offset: s(offset, base),
                header,
                required_len,
                len,
            }
            .into(),
            ParseError::Tcp(TcpError::Truncated {
                offset,
                required_len,
                len,
            }) => TcpError::Truncated {
                offset: s(offset, base),
                required_len,
                len,
            }
            .into(),
            ParseError::Tcp(TcpError::BadDataOffset { offset, found }) => TcpError::BadDataOffset {
                offset: s(offset, base),
                found,
            }
            .into(),
            ParseError::Udp(UdpError::Truncated {
                offset,
                required_len,
                len,
            }) => UdpError::Truncated {
                offset: s(offset, base),
                required_len,
                len,
            }
            .into(),
            ParseError::NotIp {
                offset,
                ethertype,
                l2_len,
            } => ParseError::NotIp {
                offset: s(offset, base),
                ethertype,
                l2_len: s(l2_len, base),
            },
        }
    }
}
