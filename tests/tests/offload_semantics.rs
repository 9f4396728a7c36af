//! TCP offload requests no TCP sender makes are refused at ingress on the
//! threaded switch: TSO frames whose TCP header carries SYN or RST, and TSO
//! frames with an MSS below Linux's minimum of 88 bytes. Each is dropped and
//! counted on the port that sent it as an invalid offload header, while good
//! flows and well-formed TSO frames (FIN and PSH set, MSS exactly 88) keep
//! moving and arrive as segments with FIN and PSH on the last one only.

mod switch_support;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use etherparse::{PacketHeaders, TransportHeader};
use switch_support::*;
use vswitch::drop::HeaderDrop;
use vswitch::{DropReason, PortProfile, VlanId};
use vswitch_offload::virtio::{GSO_ECN, GSO_TCPV4, MIN_TCP_MSS};
use vswitch_offload::{Packet, VirtioNetHdr};
use vswitch_ports::{memory_port, MemoryPortConfig};

const FLOWS: u16 = 16;
const ROUNDS: u32 = 120;
/// TCP payload of every TSO frame sent.
const PAYLOAD: usize = 3000;

/// A TSO frame from A to B: TCP payload [`PAYLOAD`], TCP flags `flags`,
/// sequence number `seq`, with `hdr` (a [`TSO4`] variant).
fn tso_frame(
    dst: vswitch::MacAddr,
    src: vswitch::MacAddr,
    flags: u8,
    seq: u32,
    hdr: VirtioNetHdr,
) -> Packet {
    let frame = tcp4(dst, src)
        .seq(seq)
        .tcp_flags(flags)
        .payload(vec![0; PAYLOAD])
        .partial_checksum()
        .build();
    Packet::with_hdr(hdr, frame)
}

/// One TCP segment that reached B.
#[derive(Debug)]
struct Segment {
    seq: u32,
    len: usize,
    flags: (bool, bool, bool, bool),
}

