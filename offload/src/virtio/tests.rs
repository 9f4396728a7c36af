//! The header's tests: parsing and emitting, every reject rule, and the
//! properties validation keeps for any header and frame.

use super::*;
use crate::layout::{FrameLayout, L3Kind, L4Kind};
use crate::plan::{GsoKind, OffloadPlan, PartialChecksum};
use crate::testing::{frame_spec, FrameSpec, IpSpec, L4Spec};
use crate::wire::{Ipv4Error, TcpError};
use proptest::prelude::*;

fn csum_hdr(frame: &[u8], gso_type: u8, gso_size: u16) -> VirtioNetHdr {
    let layout = FrameLayout::parse(frame).unwrap();
    let csum_offset = match layout.l4 {
        Some(L4Kind::Tcp) => 16,
        _ => 6,
    };
    VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type,
        hdr_len: layout.header_len() as u16,
        gso_size,
        csum_start: layout.l4_offset as u16,
        csum_offset,
        num_buffers: 0,
    }
}

fn tcp4(payload: usize) -> Vec<u8> {
    FrameSpec::tcp4(payload).build().0
}

fn tcp6(payload: usize) -> Vec<u8> {
    FrameSpec::tcp6(payload).build().0
}

fn udp4(payload: usize) -> Vec<u8> {
    FrameSpec::tcp4(payload).udp().build().0
}

fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 12];
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0; 28]);
    f
}

#[test]
fn parse_and_emit_round_trip_in_both_formats() {
    let bytes = [
        0x01, 0x81, 0x36, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0x02, 0x00, 0xee,
    ];
    let (hdr, n) = VirtioNetHdr::parse(&bytes, HdrFormat::V1).unwrap();
    assert_eq!(n, 12);
    assert_eq!(
        hdr,
        VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 0x36,
            gso_size: 1448,
            csum_start: 0x22,
            csum_offset: 16,
            num_buffers: 2,
        }
    );
    let mut out = [0u8; 12];
    assert_eq!(hdr.emit(&mut out, HdrFormat::V1), Ok(12));
    assert_eq!(out, bytes[..12]);

    let (legacy, n) = VirtioNetHdr::parse(&bytes, HdrFormat::Legacy).unwrap();
    assert_eq!(n, 10);
    assert_eq!(legacy.num_buffers, 0);
    assert_eq!(legacy.gso_size, 1448);
    let mut out = [0xaau8; 12];
    assert_eq!(legacy.emit(&mut out, HdrFormat::Legacy), Ok(10));
    assert_eq!(out[..10], bytes[..10]);
    assert_eq!(out[10..], [0xaa, 0xaa]);
}

#[test]
fn short_header_and_short_buffer_are_errors() {
    assert_eq!(
        VirtioNetHdr::parse(&[0; 11], HdrFormat::V1).unwrap_err(),
        HdrError::ShortHeader {
            required_len: 12,
            len: 11
        }
    );
    assert!(VirtioNetHdr::parse(&[0; 10], HdrFormat::Legacy).is_ok());
    assert_eq!(
        VirtioNetHdr::default().emit(&mut [0; 9], HdrFormat::Legacy),
        Err(BufferTooShort {
            required_len: 10,
            len: 9
        })
    );
}

