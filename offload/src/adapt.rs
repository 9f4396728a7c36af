//! The one entry point that makes a frame fit an egress port: pass it
//! through, complete its checksum, or segment it.
//!
//! The rules, in order:
//! * A GSO frame passes through untouched only if the port completes
//!   checksums, segments this kind itself (TSO4/TSO6/USO/UFO), takes ECN
//!   when it is a TSO frame with the ECN bit ([`EgressCapabilities::ecn`]),
//!   and its MTU holds the segments the guest asked for. Otherwise the
//!   engine segments it in software, to `min(gso_size, what the MTU
//!   allows)`: a TSO frame larger than the egress MTU is re-segmented, never
//!   dropped, and a TSO frame with ECN toward a port that does not handle
//!   CWR is segmented with CWR on the first segment only (the IP header's
//!   ECN field is copied onto every segment as it is).
//! * A frame without GSO must fit the MTU (else [`AdaptError::FrameOverMtu`]);
//!   its partial checksum, if any, is completed unless the port completes it.
//!   So a partial checksum never reaches a port that cannot complete it.
//!
//! The decision ([`decide`]) is separate from the work ([`adapt`]) so that
//! the switch can count and test decisions without touching bytes.
//!
//! The work has one form: what is written goes into the sink as contiguous
//! frames, each payload copied and checksummed in the same pass, whatever
//! the port. A sink over the buffers the port sends from (or a guest
//! receives into) makes that the only copy. There is no mode for a port
//! that could gather a frame from several buffers: handing it slices of the
//! original payload instead of a copy was measured on a TAP device to cost
//! more CPU than the copy it saved (see [`crate::segment`]).
//!
//! ```
//! use vswitch_offload::adapt::{decide, Action};
//! use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_NONE};
//! use vswitch_offload::{CheckedFrame, EgressCapabilities, Packet, PartialChecksum, VirtioNetHdr};
//!
//! // Ethernet + IPv4 (20) + TCP (20) + 46 payload bytes, the TCP checksum
//! // left partial by the guest.
//! let mut frame = vec![0u8; 14 + 20 + 20 + 46];
//! frame[12..14].copy_from_slice(&[0x08, 0x00]); // IPv4
//! frame[14] = 0x45; // version 4, ihl 5
//! frame[14 + 9] = 6; // TCP
//! frame[34 + 12] = 5 << 4; // data offset 5
//! let hdr = VirtioNetHdr {
//!     flags: FLAG_NEEDS_CSUM,
//!     gso_type: GSO_NONE,
//!     csum_start: 34,
//!     csum_offset: 16,
//!     ..VirtioNetHdr::default()
//! };
//! // The header is validated against the frame once, here; decide and
//! // adapt take only frames checked so.
//! let frame = CheckedFrame::check(Packet::with_hdr(hdr, frame)).unwrap();
//! let to_tap = decide(&frame, &EgressCapabilities::checksum_only(1500)).unwrap();
//! assert_eq!(to_tap, Action::PassThrough);
//! let to_wire = decide(&frame, &EgressCapabilities::none(1500)).unwrap();
//! assert_eq!(to_wire, Action::CompleteChecksum(PartialChecksum { start: 34, offset: 16 }));
//! ```

use crate::caps::EgressCapabilities;
use crate::complete::{complete_checksum_copy, ChecksumError};
use crate::frame::CheckedFrame;
use crate::layout::L3Kind;
use crate::plan::{GsoKind, PartialChecksum};
use crate::segment::{SegmentError, SegmentSink, SegmentSummary, Segmenter, SinkFull};

