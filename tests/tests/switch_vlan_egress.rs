//! VLAN tagging at the edges and the egress adaptation, through the
//! threaded switch.

mod switch_support;

use std::sync::Arc;
use std::time::Duration;

use switch_support::*;
use vswitch::ethernet::build_frame;
use vswitch::{DropReason, MacAddr, PortProfile, VlanId, VlanSet};

use vswitch_offload::{EgressCapabilities, Packet, VirtioNetHdr};
use vswitch_ports::{memory_port, MemoryPortConfig};

fn vlan(id: u16) -> VlanId {
    VlanId::new(id).unwrap()
}

fn nothing_arrives(endpoint: &vswitch_ports::MemoryEndpoint) {
    assert!(endpoint
        .collect_timeout(Duration::from_millis(100))
        .is_none());
}

#[test]
fn frames_are_tagged_and_untagged_at_the_edges_and_never_cross_vlans() {
    let switch = patient_switch(2);
    let (a, guest_a) = memory_port(MemoryPortConfig::new("access-10"));
    let (c, guest_c) = memory_port(MemoryPortConfig::new("access-20"));
    let (t, trunk) = memory_port(MemoryPortConfig::new("trunk"));
    switch
        .add_port(Arc::new(a), PortProfile::access(vlan(10)))
        .unwrap();
    switch
        .add_port(Arc::new(c), PortProfile::access(vlan(20)))
        .unwrap();
    let allowed: VlanSet = [vlan(10), vlan(20)].into_iter().collect();
    let id_t = switch
        .add_port(Arc::new(t), PortProfile::trunk(allowed, None))
        .unwrap();
    let (mac_a, mac_c, mac_t) = (mac(1, 1), mac(3, 1), mac(9, 1));
    let payload = [0x5a; 50];

    // Access to trunk: the frame gains a VLAN 10 tag; VLAN 20 sees nothing.
    let untagged = build_frame(MacAddr::BROADCAST, mac_a, None, 0x0800, &payload);
    guest_a.try_inject(0, Packet::plain(untagged)).unwrap();
    let got = expect_one(&trunk);
    assert_eq!(
        got.data,
        build_frame(MacAddr::BROADCAST, mac_a, Some(10), 0x0800, &payload)
    );
    nothing_arrives(&guest_c);

    // Trunk to access: the tag goes; the other VLAN sees nothing.
    let tagged = build_frame(mac_a, mac_t, Some(0x6000 | 10), 0x0800, &payload);
    trunk.try_inject(0, Packet::plain(tagged)).unwrap();
    let got = expect_one(&guest_a);
    assert_eq!(got.data, build_frame(mac_a, mac_t, None, 0x0800, &payload));
    nothing_arrives(&guest_c);

    let tagged = build_frame(MacAddr::BROADCAST, mac_t, Some(20), 0x0800, &payload);
    trunk.try_inject(0, Packet::plain(tagged)).unwrap();
    let got = expect_one(&guest_c);
    assert_eq!(
        got.data,
        build_frame(MacAddr::BROADCAST, mac_t, None, 0x0800, &payload)
    );
    nothing_arrives(&guest_a);

    // A VLAN 20 guest cannot reach a VLAN 10 address, even a learned one.
    let cross = build_frame(mac_a, mac_c, None, 0x0800, &payload);
    guest_c.try_inject(0, Packet::plain(cross)).unwrap();
    let got = expect_one(&trunk);
    let (eth, rest) = etherparse::Ethernet2Header::from_slice(&got.data).unwrap();
    assert_eq!(eth.ether_type, etherparse::EtherType::VLAN_TAGGED_FRAME);
    let (tag, _) = etherparse::SingleVlanHeader::from_slice(rest).unwrap();
    assert_eq!(tag.vlan_id.value(), 20);
    nothing_arrives(&guest_a);

    // Tagged frames on an access port are dropped and counted.
    let sneaky = build_frame(MacAddr::BROADCAST, mac_c, Some(10), 0x0800, &payload);
    guest_c.try_inject(0, Packet::plain(sneaky)).unwrap();
    nothing_arrives(&guest_a);
    nothing_arrives(&trunk);
    let stats = switch.shutdown();
    let by_name = |name: &str| stats.ports.iter().find(|p| p.name == name).unwrap().stats;
    assert_eq!(
        by_name("access-20")
            .drops
            .get(DropReason::TaggedOnAccessPort),
        1
    );
    assert_eq!(by_name("trunk").tx_frames, 2);
    assert!(stats.ports.iter().any(|p| p.id == id_t));
}