/// The guest header cannot change between validation and use: `parse`
/// returns an owned copy and releases the guest buffer, so the guest
/// (here: the test) may rewrite its bytes after the copy without
/// affecting the copy that `validate` checked and the plan built from it.
#[test]
fn guest_rewriting_its_header_after_the_copy_changes_nothing() {
    let frame = tcp4(4000);
    let good = csum_hdr(&frame, GSO_TCPV4, 1448);
    let mut guest_memory = [0u8; 12];
    good.emit(&mut guest_memory, HdrFormat::V1).unwrap();

    let (copy, _) = VirtioNetHdr::parse(&guest_memory, HdrFormat::V1).unwrap();
    let plan = copy.validate(&frame).unwrap();
    // The guest now rewrites its header to something hostile. This
    // compiles only because `copy` holds no borrow of `guest_memory`.
    guest_memory[4..6].copy_from_slice(&0u16.to_le_bytes()); // gso_size 0
    guest_memory[6..8].copy_from_slice(&0xfff0u16.to_le_bytes()); // csum_start far out
    assert_eq!(copy, good);
    assert_eq!(copy.validate(&frame), Ok(plan));
    assert_eq!(
        plan.gso(),
        GsoKind::Tcp {
            mss: 1448,
            ecn: false
        }
    );
    assert_eq!(plan.partial_checksum().unwrap().start, 34);
    // Re-reading the guest bytes would give a header that is rejected.
    let (reread, _) = VirtioNetHdr::parse(&guest_memory, HdrFormat::V1).unwrap();
    assert!(reread.validate(&frame).is_err());
}