/// Why a frame could not be adapted to a port. Each variant has a stable
/// counter name ([`AdaptError::counter`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdaptError {
    /// A frame without GSO is larger than the egress MTU.
    #[error("frame of {l3_len} bytes (IP length) must fit the egress MTU {mtu}")]
    FrameOverMtu {
        /// The frame's length after the Ethernet header and VLAN tags.
        l3_len: usize,
        /// The egress MTU.
        mtu: u16,
    },
    /// A GSO frame came without a parsed layout. Validation gives every
    /// GSO frame one, so a [`CheckedFrame`] never causes this; `decide`
    /// checks that instead of assuming it.
    #[error("a GSO frame needs a parsed layout, the plan has none")]
    MissingLayout,
    /// Segmentation failed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// Checksum completion failed.
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    /// The frame's lent payload could not be taken into host memory for
    /// the software work.
    #[error(transparent)]
    Lent(#[from] crate::tail::TailError),
}

impl AdaptError {
    /// A stable name for the drop counter of this error.
    pub fn counter(&self) -> &'static str {
        match self {
            AdaptError::FrameOverMtu { .. } => "adapt_frame_over_mtu",
            AdaptError::MissingLayout => "adapt_missing_layout",
            AdaptError::Segment(err) => err.counter(),
            AdaptError::Checksum(err) => err.counter(),
            AdaptError::Lent(_) => "adapt_lent_unreadable",
        }
    }
}

/// What to do with a frame for one egress port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send the frame as it is, with its offload metadata: the port does the rest.
    PassThrough,
    /// Complete the partial checksum in software; no segmentation.
    CompleteChecksum(PartialChecksum),
    /// Segment in software with this (possibly smaller than asked) size.
    Segment(GsoKind),
}

/// What [`adapt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Adapted {
    /// Nothing was written: send the original frame with its metadata.
    PassThrough,
    /// One plain frame with its checksum completed was written to the sink.
    Checksummed,
    /// Plain, fully checksummed segments were written to the sink.
    Segmented(SegmentSummary),
}

/// Decides what a frame needs before it leaves through a port with `caps`,
/// from the plan its virtio-net header was validated into.
pub fn decide(frame: &CheckedFrame, caps: &EgressCapabilities) -> Result<Action, AdaptError> {
    let gso = frame.gso();
    if gso == GsoKind::None {
        // The link-layer header was parsed when the frame was checked, so
        // it ends within the frame.
        let l3_len = frame.len() - frame.l2().l3_offset;
        if l3_len > usize::from(caps.mtu) {
            return Err(AdaptError::FrameOverMtu {
                l3_len,
                mtu: caps.mtu,
            });
        }
        return Ok(match frame.partial_checksum() {
            Some(partial) if !caps.checksum => Action::CompleteChecksum(partial),
            _ => Action::PassThrough,
        });
    }
    let layout = frame.layout().ok_or(AdaptError::MissingLayout)?;
    let fitted = gso.fit_mtu(&layout, caps.mtu)?;
    let port_segments = match (gso, layout.l3) {
        (GsoKind::Tcp { .. }, L3Kind::Ipv4) => caps.tso4,
        (GsoKind::Tcp { .. }, L3Kind::Ipv6) => caps.tso6,
        (GsoKind::UdpL4 { .. }, _) => caps.uso,
        (GsoKind::Ufo { .. }, _) => caps.ufo,
        (GsoKind::None, _) => false,
    };
    // A TSO frame with ECN carries CWR, which must go on the first segment
    // only: a port that did not say it handles that gets the segments.
    let ecn_ok = match gso {
        GsoKind::Tcp { ecn, .. } => !ecn || caps.ecn,
        _ => true,
    };
    if port_segments && ecn_ok && caps.checksum && fitted == gso {
        Ok(Action::PassThrough)
    } else {
        Ok(Action::Segment(fitted))
    }
}

