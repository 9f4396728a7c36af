//! `vswitch segment`: a capture with oversized GSO frames (partial
//! checksums, zero IP lengths), small frames with wrong checksums, padded
//! frames and non-IP frames, re-segmented for an MTU and checked with
//! etherparse: sizes, checksums, padding, payload conservation, untouched
//! frames. segment_safety.rs has the file handling, snap lengths and pcapng.

use std::time::Duration;

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::DataLink;
use vswitch::pcap_segment::{
    segment_capture, segment_files, Args, InputError, SegmentStats, StreamError,
};
use vswitch_offload::testing::{tcp_flags, FrameBuilder};

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// `frame` with the TCP fields of the large frames: port 40000 to 80,
/// sequence number `seq`, PSH and ACK, timestamps.
fn with_tcp(frame: FrameBuilder, seq: u32) -> FrameBuilder {
    frame
        .ports(40000, 80)
        .seq(seq)
        .ack_number(99)
        .tcp_flags(tcp_flags::PSH | tcp_flags::ACK)
        .window(1000)
        .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
}

/// A large TCP/IPv4 frame as a GSO capture shows it: IP total length 0 and
/// the TCP checksum holding only a seed.
fn gso_ipv4_frame(len: usize) -> Vec<u8> {
    let tcp4 = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2]).dont_fragment(true);
    let mut frame = with_tcp(tcp4, 1_000_000).payload(payload(len, 1)).build();
    frame[16..18].copy_from_slice(&[0, 0]); // total length
    frame[24..26].copy_from_slice(&[0x12, 0x34]); // header checksum left stale
    frame[34 + 16..34 + 18].copy_from_slice(&[0xab, 0xcd]); // seed, not a checksum
    frame
}

/// A QinQ-tagged TCP/IPv6 frame larger than the MTU, with a wrong checksum.
fn big_ipv6_frame(len: usize) -> Vec<u8> {
    let tcp6 = FrameBuilder::tcp6(
        [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    )
    .macs([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4])
    .vlan(10)
    .vlan(20);
    let mut frame = with_tcp(tcp6, 5).payload(payload(len, 2)).build();
    let csum = 22 + 40 + 16;
    frame[csum] ^= 0xff;
    frame
}

/// A small UDP frame with a wrong checksum, and a TCP ACK padded to 60 bytes.
fn small_frames() -> (Vec<u8>, Vec<u8>) {
    let mut udp = FrameBuilder::udp4([10, 0, 0, 1], [10, 0, 0, 3])
        .dont_fragment(true)
        .ports(5353, 53)
        .payload(payload(300, 3))
        .build();
    udp[34 + 6] ^= 0x55;
    let mut ack = FrameBuilder::tcp4([10, 0, 0, 1], [10, 0, 0, 2])
        .dont_fragment(true)
        .ports(40000, 80)
        .seq(7)
        .ack_number(1)
        .tcp_flags(tcp_flags::ACK)
        .window(1000)
        .build();
    ack[34 + 16] ^= 0x01;
    ack.resize(60, 0); // Ethernet padding
    (udp, ack)
}

fn arp_frame() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend_from_slice(&payload(28, 9));
    frame
}

fn capture(datalink: DataLink, frames: &[Vec<u8>]) -> Vec<u8> {
    let header = PcapHeader {
        datalink,
        snaplen: 262_144,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(Vec::new(), header).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        let packet = PcapPacket::new(Duration::from_millis(i as u64), frame.len() as u32, frame);
        writer.write_packet(&packet).unwrap();
    }
    writer.into_writer()
}

fn read_back(bytes: &[u8]) -> Vec<(Duration, Vec<u8>)> {
    let mut reader = PcapReader::new(bytes).unwrap();
    let mut out = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap();
        assert_eq!(packet.orig_len as usize, packet.data.len());
        out.push((packet.timestamp, packet.data.into_owned()));
    }
    out
}

/// Checks every checksum of an IP frame; returns (L3 length, TCP seq and
/// payload if TCP).
fn check(frame: &[u8]) -> (usize, Option<(u32, Vec<u8>)>) {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("parses strictly");
    let payload = headers.payload.slice().to_vec();
    let l3_len = match headers.net.as_ref().unwrap() {
        NetHeaders::Ipv4(ip, _) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 header checksum"
            );
            usize::from(ip.total_len)
        }
        NetHeaders::Ipv6(ip, _) => 40 + usize::from(ip.payload_length),
        NetHeaders::Arp(_) => unreachable!(),
    };
    let tcp = match (
        headers.net.as_ref().unwrap(),
        headers.transport.as_ref().unwrap(),
    ) {
        (NetHeaders::Ipv4(ip, _), TransportHeader::Tcp(tcp)) => {
            assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(ip, &payload).unwrap());
            Some((tcp.sequence_number, payload))
        }
        (NetHeaders::Ipv6(ip, _), TransportHeader::Tcp(tcp)) => {
            assert_eq!(tcp.checksum, tcp.calc_checksum_ipv6(ip, &payload).unwrap());
            Some((tcp.sequence_number, payload))
        }
        (NetHeaders::Ipv4(ip, _), TransportHeader::Udp(udp)) => {
            assert_eq!(udp.checksum, udp.calc_checksum_ipv4(ip, &payload).unwrap());
            None
        }
        _ => panic!("unexpected protocols"),
    };
    (l3_len, tcp)
}