/// One frame and header per rule of the reject list; each must give
/// exactly its typed error.
#[test]
fn reject_catalogue() {
    let t4 = tcp4(3000);
    let t6 = tcp6(3000);
    let u4 = udp4(3000);
    let ok = csum_hdr(&t4, GSO_TCPV4, 1448);
    assert!(ok.validate(&t4).is_ok());

    let mut cases: Vec<(&str, VirtioNetHdr, Vec<u8>, HdrError)> = Vec::new();

    // Rule 1.
    for gso_type in [2, 6, 0x7f, GSO_ECN] {
        cases.push((
            "1: unknown gso_type",
            VirtioNetHdr { gso_type, ..ok },
            t4.clone(),
            HdrError::UnknownGsoType { gso_type },
        ));
    }
    // Rule 2.
    for gso_size in [0, 1, 87, 0xffff] {
        cases.push((
            "2: TCP gso_size",
            VirtioNetHdr { gso_size, ..ok },
            t4.clone(),
            HdrError::BadGsoSize {
                gso_type: GSO_TCPV4,
                gso_size,
                min: MIN_TCP_MSS,
            },
        ));
    }
    cases.push((
        "2: TCPv6 MSS below 88, with ECN",
        VirtioNetHdr {
            gso_type: GSO_TCPV6 | GSO_ECN,
            gso_size: 87,
            ..csum_hdr(&t6, GSO_TCPV6, 1440)
        },
        t6.clone(),
        HdrError::BadGsoSize {
            gso_type: GSO_TCPV6 | GSO_ECN,
            gso_size: 87,
            min: MIN_TCP_MSS,
        },
    ));
    for t in [GSO_UDP_L4, GSO_UDP] {
        cases.push((
            "2: UDP gso_size 0",
            VirtioNetHdr {
                gso_size: 0,
                ..csum_hdr(&u4, t, 1400)
            },
            u4.clone(),
            HdrError::BadGsoSize {
                gso_type: t,
                gso_size: 0,
                min: 1,
            },
        ));
    }
    // Rule 3.
    let len = t4.len();
    cases.push((
        "3: csum_start beyond the frame",
        VirtioNetHdr {
            csum_start: len as u16 + 1,
            ..ok
        },
        t4.clone(),
        HdrError::CsumStartBeyondFrame {
            csum_start: len as u16 + 1,
            frame_len: len,
        },
    ));
    cases.push((
        "3: checksum field beyond the frame",
        VirtioNetHdr {
            csum_start: len as u16 - 17,
            ..ok
        },
        t4.clone(),
        HdrError::CsumFieldBeyondFrame {
            csum_start: len as u16 - 17,
            csum_offset: 16,
            frame_len: len,
        },
    ));
    // Rule 4.
    cases.push((
        "4: TCP csum_offset",
        VirtioNetHdr {
            csum_offset: 6,
            ..ok
        },
        t4.clone(),
        HdrError::BadCsumOffset {
            l4: L4Kind::Tcp,
            expected: 16,
            found: 6,
        },
    ));
    let uso = csum_hdr(&u4, GSO_UDP_L4, 1400);
    assert!(uso.validate(&u4).is_ok());
    cases.push((
        "4: UDP_L4 csum_offset",
        VirtioNetHdr {
            csum_offset: 16,
            ..uso
        },
        u4.clone(),
        HdrError::BadCsumOffset {
            l4: L4Kind::Udp,
            expected: 6,
            found: 16,
        },
    ));
    let ufo = csum_hdr(&u4, GSO_UDP, 1400);
    assert!(ufo.validate(&u4).is_ok());
    cases.push((
        "4: UFO csum_offset",
        VirtioNetHdr {
            csum_offset: 16,
            ..ufo
        },
        u4.clone(),
        HdrError::BadCsumOffset {
            l4: L4Kind::Udp,
            expected: 6,
            found: 16,
        },
    ));
    cases.push((
        "4: UDP_L4 without NEEDS_CSUM",
        VirtioNetHdr { flags: 0, ..uso },
        u4.clone(),
        HdrError::UdpL4WithoutCsum { flags: 0 },
    ));
    // Rule 5.
    cases.push((
        "5: TCPV4 on IPv6",
        VirtioNetHdr {
            csum_start: 54,
            ..ok
        },
        t6.clone(),
        HdrError::L3Mismatch {
            gso_type: GSO_TCPV4,
            ethertype: 0x86dd,
        },
    ));
    cases.push((
        "5: TCPV6 on IPv4",
        VirtioNetHdr {
            gso_type: GSO_TCPV6,
            ..ok
        },
        t4.clone(),
        HdrError::L3Mismatch {
            gso_type: GSO_TCPV6,
            ethertype: 0x0800,
        },
    ));
    let mut arp_big = arp();
    arp_big.resize(3000, 0);
    cases.push((
        "5: GSO on a non-IP frame",
        ok,
        arp_big,
        HdrError::L3Mismatch {
            gso_type: GSO_TCPV4,
            ethertype: 0x0806,
        },
    ));
    cases.push((
        "5: TCPV4 on UDP",
        VirtioNetHdr {
            csum_offset: 16,
            ..csum_hdr(&u4, GSO_TCPV4, 1448)
        },
        u4.clone(),
        HdrError::L4Mismatch {
            gso_type: GSO_TCPV4,
            expected: L4Kind::Tcp,
            protocol: 17,
        },
    ));
    let mut icmp = t4.clone();
    icmp[23] = 1;
    cases.push((
        "5: L4 not TCP/UDP",
        VirtioNetHdr { flags: 0, ..ok },
        icmp,
        HdrError::L4Mismatch {
            gso_type: GSO_TCPV4,
            expected: L4Kind::Tcp,
            protocol: 1,
        },
    ));
    cases.push((
        "5: UDP_L4 on TCP",
        VirtioNetHdr {
            gso_type: GSO_UDP_L4,
            csum_offset: 6,
            ..ok
        },
        t4.clone(),
        HdrError::L4Mismatch {
            gso_type: GSO_UDP_L4,
            expected: L4Kind::Udp,
            protocol: 6,
        },
    ));
    // Rule 6.
    cases.push((
        "6: csum_start not the transport offset",
        VirtioNetHdr {
            csum_start: 38,
            ..ok
        },
        t4.clone(),
        HdrError::CsumStartMismatch {
            csum_start: 38,
            l4_offset: 34,
        },
    ));
    // Rule 7.
    cases.push((
        "7: transport offset inside the IPv4 header",
        VirtioNetHdr {
            csum_start: 30,
            ..ok
        },
        t4.clone(),
        HdrError::TransportOffsetTooSmall {
            csum_start: 30,
            l3_offset: 14,
            min_l3_len: 20,
        },
    ));
    let ok6 = csum_hdr(&t6, GSO_TCPV6, 1440);
    cases.push((
        "7: transport offset inside the IPv6 header",
        VirtioNetHdr {
            csum_start: 50,
            ..ok6
        },
        t6.clone(),
        HdrError::TransportOffsetTooSmall {
            csum_start: 50,
            l3_offset: 14,
            min_l3_len: 40,
        },
    ));
    // Rule 8.
    cases.push((
        "8: truncated Ethernet",
        VirtioNetHdr { flags: 0, ..ok },
        t4[..10].to_vec(),
        HdrError::MalformedHeaders {
            source: crate::wire::EthernetError::Truncated {
                offset: 0,
                required_len: 14,
                len: 10,
            }
            .into(),
        },
    ));
    let mut bad_ihl = t4.clone();
    bad_ihl[14] = 0x44;
    cases.push((
        "8: IPv4 IHL < 5",
        ok,
        bad_ihl,
        HdrError::MalformedHeaders {
            source: Ipv4Error::BadIhl {
                offset: 14,
                found: 4,
            }
            .into(),
        },
    ));
    let mut bad_doff = t4.clone();
    bad_doff[34 + 12] = 0x30;
    cases.push((
        "8: TCP data offset < 5",
        ok,
        bad_doff,
        HdrError::MalformedHeaders {
            source: TcpError::BadDataOffset {
                offset: 34,
                found: 3,
            }
            .into(),
        },
    ));
    let mut tcp_opts_beyond = t4[..34 + 20].to_vec();
    tcp_opts_beyond[34 + 12] = 0xf0;
    cases.push((
        "8: TCP options beyond the frame",
        ok,
        tcp_opts_beyond,
        HdrError::MalformedHeaders {
            source: TcpError::Truncated {
                offset: 34,
                required_len: 60,
                len: 20,
            }
            .into(),
        },
    ));
    let mut ext6 = FrameSpec::tcp6(0);
    ext6.ip = IpSpec::V6 {
        hop_by_hop: None,
        dest_opts: Some(vec![0; 30]),
        routing: None,
        fragment: false,
    };
    let ext6 = ext6.build().0;
    cases.push((
        "8: IPv6 extension chain beyond the frame",
        VirtioNetHdr { flags: 0, ..ok6 },
        ext6[..54 + 16].to_vec(),
        HdrError::MalformedHeaders {
            source: crate::wire::Ipv6Error::ExtensionTruncated {
                offset: 54,
                header: 60,
                required_len: 32,
                len: 16,
            }
            .into(),
        },
    ));
    // Rule 9.
    let many = udp4(100 * 128 + 1);
    let payload_len = 100 * 128 + 1;
    cases.push((
        "9: UDP_L4 with more than 128 segments",
        VirtioNetHdr {
            gso_size: 100,
            ..uso
        },
        many,
        HdrError::TooManySegments {
            payload_len,
            gso_size: 100,
            max_segments: 128,
        },
    ));
    for t in [GSO_UDP_L4, GSO_UDP] {
        cases.push((
            "9: ECN with UDP",
            VirtioNetHdr {
                gso_type: t | GSO_ECN,
                ..uso
            },
            u4.clone(),
            HdrError::EcnWithUdp {
                gso_type: t | GSO_ECN,
            },
        ));
    }
    // Rule 10.
    let mut huge = t4.clone();
    huge.resize(65535 + 14 + 1, 0);
    cases.push((
        "10: frame longer than 65535 + L2",
        ok,
        huge.clone(),
        HdrError::FrameTooLong {
            len: 65535 + 15,
            max_len: 65535 + 14,
        },
    ));
    let plain = VirtioNetHdr::default();
    cases.push((
        "10: applies to plain frames too",
        plain,
        huge,
        HdrError::FrameTooLong {
            len: 65535 + 15,
            max_len: 65535 + 14,
        },
    ));
    let mut mf = t4.clone();
    mf[20] |= 0x20;
    cases.push((
        "10: IPv4 MF with GSO",
        ok,
        mf,
        HdrError::FragmentWithGso {
            gso_type: GSO_TCPV4,
            l3: L3Kind::Ipv4,
        },
    ));
    let mut off = t4.clone();
    off[21] = 1;
    cases.push((
        "10: IPv4 fragment offset with GSO",
        ok,
        off,
        HdrError::FragmentWithGso {
            gso_type: GSO_TCPV4,
            l3: L3Kind::Ipv4,
        },
    ));
    let mut frag6 = FrameSpec::tcp6(3000);
    frag6.ip = IpSpec::V6 {
        hop_by_hop: None,
        dest_opts: None,
        routing: None,
        fragment: true,
    };
    let frag6 = frag6.build().0;
    cases.push((
        "10: IPv6 fragment header with GSO",
        csum_hdr(&frag6, GSO_TCPV6, 1440),
        frag6,
        HdrError::FragmentWithGso {
            gso_type: GSO_TCPV6,
            l3: L3Kind::Ipv6,
        },
    ));

    // Rule 12, on IPv4 and IPv6, with and without NEEDS_CSUM.
    let with_flags = |frame: &[u8], flags: u8| {
        let mut frame = frame.to_vec();
        let l4 = FrameLayout::parse(&frame).unwrap().l4_offset;
        frame[l4 + 13] = flags;
        frame
    };
    for flags in [0x02, 0x04, 0x12, 0x14, 0x07, 0x06, 0xff] {
        cases.push((
            "12: SYN or RST on TCPv4",
            ok,
            with_flags(&t4, flags),
            HdrError::SynOrRstWithGso {
                gso_type: GSO_TCPV4,
                tcp_flags: flags,
            },
        ));
        cases.push((
            "12: SYN or RST on TCPv6 with ECN, no NEEDS_CSUM",
            VirtioNetHdr {
                flags: 0,
                gso_type: GSO_TCPV6 | GSO_ECN,
                ..ok6
            },
            with_flags(&t6, flags),
            HdrError::SynOrRstWithGso {
                gso_type: GSO_TCPV6 | GSO_ECN,
                tcp_flags: flags,
            },
        ));
    }

    let mut seen = std::collections::BTreeSet::new();
    for (rule, hdr, frame, expected) in &cases {
        assert_eq!(hdr.validate(frame), Err(*expected), "rule {rule}");
        assert!(!expected.to_string().is_empty());
        seen.insert(expected.reason());
    }
    seen.insert(DropReason::ShortVirtioHdr);
    assert_eq!(
        seen.len(),
        DropReason::COUNT,
        "every drop reason has a case"
    );
}