/// Adapts `frame` to a port with `caps`: decides ([`decide`]), then writes
/// what must be sent into `sink` as contiguous frames.
///
/// The frame's plan comes from validating its own header against its own
/// bytes ([`CheckedFrame::check`]), so an unchecked header cannot reach the
/// segmenter or the checksum completer through here.
///
/// On [`Adapted::PassThrough`] nothing is written; send the original frame
/// with its metadata. Otherwise send what the sink received, as plain frames.
pub fn adapt<S: SegmentSink + ?Sized>(
    segmenter: &mut Segmenter,
    frame: &CheckedFrame,
    caps: &EgressCapabilities,
    sink: &mut S,
) -> Result<Adapted, AdaptError> {
    let action = decide(frame, caps)?;
    // The software paths read every byte: a frame whose payload is still
    // lent is gathered into the segmenter's buffer first (its headers lead,
    // so the frame's layout holds for the gathered bytes too).
    let mut whole = std::mem::take(&mut segmenter.whole);
    let result = (|| {
        let data: &[u8] = match &frame.packet().tail {
            Some(tail) if action != Action::PassThrough => {
                whole.clear();
                whole.extend_from_slice(frame.data());
                tail.append_to(&mut whole)?;
                &whole
            }
            _ => frame.data(),
        };
        match action {
            Action::PassThrough => Ok(Adapted::PassThrough),
            Action::CompleteChecksum(partial) => {
                complete_into(data, partial, sink)?;
                Ok(Adapted::Checksummed)
            }
            Action::Segment(gso) => {
                let layout = frame.layout().ok_or(AdaptError::MissingLayout)?;
                let summary = segmenter.segment_copy(data, &layout, gso, sink)?;
                Ok(Adapted::Segmented(summary))
            }
        }
    })();
    segmenter.whole = whole;
    result
}

