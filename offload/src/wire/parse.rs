//! [`FrameLayout::parse`]: one pass over the headers of a frame.

use super::error::ParseError;
use super::ethernet::{ethertype, L2Header};
use super::ipv4::Ipv4Packet;
use super::ipv6::Ipv6Packet;
use super::protocol;
use super::tcp::TcpSegment;
use super::udp;
use super::udp::UdpDatagram;
use crate::layout::{FrameLayout, L3Kind, L4Kind};

fn tail(frame: &[u8], from: usize) -> &[u8] {
    frame.get(from..).unwrap_or(&[])
}

impl FrameLayout {
    /// Parses the headers of an Ethernet frame: Ethernet, up to two VLAN
    /// tags, IPv4 (with options) or IPv6 (with its extension chain), then TCP
    /// or UDP.
    ///
    /// Every length comes from the frame, not from the IPv4 Total Length or
    /// IPv6 Payload Length fields (which a guest may leave at 0 or stale in a
    /// TSO frame). A transport protocol other than TCP or UDP, or a non-first
    /// fragment, gives `l4 == None`.
    ///
    /// # Errors
    /// [`ParseError::NotIp`] for a frame that carries neither IPv4 nor IPv6
    /// (pass it on untouched); any other variant for a header that is cut
    /// short or malformed.
    pub fn parse(frame: &[u8]) -> Result<FrameLayout, ParseError> {
        Self::parse_with_protocol(frame).map(|(layout, _)| layout)
    }

    /// Like [`FrameLayout::parse`], also returning the protocol number that
    /// ended the IP header (IPv4 Protocol, or the last Next Header of the
    /// IPv6 chain), which says what `l4 == None` stands for.
    pub fn parse_with_protocol(frame: &[u8]) -> Result<(FrameLayout, u8), ParseError> {
        let l2 = L2Header::parse(frame)?;
        let l3_offset = l2.l3_offset;
        let (l3, l4_offset, l4_protocol, is_fragment, non_first, ipv6_fragment_header) =
            match l2.ethertype {
                ethertype::IPV4 => {
                    let ip = Ipv4Packet::new_checked(tail(frame, l3_offset))
                        .map_err(|e| ParseError::from(e).shifted(l3_offset))?;
                    (
                        L3Kind::Ipv4,
                        l3_offset + ip.header_len(),
                        ip.protocol(),
                        ip.is_fragment(),
                        ip.frag_offset() != 0,
                        None,
                    )
                }
                ethertype::IPV6 => {
                    let ip = Ipv6Packet::new_checked(tail(frame, l3_offset))
                        .map_err(|e| ParseError::from(e).shifted(l3_offset))?;
                    let chain = ip
                        .extension_chain()
                        .map_err(|e| ParseError::from(e).shifted(l3_offset))?;
                    (
                        L3Kind::Ipv6,
                        l3_offset + chain.transport_offset,
                        chain.transport_protocol,
                        chain.fragment.is_some(),
                        chain.non_first_fragment,
                        chain.fragment.map(|f| l3_offset + f.offset),
                    )
                }
                other => {
                    return Err(ParseError::NotIp {
                        offset: l2.ethertype_offset,
                        ethertype: other,
                        l2_len: l3_offset,
                    })
                }
            };

        let transport = tail(frame, l4_offset);
        let (l4, payload_offset) = match l4_protocol {
            _ if non_first => (None, l4_offset),
            protocol::TCP => {
                let tcp = TcpSegment::new_checked(transport)
                    .map_err(|e| ParseError::from(e).shifted(l4_offset))?;
                (Some(L4Kind::Tcp), l4_offset + tcp.header_len())
            }
            protocol::UDP => {
                UdpDatagram::new_checked(transport)
                    .map_err(|e| ParseError::from(e).shifted(l4_offset))?;
                (Some(L4Kind::Udp), l4_offset + udp::HEADER_LEN)
            }
            _ => (None, l4_offset),
        };

        Ok((
            FrameLayout {
                vlan_tags: l2.vlan_tags,
                l3_offset,
                l3,
                l4_offset,
                l4,
                payload_offset,
                ipv6_fragment_header,
                is_fragment,
            },
            l4_protocol,
        ))
    }
}