#[test]
fn rule_11_a_gso_frame_that_fits_one_segment_is_valid() {
    for (frame, t) in [(tcp4(100), GSO_TCPV4), (tcp6(0), GSO_TCPV6)] {
        let plan = csum_hdr(&frame, t, 1448).validate(&frame).unwrap();
        assert_eq!(
            plan.gso(),
            GsoKind::Tcp {
                mss: 1448,
                ecn: false
            }
        );
        assert!(plan.partial_checksum().is_some());
    }
    let frame = udp4(10);
    let plan = csum_hdr(&frame, GSO_UDP_L4, 1400).validate(&frame).unwrap();
    assert_eq!(plan.gso(), GsoKind::UdpL4 { size: 1400 });
    // The largest usable gso_size (bug class: huge gso_size values) is
    // accepted; it is the segmenter's job to cut to the egress MTU.
    let frame = tcp4(60000);
    let plan = csum_hdr(&frame, GSO_TCPV4, 65534).validate(&frame).unwrap();
    assert_eq!(
        plan.gso(),
        GsoKind::Tcp {
            mss: 65534,
            ecn: false
        }
    );
}

/// The messages of the two TCP rules name what was expected and what
/// was found.
#[test]
fn tcp_rule_messages_say_what_was_expected_and_found() {
    let small = HdrError::BadGsoSize {
        gso_type: GSO_TCPV4,
        gso_size: 1,
        min: MIN_TCP_MSS,
    };
    assert_eq!(
        small.to_string(),
        "gso_size: expected 88 to 65534 with gso_type TCPV4, found 1"
    );
    let syn = HdrError::SynOrRstWithGso {
        gso_type: GSO_TCPV6 | GSO_ECN,
        tcp_flags: 0x07,
    };
    assert_eq!(
        syn.to_string(),
        "gso_type TCPV6|ECN: expected a TCP header without SYN or RST, found flags 0x07 (FIN|SYN|RST)"
    );
    assert_eq!(syn.reason().name(), "syn_or_rst_with_gso");
    assert_eq!(small.reason().name(), "bad_gso_size");
}

