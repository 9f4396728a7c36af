//! Frame parsing on arbitrary bytes: `FrameLayout::parse` and every view's
//! `new_checked` must return a value or an error, never panic; a layout's
//! offsets must be monotone and within the frame, and agree with the views;
//! rewriting the fields the segmenter rewrites must not change the layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vswitch_offload::wire::{
    EthernetFrame, Ipv4Packet, Ipv6Packet, L2Header, TcpSegment, UdpDatagram, VlanTag,
};
use vswitch_offload::{FrameLayout, L3Kind, L4Kind};

fn views(data: &[u8]) {
    if let Ok(eth) = EthernetFrame::new_checked(data) {
        let _ = (
            eth.dst_addr(),
            eth.src_addr(),
            eth.ethertype(),
            eth.payload().len(),
        );
    }
    if let Ok(tag) = VlanTag::new_checked(data) {
        let _ = (tag.pcp(), tag.dei(), tag.vlan_id(), tag.ethertype());
    }
    if let Ok(ip) = Ipv4Packet::new_checked(data) {
        assert!(ip.header_len() >= 20 && ip.header_len() <= data.len());
        let _ = (ip.options().len(), ip.payload().len(), ip.verify_checksum());
        let _ = (
            ip.total_len(),
            ip.frag_offset(),
            ip.is_fragment(),
            ip.src_addr(),
        );
    }
    if let Ok(ip) = Ipv6Packet::new_checked(data) {
        let _ = (
            ip.payload_len(),
            ip.flow_label(),
            ip.traffic_class(),
            ip.dst_addr(),
        );
        if let Ok(chain) = ip.extension_chain() {
            assert!(chain.transport_offset >= 40);
            assert!(chain.transport_offset <= data.len());
            if let Some(f) = chain.fragment {
                assert!(f.offset >= 40 && f.offset + 8 <= chain.transport_offset);
            }
        }
    }
    if let Ok(tcp) = TcpSegment::new_checked(data) {
        assert!(tcp.header_len() >= 20 && tcp.header_len() <= data.len());
        let _ = (
            tcp.options().len(),
            tcp.payload().len(),
            tcp.seq(),
            tcp.flags(),
        );
    }
    if let Ok(udp) = UdpDatagram::new_checked(data) {
        let _ = (udp.len(), udp.checksum(), udp.payload().len());
    }
}

fn check_layout(data: &[u8], l: &FrameLayout) {
    assert!(l.vlan_tags <= 2);
    assert_eq!(l.l3_offset, 14 + 4 * usize::from(l.vlan_tags));
    assert!(l.l3_offset < l.l4_offset);
    assert!(l.l4_offset <= l.payload_offset);
    assert!(l.payload_offset <= data.len());
    match l.l3 {
        L3Kind::Ipv4 => {
            let ip = Ipv4Packet::new_checked(&data[l.l3_offset..]).expect("IPv4 view");
            assert_eq!(l.l3_len(), ip.header_len());
            assert_eq!(l.is_fragment, ip.is_fragment());
            assert!(l.ipv6_fragment_header.is_none());
        }
        L3Kind::Ipv6 => {
            Ipv6Packet::new_checked(&data[l.l3_offset..]).expect("IPv6 view");
            assert!(l.l3_len() >= 40);
            assert_eq!(l.is_fragment, l.ipv6_fragment_header.is_some());
            if let Some(f) = l.ipv6_fragment_header {
                assert!(f >= l.l3_offset + 40 && f + 8 <= l.l4_offset);
            }
        }
    }
    match l.l4 {
        Some(L4Kind::Tcp) => {
            let tcp = TcpSegment::new_checked(&data[l.l4_offset..]).expect("TCP view");
            assert_eq!(l.l4_len(), tcp.header_len());
        }
        Some(L4Kind::Udp) => {
            UdpDatagram::new_checked(&data[l.l4_offset..]).expect("UDP view");
            assert_eq!(l.l4_len(), 8);
        }
        None => assert_eq!(l.l4_offset, l.payload_offset),
    }
}

/// Rewrites every field segmentation rewrites; the layout must not move.
fn rewrite_lengths_and_checksums(data: &[u8], l: &FrameLayout) {
    let mut copy = data.to_vec();
    match l.l3 {
        L3Kind::Ipv4 => {
            let mut ip = Ipv4Packet::new_unchecked(&mut copy[l.l3_offset..]);
            ip.set_total_len(0xffff);
            ip.set_ident(0x1234);
            ip.set_checksum(0);
            ip.fill_checksum();
            assert!(ip.verify_checksum());
        }
        L3Kind::Ipv6 => {
            Ipv6Packet::new_unchecked(&mut copy[l.l3_offset..]).set_payload_len(0);
        }
    }
    match l.l4 {
        Some(L4Kind::Tcp) => {
            let mut tcp = TcpSegment::new_unchecked(&mut copy[l.l4_offset..]);
            tcp.set_seq(!tcp.seq());
            tcp.set_flags(0xff);
            tcp.set_checksum(0xffff);
        }
        Some(L4Kind::Udp) => {
            let mut udp = UdpDatagram::new_unchecked(&mut copy[l.l4_offset..]);
            udp.set_len(0);
            udp.set_checksum(0xffff);
        }
        None => {}
    }
    assert_eq!(FrameLayout::parse(&copy).as_ref(), Ok(l));
}

fuzz_target!(|data: &[u8]| {
    views(data);
    let l2 = L2Header::parse(data);
    match FrameLayout::parse_with_protocol(data) {
        Ok((layout, _protocol)) => {
            assert_eq!(l2.expect("L2 parses").l3_offset, layout.l3_offset);
            check_layout(data, &layout);
            rewrite_lengths_and_checksums(data, &layout);
        }
        Err(e) => {
            assert!(e.offset() <= data.len(), "{e}");
            assert!(!e.to_string().is_empty());
            let _ = e.layer();
        }
    }
});