#[test]
fn egress_passes_what_a_port_can_finish_and_segments_the_rest() {
    let switch = patient_switch(2);
    let (g, guest) = memory_port(MemoryPortConfig::new("guest"));
    let (f, full) =
        memory_port(MemoryPortConfig::new("full-offload").egress(EgressCapabilities::full(1500)));
    let (n, bare) = memory_port(MemoryPortConfig::new("no-offload"));
    let allowed: VlanSet = [VlanId::DEFAULT].into_iter().collect();
    switch
        .add_port(Arc::new(g), PortProfile::access(VlanId::DEFAULT))
        .unwrap();
    let id_full = switch
        .add_port(Arc::new(f), PortProfile::trunk(allowed, None))
        .unwrap();
    let id_bare = switch
        .add_port(Arc::new(n), PortProfile::access(VlanId::DEFAULT))
        .unwrap();

    // A 64 KiB TSO frame with a partial checksum, flooded to both.
    // IPv4 (20 bytes) + TCP (20 bytes) + payload: 65 000 bytes of IP packet.
    let hdr = TSO4;
    let tso = tcp4_frame(MacAddr::BROADCAST, mac(1, 1), 65_000);
    guest.try_inject(0, Packet::with_hdr(hdr, tso)).unwrap();
    let got = expect_one(&full);
    // The trunk port got it tagged, with the offsets moved by the tag.
    assert_eq!(got.data.len(), 14 + 4 + 65_000);
    assert_eq!(
        (got.hdr.csum_start, got.hdr.hdr_len, got.hdr.gso_size),
        (38, 58, 1448)
    );
    // The port without offloads got it cut to its MTU in software: 64 960
    // payload bytes in segments of 1448.
    let mut segments = 0;
    while let Some(segment) = bare.collect_timeout(std::time::Duration::from_millis(500)) {
        assert_eq!(
            segment.hdr,
            VirtioNetHdr::default(),
            "segments are finished frames"
        );
        assert!(segment.data.len() <= 14 + 1500);
        segments += 1;
        if segments == 45 {
            break;
        }
    }
    assert_eq!(segments, 45);
    nothing_arrives(&bare);

    // A finished frame that fits goes everywhere; one over the MTU does not.
    let small = build_frame(MacAddr::BROADCAST, mac(1, 1), None, 0x0800, &[0; 1500]);
    guest.try_inject(0, Packet::plain(small)).unwrap();
    assert_eq!(expect_one(&bare).data.len(), 1514);
    assert_eq!(expect_one(&full).data.len(), 1518);
    let big = build_frame(MacAddr::BROADCAST, mac(1, 1), None, 0x0800, &[0; 1501]);
    guest.try_inject(0, Packet::plain(big)).unwrap();
    nothing_arrives(&bare);
    nothing_arrives(&full);

    let bare_stats = switch.port_stats(id_bare).unwrap();
    assert_eq!(bare_stats.drops.get(DropReason::ExceedsMtu), 1);
    assert_eq!(bare_stats.tx_frames, 45 + 1);
    assert_eq!(bare_stats.software.segments, 45);
    let full_stats = switch.port_stats(id_full).unwrap();
    assert_eq!(full_stats.drops.get(DropReason::ExceedsMtu), 1);
    assert_eq!(full_stats.tx_frames, 2);
    assert_eq!(full_stats.tx_bytes, (18 + 65_000) + 1518);
}