/// What the two TCP rules leave alone: MSS 88 itself, FIN, PSH, ECE,
/// CWR, URG and ACK with GSO; SYN and RST on a frame without GSO (a
/// SYN with a partial checksum is ordinary); UDP sizes below 88.
#[test]
fn tcp_rules_accept_what_a_tcp_sender_sends() {
    let set_flags = |mut frame: Vec<u8>, flags: u8| {
        let l4 = FrameLayout::parse(&frame).unwrap().l4_offset;
        frame[l4 + 13] = flags;
        frame
    };
    for (frame, t) in [(tcp4(3000), GSO_TCPV4), (tcp6(3000), GSO_TCPV6)] {
        let hdr = csum_hdr(&frame, t, MIN_TCP_MSS);
        let plan = hdr.validate(&frame).unwrap();
        assert_eq!(
            plan.gso(),
            GsoKind::Tcp {
                mss: 88,
                ecn: false
            }
        );
        for flags in [0x01, 0x08, 0x10, 0x19, 0x20, 0x40, 0x80, 0xf9] {
            let frame = set_flags(frame.clone(), flags);
            assert!(hdr.validate(&frame).is_ok(), "flags {flags:#04x}");
        }
        for flags in [0x02, 0x04, 0x12, 0x07] {
            let frame = set_flags(frame.clone(), flags);
            let plain = VirtioNetHdr {
                gso_type: GSO_NONE,
                gso_size: 0,
                ..hdr
            };
            assert_eq!(plain.validate(&frame).unwrap().gso(), GsoKind::None);
        }
    }
    let frame = udp4(3000);
    for t in [GSO_UDP_L4, GSO_UDP] {
        let hdr = csum_hdr(&frame, t, 24);
        assert!(hdr.validate(&frame).is_ok(), "{}", gso_type_name(t));
    }
}

