//! Segmentation checked against etherparse (re-parsing every segment) and
//! smoltcp (every TCP/UDP checksum), with and without runs.

use proptest::prelude::*;

use super::testing::{
    build, check_segment, payload_bytes, transport_checksum_ok, Built, FrameSpec, L4Spec, DST4,
    DST6, SRC4, SRC6,
};
use super::*;
use crate::layout::L4Kind;
use smoltcp::wire::IpAddress;

/// Segments into a sink that takes runs and into one that takes a segment
/// per call, checks that both got the same bytes, and returns the segments
/// as vectors.
pub(crate) fn segment_with_and_without_runs(
    frame: &[u8],
    layout: &FrameLayout,
    gso: GsoKind,
    params: SegmentParams,
) -> Result<Vec<Vec<u8>>, SegmentError> {
    let mut segmenter = Segmenter::new(params);
    let mut copied = SegmentList::new();
    let summary = segmenter.segment_copy(frame, layout, gso, &mut copied)?;
    // A sink without runs: the segmenter asks for one segment at a time.
    let mut copied_singly = OneByOne(SegmentList::new());
    let single_summary = segmenter.segment_copy(frame, layout, gso, &mut copied_singly)?;
    assert_eq!(summary, single_summary);
    assert_eq!(copied.len(), summary.segments);
    let all = |list: &SegmentList| list.iter().map(<[u8]>::to_vec).collect::<Vec<_>>();
    let out = all(&copied);
    assert_eq!(out, all(&copied_singly.0), "without runs");
    assert_eq!(summary.bytes, out.iter().map(Vec::len).sum::<usize>());
    Ok(out)
}

/// A [`SegmentList`] behind a sink that takes one segment per call (the
/// trait's default for runs).
struct OneByOne(SegmentList);

impl SegmentSink for OneByOne {
    fn contiguous(&mut self, len: usize) -> Result<&mut [u8], SinkFull> {
        self.0.contiguous(len)
    }
}

/// Checks TSO/USO output against the per-segment rules.
fn check_l4_segments(built: &Built, size: usize, params: SegmentParams, segments: &[Vec<u8>]) {
    let spec = &built.spec;
    let payload = built.payload();
    let expected = payload.len().div_ceil(size).max(1);
    assert_eq!(segments.len(), expected, "segment count");
    let header_len = built.layout.payload_offset;
    let l3 = built.layout.l3_offset;
    let max_l3 = header_len - l3 + size;
    let original = check_l4_original(built);
    let mut joined = Vec::with_capacity(payload.len());
    for (i, segment) in segments.iter().enumerate() {
        let info = check_segment(segment);
        let last = i + 1 == segments.len();
        assert!(
            info.l3_len <= max_l3,
            "segment {i}: L3 length {} above {max_l3}",
            info.l3_len
        );
        assert_eq!(info.header_len, header_len, "headers keep their length");
        assert_eq!(
            segment[..l3],
            built.frame[..l3],
            "Ethernet and VLAN tags copied"
        );
        if !last {
            assert_eq!(info.payload.len(), size, "segment {i} is full");
        }
        if let Some(id) = info.ipv4_id {
            let want = if params.fixed_ipv4_id {
                spec.ip_id
            } else {
                spec.ip_id.wrapping_add(i as u16)
            };
            assert_eq!(id, want, "IPv4 id of segment {i}");
            assert_eq!(info.ipv4_df, spec.dont_fragment);
        }
        match (&info.tcp, &original) {
            (Some(tcp), Some(first)) => {
                assert_eq!(
                    tcp.sequence_number,
                    spec.seq.wrapping_add((i * size) as u32)
                );
                assert_eq!(tcp.acknowledgment_number, first.acknowledgment_number);
                assert_eq!(tcp.window_size, first.window_size);
                assert_eq!(tcp.options, first.options, "options (timestamps) copied");
                assert_eq!(tcp.fin, spec.fin && last, "FIN on the last segment only");
                assert_eq!(tcp.psh, spec.psh && last, "PSH on the last segment only");
                assert_eq!(tcp.cwr, spec.cwr && i == 0, "CWR on the first segment only");
                assert_eq!(tcp.ece, spec.ece);
                assert!(tcp.ack);
            }
            (None, None) => {
                assert_eq!(usize::from(info.udp_len.unwrap()), 8 + info.payload.len());
            }
            _ => panic!("transport changed"),
        }
        joined.extend_from_slice(&info.payload);
    }
    assert_eq!(joined, payload, "payloads concatenate to the original");
}

