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
        Self::parse_after_l2(frame, &l2)
    }

    /// [`FrameLayout::parse_with_protocol`] for a frame whose link-layer
    /// header `l2` was already parsed from it, so the VLAN tags are not
    /// walked again.
    pub fn parse_after_l2(frame: &[u8], l2: &L2Header) -> Result<(FrameLayout, u8), ParseError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{frame_spec, FrameSpec, IpSpec};
    use crate::wire::error::{Ipv4Error, Ipv6Error, Layer, TcpError, UdpError, VlanError};
    use crate::wire::{Ipv4Packet, Ipv6Packet, TcpSegment, UdpDatagram};
    use proptest::prelude::*;

    fn check_against_etherparse(spec: &FrameSpec) {
        let (frame, exp) = spec.build();
        let layout = FrameLayout::parse(&frame).unwrap();
        assert_eq!(layout.vlan_tags, exp.vlan_tags);
        assert_eq!(layout.l3_offset, exp.l3_offset);
        assert_eq!(layout.l4_offset, exp.l4_offset);
        assert_eq!(layout.payload_offset, exp.payload_offset);
        assert_eq!(layout.ipv6_fragment_header, exp.ipv6_fragment_header);
        assert_eq!(layout.is_fragment, exp.ipv6_fragment_header.is_some());
        let l3 = match spec.ip {
            IpSpec::V4 { .. } => L3Kind::Ipv4,
            IpSpec::V6 { .. } => L3Kind::Ipv6,
        };
        assert_eq!(layout.l3, l3);
        let l4 = match spec.l4 {
            crate::testing::L4Spec::Tcp { .. } => L4Kind::Tcp,
            crate::testing::L4Spec::Udp => L4Kind::Udp,
        };
        assert_eq!(layout.l4, Some(l4));
        assert_eq!(&frame[layout.payload_offset..], &spec.payload[..]);
    }

    #[test]
    fn plain_tcp_and_udp_over_both_ip_versions() {
        for spec in [
            FrameSpec::tcp4(100),
            FrameSpec::tcp6(100),
            FrameSpec::tcp4(3).udp(),
            FrameSpec::tcp6(0).udp(),
            FrameSpec::tcp4(10).tagged(1),
            FrameSpec::tcp6(10).tagged(2),
        ] {
            check_against_etherparse(&spec);
        }
    }

    #[test]
    fn stale_ip_lengths_are_ignored() {
        let (mut frame, exp) = FrameSpec::tcp4(2000).build();
        frame[16..18].copy_from_slice(&[0, 0]); // IPv4 total length 0, as in a TSO frame
        let layout = FrameLayout::parse(&frame).unwrap();
        assert_eq!(layout.payload_offset, exp.payload_offset);
        let (mut frame, exp) = FrameSpec::tcp6(2000).build();
        frame[18..20].copy_from_slice(&[0, 8]); // IPv6 payload length stale
        let layout = FrameLayout::parse(&frame).unwrap();
        assert_eq!(layout.payload_offset, exp.payload_offset);
    }

    #[test]
    fn non_ip_frames_are_not_ip_not_malformed() {
        let mut arp = vec![0xff; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        let err = FrameLayout::parse(&arp).unwrap_err();
        assert_eq!(
            err,
            ParseError::NotIp {
                offset: 12,
                ethertype: 0x0806,
                l2_len: 14
            }
        );
        assert!(err.is_not_ip());
        assert!(err.to_string().contains("found 0x0806"));
        // A third VLAN tag is not walked: the frame is passed on as non-IP.
        let (frame, _) = FrameSpec::tcp4(10).tagged(2).build();
        let mut triple = frame[..14].to_vec();
        triple.extend_from_slice(&[0x00, 0x05, 0x81, 0x00]);
        triple.extend_from_slice(&frame[14..]);
        triple[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(
            FrameLayout::parse(&triple).unwrap_err(),
            ParseError::NotIp {
                offset: 20,
                ethertype: 0x8100,
                l2_len: 22
            }
        );
    }

    #[test]
    fn ipv4_fragments() {
        let (mut frame, _) = FrameSpec::tcp4(100).build();
        // First fragment: MF set, offset 0: TCP header present.
        frame[20] = 0x20;
        let layout = FrameLayout::parse(&frame).unwrap();
        assert!(layout.is_fragment);
        assert_eq!(layout.l4, Some(L4Kind::Tcp));
        // Non-first fragment: no transport header.
        frame[20] = 0x00;
        frame[21] = 0x10;
        let layout = FrameLayout::parse(&frame).unwrap();
        assert!(layout.is_fragment);
        assert_eq!(layout.l4, None);
        assert_eq!(layout.l4_offset, 34);
        assert_eq!(layout.payload_offset, 34);
        // Even a payload too short for a TCP header parses.
        assert!(FrameLayout::parse(&frame[..40]).is_ok());
    }

    #[test]
    fn ipv6_non_first_fragment_has_no_transport() {
        let mut spec = FrameSpec::tcp6(64);
        spec.ip = IpSpec::V6 {
            hop_by_hop: None,
            dest_opts: None,
            routing: None,
            fragment: true,
        };
        let (mut frame, exp) = spec.build();
        let frag = exp.ipv6_fragment_header.unwrap();
        frame[frag + 2..frag + 4].copy_from_slice(&0x0100u16.to_be_bytes());
        let layout = FrameLayout::parse(&frame).unwrap();
        assert_eq!(layout.l4, None);
        assert_eq!(layout.ipv6_fragment_header, Some(frag));
        assert_eq!(layout.l4_offset, frag + 8);
        assert_eq!(layout.payload_offset, frag + 8);
    }

    #[test]
    fn other_transport_protocols_have_no_l4() {
        let (mut frame, _) = FrameSpec::tcp4(30).build();
        frame[23] = 1; // ICMP
        let (layout, proto) = FrameLayout::parse_with_protocol(&frame).unwrap();
        assert_eq!(proto, 1);
        assert_eq!(layout.l4, None);
        assert_eq!(layout.payload_offset, layout.l4_offset);
    }

    #[test]
    fn errors_carry_absolute_offsets_and_layers() {
        let (frame, _) = FrameSpec::tcp4(0).tagged(1).build();
        // TCP header cut short: offset of the TCP header in the frame.
        let err = FrameLayout::parse(&frame[..18 + 20 + 10]).unwrap_err();
        assert_eq!(
            err,
            ParseError::Tcp(TcpError::Truncated {
                offset: 38,
                required_len: 20,
                len: 10
            })
        );
        assert_eq!((err.layer(), err.offset()), (Layer::Tcp, 38));
        assert!(err.is_truncated());
        // IHL 4.
        let mut bad = frame.clone();
        bad[18] = 0x44;
        assert_eq!(
            FrameLayout::parse(&bad).unwrap_err(),
            ParseError::Ipv4(Ipv4Error::BadIhl {
                offset: 18,
                found: 4
            })
        );
        // IHL 15 beyond the frame.
        bad[18] = 0x4f;
        let err = FrameLayout::parse(&bad).unwrap_err();
        assert_eq!(
            err,
            ParseError::Ipv4(Ipv4Error::Truncated {
                offset: 18,
                required_len: 60,
                len: 40
            })
        );
        // TCP data offset 4.
        let mut bad = frame.clone();
        bad[38 + 12] = 0x40;
        assert_eq!(
            FrameLayout::parse(&bad).unwrap_err(),
            ParseError::Tcp(TcpError::BadDataOffset {
                offset: 38,
                found: 4
            })
        );
        // Truncated VLAN tag.
        assert_eq!(
            FrameLayout::parse(&frame[..15]).unwrap_err(),
            ParseError::Vlan(VlanError::Truncated {
                offset: 14,
                required_len: 4,
                len: 1
            })
        );
        // Truncated UDP header.
        let (frame, _) = FrameSpec::tcp6(0).udp().build();
        assert_eq!(
            FrameLayout::parse(&frame[..14 + 40 + 7]).unwrap_err(),
            ParseError::Udp(UdpError::Truncated {
                offset: 54,
                required_len: 8,
                len: 7
            })
        );
        // IPv6 extension header beyond the frame.
        let mut spec = FrameSpec::tcp6(0);
        spec.ip = IpSpec::V6 {
            hop_by_hop: Some(vec![0; 22]),
            dest_opts: None,
            routing: None,
            fragment: false,
        };
        let (frame, _) = spec.build();
        let err = FrameLayout::parse(&frame[..14 + 40 + 20]).unwrap_err();
        assert_eq!(
            err,
            ParseError::Ipv6(Ipv6Error::ExtensionTruncated {
                offset: 54,
                header: 0,
                required_len: 24,
                len: 20
            })
        );
        assert_eq!(err.layer(), Layer::Ipv6Extension);
    }

    /// The invariants the fuzz target asserts, on any input.
    fn assert_sane(frame: &[u8]) {
        match FrameLayout::parse(frame) {
            Ok(l) => {
                assert!(l.vlan_tags <= 2);
                assert_eq!(l.l3_offset, 14 + 4 * usize::from(l.vlan_tags));
                assert!(l.l3_offset < l.l4_offset);
                assert!(l.l4_offset <= l.payload_offset);
                assert!(l.payload_offset <= frame.len());
                if l.l4.is_none() {
                    assert_eq!(l.l4_offset, l.payload_offset);
                }
                match l.l3 {
                    L3Kind::Ipv4 => {
                        let ip = Ipv4Packet::new_checked(&frame[l.l3_offset..]).unwrap();
                        assert_eq!(l.l3_len(), ip.header_len());
                    }
                    L3Kind::Ipv6 => {
                        Ipv6Packet::new_checked(&frame[l.l3_offset..]).unwrap();
                        assert!(l.l3_len() >= 40);
                    }
                }
                match l.l4 {
                    Some(L4Kind::Tcp) => {
                        let tcp = TcpSegment::new_checked(&frame[l.l4_offset..]).unwrap();
                        assert_eq!(l.l4_len(), tcp.header_len());
                    }
                    Some(L4Kind::Udp) => {
                        UdpDatagram::new_checked(&frame[l.l4_offset..]).unwrap();
                        assert_eq!(l.l4_len(), 8);
                    }
                    None => {}
                }
            }
            Err(e) => {
                assert!(e.offset() <= frame.len());
                assert!(!e.to_string().is_empty());
            }
        }
    }

    /// Every getter agrees with etherparse on a built frame; every setter
    /// writes what etherparse then reads back.
    fn views_agree_with_etherparse(spec: &FrameSpec, seed: u32) {
        use crate::wire::{EthernetFrame, VlanTag};
        use etherparse::{LinkExtHeader, NetHeaders, PacketHeaders, TransportHeader};

        let (mut frame, _) = spec.build();
        let l = FrameLayout::parse(&frame).unwrap();
        let h = PacketHeaders::from_ethernet_slice(&frame).unwrap();
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        let Some(etherparse::LinkHeader::Ethernet2(eh)) = &h.link else {
            panic!("no Ethernet header")
        };
        assert_eq!(eth.dst_addr(), eh.destination);
        assert_eq!(eth.src_addr(), eh.source);
        assert_eq!(eth.ethertype(), eh.ether_type.0);
        for (i, ext) in h.link_exts.iter().enumerate() {
            let LinkExtHeader::Vlan(v) = ext else {
                panic!("not a VLAN tag")
            };
            let tag = VlanTag::new_checked(&frame[14 + 4 * i..]).unwrap();
            assert_eq!(tag.vlan_id(), v.vlan_id.value());
            assert_eq!(tag.pcp(), v.pcp.value());
            assert_eq!(tag.dei(), v.drop_eligible_indicator);
            assert_eq!(tag.ethertype(), v.ether_type.0);
        }
        match h.net.as_ref().unwrap() {
            NetHeaders::Ipv4(ih, _) => {
                let ip = Ipv4Packet::new_checked(&frame[l.l3_offset..]).unwrap();
                assert_eq!(ip.header_len(), ih.header_len());
                assert_eq!(ip.options(), ih.options.as_slice());
                assert_eq!(ip.total_len(), ih.total_len);
                assert_eq!(ip.ident(), ih.identification);
                assert_eq!(ip.dont_frag(), ih.dont_fragment);
                assert_eq!(ip.more_frags(), ih.more_fragments);
                assert_eq!(ip.frag_offset(), ih.fragment_offset.value() * 8);
                assert_eq!(ip.ttl(), ih.time_to_live);
                assert_eq!(ip.protocol(), ih.protocol.0);
                assert_eq!(ip.checksum(), ih.header_checksum);
                assert_eq!(ip.src_addr(), ih.source);
                assert_eq!(ip.dst_addr(), ih.destination);
                assert_eq!(ip.dscp(), ih.dscp.value());
                assert_eq!(ip.ecn(), ih.ecn.value());
                assert!(ip.verify_checksum());
            }
            NetHeaders::Ipv6(ih, _) => {
                let ip = Ipv6Packet::new_checked(&frame[l.l3_offset..]).unwrap();
                assert_eq!(ip.traffic_class(), ih.traffic_class);
                assert_eq!(ip.flow_label(), ih.flow_label.value());
                assert_eq!(ip.payload_len(), ih.payload_length);
                assert_eq!(ip.next_header(), ih.next_header.0);
                assert_eq!(ip.hop_limit(), ih.hop_limit);
                assert_eq!(ip.src_addr(), ih.source);
                assert_eq!(ip.dst_addr(), ih.destination);
            }
            NetHeaders::Arp(_) => panic!("not IP"),
        }
        match h.transport.as_ref().unwrap() {
            TransportHeader::Tcp(th) => {
                let tcp = TcpSegment::new_checked(&frame[l.l4_offset..]).unwrap();
                assert_eq!(tcp.src_port(), th.source_port);
                assert_eq!(tcp.dst_port(), th.destination_port);
                assert_eq!(tcp.seq(), th.sequence_number);
                assert_eq!(tcp.ack(), th.acknowledgment_number);
                assert_eq!(tcp.header_len(), th.header_len());
                assert_eq!(tcp.options(), th.options.as_slice());
                assert_eq!(tcp.window(), th.window_size);
                assert_eq!(tcp.checksum(), th.checksum);
                assert_eq!(tcp.urgent(), th.urgent_pointer);
                assert_eq!(tcp.flags() & crate::wire::tcp::flags::ACK != 0, th.ack);
                assert_eq!(tcp.payload(), &spec.payload[..]);
            }
            TransportHeader::Udp(uh) => {
                let udp = UdpDatagram::new_checked(&frame[l.l4_offset..]).unwrap();
                assert_eq!(udp.src_port(), uh.source_port);
                assert_eq!(udp.dst_port(), uh.destination_port);
                assert_eq!(udp.len(), uh.length);
                assert_eq!(udp.checksum(), uh.checksum);
                assert_eq!(udp.payload(), &spec.payload[..]);
            }
            _ => panic!("not TCP/UDP"),
        }

        // Setters: write the fields segmentation rewrites, read them back
        // with etherparse.
        let v16 = seed as u16;
        match l.l3 {
            L3Kind::Ipv4 => {
                let mut ip = Ipv4Packet::new_checked(&mut frame[l.l3_offset..]).unwrap();
                ip.set_total_len(v16 | 0x100);
                ip.set_ident(v16.rotate_left(3));
                ip.set_dont_frag(seed & 1 != 0);
                ip.set_ttl(seed as u8);
                ip.fill_checksum();
            }
            L3Kind::Ipv6 => {
                let mut ip = Ipv6Packet::new_checked(&mut frame[l.l3_offset..]).unwrap();
                ip.set_payload_len(v16);
                ip.set_hop_limit(seed as u8);
                ip.set_traffic_class((seed >> 8) as u8);
            }
        }
        match l.l4 {
            Some(L4Kind::Tcp) => {
                let mut tcp = TcpSegment::new_checked(&mut frame[l.l4_offset..]).unwrap();
                tcp.set_seq(seed.wrapping_mul(2654435761));
                tcp.set_ack(!seed);
                tcp.set_flags(crate::wire::tcp::flags::FIN | crate::wire::tcp::flags::CWR);
                tcp.set_checksum(v16 ^ 0x5555);
            }
            Some(L4Kind::Udp) => {
                let mut udp = UdpDatagram::new_checked(&mut frame[l.l4_offset..]).unwrap();
                udp.set_len(v16);
                udp.set_checksum(v16 ^ 0x5555);
            }
            None => unreachable!("built frames carry TCP or UDP"),
        }
        let l3 = &frame[l.l3_offset..];
        match l.l3 {
            L3Kind::Ipv4 => {
                let (ih, _) = etherparse::Ipv4Header::from_slice(l3).unwrap();
                assert_eq!(ih.total_len, v16 | 0x100);
                assert_eq!(ih.identification, v16.rotate_left(3));
                assert_eq!(ih.dont_fragment, seed & 1 != 0);
                assert_eq!(ih.time_to_live, seed as u8);
                assert_eq!(ih.header_checksum, ih.calc_header_checksum());
            }
            L3Kind::Ipv6 => {
                let (ih, _) = etherparse::Ipv6Header::from_slice(l3).unwrap();
                assert_eq!(ih.payload_length, v16);
                assert_eq!(ih.hop_limit, seed as u8);
                assert_eq!(ih.traffic_class, (seed >> 8) as u8);
            }
        }
        let l4 = &frame[l.l4_offset..];
        match l.l4 {
            Some(L4Kind::Tcp) => {
                let (th, _) = etherparse::TcpHeader::from_slice(l4).unwrap();
                assert_eq!(th.sequence_number, seed.wrapping_mul(2654435761));
                assert_eq!(th.acknowledgment_number, !seed);
                assert!(th.fin && th.cwr && !th.ack && !th.psh && !th.syn);
                assert_eq!(th.checksum, v16 ^ 0x5555);
            }
            _ => {
                let (uh, _) = etherparse::UdpHeader::from_slice(l4).unwrap();
                assert_eq!(uh.length, v16);
                assert_eq!(uh.checksum, v16 ^ 0x5555);
            }
        }
        assert_eq!(FrameLayout::parse(&frame), Ok(l));
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(
            frame in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            assert_sane(&frame);
        }

        #[test]
        fn parse_never_panics_on_ip_looking_bytes(
            tags in 0usize..=3,
            ethertype in prop_oneof![Just(0x0800u16), Just(0x86dd), any::<u16>()],
            rest in proptest::collection::vec(any::<u8>(), 0..160),
        ) {
            let mut frame = vec![0u8; 12];
            for _ in 0..tags {
                frame.extend_from_slice(&[0x81, 0x00, 0, 1]);
            }
            frame.extend_from_slice(&ethertype.to_be_bytes());
            frame.extend_from_slice(&rest);
            if let Some(v) = frame.get_mut(14 + 4 * tags) {
                *v = if ethertype == 0x86dd { 0x60 | (*v & 0xf) } else { 0x40 | (*v & 0xf) };
            }
            assert_sane(&frame);
        }

        #[test]
        fn offsets_match_etherparse(spec in frame_spec(300)) {
            check_against_etherparse(&spec);
        }

        #[test]
        fn views_read_and_write_what_etherparse_does(spec in frame_spec(64), seed in any::<u32>()) {
            views_agree_with_etherparse(&spec, seed);
        }

        #[test]
        fn every_prefix_of_a_valid_frame_parses_or_reports_truncation(
            spec in frame_spec(40), cut in any::<prop::sample::Index>()
        ) {
            let (frame, exp) = spec.build();
            let len = cut.index(frame.len() + 1);
            let prefix = &frame[..len];
            match FrameLayout::parse(prefix) {
                Ok(l) => {
                    prop_assert!(len >= exp.payload_offset);
                    prop_assert_eq!(l.payload_offset, exp.payload_offset);
                }
                Err(e) => {
                    prop_assert!(len < exp.payload_offset);
                    prop_assert!(e.is_truncated(), "{e}");
                }
            }
        }
    }
}