#[test]
fn accepted_shapes() {
    // TSO over QinQ with ECN; hdr_len is ignored.
    let spec = FrameSpec::tcp4(5000).tagged(2);
    let (frame, exp) = spec.build();
    let hdr = VirtioNetHdr {
        hdr_len: 7,
        gso_type: GSO_TCPV4 | GSO_ECN,
        ..csum_hdr(&frame, GSO_TCPV4, 1000)
    };
    let plan = hdr.validate(&frame).unwrap();
    assert_eq!(
        plan.gso(),
        GsoKind::Tcp {
            mss: 1000,
            ecn: true
        }
    );
    let layout = plan.layout().unwrap();
    assert_eq!(layout.payload_offset, exp.payload_offset);
    assert_eq!(
        plan.partial_checksum(),
        Some(PartialChecksum {
            start: 22 + 20,
            offset: 16
        })
    );
    // TSO without NEEDS_CSUM: no partial checksum, csum fields ignored.
    let frame = tcp6(3000);
    let hdr = VirtioNetHdr {
        flags: 0,
        csum_start: 0xffff,
        csum_offset: 0xffff,
        ..csum_hdr(&frame, GSO_TCPV6, 1440)
    };
    let plan = hdr.validate(&frame).unwrap();
    assert_eq!(plan.partial_checksum(), None);
    // UFO over IPv6 with NEEDS_CSUM.
    let frame = FrameSpec::tcp6(4000).udp().build().0;
    let plan = csum_hdr(&frame, GSO_UDP, 1232).validate(&frame).unwrap();
    assert_eq!(plan.gso(), GsoKind::Ufo { size: 1232 });
    // Non-GSO partial checksum on an IP frame.
    let frame = udp4(100);
    let plan = csum_hdr(&frame, GSO_NONE, 0).validate(&frame).unwrap();
    assert_eq!(plan.gso(), GsoKind::None);
    assert!(plan.layout().is_some());
    assert_eq!(
        plan.partial_checksum(),
        Some(PartialChecksum {
            start: 34,
            offset: 6
        })
    );
    // Non-GSO partial checksum on a non-IP frame: bounds only.
    let frame = arp();
    let hdr = VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        csum_start: 14,
        csum_offset: 26,
        ..Default::default()
    };
    let plan = hdr.validate(&frame).unwrap();
    assert_eq!(plan.layout(), None);
    assert_eq!(
        plan.partial_checksum(),
        Some(PartialChecksum {
            start: 14,
            offset: 26
        })
    );
    assert_eq!(
        VirtioNetHdr {
            csum_offset: 27,
            ..hdr
        }
        .validate(&frame),
        Err(HdrError::CsumFieldBeyondFrame {
            csum_start: 14,
            csum_offset: 27,
            frame_len: 42
        })
    );
    // Plain frames: nothing to do, even with IP headers the parser rejects.
    let plain = VirtioNetHdr::default();
    assert_eq!(plain.validate(&arp()).unwrap().layout(), None);
    let mut broken = tcp4(10);
    broken[14] = 0x41;
    let plan = plain.validate(&broken).unwrap();
    assert_eq!(
        (plan.layout(), plan.gso(), plan.partial_checksum()),
        (None, GsoKind::None, None)
    );
    assert!(plain.validate(&tcp4(10)).unwrap().layout().is_some());
    // ...but a partial checksum on those broken headers is rejected.
    let hdr = VirtioNetHdr {
        flags: FLAG_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..plain
    };
    assert_eq!(
        hdr.validate(&broken).unwrap_err().reason(),
        DropReason::MalformedHeaders
    );
    // Non-GSO partial TCP checksum at the TCP header with the UDP offset.
    let frame = tcp4(10);
    let hdr = VirtioNetHdr {
        csum_offset: 6,
        ..csum_hdr(&frame, GSO_NONE, 0)
    };
    assert_eq!(
        hdr.validate(&frame),
        Err(HdrError::BadCsumOffset {
            l4: L4Kind::Tcp,
            expected: 16,
            found: 6
        })
    );
}

