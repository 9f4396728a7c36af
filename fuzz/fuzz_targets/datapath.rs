//! The switch's sans-IO datapath on arbitrary frames and port setups:
//! `Datapath::process` never panics, and whatever it decides to send keeps
//! the switch's promises. Every frame sent passes the ingress check again
//! (offsets and headers intact after retagging and adaptation), reaches a
//! port other than the one it came from, carries no offload work the port
//! cannot finish (no partial checksum to a port without checksum offload,
//! no GSO to a port that does not segment that kind), fits the port's MTU
//! when it is finished, and is tagged as the port's VLAN mode says.
//!
//! Input: one byte per port (3 ports) choosing VLAN mode, offloads and MTU;
//! then frames, each: ingress port (1 byte), length (2 bytes little-endian),
//! a 12-byte virtio_net_hdr_v1, and the frame.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vswitch::datapath::{Datapath, Output};
use vswitch::{
    Forwarder, ForwarderConfig, PortId, PortProfile, PortSet, VlanId, VlanMode, VlanSet,
};
use vswitch_offload::virtio::{HdrFormat, GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4};
use vswitch_offload::{CheckedFrame, EgressCapabilities, L3Kind, Packet, VirtioNetHdr};

const PORTS: u32 = 3;

fn vlan(id: u16) -> VlanId {
    VlanId::new(id).expect("a valid VLAN id")
}

fn port_setup(byte: u8) -> (PortProfile, EgressCapabilities) {
    let profile = match byte % 3 {
        0 => PortProfile::access(vlan(1)),
        1 => PortProfile::access(vlan(2)),
        _ => PortProfile::trunk(
            [vlan(1), vlan(2)].into_iter().collect::<VlanSet>(),
            Some(vlan(1)),
        ),
    };
    let mtu = [576, 1500, 9000][usize::from(byte / 3 % 3)];
    let caps = match byte / 9 % 4 {
        0 => EgressCapabilities::none(mtu),
        1 => EgressCapabilities::checksum_only(mtu),
        2 => EgressCapabilities::full(mtu),
        _ => EgressCapabilities::full(mtu).with_ecn(false),
    };
    (profile, caps)
}

/// Whether a port with `caps` may be handed `packet` as it is.
fn takes(caps: &EgressCapabilities, packet: &Packet, l3: Option<L3Kind>) -> bool {
    let hdr = &packet.hdr;
    if hdr.needs_csum() && !caps.checksum {
        return false;
    }
    if !hdr.is_gso() {
        return true;
    }
    let ecn = hdr.gso_type & GSO_ECN != 0;
    caps.checksum
        && (!ecn || caps.ecn)
        && match (hdr.gso_type & !GSO_ECN, l3) {
            (GSO_TCPV4, Some(L3Kind::Ipv4)) => caps.tso4,
            (GSO_TCPV6, Some(L3Kind::Ipv6)) => caps.tso6,
            (GSO_UDP_L4, _) => caps.uso,
            (GSO_UDP, _) => caps.ufo,
            _ => false,
        }
}

fuzz_target!(|data: &[u8]| {
    let Some((setup, mut rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let mut ports = PortSet::new();
    let mut modes = Vec::new();
    for (id, byte) in setup.iter().enumerate() {
        let (profile, caps) = port_setup(*byte);
        modes.push((profile.vlan.clone(), caps));
        ports.insert_port(PortId(id as u32), profile, caps);
    }
    let now = Instant::now();
    let forwarder = Arc::new(Forwarder::new(ForwarderConfig::default(), now));
    let mut datapath = Datapath::new(forwarder);
    let mut out = Output::new();
    let mut step = 0u64;
    while let Some((head, tail)) = rest.split_first_chunk::<15>() {
        let ingress = PortId(u32::from(head[0]) % PORTS);
        let len = usize::from(u16::from_le_bytes([head[1], head[2]]));
        let Ok((hdr, _)) = VirtioNetHdr::parse(&head[3..15], HdrFormat::V1) else {
            return;
        };
        let len = len.min(tail.len());
        let (frame, after) = tail.split_at(len);
        rest = after;
        step += 1;
        let at = now + Duration::from_secs(step);
        out.clear();
        datapath.process(
            &ports,
            ingress,
            [Packet::with_hdr(hdr, frame.to_vec())],
            at,
            &mut out,
        );

        for batch in out.batches() {
            assert_ne!(batch.port, ingress, "a frame went back out of its port");
            let (mode, caps) = &modes[batch.port.0 as usize];
            for packet in &batch.frames {
                let checked = CheckedFrame::check(packet.clone())
                    .expect("what the switch sends passes its own ingress check");
                let l3 = checked.layout().map(|layout| layout.l3);
                assert!(
                    takes(caps, packet, l3),
                    "{:?} to a port with {caps:?}",
                    packet.hdr
                );
                if !packet.hdr.is_gso() {
                    let l3_len = packet.data.len() - checked.l2().l3_offset;
                    assert!(
                        l3_len <= usize::from(caps.mtu),
                        "{l3_len} over MTU {}",
                        caps.mtu
                    );
                }
                let tag = checked.outer_tag().map(|tag| tag.vid());
                match mode {
                    VlanMode::Access(_) => assert_eq!(tag, None, "a tag on an access port"),
                    VlanMode::Trunk { allowed, native } => {
                        if let Some(vid) = tag {
                            let vid = vlan(vid);
                            assert!(allowed.contains(vid) && Some(vid) != *native);
                        }
                    }
                }
            }
        }
    }
});