fn check_l4_original(built: &Built) -> Option<etherparse::TcpHeader> {
    match etherparse::PacketHeaders::from_ethernet_slice(&built.frame)
        .ok()?
        .transport?
    {
        etherparse::TransportHeader::Tcp(tcp) => Some(tcp),
        _ => None,
    }
}

/// Checks UFO output: fragments reassemble to the original datagram with a
/// correct checksum; offsets, MF and ids follow the rules.
fn check_fragments(built: &Built, size: usize, params: SegmentParams, fragments: &[Vec<u8>]) {
    let spec = &built.spec;
    let l3 = built.layout.l3_offset;
    let mut reassembled = Vec::new();
    let rounded = size & !7;
    for (i, fragment) in fragments.iter().enumerate() {
        assert_eq!(
            fragment[..l3],
            built.frame[..l3],
            "Ethernet and VLAN tags copied"
        );
        let info = check_segment(fragment);
        let last = i + 1 == fragments.len();
        if fragments.len() == 1 {
            assert!(
                info.fragment.is_none(),
                "a datagram that fits is not fragmented"
            );
            let want_udp = 8 + spec.payload_len;
            assert_eq!(usize::from(info.udp_len.unwrap()), want_udp);
            assert_eq!(info.payload, built.payload());
            return;
        }
        let (offset, more, id) = info.fragment.expect("a fragment");
        assert_eq!(
            offset,
            reassembled.len(),
            "fragment {i} continues where the last ended"
        );
        assert_eq!(more, !last, "MF on all but the last");
        if spec.ipv6 {
            assert_eq!(id, params.ipv6_fragment_id);
        } else {
            assert_eq!(id, u32::from(spec.ip_id));
            assert!(!info.ipv4_df);
        }
        if !last {
            assert_eq!(
                info.payload.len() % 8,
                0,
                "fragment {i} carries a multiple of 8 bytes"
            );
            assert_eq!(info.payload.len(), rounded, "fragment {i} is full");
        }
        assert!(info.payload.len() <= rounded);
        reassembled.extend_from_slice(&info.payload);
    }
    // The reassembled fragmentable part: extension headers that follow the
    // unfragmentable part, then the UDP datagram.
    let datagram_len = 8 + spec.payload_len;
    let prefix = reassembled.len() - datagram_len;
    let l4 = built.layout.l4_offset;
    assert_eq!(reassembled[..prefix], built.frame[l4 - prefix..l4]);
    let datagram = &reassembled[prefix..];
    assert_eq!(&datagram[8..], built.payload(), "no byte lost or moved");
    assert_eq!(
        usize::from(u16::from_be_bytes([datagram[4], datagram[5]])),
        datagram_len
    );
    let (src, dst) = if spec.ipv6 {
        (IpAddress::Ipv6(SRC6.into()), IpAddress::Ipv6(DST6.into()))
    } else {
        (IpAddress::Ipv4(SRC4.into()), IpAddress::Ipv4(DST4.into()))
    };
    assert!(
        transport_checksum_ok(L4Kind::Udp, &src, &dst, datagram),
        "UDP checksum of the whole datagram"
    );
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    (
        (
            0u8..=2,
            any::<bool>(),
            0usize..=10,
            0u8..16,
            0u8..3,
            0usize..=4,
        ),
        (0usize..=65535, any::<u8>(), any::<u32>(), any::<u16>()),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (vlans, ipv6, option_words, ext, l4, extra),
                (len, seed, seq, id),
                (df, fin, psh, cwr, ece),
            )| {
                let l4 = match l4 {
                    0 => L4Spec::Tcp { options: false },
                    1 => L4Spec::Tcp { options: true },
                    _ => L4Spec::Udp,
                };
                let mut spec = FrameSpec {
                    vlans,
                    ipv6,
                    ip_options: if ipv6 { 0 } else { option_words * 4 },
                    ext_headers: if ipv6 { ext } else { 0 },
                    l4,
                    tcp_extra_words: if matches!(l4, L4Spec::Udp) { 0 } else { extra },
                    payload_len: 0,
                    payload_seed: seed,
                    seq,
                    ip_id: id,
                    dont_fragment: df,
                    fin,
                    psh,
                    cwr,
                    ece,
                };
                // Keep the frame within the 16-bit IP length fields.
                let headers = build(&spec).frame.len() - 14 - 4 * usize::from(vlans);
                let ip_fixed = if ipv6 { 40 } else { 0 };
                spec.payload_len = len % (65535 + ip_fixed - headers + 1);
                spec
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn segments_follow_the_rules(
        spec in frame_spec(),
        size in 1usize..=9000,
        fixed_ipv4_id in any::<bool>(),
        ufo in any::<bool>(),
        frag_id in any::<u32>(),
        stale_lengths in any::<bool>(),
    ) {
        let built = build(&spec);
        let params = SegmentParams { fixed_ipv4_id, ipv6_fragment_id: frag_id };
        let mut frame = built.frame.clone();
        if stale_lengths {
            // Guests may leave 0 in the large frame's lengths and any seed in
            // the checksum field; neither may leak into the segments.
            let l3 = built.layout.l3_offset;
            let at = if spec.ipv6 { l3 + 4 } else { l3 + 2 };
            frame[at..at + 2].copy_from_slice(&[0, 0]);
            built.seed_partial(&mut frame, frame_seed_with_len(spec.seq));
        }
        match spec.l4 {
            L4Spec::Tcp { .. } => {
                // Keep the segment count reasonable for the checks.
                let size = size.max(spec.payload_len.div_ceil(300));
                let gso = GsoKind::Tcp { mss: size as u16, ecn: spec.cwr };
                let segments = segment_with_and_without_runs(&frame, &built.layout, gso, params).unwrap();
                check_l4_segments(&built, size, params, &segments);
            }
            L4Spec::Udp if !ufo => {
                let size = size.max(spec.payload_len.div_ceil(300));
                let header = built.layout.payload_offset - built.layout.l3_offset;
                let gso = GsoKind::UdpL4 { size: size as u16 };
                match segment_with_and_without_runs(&frame, &built.layout, gso, params) {
                    Ok(segments) => check_l4_segments(&built, size, params, &segments),
                    Err(err) => {
                        // Only a datagram too long for the IP length field fails.
                        prop_assert!(matches!(err, SegmentError::SegmentTooLong { .. }), "{err}");
                        prop_assert!(header + size.min(spec.payload_len) > 65535 || spec.ipv6);
                    }
                }
            }
            L4Spec::Udp => {
                let size = size.max(64).max(spec.payload_len.div_ceil(300));
                let gso = GsoKind::Ufo { size: size as u16 };
                let fragments = segment_with_and_without_runs(&frame, &built.layout, gso, params).unwrap();
                check_fragments(&built, size, params, &fragments);
            }
        }
    }
}

fn frame_seed_with_len(seq: u32) -> bool {
    seq.is_multiple_of(2)
}

fn tso(spec: &FrameSpec, mss: u16) -> (Built, Vec<Vec<u8>>) {
    let built = build(spec);
    let segments = segment_with_and_without_runs(
        &built.frame,
        &built.layout,
        GsoKind::Tcp { mss, ecn: false },
        SegmentParams::default(),
    )
    .unwrap();
    check_l4_segments(
        &built,
        usize::from(mss),
        SegmentParams::default(),
        &segments,
    );
    (built, segments)
}

/// Bug class: checksums wrong with a VLAN tag present (offsets not shifted).
#[test]
fn vlan_and_qinq_tags_are_copied_and_offsets_shift() {
    for vlans in 0..=2 {
        for ipv6 in [false, true] {
            let spec = FrameSpec {
                vlans,
                ipv6,
                l4: L4Spec::Tcp { options: true },
                payload_len: 5000,
                ..FrameSpec::default()
            };
            let (built, segments) = tso(&spec, 1448);
            assert_eq!(segments.len(), 4);
            for segment in &segments {
                assert_eq!(segment[12..14], built.frame[12..14]);
                assert_eq!(
                    segment[..built.layout.l3_offset],
                    built.frame[..built.layout.l3_offset]
                );
            }
        }
    }
}

/// Bug class: IPv6 pseudo-header or payload_length wrong with extension
/// headers; TSO over a chain of hop-by-hop, destination, routing and final
/// destination options.
#[test]
fn ipv6_extension_headers_count_in_payload_length_not_in_pseudo_header() {
    let spec = FrameSpec {
        ipv6: true,
        ext_headers: 0b1111,
        l4: L4Spec::Tcp { options: true },
        payload_len: 4000,
        ..FrameSpec::default()
    };
    let (built, segments) = tso(&spec, 1000);
    let ext_len = built.layout.l4_offset - built.layout.l3_offset - 40;
    assert_eq!(ext_len, 8 + 24 + 16 + 16);
    for segment in &segments {
        let l3 = built.layout.l3_offset;
        let payload_length = usize::from(u16::from_be_bytes([segment[l3 + 4], segment[l3 + 5]]));
        assert_eq!(payload_length, ext_len + 32 + 1000);
    }
}

/// Bug class: UDP fragment payload not a multiple of 8 (bytes lost). A size
/// that is not a multiple of 8 is rounded down; nothing is lost.
#[test]
fn ufo_fragments_are_multiples_of_8_and_lose_nothing() {
    for ipv6 in [false, true] {
        for ext_headers in [0, 0b0101, 0b1111, 0b0010] {
            let spec = FrameSpec {
                ipv6,
                ip_options: if ipv6 { 0 } else { 12 },
                ext_headers: if ipv6 { ext_headers } else { 0 },
                l4: L4Spec::Udp,
                payload_len: 7001,
                vlans: 1,
                ..FrameSpec::default()
            };
            let built = build(&spec);
            let params = SegmentParams {
                fixed_ipv4_id: false,
                ipv6_fragment_id: 0xdead_beef,
            };
            let fragments = segment_with_and_without_runs(
                &built.frame,
                &built.layout,
                GsoKind::Ufo { size: 1001 },
                params,
            )
            .unwrap();
            assert_eq!(fragments.len(), 8);
            check_fragments(&built, 1001, params, &fragments);
        }
    }
}

#[test]
fn ufo_later_ipv4_fragments_drop_uncopied_options() {
    let spec = FrameSpec {
        ip_options: 12,
        l4: L4Spec::Udp,
        payload_len: 3000,
        ..FrameSpec::default()
    };
    let built = build(&spec);
    let fragments = segment_with_and_without_runs(
        &built.frame,
        &built.layout,
        GsoKind::Ufo { size: 1480 },
        SegmentParams::default(),
    )
    .unwrap();
    assert_eq!(fragments.len(), 3);
    let options = 14 + 20..14 + 32;
    assert_eq!(
        fragments[0][options.clone()],
        built.frame[options.clone()],
        "first keeps all"
    );
    // Router alert (copied) stays, record route (not copied) becomes NOPs.
    assert_eq!(
        fragments[1][options.clone()],
        [0x94, 4, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    );
    assert_eq!(fragments[2][options.clone()], fragments[1][options]);
}

#[test]
fn ufo_ipv6_fragment_header_goes_after_routing() {
    let spec = FrameSpec {
        ipv6: true,
        ext_headers: 0b1101,
        l4: L4Spec::Udp,
        payload_len: 3000,
        ..FrameSpec::default()
    };
    let built = build(&spec);
    let params = SegmentParams {
        fixed_ipv4_id: false,
        ipv6_fragment_id: 7,
    };
    let fragments = segment_with_and_without_runs(
        &built.frame,
        &built.layout,
        GsoKind::Ufo { size: 1400 },
        params,
    )
    .unwrap();
    check_fragments(&built, 1400, params, &fragments);
    // IPv6 (40) + hop-by-hop (8) + routing (16), then the fragment header.
    let at = 14 + 40 + 8 + 16;
    for fragment in &fragments {
        assert_eq!(
            fragment[14 + 40 + 8],
            44,
            "routing header now points at the fragment header"
        );
        assert_eq!(
            fragment[at], 60,
            "fragment header points at the final destination options"
        );
    }
}

#[test]
fn a_datagram_that_fits_is_sent_whole_with_its_checksum() {
    for ipv6 in [false, true] {
        let spec = FrameSpec {
            ipv6,
            l4: L4Spec::Udp,
            payload_len: 500,
            ..FrameSpec::default()
        };
        let built = build(&spec);
        let mut frame = built.frame.clone();
        built.seed_partial(&mut frame, true);
        let out = segment_with_and_without_runs(
            &frame,
            &built.layout,
            GsoKind::Ufo { size: 1400 },
            SegmentParams::default(),
        )
        .unwrap();
        assert_eq!(out, std::slice::from_ref(&built.frame));
    }
}

/// Rule 11: a GSO frame whose payload fits one segment is sent as one frame,
/// fully checksummed.
#[test]
fn tso_frame_that_fits_is_one_checksummed_segment() {
    let spec = FrameSpec {
        payload_len: 100,
        psh: true,
        fin: true,
        ..FrameSpec::default()
    };
    let built = build(&spec);
    let mut frame = built.frame.clone();
    built.seed_partial(&mut frame, true);
    let out = segment_with_and_without_runs(
        &frame,
        &built.layout,
        GsoKind::Tcp {
            mss: 1448,
            ecn: false,
        },
        SegmentParams::default(),
    )
    .unwrap();
    assert_eq!(out, std::slice::from_ref(&built.frame));
    // And a frame with no payload at all.
    let empty = build(&FrameSpec::default());
    let out = segment_with_and_without_runs(
        &empty.frame,
        &empty.layout,
        GsoKind::Tcp {
            mss: 1448,
            ecn: false,
        },
        SegmentParams::default(),
    )
    .unwrap();
    assert_eq!(out, std::slice::from_ref(&empty.frame));
}

/// USO: a computed checksum of 0 goes out as 0xffff. The payload is chosen
/// so that the sum comes out at exactly 0xffff.
#[test]
fn uso_zero_checksum_is_sent_as_ffff() {
    let spec = FrameSpec {
        l4: L4Spec::Udp,
        payload_len: 2,
        ..FrameSpec::default()
    };
    let mut built = build(&spec);
    let at = built.layout.payload_offset;
    built.frame[at..at + 2].copy_from_slice(&[0, 0]);
    // Sum of everything with the payload zero, then fix the payload so the
    // total is 0xffff.
    let mut sum = crate::checksum::pseudo_header_ipv4(SRC4, DST4, 17, 10);
    sum.add_bytes(&[0x14, 0xe9, 0x00, 0x35, 0x00, 0x0a, 0x00, 0x00]);
    let word = !sum.sum();
    built.frame[at..at + 2].copy_from_slice(&word.to_be_bytes());
    let out = segment_with_and_without_runs(
        &built.frame,
        &built.layout,
        GsoKind::UdpL4 { size: 1000 },
        SegmentParams::default(),
    )
    .unwrap();
    let csum = built.layout.l4_offset + 6;
    assert_eq!(out[0][csum..csum + 2], [0xff, 0xff]);
    check_segment(&out[0]);
}

#[test]
fn errors_not_panics() {
    let built = build(&FrameSpec {
        payload_len: 3000,
        ..FrameSpec::default()
    });
    let frame = &built.frame;
    let layout = built.layout;
    let seg = |layout: &FrameLayout, gso| {
        segment_with_and_without_runs(frame, layout, gso, SegmentParams::default())
    };
    // Bug class: gso_size 0 divides by zero.
    assert_eq!(
        seg(&layout, GsoKind::Tcp { mss: 0, ecn: false }).unwrap_err(),
        SegmentError::SegmentSizeTooSmall { size: 0, min: 1 }
    );
    assert_eq!(
        seg(&layout, GsoKind::None).unwrap_err(),
        SegmentError::NotGso
    );
    let err = seg(&layout, GsoKind::UdpL4 { size: 100 }).unwrap_err();
    assert!(
        matches!(err, SegmentError::LayoutMismatch { found: "TCP", .. }),
        "{err}"
    );
    let beyond = FrameLayout {
        payload_offset: frame.len() + 1,
        ..layout
    };
    assert!(matches!(
        seg(
            &beyond,
            GsoKind::Tcp {
                mss: 100,
                ecn: false
            }
        )
        .unwrap_err(),
        SegmentError::HeadersBeyondFrame { .. }
    ));
    let backwards = FrameLayout {
        l4_offset: 20,
        ..layout
    };
    assert!(matches!(
        seg(
            &backwards,
            GsoKind::Tcp {
                mss: 100,
                ecn: false
            }
        )
        .unwrap_err(),
        SegmentError::HeadersBeyondFrame { .. }
    ));
    let fragment = FrameLayout {
        is_fragment: true,
        ..layout
    };
    assert_eq!(
        seg(
            &fragment,
            GsoKind::Tcp {
                mss: 100,
                ecn: false
            }
        )
        .unwrap_err(),
        SegmentError::AlreadyFragmented
    );
    // Huge gso_size: one segment, no overflow.
    assert_eq!(
        seg(
            &layout,
            GsoKind::Tcp {
                mss: u16::MAX,
                ecn: false
            }
        )
        .unwrap()
        .len(),
        1
    );

    let udp = build(&FrameSpec {
        l4: L4Spec::Udp,
        payload_len: 3000,
        ..FrameSpec::default()
    });
    let err = segment_with_and_without_runs(
        &udp.frame,
        &udp.layout,
        GsoKind::Ufo { size: 7 },
        SegmentParams::default(),
    )
    .unwrap_err();
    assert_eq!(err, SegmentError::SegmentSizeTooSmall { size: 7, min: 8 });
    assert_eq!(err.counter(), "segment_size_too_small");

    // An IPv6 chain that does not end where the layout says.
    let v6 = build(&FrameSpec {
        ipv6: true,
        ext_headers: 1,
        l4: L4Spec::Udp,
        payload_len: 3000,
        ..FrameSpec::default()
    });
    let mut broken = v6.frame.clone();
    broken[14 + 40 + 1] = 3; // hop-by-hop now claims 32 bytes
    let err = segment_with_and_without_runs(
        &broken,
        &v6.layout,
        GsoKind::Ufo { size: 1000 },
        SegmentParams::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, SegmentError::Ipv6ChainInconsistent { .. }),
        "{err}"
    );
}

#[test]
fn a_full_sink_stops_segmentation_with_an_error() {
    struct OneSegment(Vec<u8>, usize);
    impl SegmentSink for OneSegment {
        fn contiguous(&mut self, len: usize) -> Result<&mut [u8], SinkFull> {
            self.1 += 1;
            if self.1 > 1 {
                return Err(SinkFull);
            }
            self.0.resize(len, 0);
            Ok(&mut self.0)
        }
    }
    let built = build(&FrameSpec {
        payload_len: 3000,
        ..FrameSpec::default()
    });
    let mut sink = OneSegment(Vec::new(), 0);
    let err = Segmenter::default()
        .segment_copy(
            &built.frame,
            &built.layout,
            GsoKind::Tcp {
                mss: 1000,
                ecn: false,
            },
            &mut sink,
        )
        .unwrap_err();
    assert_eq!(err, SegmentError::SinkFull);
}

#[test]
fn fit_mtu_shrinks_tcp_and_ufo_and_refuses_oversized_uso() {
    let tcp = build(&FrameSpec {
        l4: L4Spec::Tcp { options: true },
        ..FrameSpec::default()
    })
    .layout;
    assert_eq!(
        GsoKind::Tcp {
            mss: 8948,
            ecn: true
        }
        .fit_mtu(&tcp, 1500)
        .unwrap(),
        GsoKind::Tcp {
            mss: 1448,
            ecn: true
        }
    );
    assert_eq!(
        GsoKind::Tcp {
            mss: 536,
            ecn: false
        }
        .fit_mtu(&tcp, 1500)
        .unwrap(),
        GsoKind::Tcp {
            mss: 536,
            ecn: false
        }
    );
    assert!(matches!(
        GsoKind::Tcp {
            mss: 536,
            ecn: false
        }
        .fit_mtu(&tcp, 52)
        .unwrap_err(),
        SegmentError::MtuTooSmall {
            mtu: 52,
            headers: 52
        }
    ));
    let udp6 = build(&FrameSpec {
        ipv6: true,
        l4: L4Spec::Udp,
        ..FrameSpec::default()
    })
    .layout;
    assert_eq!(
        GsoKind::Ufo { size: 8000 }.fit_mtu(&udp6, 1500).unwrap(),
        GsoKind::Ufo { size: 1448 }
    );
    assert_eq!(
        GsoKind::UdpL4 { size: 1452 }.fit_mtu(&udp6, 1500).unwrap(),
        GsoKind::UdpL4 { size: 1452 }
    );
    assert_eq!(
        GsoKind::UdpL4 { size: 1453 }
            .fit_mtu(&udp6, 1500)
            .unwrap_err(),
        SegmentError::DatagramOverMtu {
            l3_len: 1501,
            mtu: 1500
        }
    );
}

#[test]
fn steady_state_reuses_buffers() {
    let built = build(&FrameSpec {
        payload_len: 60000,
        ..FrameSpec::default()
    });
    let mut segmenter = Segmenter::default();
    let mut list = SegmentList::new();
    let gso = GsoKind::Tcp {
        mss: 1448,
        ecn: false,
    };
    segmenter
        .segment_copy(&built.frame, &built.layout, gso, &mut list)
        .unwrap();
    let first = list.get(0).unwrap().as_ptr();
    for _ in 0..3 {
        list.clear();
        segmenter
            .segment_copy(&built.frame, &built.layout, gso, &mut list)
            .unwrap();
        assert_eq!(list.get(0).unwrap().as_ptr(), first);
    }
    let _ = payload_bytes(1, 0);
}

fn any_gso() -> impl Strategy<Value = GsoKind> {
    prop_oneof![
        Just(GsoKind::None),
        (any::<u16>(), any::<bool>()).prop_map(|(mss, ecn)| GsoKind::Tcp { mss, ecn }),
        any::<u16>().prop_map(|size| GsoKind::UdpL4 { size }),
        any::<u16>().prop_map(|size| GsoKind::Ufo { size }),
    ]
}

proptest! {
    /// Whatever the bytes and however wrong the layout, segmentation returns
    /// a value or an error, never a panic, with and without runs alike.
    #[test]
    fn inconsistent_layouts_are_errors_not_panics(
        frame in proptest::collection::vec(any::<u8>(), 0..400),
        l3_offset in 0usize..420,
        l4_extra in prop_oneof![0usize..120, (5usize..=15).prop_map(|w| w * 4), (5usize..=9).prop_map(|w| w * 8)],
        payload_extra in prop_oneof![0usize..80, Just(8usize), (5usize..=15).prop_map(|w| w * 4)],
        ipv6 in any::<bool>(),
        l4 in prop_oneof![Just(None), Just(Some(L4Kind::Tcp)), Just(Some(L4Kind::Udp))],
        gso in any_gso(),
        mtu in any::<u16>(),
    ) {
        let layout = FrameLayout {
            vlan_tags: 0,
            l3_offset,
            l3: if ipv6 { L3Kind::Ipv6 } else { L3Kind::Ipv4 },
            l4_offset: l3_offset + l4_extra,
            l4,
            payload_offset: l3_offset + l4_extra + payload_extra,
            ipv6_fragment_header: None,
            is_fragment: false,
        };
        let copy = segment_with_and_without_runs(&frame, &layout, gso, SegmentParams::default());
        if let Ok(segments) = copy {
            prop_assert!(!segments.is_empty());
        }
        let _ = gso.fit_mtu(&layout, mtu);
    }
}

#[test]
fn copy_headers_copies_every_length() {
    for len in 0..300 {
        let src: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
        let mut dst = vec![0u8; len];
        copy_headers(&mut dst, &src);
        assert_eq!(dst, src, "length {len}");
    }
}

/// The segmenter's own API takes a layout and a GSO kind, so a plan
/// validated for one frame can be applied to other bytes there (never
/// through `adapt`, which takes a checked frame). The layout is checked
/// against the bytes given: a frame cut short before its payload is an
/// error.
#[test]
fn a_plan_validated_for_one_frame_is_an_error_on_a_shorter_one() {
    for (ipv6, l4, gso) in [
        (
            false,
            L4Spec::Tcp { options: true },
            GsoKind::Tcp {
                mss: 1000,
                ecn: false,
            },
        ),
        (true, L4Spec::Udp, GsoKind::UdpL4 { size: 1000 }),
        (true, L4Spec::Udp, GsoKind::Ufo { size: 1000 }),
    ] {
        let built = build(&FrameSpec {
            ipv6,
            vlans: 1,
            l4,
            payload_len: 4000,
            ..FrameSpec::default()
        });
        let checked = built.checked(&built.frame, gso, true);
        let plan = checked.plan();
        let layout = plan.layout().expect("a GSO plan has a layout");
        let params = SegmentParams::default();
        assert!(segment_with_and_without_runs(&built.frame, layout, plan.gso(), params).is_ok());
        for len in [
            0,
            14,
            layout.l3_offset + 10,
            layout.l4_offset,
            layout.payload_offset - 1,
        ] {
            let err =
                segment_with_and_without_runs(&built.frame[..len], layout, plan.gso(), params)
                    .unwrap_err();
            assert!(
                matches!(err, SegmentError::HeadersBeyondFrame { frame_len, .. } if frame_len == len),
                "{len} bytes: {err}"
            );
        }
    }
}

proptest! {
    /// A plan validated for one frame, applied through the segmenter to
    /// that frame cut at any length or to other bytes altogether, gives an
    /// error or segments of the bytes it was given, never a panic: cut
    /// before the payload it is an error, cut within the payload the
    /// segments carry what is left of it.
    #[test]
    fn a_plan_applied_to_other_bytes_is_an_error_never_a_panic(
        ipv6 in any::<bool>(),
        vlans in 0u8..=2,
        kind in 0u8..3,
        payload_len in 0usize..3000,
        size in 88u16..2000,
        cut in any::<prop::sample::Index>(),
        other in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let (l4, gso) = match kind {
            0 => (L4Spec::Tcp { options: true }, GsoKind::Tcp { mss: size, ecn: false }),
            1 => (L4Spec::Udp, GsoKind::UdpL4 { size }),
            _ => (L4Spec::Udp, GsoKind::Ufo { size }),
        };
        let built = build(&FrameSpec { ipv6, vlans, l4, payload_len, ..FrameSpec::default() });
        let checked = built.checked(&built.frame, gso, true);
        let plan = checked.plan();
        let layout = plan.layout().expect("a GSO plan has a layout");
        let params = SegmentParams::default();
        let len = cut.index(built.frame.len() + 1);
        let short = &built.frame[..len];
        match segment_with_and_without_runs(short, layout, plan.gso(), params) {
            Err(SegmentError::HeadersBeyondFrame { .. }) => {
                prop_assert!(len < layout.payload_offset);
            }
            Err(err) => prop_assert!(false, "{} bytes of {}: {}", len, built.frame.len(), err),
            Ok(segments) => {
                prop_assert!(len >= layout.payload_offset);
                if kind < 2 {
                    let payload: Vec<u8> = segments
                        .iter()
                        .flat_map(|s| check_segment(s).payload)
                        .collect();
                    prop_assert_eq!(&payload[..], &short[layout.payload_offset..]);
                }
            }
        }
        let _ = segment_with_and_without_runs(&other, layout, plan.gso(), params);
    }
}
