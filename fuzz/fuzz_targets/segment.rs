//! Validation plus segmentation on arbitrary input: two bytes of egress MTU
//! (little-endian; 0 means "segment as the guest asked"), a 12-byte
//! virtio_net_hdr_v1, then the frame. Every GSO request that `validate`
//! accepts is segmented into a sink that takes runs and into one that takes
//! a segment per call, and:
//!
//! * both give the same result and byte-identical segments;
//! * TSO and USO always succeed on a validated frame (UFO may refuse a size
//!   that cannot hold the first fragment's headers, with an error);
//! * no segment's L3 length exceeds the MTU used (or, without an MTU, the
//!   headers plus the segment size), and every IP length field matches the
//!   segment's real length;
//! * TSO/USO: the segment payloads concatenate to the original payload and
//!   sequence numbers follow it; UFO: the fragments reassemble to the
//!   original datagram;
//! * every IPv4 header checksum and every TCP/UDP checksum of the output
//!   verifies (checked with a plain RFC 1071 sum written here, not with the
//!   engine's own checksum code).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vswitch_offload::segment::{SegmentList, SegmentParams, SegmentSink, Segmenter, SinkFull};
use vswitch_offload::virtio::HdrFormat;
use vswitch_offload::{FrameLayout, GsoKind, L3Kind, VirtioNetHdr};

/// Ones'-complement sum of big-endian 16-bit words (odd byte padded), folded.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for w in &mut words {
            sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            sum += u64::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The pseudo-header of `segment` (IP header at `l3`) for `protocol` and an
/// upper-layer length of `len`, as bytes.
fn pseudo_header(segment: &[u8], l3: usize, l3_kind: L3Kind, protocol: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match l3_kind {
        L3Kind::Ipv4 => {
            p.extend_from_slice(&segment[l3 + 12..l3 + 20]);
            p.extend_from_slice(&[0, protocol]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        L3Kind::Ipv6 => {
            p.extend_from_slice(&segment[l3 + 8..l3 + 40]);
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, protocol]);
        }
    }
    p
}

/// Checks the IP length field (and IPv4 header checksum) of one output packet.
fn check_ip(segment: &[u8], layout: &FrameLayout) {
    let l3 = layout.l3_offset;
    let l3_len = segment.len() - l3;
    match layout.l3 {
        L3Kind::Ipv4 => {
            let ihl = usize::from(segment[l3] & 0x0f) * 4;
            assert_eq!(
                usize::from(be16(segment, l3 + 2)),
                l3_len,
                "IPv4 total length"
            );
            assert_eq!(
                ones_sum(&[&segment[l3..l3 + ihl]]),
                0xffff,
                "IPv4 header checksum"
            );
        }
        L3Kind::Ipv6 => {
            assert_eq!(
                usize::from(be16(segment, l3 + 4)),
                l3_len - 40,
                "IPv6 payload length"
            );
        }
    }
}

/// TSO and USO: each segment is a full packet with its own transport header.
fn check_l4_segments(frame: &[u8], layout: &FrameLayout, gso: GsoKind, segments: &[Vec<u8>]) {
    let header_len = layout.payload_offset;
    let (protocol, size) = match gso {
        GsoKind::Tcp { mss, .. } => (6u8, usize::from(mss)),
        GsoKind::UdpL4 { size } => (17u8, usize::from(size)),
        _ => unreachable!(),
    };
    let payload = &frame[header_len..];
    assert_eq!(segments.len(), payload.len().div_ceil(size).max(1));
    let mut at = 0;
    for (i, segment) in segments.iter().enumerate() {
        assert!(segment.len() >= header_len);
        // Everything before the IP header (Ethernet, VLAN tags) is copied.
        assert_eq!(&segment[..layout.l3_offset], &frame[..layout.l3_offset]);
        check_ip(segment, layout);
        let body = &segment[header_len..];
        assert!(body.len() <= size);
        assert!(!body.is_empty() || payload.is_empty());
        assert_eq!(
            body,
            &payload[at..at + body.len()],
            "payload of segment {i}"
        );
        let l4 = layout.l4_offset;
        let l4_len = segment.len() - l4;
        let pseudo = pseudo_header(segment, layout.l3_offset, layout.l3, protocol, l4_len);
        assert_eq!(
            ones_sum(&[&pseudo, &segment[l4..]]),
            0xffff,
            "L4 checksum of segment {i}"
        );
        if protocol == 6 {
            let seq = be32(frame, l4 + 4).wrapping_add(at as u32);
            assert_eq!(be32(segment, l4 + 4), seq, "sequence number of segment {i}");
            let flags = segment[l4 + 13];
            if i + 1 != segments.len() {
                assert_eq!(flags & 0x09, 0, "FIN/PSH only on the last segment");
            }
            if i != 0 {
                assert_eq!(flags & 0x80, 0, "CWR only on the first segment");
            }
        } else {
            assert_eq!(usize::from(be16(segment, l4 + 4)), l4_len, "UDP length");
            assert_ne!(
                be16(segment, l4 + 6),
                0,
                "a UDP checksum is never sent as 0"
            );
        }
        at += body.len();
    }
    assert_eq!(at, payload.len(), "payload conserved");
}

