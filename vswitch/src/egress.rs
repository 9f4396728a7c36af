//! The egress adaptation: the one function every frame passes through
//! before a port's send, which makes the frame fit what that port takes.
//!
//! It takes a [`CheckedFrame`]: the frame's virtio-net header was validated
//! against its bytes once, at ingress, so nothing here parses it again and
//! an unchecked header cannot reach the offload engine.
//!
//! A frame with no offload work left (no GSO, no partial checksum) only has
//! to fit the port's MTU. Any other frame goes through the offload engine
//! ([`vswitch_offload::adapt`]): it passes through with its header when the
//! port does the remaining work itself, has its checksum completed when the
//! port cannot complete it, or is segmented to the port's MTU with every
//! checksum computed in software. So a partial checksum never reaches a port
//! that cannot complete it, and a TSO frame larger than the egress MTU is
//! segmented, never dropped.
//!
//! Segments are written into large shared buffers that they are cut from as
//! [`Bytes`](bytes::Bytes), so a 64 KiB frame cut in 45 costs no allocation per segment.

use vswitch_offload::adapt::{AdaptError, Adapted};
use vswitch_offload::segment::Segmenter;
use vswitch_offload::{CheckError, CheckedFrame, EgressCapabilities, Packet};
use vswitch_ports::buffer::{ChunkPool, PacketSink};

use crate::drop::DropReason;

/// Work the egress path did in software on one frame, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EgressWork {
    /// Frames cut into segments in software.
    pub segmented: u64,
    /// Segments produced by software segmentation.
    pub segments: u64,
    /// Checksums computed in software.
    pub checksums: u64,
    /// Frames merged into others by software coalescing.
    pub coalesced: u64,
    /// Frames whose payload another guest lent, copied into host memory
    /// for a port that cannot take lent frames.
    pub lent_copied: u64,
}