#[test]
fn cuts_oversized_tcp_fixes_checksums_and_leaves_non_ip_alone() {
    let gso = gso_ipv4_frame(20_000);
    let v6 = big_ipv6_frame(5_000);
    let (udp, ack) = small_frames();
    let arp = arp_frame();
    let input = capture(
        DataLink::ETHERNET,
        &[gso.clone(), arp.clone(), v6, udp, ack],
    );
    let mut output = Vec::new();
    let stats = segment_capture(&input[..], &mut output, 1500).unwrap();
    // IPv4: 1500 - 20 - 32 = 1448 per segment; IPv6: 1500 - 40 - 32 = 1428.
    let v4_segments = 20_000usize.div_ceil(1448);
    let v6_segments = 5_000usize.div_ceil(1428);
    assert_eq!(
        stats,
        SegmentStats {
            frames_in: 5,
            frames_out: (v4_segments + v6_segments + 3) as u64,
            cut: 2,
            segments: (v4_segments + v6_segments) as u64,
            checksums_fixed: 2,
            checksums_unchanged: 0,
            padded: 1,
            cut_short: 0,
            not_ip: 1,
            untouched: 0,
        }
    );
    let frames = read_back(&output);
    assert_eq!(frames.len(), v4_segments + v6_segments + 3);

    let mut v4_payload = Vec::new();
    for (i, (ts, frame)) in frames[..v4_segments].iter().enumerate() {
        assert_eq!(
            *ts,
            Duration::from_millis(0),
            "segments keep the frame's timestamp"
        );
        let (l3_len, tcp) = check(frame);
        assert!(l3_len <= 1500);
        let (seq, data) = tcp.unwrap();
        assert_eq!(seq, 1_000_000 + (i * 1448) as u32);
        v4_payload.extend_from_slice(&data);
    }
    assert_eq!(v4_payload, payload(20_000, 1));

    assert_eq!(frames[v4_segments].1, arp, "non-IP frames pass untouched");

    let v6_frames = &frames[v4_segments + 1..v4_segments + 1 + v6_segments];
    let mut v6_payload = Vec::new();
    for (_, frame) in v6_frames {
        assert_eq!(frame[12..14], [0x88, 0xa8], "QinQ tags kept");
        let (l3_len, tcp) = check(frame);
        assert!(l3_len <= 1500);
        v6_payload.extend_from_slice(&tcp.unwrap().1);
    }
    assert_eq!(v6_payload, payload(5_000, 2));

    let (_, udp_out) = &frames[frames.len() - 2];
    check(udp_out);
    let (_, ack_out) = &frames[frames.len() - 1];
    assert_eq!(ack_out.len(), 60, "padded to the Ethernet minimum again");
    assert_eq!(ack_out[54..], [0; 6], "padding is zeros, whatever was read");
    let (_, tcp) = check(ack_out);
    assert!(
        tcp.unwrap().1.is_empty(),
        "Ethernet padding is not taken for payload"
    );
}

#[test]
fn frames_that_fit_keep_their_size() {
    let frame = gso_ipv4_frame(1000);
    let input = capture(DataLink::ETHERNET, std::slice::from_ref(&frame));
    let mut output = Vec::new();
    let stats = segment_capture(&input[..], &mut output, 1500).unwrap();
    assert_eq!((stats.cut, stats.checksums_fixed), (0, 1));
    let frames = read_back(&output);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].1.len(), frame.len());
    check(&frames[0].1);
}

#[test]
fn refuses_a_non_ethernet_capture() {
    let input = capture(DataLink::RAW, &[vec![0x45; 40]]);
    let err = segment_capture(&input[..], Vec::new(), 1500).unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Read {
                source: InputError::NotEthernet { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("expected an Ethernet capture"),
        "{err}"
    );
}

#[test]
fn refuses_a_file_that_is_not_a_capture() {
    let err = segment_capture(&b"definitely not a pcap file"[..], Vec::new(), 1500).unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Read {
                source: InputError::UnknownFormat { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("expected a pcap or pcapng capture, found a file starting with"),
        "{err}"
    );
}

#[test]
fn command_reads_and_writes_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pcap");
    let output = dir.path().join("out.pcap");
    std::fs::write(&input, capture(DataLink::ETHERNET, &[gso_ipv4_frame(3000)])).unwrap();
    let args = Args {
        mtu: 576,
        input: input.clone(),
        output: output.clone(),
        format: None,
    };
    let done = segment_files(&args).unwrap();
    // 576 - 20 - 32 = 524 bytes per segment.
    assert_eq!(done.frames.segments, 3000u64.div_ceil(524));
    let frames = read_back(&std::fs::read(&output).unwrap());
    assert_eq!(frames.len() as u64, done.frames.segments);
    frames.iter().for_each(|(_, f)| assert!(check(f).0 <= 576));
    let missing = Args {
        input: dir.path().join("missing.pcap"),
        ..args
    };
    let err = segment_files(&missing).unwrap_err();
    assert!(
        err.to_string().starts_with("cannot open the input"),
        "{err}"
    );
    assert!(err.to_string().contains("hint: check the path"), "{err}");
}