#[test]
fn syn_rst_and_tiny_mss_tso_frames_are_dropped_at_ingress_and_good_traffic_flows() {
    let switch = patient_switch(2);
    let (a, guest_a) = memory_port(MemoryPortConfig::new("a").queue_len(64));
    let (b, guest_b) = memory_port(MemoryPortConfig::new("b").queue_len(256));
    let (mac_a, mac_b) = (mac(1, 1), mac(2, 1));
    let id_a = switch
        .add_port(Arc::new(a), PortProfile::access(VlanId::DEFAULT))
        .unwrap();
    let id_b = switch
        .add_port(Arc::new(b), PortProfile::access(VlanId::DEFAULT))
        .unwrap();
    let guest_b = Arc::new(guest_b);
    guest_b.try_inject(0, hello(mac_b)).unwrap();
    expect_one(&guest_a);

    let tso = TSO4;
    let ecn = VirtioNetHdr {
        gso_type: GSO_TCPV4 | GSO_ECN,
        ..tso
    };
    let ack = 0x10;
    // (TCP flags, header): refused at ingress.
    let bad: Vec<(u8, VirtioNetHdr)> = vec![
        (0x02, tso),                                // SYN
        (0x12, tso),                                // SYN|ACK
        (0x14, tso),                                // RST|ACK
        (0x07, tso),                                // SYN|FIN|RST
        (0x06, ecn),                                // SYN|RST, with ECN
        (ack, VirtioNetHdr { gso_size: 1, ..tso }), // MSS 1
        (
            ack,
            VirtioNetHdr {
                gso_size: 87,
                ..tso
            },
        ), // MSS 87
        (
            ack | 0x80,
            VirtioNetHdr {
                gso_size: 87,
                ..ecn
            },
        ), // MSS 87, ECN
    ];
    // Accepted: FIN|PSH|ACK at the smallest MSS, sent every 10 rounds.
    let good_hdr = VirtioNetHdr {
        gso_size: MIN_TCP_MSS,
        ..tso
    };
    let good_every = 10;
    let good_frames = ROUNDS / good_every;
    let segments_per_frame = PAYLOAD.div_ceil(usize::from(MIN_TCP_MSS));
    let expected_segments = good_frames as usize * segments_per_frame;
    let expected_flow = u64::from(FLOWS) * u64::from(ROUNDS);

    let collector = {
        let guest_b = guest_b.clone();
        thread::spawn(move || {
            let mut received = Received::default();
            let mut segments = Vec::new();
            let mut last = Instant::now();
            while (received.flow_frames < expected_flow || segments.len() < expected_segments)
                && last.elapsed() < Duration::from_secs(20)
            {
                let Some(packet) = guest_b.collect_timeout(Duration::from_millis(20)) else {
                    continue;
                };
                last = Instant::now();
                if flow_of(&packet.data).is_some() {
                    received.record(&packet.data);
                    continue;
                }
                let headers = PacketHeaders::from_ethernet_slice(&packet.data)
                    .expect("etherparse parses what leaves the switch");
                let Some(TransportHeader::Tcp(tcp)) = headers.transport else {
                    received.other_frames += 1;
                    continue;
                };
                segments.push(Segment {
                    seq: tcp.sequence_number,
                    len: headers.payload.slice().len(),
                    flags: (tcp.syn, tcp.rst, tcp.fin, tcp.psh),
                });
            }
            (received, segments)
        })
    };

    let mut bad_sent = 0u64;
    let mut bad_tcp_flags = 0u64;
    for round in 0..ROUNDS {
        let mut frames = Vec::new();
        for flow in 0..FLOWS {
            frames.push(flow_frame(mac_b, mac_a, flow, round));
        }
        let (flags, hdr) = bad[round as usize % bad.len()];
        if hdr.gso_size >= MIN_TCP_MSS {
            bad_tcp_flags += 1;
        }
        frames.insert(
            usize::from(FLOWS) / 2,
            tso_frame(mac_b, mac_a, flags, round, hdr),
        );
        bad_sent += 1;
        if round % good_every == 0 {
            let seq = round * 1_000_000;
            frames.push(tso_frame(mac_b, mac_a, 0x19, seq, good_hdr));
        }
        inject_all(&guest_a, 0, frames);
    }

    let (at_b, segments) = collector.join().unwrap();
    assert_eq!(at_b.flow_frames, expected_flow);
    assert_eq!(at_b.out_of_order, 0);
    assert_eq!(at_b.other_frames, 0, "only flow frames and TCP segments");
    assert_eq!(
        segments.len(),
        expected_segments,
        "a refused frame got through"
    );
    for frame in segments.chunks(segments_per_frame) {
        let first = frame[0].seq;
        assert_eq!(
            first % 1_000_000,
            0,
            "segments of one frame arrive together"
        );
        let mut next = first;
        for (i, s) in frame.iter().enumerate() {
            let last = i + 1 == frame.len();
            assert_eq!(s.seq, next, "segment {i} of the frame at {first}");
            assert!(s.len <= usize::from(MIN_TCP_MSS));
            assert_eq!(s.flags, (false, false, last, last), "segment {i}");
            next += s.len as u32;
        }
        assert_eq!((next - first) as usize, PAYLOAD);
    }

    let stats = switch.shutdown();
    let port_a = *stats.port(id_a).unwrap();
    let port_b = *stats.port(id_b).unwrap();
    // Each refusal is counted under the rule it broke.
    assert_eq!(
        port_a
            .drops
            .get(DropReason::InvalidHeader(HeaderDrop::SynOrRstWithGso)),
        bad_tcp_flags
    );
    assert_eq!(
        port_a
            .drops
            .get(DropReason::InvalidHeader(HeaderDrop::BadGsoSize)),
        bad_sent - bad_tcp_flags
    );
    assert_eq!(port_a.drops.invalid_headers(), bad_sent);
    assert_eq!(port_a.drops.total(), bad_sent);
    assert_eq!(
        port_a.rx_frames,
        expected_flow + bad_sent + u64::from(good_frames)
    );
    assert_eq!(port_b.drops.total(), 0);
}