/// UFO: the fragments reassemble to the original datagram, whose UDP length
/// and checksum are now right.
fn check_fragments(frame: &[u8], layout: &FrameLayout, segments: &[Vec<u8>]) {
    let l3 = layout.l3_offset;
    let l4 = layout.l4_offset;
    let datagram_len = frame.len() - l4;
    if segments.len() == 1 {
        let segment = &segments[0];
        assert_eq!(segment.len(), frame.len());
        check_ip(segment, layout);
        // Only the IP length, the IPv4 header checksum and the UDP length
        // and checksum may change.
        let mut expected = frame.to_vec();
        let changed: &[usize] = match layout.l3 {
            L3Kind::Ipv4 => &[l3 + 2, l3 + 3, l3 + 10, l3 + 11],
            L3Kind::Ipv6 => &[l3 + 4, l3 + 5],
        };
        for &at in changed.iter().chain(&[l4 + 4, l4 + 5, l4 + 6, l4 + 7]) {
            expected[at] = segment[at];
        }
        assert_eq!(segment, &expected);
        assert_eq!(usize::from(be16(segment, l4 + 4)), datagram_len);
        let pseudo = pseudo_header(segment, l3, layout.l3, 17, datagram_len);
        assert_eq!(ones_sum(&[&pseudo, &segment[l4..]]), 0xffff, "UDP checksum");
        return;
    }
    // Where the fragmentable part starts in the original frame, and the
    // reassembled fragmentable part.
    let mut unfragmentable_end = None;
    let mut reassembled = Vec::new();
    let mut id = None;
    for (i, segment) in segments.iter().enumerate() {
        check_ip(segment, layout);
        let last = i + 1 == segments.len();
        let (start, offset_units, more, frag_id) = match layout.l3 {
            L3Kind::Ipv4 => {
                let ihl = usize::from(segment[l3] & 0x0f) * 4;
                assert_eq!(ihl, l4 - l3, "every fragment keeps the header length");
                let word = be16(segment, l3 + 6);
                (
                    l3 + ihl,
                    word & 0x1fff,
                    word & 0x2000 != 0,
                    u32::from(be16(segment, l3 + 4)),
                )
            }
            L3Kind::Ipv6 => {
                let parsed = FrameLayout::parse(segment).expect("an IPv6 fragment parses");
                let at = parsed.ipv6_fragment_header.expect("a fragment header");
                let word = be16(segment, at + 2);
                (at + 8, word >> 3, word & 1 != 0, be32(segment, at + 4))
            }
        };
        let end = match layout.l3 {
            L3Kind::Ipv4 => start,
            L3Kind::Ipv6 => start - 8,
        };
        assert_eq!(*unfragmentable_end.get_or_insert(end), end);
        assert_eq!(*id.get_or_insert(frag_id), frag_id, "one identification");
        assert_eq!(more, !last, "MF on all but the last fragment");
        assert_eq!(
            usize::from(offset_units) * 8,
            reassembled.len(),
            "fragment offset"
        );
        let data = &segment[start..];
        if !last {
            assert_eq!(
                data.len() % 8,
                0,
                "a non-last fragment carries a multiple of 8 bytes"
            );
        }
        reassembled.extend_from_slice(data);
    }
    let unfragmentable_end = unfragmentable_end.unwrap();
    let original = &frame[unfragmentable_end..];
    assert_eq!(reassembled.len(), original.len(), "datagram conserved");
    let udp_at = l4 - unfragmentable_end;
    assert_eq!(reassembled[..udp_at + 4], original[..udp_at + 4]);
    assert_eq!(reassembled[udp_at + 8..], original[udp_at + 8..]);
    let datagram = &reassembled[udp_at..];
    assert_eq!(usize::from(be16(datagram, 4)), datagram_len, "UDP length");
    let pseudo = pseudo_header(frame, l3, layout.l3, 17, datagram_len);
    assert_eq!(
        ones_sum(&[&pseudo, datagram]),
        0xffff,
        "UDP checksum of the datagram"
    );
}