#[test]
fn drop_reasons_are_indexed_and_named_uniquely() {
    let mut names = std::collections::HashSet::new();
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert!(names.insert(r.name()));
        assert!(r
            .name()
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()));
    }
}

fn assert_plan_within(frame: &[u8], hdr: &VirtioNetHdr, plan: &OffloadPlan) {
    if let Some(p) = plan.partial_checksum() {
        assert!(hdr.needs_csum());
        assert!(p.start + p.offset + 2 <= frame.len());
    } else {
        assert!(!hdr.needs_csum());
    }
    if let Some(l) = plan.layout() {
        assert!(l.l3_offset < l.l4_offset);
        assert!(l.l4_offset <= l.payload_offset);
        assert!(l.payload_offset <= frame.len());
    }
    match plan.gso() {
        GsoKind::None => {}
        GsoKind::Tcp { mss: size, .. } | GsoKind::UdpL4 { size } | GsoKind::Ufo { size } => {
            assert!(size != 0 && size != 0xffff);
            let l = plan.layout().expect("GSO plans have a layout");
            if let GsoKind::Tcp { mss, .. } = plan.gso() {
                assert!(mss >= MIN_TCP_MSS);
                assert_eq!(frame[l.l4_offset + 13] & 0x06, 0, "no SYN or RST");
            }
            assert!(l.l4.is_some());
            assert!(!l.is_fragment);
            assert!(frame.len() <= MAX_L3_LEN + l.l3_offset);
            if let Some(p) = plan.partial_checksum() {
                assert_eq!(p.start, l.l4_offset);
            }
        }
    }
}