fn complete_into<S: SegmentSink + ?Sized>(
    frame: &[u8],
    partial: PartialChecksum,
    sink: &mut S,
) -> Result<(), AdaptError> {
    let buf = sink
        .contiguous(frame.len())
        .map_err(|SinkFull| AdaptError::Segment(SegmentError::SinkFull))?;
    if buf.len() != frame.len() {
        return Err(SegmentError::SinkBufferLength {
            expected: frame.len(),
            found: buf.len(),
        }
        .into());
    }
    complete_checksum_copy(buf, frame, partial)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{CheckError, Packet};
    use crate::layout::{FrameLayout, L4Kind};
    use crate::segment::testing::{build, check_segment, Built, FrameSpec, L4Spec};
    use crate::segment::SegmentList;

    /// `frame` checked with a TSO header of `mss`, its checksum partial.
    fn tso(built: &Built, frame: &[u8], mss: u16, ecn: bool) -> CheckedFrame {
        built.checked(frame, GsoKind::Tcp { mss, ecn }, true)
    }

    fn run(
        frame: &CheckedFrame,
        caps: &EgressCapabilities,
    ) -> Result<(Adapted, Vec<Vec<u8>>), AdaptError> {
        let mut list = SegmentList::new();
        let adapted = adapt(&mut Segmenter::default(), frame, caps, &mut list)?;
        Ok((adapted, list.iter().map(<[u8]>::to_vec).collect()))
    }

    fn big_tcp(ipv6: bool) -> Built {
        build(&FrameSpec {
            ipv6,
            vlans: 1,
            l4: L4Spec::Tcp { options: true },
            payload_len: 60_000,
            ..FrameSpec::default()
        })
    }

    /// Bug class: forwarding drops a TSO frame larger than the egress MTU
    /// instead of segmenting it. A port with TSO but a small MTU gets the
    /// frame re-segmented to fit.
    #[test]
    fn tso_frame_to_a_smaller_mtu_is_resegmented_not_dropped() {
        for ipv6 in [false, true] {
            let built = big_tcp(ipv6);
            let mut frame = built.frame.clone();
            built.seed_partial(&mut frame, true);
            let frame = tso(&built, &frame, 8948, false);
            for caps in [
                EgressCapabilities::full(1280),
                EgressCapabilities::none(1280),
            ] {
                let (adapted, segments) = run(&frame, &caps).unwrap();
                let headers = built.layout.payload_offset - built.layout.l3_offset;
                let mss = 1280 - headers;
                assert_eq!(
                    adapted,
                    Adapted::Segmented(SegmentSummary {
                        segments: 60_000usize.div_ceil(mss),
                        bytes: segments.iter().map(Vec::len).sum(),
                    })
                );
                let mut payload = Vec::new();
                for segment in &segments {
                    let info = check_segment(segment);
                    assert!(
                        info.l3_len <= 1280,
                        "L3 length {} above the MTU",
                        info.l3_len
                    );
                    payload.extend_from_slice(&info.payload);
                }
                assert_eq!(payload, built.payload());
            }
        }
    }

    #[test]
    fn tso_passes_through_only_to_a_port_that_segments_this_kind() {
        let v4 = big_tcp(false);
        let frame = tso(&v4, &v4.frame, 1448, false);
        let pass = |caps: EgressCapabilities| decide(&frame, &caps).unwrap();
        assert_eq!(pass(EgressCapabilities::full(1500)), Action::PassThrough);
        let no_tso4 = EgressCapabilities {
            tso4: false,
            ..EgressCapabilities::full(1500)
        };
        assert_eq!(
            pass(no_tso4),
            Action::Segment(GsoKind::Tcp {
                mss: 1448,
                ecn: false
            })
        );
        let no_csum = EgressCapabilities {
            checksum: false,
            ..EgressCapabilities::full(1500)
        };
        assert_eq!(
            pass(no_csum),
            Action::Segment(GsoKind::Tcp {
                mss: 1448,
                ecn: false
            })
        );
        let v6 = big_tcp(true);
        let frame6 = tso(&v6, &v6.frame, 1200, false);
        let only_tso4 = EgressCapabilities {
            tso6: false,
            ..EgressCapabilities::full(1500)
        };
        assert_eq!(
            decide(&frame6, &only_tso4).unwrap(),
            Action::Segment(GsoKind::Tcp {
                mss: 1200,
                ecn: false
            })
        );
        let (adapted, segments) = run(&frame, &EgressCapabilities::full(1500)).unwrap();
        assert_eq!(adapted, Adapted::PassThrough);
        assert!(segments.is_empty());
    }

    /// Sets the ECN field of the IP header (IPv4 TOS or IPv6 traffic class,
    /// low two bits) to `ecn`, DSCP to 46 (EF), and fixes the IPv4 header
    /// checksum.
    fn set_ip_ecn(frame: &mut [u8], layout: &FrameLayout, ecn: u8) {
        let l3 = layout.l3_offset;
        let tos = (46 << 2) | ecn;
        match layout.l3 {
            L3Kind::Ipv4 => {
                frame[l3 + 1] = tos;
                let ihl = usize::from(frame[l3] & 0x0f) * 4;
                frame[l3 + 10..l3 + 12].fill(0);
                let sum = crate::checksum::checksum(&frame[l3..l3 + ihl]);
                frame[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
            }
            L3Kind::Ipv6 => {
                frame[l3] = 0x60 | (tos >> 4);
                frame[l3 + 1] = (frame[l3 + 1] & 0x0f) | (tos << 4);
            }
        }
    }

    fn ip_tos(segment: &[u8], layout: &FrameLayout) -> u8 {
        let l3 = layout.l3_offset;
        match layout.l3 {
            L3Kind::Ipv4 => segment[l3 + 1],
            L3Kind::Ipv6 => (segment[l3] << 4) | (segment[l3 + 1] >> 4),
        }
    }

    /// A TSO frame with the ECN bit passes through only to a port that takes
    /// ECN; toward any other port it is segmented in software even when the
    /// port does TSO. A TSO frame without the bit is unaffected.
    #[test]
    fn tso_with_ecn_passes_through_only_to_a_port_that_takes_ecn() {
        for ipv6 in [false, true] {
            let built = big_tcp(ipv6);
            let plain = tso(&built, &built.frame, 1200, false);
            let with_ecn = tso(&built, &built.frame, 1200, true);
            let full = EgressCapabilities::full(1500);
            let no_ecn = full.with_ecn(false);
            let decide = |frame: &CheckedFrame, caps| decide(frame, &caps).unwrap();
            assert_eq!(decide(&with_ecn, full), Action::PassThrough);
            assert_eq!(decide(&with_ecn, no_ecn), Action::Segment(with_ecn.gso()));
            assert_eq!(decide(&plain, no_ecn), Action::PassThrough);
            // ECN alone does not make a port segment.
            let ecn_only = EgressCapabilities::checksum_only(1500).with_ecn(true);
            assert_eq!(decide(&with_ecn, ecn_only), Action::Segment(with_ecn.gso()));
        }
    }

    /// The segments of a TSO frame with ECN cut in software for a port
    /// without ECN: CWR on the first segment only, ECE and the IP header's
    /// ECN field (here CE, with DSCP EF) on every segment, payload intact.
    #[test]
    fn ecn_tso_cut_in_software_has_cwr_on_the_first_segment_only() {
        for ipv6 in [false, true] {
            let built = build(&FrameSpec {
                ipv6,
                vlans: 1,
                l4: L4Spec::Tcp { options: true },
                payload_len: 10_000,
                cwr: true,
                ece: true,
                psh: true,
                ..FrameSpec::default()
            });
            let mut frame = built.frame.clone();
            set_ip_ecn(&mut frame, &built.layout, 0b11);
            built.seed_partial(&mut frame, true);
            let frame = tso(&built, &frame, 1000, true);
            let caps = EgressCapabilities::full(1500).with_ecn(false);
            let (adapted, segments) = run(&frame, &caps).unwrap();
            assert!(matches!(adapted, Adapted::Segmented(s) if s.segments == 10));
            let mut payload = Vec::new();
            for (i, segment) in segments.iter().enumerate() {
                let info = check_segment(segment);
                let tcp = info.tcp.expect("a TCP segment");
                assert_eq!(tcp.cwr, i == 0, "CWR on segment {i}");
                assert!(tcp.ece, "ECE on segment {i}");
                assert_eq!(tcp.psh, i == 9, "PSH on the last segment only");
                assert_eq!(ip_tos(segment, &built.layout), (46 << 2) | 0b11);
                payload.extend_from_slice(&info.payload);
            }
            assert_eq!(payload, built.payload());
        }
    }

    /// Bug class: a partial checksum reaching a port that cannot complete it.
    #[test]
    fn partial_checksum_is_completed_for_a_port_without_checksum_offload() {
        for (ipv6, l4) in [(false, L4Spec::Tcp { options: true }), (true, L4Spec::Udp)] {
            let built = build(&FrameSpec {
                ipv6,
                vlans: 2,
                l4,
                payload_len: 1000,
                ..FrameSpec::default()
            });
            let frame = built.checked(&built.frame_with_seed(true), GsoKind::None, true);
            let offset = if l4 == L4Spec::Udp { 6 } else { 16 };
            assert_eq!(
                frame.partial_checksum(),
                Some(PartialChecksum {
                    start: built.layout.l4_offset,
                    offset,
                })
            );
            let (adapted, out) = run(&frame, &EgressCapabilities::none(1500)).unwrap();
            assert_eq!(adapted, Adapted::Checksummed);
            assert_eq!(out, std::slice::from_ref(&built.frame));
            assert!(built.l4_checksum_ok(&out[0]));
            let (adapted, out) = run(&frame, &EgressCapabilities::checksum_only(1500)).unwrap();
            assert_eq!(adapted, Adapted::PassThrough);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn non_gso_frame_over_the_mtu_is_an_error() {
        let built = build(&FrameSpec {
            vlans: 2,
            payload_len: 1460,
            ..FrameSpec::default()
        });
        let frame = built.checked(&built.frame, GsoKind::None, false);
        assert_eq!(
            decide(&frame, &EgressCapabilities::none(1500)).unwrap(),
            Action::PassThrough
        );
        let err = decide(&frame, &EgressCapabilities::full(1499)).unwrap_err();
        assert_eq!(
            err,
            AdaptError::FrameOverMtu {
                l3_len: 1500,
                mtu: 1499
            }
        );
        assert_eq!(err.counter(), "adapt_frame_over_mtu");
        // A frame that is not IP has no layout; its VLAN tags are still not
        // counted as L3 bytes.
        let mut not_ip = built.frame.clone();
        let inner_ethertype = built.layout.l3_offset - 2;
        not_ip[inner_ethertype..inner_ethertype + 2].copy_from_slice(&0x88b5u16.to_be_bytes());
        let not_ip = CheckedFrame::check(Packet::plain(not_ip)).unwrap();
        assert_eq!(not_ip.layout(), None);
        assert_eq!(
            decide(&not_ip, &EgressCapabilities::none(1500)).unwrap(),
            Action::PassThrough
        );
        assert!(decide(&not_ip, &EgressCapabilities::none(1499)).is_err());
        // A frame shorter than its Ethernet header is refused when it is
        // checked: it never reaches decide.
        let err = CheckedFrame::check(Packet::plain(vec![0u8; 10])).unwrap_err();
        assert!(matches!(err, CheckError::LinkLayer(_)), "{err}");
    }

    #[test]
    fn uso_datagrams_over_the_mtu_are_refused_and_ufo_is_refragmented() {
        let built = build(&FrameSpec {
            l4: L4Spec::Udp,
            payload_len: 20_000,
            ..FrameSpec::default()
        });
        let uso = built.checked(&built.frame, GsoKind::UdpL4 { size: 1472 }, true);
        let (adapted, out) = run(&uso, &EgressCapabilities::none(1500)).unwrap();
        assert!(matches!(adapted, Adapted::Segmented(s) if s.segments == 14));
        out.iter()
            .for_each(|s| assert!(check_segment(s).l3_len <= 1500));
        let err = run(&uso, &EgressCapabilities::full(1400)).unwrap_err();
        assert_eq!(err.counter(), "segment_datagram_over_mtu");

        let ufo = built.checked(&built.frame, GsoKind::Ufo { size: 8000 }, true);
        let (adapted, out) = run(&ufo, &EgressCapabilities::full(1500)).unwrap();
        assert!(matches!(adapted, Adapted::Segmented(_)));
        for fragment in &out {
            let info = check_segment(fragment);
            assert!(info.l3_len <= 1500);
        }
    }

    /// A GSO header on a frame that is not IP is refused when the frame is
    /// checked, so decide never sees a GSO frame without a layout.
    #[test]
    fn gso_on_a_frame_that_is_not_ip_never_reaches_decide() {
        let mut frame = vec![0u8; 100];
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        let layout = FrameLayout {
            vlan_tags: 0,
            l3_offset: 14,
            l3: L3Kind::Ipv4,
            l4_offset: 34,
            l4: Some(L4Kind::Tcp),
            payload_offset: 54,
            ipv6_fragment_header: None,
            is_fragment: false,
        };
        let gso = GsoKind::Tcp {
            mss: 1000,
            ecn: false,
        };
        let hdr = crate::segment::testing::guest_hdr(&layout, gso, false);
        let err = CheckedFrame::check(Packet::with_hdr(hdr, frame)).unwrap_err();
        assert!(
            matches!(err, CheckError::Header(ref e) if e.reason().name() == "gso_l3_mismatch"),
            "{err}"
        );
    }

    /// Every error has its own counter name.
    #[test]
    fn counter_names_are_distinct() {
        let errors: Vec<AdaptError> = vec![
            AdaptError::FrameOverMtu { l3_len: 0, mtu: 0 },
            AdaptError::MissingLayout,
            ChecksumError::FieldOutOfFrame {
                start: 0,
                offset: 0,
                frame_len: 0,
            }
            .into(),
            ChecksumError::LengthMismatch {
                expected: 0,
                found: 0,
            }
            .into(),
            SegmentError::NotGso.into(),
            SegmentError::LayoutMismatch {
                gso: "",
                expected: "",
                found: "",
            }
            .into(),
            SegmentError::HeadersBeyondFrame {
                l3_offset: 0,
                l4_offset: 0,
                payload_offset: 0,
                frame_len: 0,
            }
            .into(),
            SegmentError::FieldOutOfBounds {
                offset: 0,
                width: 0,
                len: 0,
            }
            .into(),
            SegmentError::HeaderLength {
                header: "",
                len: 0,
                min: 0,
                max: 0,
                step: 0,
            }
            .into(),
            SegmentError::SegmentSizeTooSmall { size: 0, min: 0 }.into(),
            SegmentError::SegmentTooLong {
                field: "",
                len: 0,
                max: 0,
            }
            .into(),
            SegmentError::AlreadyFragmented.into(),
            SegmentError::Ipv6ChainInconsistent {
                end: 0,
                l4_offset: 0,
            }
            .into(),
            SegmentError::FirstFragmentTooSmall {
                size: 0,
                headers: 0,
            }
            .into(),
            SegmentError::MtuTooSmall { mtu: 0, headers: 0 }.into(),
            SegmentError::DatagramOverMtu { l3_len: 0, mtu: 0 }.into(),
            SegmentError::SinkFull.into(),
            SegmentError::SinkBufferLength {
                expected: 0,
                found: 0,
            }
            .into(),
        ];
        let mut names: Vec<&str> = errors.iter().map(AdaptError::counter).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), errors.len());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Whatever the port, what leaves fits its MTU, carries complete
        /// checksums, and loses no payload; pass-through happens only when
        /// the port can finish the job itself.
        #[test]
        fn adapted_output_always_fits_the_port(
            vlans in 0u8..=2,
            ipv6 in proptest::prelude::any::<bool>(),
            kind in 0u8..4,
            payload_len in 0usize..=30_000,
            gso_size in 1u16..=9000,
            mtu in 200u16..=9000,
            caps_bits in 0u8..64,
            ecn in proptest::prelude::any::<bool>(),
        ) {
            let l4 = if kind < 2 { L4Spec::Tcp { options: kind == 1 } } else { L4Spec::Udp };
            let cwr = ecn && kind < 2;
            let built = build(&FrameSpec { vlans, ipv6, l4, payload_len, cwr, ..FrameSpec::default() });
            let gso = match kind {
                // Validation refuses a TCP MSS below Linux's minimum.
                0 | 1 => GsoKind::Tcp { mss: gso_size.max(crate::virtio::MIN_TCP_MSS), ecn },
                2 => GsoKind::UdpL4 { size: gso_size.max((payload_len / 128) as u16 + 1) },
                _ => GsoKind::Ufo { size: gso_size.max(64) },
            };
            let frame = built.checked(&built.frame_with_seed(true), gso, true);
            let bit = |n: u8| caps_bits & (1 << n) != 0;
            let caps = EgressCapabilities {
                checksum: bit(0), tso4: bit(1), tso6: bit(2), uso: bit(3), ufo: bit(4),
                ecn: bit(5), mtu,
            };
            match run(&frame, &caps) {
                Ok((Adapted::PassThrough, out)) => {
                    proptest::prop_assert!(out.is_empty());
                    proptest::prop_assert!(caps.checksum);
                    proptest::prop_assert!(!cwr || caps.ecn, "ECN frame to a port without ECN");
                    proptest::prop_assert_eq!(gso.fit_mtu(&built.layout, mtu).unwrap(), gso);
                }
                Ok((Adapted::Segmented(_), out)) => {
                    let mut data = Vec::new();
                    for (i, segment) in out.iter().enumerate() {
                        let info = check_segment(segment);
                        proptest::prop_assert!(info.l3_len <= usize::from(mtu));
                        if let Some(tcp) = &info.tcp {
                            proptest::prop_assert_eq!(tcp.cwr, cwr && i == 0, "CWR on segment 1 only");
                        }
                        data.extend_from_slice(&info.payload);
                    }
                    if kind < 3 {
                        proptest::prop_assert_eq!(&data[..], built.payload());
                    }
                }
                Ok((Adapted::Checksummed, _)) => proptest::prop_assert!(false, "GSO frame only checksummed"),
                Err(err) => {
                    let name = err.counter();
                    proptest::prop_assert!(
                        name == "segment_datagram_over_mtu" || name == "segment_mtu_too_small"
                            || name == "segment_first_fragment_too_small",
                        "{}", err
                    );
                }
            }
        }
    }
}