/// Why a frame cannot leave through a port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// A frame with nothing left to do is larger than the port's MTU.
    #[error("IP packet of {l3_len} bytes exceeds the egress MTU of {mtu}")]
    ExceedsMtu {
        /// Length from the IP header on.
        l3_len: usize,
        /// The port's MTU.
        mtu: u16,
    },
    /// The frame did not pass the ingress check (only from
    /// [`adapt_for_egress`], which checks a raw packet first).
    #[error("frame refused: {0}")]
    Check(#[from] CheckError),
    /// The offload engine refused the frame.
    #[error("offload failed: {0}")]
    Offload(#[from] AdaptError),
}

impl EgressError {
    /// The counter this error is counted under.
    pub fn reason(&self) -> DropReason {
        match self {
            EgressError::ExceedsMtu { .. }
            | EgressError::Offload(AdaptError::FrameOverMtu { .. }) => DropReason::ExceedsMtu,
            EgressError::Check(err) => DropReason::from(err),
            EgressError::Offload(_) => DropReason::OffloadFailed,
        }
    }
}

/// The per-worker state of the egress path: the segmenter's scratch
/// buffers and the shared segment buffer. Keep one per worker thread.
#[derive(Debug, Default)]
pub struct EgressEngine {
    segmenter: Segmenter,
    sink: PacketSink,
}

impl EgressEngine {
    /// A fresh engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// The recycled chunks large frames are written into: the segments of
    /// a large frame, and merged frames ([`crate::coalesce`]).
    pub(crate) fn chunk_pool(&mut self) -> &mut ChunkPool {
        self.sink.pool_mut()
    }
}

/// Checks a raw packet as ingress would ([`CheckedFrame::check`]), then
/// adapts it ([`adapt_checked`]): for callers that hold a packet that did
/// not come through the switch's ingress (a capture being re-segmented).
pub fn adapt_for_egress(
    engine: &mut EgressEngine,
    packet: Packet,
    caps: &EgressCapabilities,
    out: &mut Vec<Packet>,
) -> Result<EgressWork, EgressError> {
    adapt_checked(engine, CheckedFrame::check(packet)?, caps, out)
}

/// The one check a frame with nothing left to do (no GSO, no partial
/// checksum) needs before a port with `caps`: its IP packet fits the MTU.
pub fn fits_mtu(frame: &CheckedFrame, caps: &EgressCapabilities) -> Result<(), EgressError> {
    let l3_len = frame.len() - frame.l2().l3_offset;
    if l3_len > usize::from(caps.mtu) {
        return Err(EgressError::ExceedsMtu {
            l3_len,
            mtu: caps.mtu,
        });
    }
    Ok(())
}

/// Adapts `frame` to an egress port with capabilities `caps`. The frames
/// to send are appended to `out`: the frame itself, or the plain frames
/// made from it. Returns the software work done.
pub fn adapt_checked(
    engine: &mut EgressEngine,
    frame: CheckedFrame,
    caps: &EgressCapabilities,
    out: &mut Vec<Packet>,
) -> Result<EgressWork, EgressError> {
    if !frame.hdr().has_offload_work() {
        fits_mtu(&frame, caps)?;
        out.push(frame.into_packet());
        return Ok(EgressWork::default());
    }
    let EgressEngine { segmenter, sink } = engine;
    match sink.adapt(segmenter, &frame, caps)? {
        Adapted::PassThrough => {
            out.push(frame.into_packet());
            Ok(EgressWork::default())
        }
        Adapted::Checksummed => {
            out.append(sink.out());
            Ok(EgressWork {
                checksums: 1,
                ..EgressWork::default()
            })
        }
        Adapted::Segmented(summary) => {
            out.append(sink.out());
            Ok(EgressWork {
                segmented: 1,
                segments: summary.segments as u64,
                // Every segment has its transport checksum (and, over IPv4,
                // its header checksum) computed in software.
                checksums: summary.segments as u64,
                coalesced: 0,
                lent_copied: 0,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drop::HeaderDrop;
    use vswitch_offload::checksum::{pseudo_header_ipv4, Checksum};
    use vswitch_offload::testing::{tcp_flags, FrameBuilder};
    use vswitch_offload::virtio::GSO_TCPV4;
    use vswitch_offload::virtio::{FLAG_NEEDS_CSUM, GSO_NONE};
    use vswitch_offload::{FrameLayout, VirtioNetHdr};

    /// A TSO frame: untagged TCP/IPv4 with `payload` bytes, its checksum
    /// partial (seeded with the pseudo-header sum over the full TCP length).
    fn tso(payload: usize, mss: u16) -> Packet {
        FrameBuilder::tcp4([198, 18, 0, 1], [198, 18, 0, 2])
            .ports(1000, 2000)
            .tcp_flags(tcp_flags::PSH | tcp_flags::ACK)
            .payload_with(payload, |i| (i * 7 % 251) as u8)
            .gso(mss)
            .packet()
    }

    fn tcp_checksum_ok(frame: &[u8]) -> bool {
        let layout = FrameLayout::parse(frame).unwrap();
        let tcp = &frame[layout.l4_offset..];
        let mut sum = pseudo_header_ipv4([198, 18, 0, 1], [198, 18, 0, 2], 6, tcp.len() as u16);
        sum.add_bytes(tcp);
        sum.finish() == 0
    }

    #[test]
    fn plain_frames_pass_when_they_fit() {
        let mut engine = EgressEngine::new();
        let none = EgressCapabilities::none(1500);
        let mut out = Vec::new();
        let mut frame = vec![0u8; 14 + 1500];
        frame[12] = 0x08;
        adapt_for_egress(&mut engine, Packet::plain(frame.clone()), &none, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        frame.push(0);
        let err = adapt_for_egress(&mut engine, Packet::plain(frame), &none, &mut out).unwrap_err();
        assert_eq!(err.reason(), DropReason::ExceedsMtu);
    }

    #[test]
    fn tso_frames_are_segmented_for_a_port_without_offloads() {
        // A frame below POOLED_FRAME, cut one segment at a time into the
        // shared buffer; a large one written as one run into its own chunk;
        // and 650 segments whose run needs more than a chunk holds.
        for (payload_len, mss) in [(10_000, 1460u16), (44 * 1448 + 700, 1448), (65_000, 100)] {
            let mut engine = EgressEngine::new();
            let mut out = Vec::new();
            let packet = tso(payload_len, mss);
            let original = packet.data.clone();
            let work = adapt_for_egress(
                &mut engine,
                packet,
                &EgressCapabilities::none(1500),
                &mut out,
            )
            .unwrap();
            let count = payload_len.div_ceil(usize::from(mss));
            assert_eq!(work.segments, count as u64);
            assert_eq!(out.len(), count);
            let mut joined = Vec::with_capacity(payload_len);
            for (i, seg) in out.iter().enumerate() {
                assert_eq!(
                    seg.hdr,
                    VirtioNetHdr::default(),
                    "segments are plain frames"
                );
                let expected = usize::from(mss).min(payload_len - i * usize::from(mss));
                assert_eq!(seg.data.len(), 54 + expected, "segment {i} of mss {mss}");
                assert!(seg.data.len() - 14 <= 1500);
                assert!(tcp_checksum_ok(&seg.data), "segment {i} of mss {mss}");
                assert_eq!(Checksum::new().add_bytes(&seg.data[14..34]).finish(), 0);
                joined.extend_from_slice(&seg.data[54..]);
            }
            assert_eq!(joined, original[54..], "payload conserved");
        }
    }

    #[test]
    fn a_chunk_is_reused_once_its_segments_are_gone_and_never_before() {
        let mut engine = EgressEngine::new();
        let none = EgressCapabilities::none(1500);
        let mut first = Vec::new();
        adapt_for_egress(&mut engine, tso(40_000, 1448), &none, &mut first).unwrap();
        let copy: Vec<Vec<u8>> = first.iter().map(|p| p.data.to_vec()).collect();
        // While the first frame's segments live, a second frame gets other
        // memory and leaves them as they were.
        let mut second = Vec::new();
        let mut other = tso(40_000, 1448);
        let mut bytes = other.data.to_vec();
        for b in &mut bytes[54..] {
            *b ^= 0xff;
        }
        other.data = bytes.into();
        adapt_for_egress(&mut engine, other, &none, &mut second).unwrap();
        assert_ne!(first[0].data.as_ptr(), second[0].data.as_ptr());
        for (seg, was) in first.iter().zip(&copy) {
            assert_eq!(&seg.data[..], &was[..]);
        }
        // Once they are dropped, the first chunk is taken back as it is.
        let reused = first[0].data.as_ptr();
        drop(first);
        let mut third = Vec::new();
        adapt_for_egress(&mut engine, tso(40_000, 1448), &none, &mut third).unwrap();
        assert_eq!(third[0].data.as_ptr(), reused);
        assert_eq!(third.len(), copy.len());
        for (seg, was) in third.iter().zip(&copy) {
            assert_eq!(&seg.data[..], &was[..]);
            assert!(tcp_checksum_ok(&seg.data));
        }
        let pool = engine.sink.pool();
        assert_eq!((pool.recycled(), pool.allocated()), (1, 2));
    }

    #[test]
    fn only_gso_frames_of_32_kib_and_up_use_pooled_chunks() {
        let none = EgressCapabilities::none(1500);
        let threshold = vswitch_ports::buffer::POOLED_FRAME - 54;
        for (payload, pooled) in [(threshold - 1, 0), (threshold, 1), (60_000, 1)] {
            let mut engine = EgressEngine::new();
            let mut out = Vec::new();
            adapt_for_egress(&mut engine, tso(payload, 1448), &none, &mut out).unwrap();
            assert_eq!(engine.sink.pool().allocated(), pooled, "payload {payload}");
        }
        // A frame that is only checksummed shares the cut buffers.
        let mut engine = EgressEngine::new();
        let mut packet = tso(40_000, 1448);
        packet.hdr.gso_type = GSO_NONE;
        packet.hdr.gso_size = 0;
        let mut out = Vec::new();
        adapt_for_egress(
            &mut engine,
            packet,
            &EgressCapabilities::none(u16::MAX),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert!(tcp_checksum_ok(&out[0].data));
        assert_eq!(engine.sink.pool().allocated(), 0);
    }

    #[test]
    fn tso_frames_pass_to_a_port_that_segments() {
        let mut engine = EgressEngine::new();
        let mut out = Vec::new();
        let work = adapt_for_egress(
            &mut engine,
            tso(10_000, 1448),
            &EgressCapabilities::full(1500),
            &mut out,
        )
        .unwrap();
        assert_eq!(work, EgressWork::default());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].hdr.gso_type, GSO_TCPV4);
    }

    #[test]
    fn a_smaller_egress_mtu_resegments_instead_of_dropping() {
        let mut engine = EgressEngine::new();
        let mut out = Vec::new();
        adapt_for_egress(
            &mut engine,
            tso(9000, 8960),
            &EgressCapabilities::full(1500),
            &mut out,
        )
        .unwrap();
        assert!(out.len() >= 7);
        assert!(out
            .iter()
            .all(|p| p.data.len() - 14 <= 1500 && tcp_checksum_ok(&p.data)));
    }

    #[test]
    fn a_partial_checksum_is_completed_for_a_port_that_cannot() {
        let mut engine = EgressEngine::new();
        let mut out = Vec::new();
        let mut packet = tso(1000, 1448);
        packet.hdr.gso_type = GSO_NONE;
        packet.hdr.gso_size = 0;
        let work = adapt_for_egress(
            &mut engine,
            packet.clone(),
            &EgressCapabilities::none(1500),
            &mut out,
        )
        .unwrap();
        assert_eq!(work.checksums, 1);
        assert!(tcp_checksum_ok(&out[0].data));
        assert_eq!(out[0].hdr, VirtioNetHdr::default());
        out.clear();
        adapt_for_egress(
            &mut engine,
            packet,
            &EgressCapabilities::checksum_only(1500),
            &mut out,
        )
        .unwrap();
        assert_eq!(out[0].hdr.flags, FLAG_NEEDS_CSUM, "the port completes it");
    }

    #[test]
    fn a_header_that_does_not_hold_is_refused_with_its_reason() {
        let mut engine = EgressEngine::new();
        let mut out = Vec::new();
        let mut packet = tso(3000, 1448);
        packet.hdr.gso_size = 0;
        let err = adapt_for_egress(
            &mut engine,
            packet,
            &EgressCapabilities::none(1500),
            &mut out,
        )
        .unwrap_err();
        assert_eq!(err.reason(), HeaderDrop::BadGsoSize.into());
        let mut packet = tso(3000, 1448);
        packet.hdr.csum_start = 60_000;
        let err = adapt_for_egress(
            &mut engine,
            packet,
            &EgressCapabilities::none(1500),
            &mut out,
        )
        .unwrap_err();
        assert_eq!(err.reason(), HeaderDrop::CsumStartBeyondFrame.into());
        assert!(out.is_empty());
    }
}