fn arb_hdr() -> impl Strategy<Value = VirtioNetHdr> {
    (
        prop_oneof![Just(0u8), Just(1), any::<u8>()],
        prop_oneof![
            Just(GSO_NONE),
            Just(GSO_TCPV4),
            Just(GSO_TCPV6),
            Just(GSO_UDP),
            Just(GSO_UDP_L4),
            any::<u8>()
        ],
        any::<u16>(),
        prop_oneof![Just(0u16), 1u16..2000, any::<u16>()],
        prop_oneof![14u16..100, any::<u16>()],
        prop_oneof![Just(16u16), Just(6), any::<u16>()],
    )
        .prop_map(
            |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)| VirtioNetHdr {
                flags,
                gso_type,
                hdr_len,
                gso_size,
                csum_start,
                csum_offset,
                num_buffers: 0,
            },
        )
}

proptest! {
    #[test]
    fn validate_never_panics_and_plans_stay_in_the_frame(
        hdr in arb_hdr(),
        frame in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        if let Ok(plan) = hdr.validate(&frame) {
            assert_plan_within(&frame, &hdr, &plan);
        }
    }

    #[test]
    fn validate_random_headers_on_real_frames(
        hdr in arb_hdr(), spec in frame_spec(2000),
    ) {
        let (frame, _) = spec.build();
        if let Ok(plan) = hdr.validate(&frame) {
            assert_plan_within(&frame, &hdr, &plan);
        }
    }

    #[test]
    fn well_formed_requests_are_accepted(spec in frame_spec(3000), mss in 1u16..9000) {
        let (frame, exp) = spec.build();
        let gso_type = match (&spec.ip, &spec.l4) {
            (IpSpec::V4 { .. }, L4Spec::Tcp { .. }) => GSO_TCPV4,
            (IpSpec::V6 { .. }, L4Spec::Tcp { .. }) => GSO_TCPV6,
            (_, L4Spec::Udp) => GSO_UDP_L4,
        };
        let fragmented = exp.ipv6_fragment_header.is_some();
        let hdr = csum_hdr(&frame, gso_type, mss);
        let result = hdr.validate(&frame);
        let payload = frame.len() - exp.payload_offset;
        if gso_type != GSO_UDP_L4 && mss < MIN_TCP_MSS {
            prop_assert_eq!(
                result.unwrap_err(),
                HdrError::BadGsoSize { gso_type, gso_size: mss, min: MIN_TCP_MSS }
            );
        } else if fragmented {
            prop_assert_eq!(result.unwrap_err().reason(), DropReason::FragmentWithGso);
        } else if gso_type == GSO_UDP_L4 && payload > usize::from(mss) * 128 {
            prop_assert_eq!(result.unwrap_err().reason(), DropReason::TooManySegments);
        } else {
            let plan = result.unwrap();
            prop_assert_eq!(plan.layout().unwrap().payload_offset, exp.payload_offset);
            prop_assert_eq!(plan.layout().unwrap().l4_offset, exp.l4_offset);
            assert_plan_within(&frame, &hdr, &plan);
        }
        // The same frame as a plain partial-checksum frame is always fine.
        let plain = VirtioNetHdr { gso_type: GSO_NONE, gso_size: 0, ..hdr };
        let plan = plain.validate(&frame).unwrap();
        prop_assert_eq!(plan.gso(), GsoKind::None);
        prop_assert_eq!(plan.layout().unwrap().l4_offset, exp.l4_offset);
    }

    #[test]
    fn parse_emit_round_trip(
        bytes in proptest::array::uniform12(any::<u8>()),
    ) {
        let (hdr, _) = VirtioNetHdr::parse(&bytes, HdrFormat::V1).unwrap();
        let mut out = [0u8; 12];
        hdr.emit(&mut out, HdrFormat::V1).unwrap();
        prop_assert_eq!(out, bytes);
    }
}
