//! Malformed and forbidden frames mixed into load, bad virtio-net offload
//! headers among them, are dropped with a typed reason and counted on the
//! port that sent them, while every good flow keeps moving in order.

mod switch_support;

use std::sync::Arc;
use std::time::Duration;

use switch_support::*;
use vswitch::drop::HeaderDrop;
use vswitch::ethernet::build_frame;
use vswitch::{DropReason, MacAddr, PortProfile, VlanId};
use vswitch_offload::virtio::GSO_TCPV6;
use vswitch_offload::{Packet, VirtioNetHdr};
use vswitch_ports::{memory_port, MemoryPortConfig};

const FLOWS: u16 = 32;
const ROUNDS: u32 = 300;

#[test]
fn bad_frames_are_dropped_and_counted_while_flows_keep_moving() {
    let switch = patient_switch(3);
    let (a, guest_a) = memory_port(MemoryPortConfig::new("a").queue_len(64));
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b").queue_len(64));
    let (mac_a, mac_b) = (mac(1, 1), mac(2, 1));
    let id_a = switch
        .add_port(
            Arc::new(a),
            PortProfile::access(VlanId::DEFAULT).only_sources([mac_a]),
        )
        .unwrap();
    let id_b = switch
        .add_port(Arc::new(b), PortProfile::access(VlanId::DEFAULT))
        .unwrap();
    let guest_b = Arc::new(guest_b);
    guest_b.try_inject(0, hello(mac_b)).unwrap();
    expect_one(&guest_a);

    let expected = u64::from(FLOWS) * u64::from(ROUNDS);
    let at_b = collector(guest_b.clone(), Duration::from_secs(20), move |r| {
        r.flow_frames >= expected
    });

    let good = flow_frame(mac_b, mac_a, 0, 0).data;
    // A well-formed TCP/IPv4 frame from A to B with a TSO header, for
    // headers that lie about it.
    let tcp_frame = tcp4_frame(mac_b, mac_a, 20 + 20 + 3000);
    let tso = TSO4;
    let lying = |hdr: VirtioNetHdr| Packet::with_hdr(hdr, tcp_frame.clone());
    let bad: Vec<(Packet, DropReason)> = vec![
        (
            lying(VirtioNetHdr { gso_size: 0, ..tso }),
            DropReason::InvalidHeader(HeaderDrop::BadGsoSize),
        ),
        (
            lying(VirtioNetHdr {
                csum_start: 60_000,
                ..tso
            }),
            DropReason::InvalidHeader(HeaderDrop::CsumStartBeyondFrame),
        ),
        (
            lying(VirtioNetHdr {
                gso_type: GSO_TCPV6,
                ..tso
            }),
            DropReason::InvalidHeader(HeaderDrop::L3Mismatch),
        ),
        (
            lying(VirtioNetHdr {
                csum_offset: 6,
                ..tso
            }),
            DropReason::InvalidHeader(HeaderDrop::BadCsumOffset),
        ),
        (Packet::plain(vec![]), DropReason::Malformed),
        (Packet::plain(good.slice(..13)), DropReason::Malformed),
        (
            Packet::plain(build_frame(mac_b, mac_a, Some(1), 0x0800, &[]).slice(..16)),
            DropReason::Malformed,
        ),
        (
            Packet::plain(build_frame(mac_b, mac_a, Some(7), 0x0800, &[0; 46])),
            DropReason::TaggedOnAccessPort,
        ),
        (
            Packet::plain(build_frame(mac_b, mac_a, Some(1), 0x8100, &[0, 1, 8, 0])),
            DropReason::TaggedOnAccessPort,
        ),
        (
            Packet::plain(build_frame(
                mac_b,
                MacAddr::BROADCAST,
                None,
                0x0800,
                &[0; 46],
            )),
            DropReason::InvalidSourceMac,
        ),
        (
            Packet::plain(build_frame(mac_b, mac(1, 9), None, 0x0800, &[0; 46])),
            DropReason::SourceMacNotAllowed,
        ),
    ];

    for round in 0..ROUNDS {
        let mut frames = Vec::new();
        for flow in 0..FLOWS {
            frames.push(flow_frame(mac_b, mac_a, flow, round));
            if flow % 8 == 0 {
                let (packet, _) = &bad[(round as usize + usize::from(flow)) % bad.len()];
                frames.push(packet.clone());
            }
        }
        inject_all(&guest_a, 0, frames);
    }
    let at_b = at_b.join().unwrap();
    assert_eq!(at_b.flow_frames, expected);
    assert_eq!(at_b.out_of_order, 0);
    assert_eq!(at_b.other_frames, 0, "a bad frame got through");

    let stats = switch.shutdown();
    let port_a = *stats.port(id_a).unwrap();
    let port_b = *stats.port(id_b).unwrap();
    let bad_sent = u64::from(ROUNDS) * u64::from(FLOWS / 8);
    let mut per_reason = std::collections::HashMap::<DropReason, u64>::new();
    for round in 0..ROUNDS {
        for flow in (0..FLOWS).step_by(8) {
            let (_, reason) = &bad[(round as usize + usize::from(flow)) % bad.len()];
            *per_reason.entry(*reason).or_default() += 1;
        }
    }
    for (reason, count) in per_reason {
        assert_eq!(port_a.drops.get(reason), count, "{reason}");
    }
    assert_eq!(port_a.drops.total(), bad_sent);
    assert_eq!(port_a.rx_frames, expected + bad_sent);
    assert_eq!(port_b.drops.total(), 0);
    assert_eq!(port_b.tx_frames, expected);
    let worker_drops: u64 = stats.workers.iter().map(|w| w.drops.total()).sum();
    assert_eq!(worker_drops, bad_sent);
}