/// The largest L3 length a segment may have: the MTU when one was given,
/// else the headers plus the segment size.
fn l3_limit(layout: &FrameLayout, gso: GsoKind, mtu: u16) -> usize {
    if mtu != 0 {
        return usize::from(mtu);
    }
    let l3_headers = layout.l4_offset - layout.l3_offset;
    match gso {
        GsoKind::Tcp { mss, .. } => l3_headers + layout.l4_len() + usize::from(mss),
        GsoKind::UdpL4 { size } => l3_headers + 8 + usize::from(size),
        GsoKind::Ufo { size } => match layout.l3 {
            L3Kind::Ipv4 => l3_headers + usize::from(size),
            L3Kind::Ipv6 => l3_headers + 8 + usize::from(size),
        },
        GsoKind::None => unreachable!(),
    }
}

/// A [`SegmentList`] behind a sink that takes one segment per call (the
/// trait's default for runs).
struct OneByOne(SegmentList);

impl SegmentSink for OneByOne {
    fn contiguous(&mut self, len: usize) -> Result<&mut [u8], SinkFull> {
        self.0.contiguous(len)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mtu, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let mtu = u16::from_le_bytes(*mtu);
    let Ok((hdr, n)) = VirtioNetHdr::parse(rest, HdrFormat::V1) else {
        return;
    };
    let frame = &rest[n..];
    let Ok(plan) = hdr.validate(frame) else {
        return;
    };
    if plan.gso() == GsoKind::None {
        return;
    }
    let layout = *plan.layout().expect("a GSO plan has a layout");
    let gso = if mtu == 0 {
        plan.gso()
    } else {
        match plan.gso().fit_mtu(&layout, mtu) {
            Ok(gso) => gso,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                return;
            }
        }
    };
    let params = SegmentParams {
        fixed_ipv4_id: mtu & 1 == 1,
        ipv6_fragment_id: 0x0102_0304,
    };
    let mut segmenter = Segmenter::new(params);
    let mut copied = SegmentList::new();
    let copy_result = segmenter.segment_copy(frame, &layout, gso, &mut copied);
    // The same through a sink that takes one segment per call instead of a
    // run.
    let mut copied_singly = OneByOne(SegmentList::new());
    assert_eq!(
        segmenter.segment_copy(frame, &layout, gso, &mut copied_singly),
        copy_result,
        "the result agrees with and without runs"
    );
    let summary = match copy_result {
        Ok(summary) => summary,
        Err(e) => {
            assert!(
                matches!(gso, GsoKind::Ufo { .. }),
                "a validated {gso:?} frame must segment, got {e}"
            );
            return;
        }
    };
    let copies: Vec<Vec<u8>> = copied.iter().map(<[u8]>::to_vec).collect();
    let singly: Vec<Vec<u8>> = copied_singly.0.iter().map(<[u8]>::to_vec).collect();
    assert_eq!(
        copies, singly,
        "runs and single segments are byte-identical"
    );
    assert_eq!(summary.segments, copies.len());
    assert_eq!(summary.bytes, copies.iter().map(Vec::len).sum::<usize>());
    let limit = l3_limit(&layout, gso, mtu);
    for segment in &copies {
        let l3_len = segment.len() - layout.l3_offset;
        assert!(l3_len <= limit, "segment L3 length {l3_len} above {limit}");
    }
    match gso {
        GsoKind::Tcp { .. } | GsoKind::UdpL4 { .. } => {
            check_l4_segments(frame, &layout, gso, &copies)
        }
        GsoKind::Ufo { .. } => check_fragments(frame, &layout, &copies),
        GsoKind::None => unreachable!(),
    }
});
