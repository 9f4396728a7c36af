//! Software segmentation: one large frame with a [`GsoKind`] in, the frames
//! the wire would carry out.
//!
//! * TSO ([`GsoKind::Tcp`]) over IPv4 and IPv6: every segment gets its own
//!   IPv4 total length, identification (first id + i, unless
//!   [`SegmentParams::fixed_ipv4_id`]) and header checksum, or its own IPv6
//!   payload length (extension headers included); TCP sequence number
//!   `first + i * mss`, FIN and PSH on the last segment only, CWR on the first
//!   only (whether or not the guest set the ECN bit, as Linux's
//!   `tcp_gso_segment` does), and a checksum over a pseudo-header built from
//!   the addresses and this segment's length (the guest's seed in the
//!   checksum field is ignored, so the Linux and DPDK seed conventions both
//!   work).
//! * USO ([`GsoKind::UdpL4`]): every segment is a datagram with its own UDP
//!   length and checksum (a computed 0 is sent as 0xffff).
//! * UFO ([`GsoKind::Ufo`]): the datagram is checksummed whole, then
//!   IP-fragmented: offsets in 8-byte units, every fragment but the last a
//!   multiple of 8 bytes, MF on all but the last, one identification. IPv6
//!   fragments get a fragment header after the unfragmentable part (the IPv6
//!   header, hop-by-hop options and routing headers) with the identification
//!   from [`SegmentParams::ipv6_fragment_id`].
//!
//! VLAN and QinQ tags are copied onto every segment: all offsets come from the
//! [`FrameLayout`]. Lengths are computed from the frame, never from the
//! (possibly stale or zero) length fields of the large frame.
//!
//! The switch reaches the segmenter through [`crate::adapt::adapt`], which
//! takes a [`CheckedFrame`](crate::CheckedFrame): there the layout is the
//! one validation found in those very bytes. The [`Segmenter`] itself takes
//! a layout and a [`GsoKind`], for callers that parse frames themselves
//! (the pcap re-segmenter, benchmarks, fuzz targets), and a layout found in
//! other bytes, or written by hand, can reach it. That is safe: before
//! anything is read the layout is checked against the frame it is given
//! (offsets in order and within the frame, header lengths its protocols
//! allow), and every later access either stays within the headers that
//! check measured or is bounds-checked itself, so a layout that does not
//! fit the bytes is a [`SegmentError`], never a panic or a read outside
//! the frame. A layout that fits the bytes but was found in
//! others gives segments cut from the bytes given, as that layout says.
//!
//! There is one output mode: [`Segmenter::segment_copy`] writes each segment
//! as one contiguous frame into a caller-owned [`SegmentSink`], copying the
//! payload and checksumming it in the same pass, so each payload byte is read
//! once and written once. The sink decides where the segments land: one over
//! the buffers a port sends from, or a guest receives into, makes that copy
//! the only one. Handing out the payload instead as slices of the original
//! frame, for a port that gathers, was measured against this on a TAP device
//! and lost: it saves one memcpy of the frame (a few microseconds for 64
//! KiB), but the kernel's write of three buffers per segment costs more than
//! that, and CPU time per frame came out 1–2% higher.
//!
//! The [`Segmenter`] and a [`SegmentList`] sink keep their buffers between
//! frames, so the steady state allocates nothing per segment. A sink that
//! can hold a frame's segments back to back takes TSO and USO output as one
//! run ([`SegmentSink::contiguous_run`]; [`SegmentList`] does): the segmenter
//! then fills every segment in one loop, without a call to the sink per
//! segment.
//!
//! ```
//! use vswitch_offload::segment::{SegmentList, SegmentParams, Segmenter};
//! use vswitch_offload::{FrameLayout, GsoKind, L3Kind, L4Kind};
//!
//! // Ethernet + IPv4 (20) + TCP (20) + 3000 payload bytes.
//! let mut frame = vec![0u8; 14 + 20 + 20 + 3000];
//! frame[12..14].copy_from_slice(&[0x08, 0x00]);
//! frame[14] = 0x45; // version 4, ihl 5
//! frame[14 + 9] = 6; // TCP
//! frame[34 + 12] = 5 << 4; // data offset 5
//! let layout = FrameLayout {
//!     vlan_tags: 0,
//!     l3_offset: 14,
//!     l3: L3Kind::Ipv4,
//!     l4_offset: 34,
//!     l4: Some(L4Kind::Tcp),
//!     payload_offset: 54,
//!     ipv6_fragment_header: None,
//!     is_fragment: false,
//! };
//! let mut segmenter = Segmenter::new(SegmentParams::default());
//! let mut out = SegmentList::new();
//! let gso = GsoKind::Tcp { mss: 1448, ecn: false };
//! let summary = segmenter.segment_copy(&frame, &layout, gso, &mut out).unwrap();
//! assert_eq!(summary.segments, 3);
//! assert_eq!(out.get(0).unwrap().len(), 54 + 1448);
//! assert_eq!(out.get(2).unwrap().len(), 54 + 3000 - 2 * 1448);
//! ```

mod field;
mod l4;
mod list;
mod ufo;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::ops::Range;

use crate::checksum::Checksum;
use crate::layout::{FrameLayout, L3Kind, L4Kind};
use crate::plan::GsoKind;

pub use list::SegmentList;

/// Why a frame could not be segmented. Each variant has a stable counter
/// name ([`SegmentError::counter`]) for drop statistics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// Segmentation was asked for a frame without GSO.
    #[error("expected a GSO kind (TCP, UDP_L4 or UDP), found none")]
    NotGso,
    /// The layout does not carry the protocol the GSO kind needs.
    #[error("{gso} segmentation needs {expected}, the frame carries {found}")]
    LayoutMismatch {
        /// The GSO kind asked for.
        gso: &'static str,
        /// What it needs.
        expected: &'static str,
        /// What the layout says the frame carries.
        found: &'static str,
    },
    /// The layout's offsets are out of order or beyond the frame.
    #[error(
        "headers must end within the frame in order (l3 {l3_offset} <= l4 {l4_offset} <= payload {payload_offset} <= frame length {frame_len})"
    )]
    HeadersBeyondFrame {
        /// Offset of the IP header.
        l3_offset: usize,
        /// Offset of the transport header.
        l4_offset: usize,
        /// Offset of the transport payload.
        payload_offset: usize,
        /// Length of the frame.
        frame_len: usize,
    },
    /// A header length the layout gives is impossible for its protocol.
    #[error(
        "expected a {header} header of {min} to {max} bytes in steps of {step}, found {len} bytes"
    )]
    HeaderLength {
        /// The header (`IPv4`, `IPv6 with extensions`, `TCP`, `UDP`).
        header: &'static str,
        /// The length the layout gives.
        len: usize,
        /// The smallest valid length.
        min: usize,
        /// The largest valid length.
        max: usize,
        /// Valid lengths are multiples of this.
        step: usize,
    },
    /// A header field lies beyond its buffer (the layout is inconsistent).
    #[error("a {width}-byte field at offset {offset} lies beyond the {len}-byte buffer")]
    FieldOutOfBounds {
        /// Offset of the field.
        offset: usize,
        /// Width of the field in bytes.
        width: usize,
        /// Length of the buffer.
        len: usize,
    },
    /// The segment size is too small to make progress.
    #[error("segment size must be at least {min} bytes, found {size}")]
    SegmentSizeTooSmall {
        /// The size asked for.
        size: usize,
        /// The smallest usable size.
        min: usize,
    },
    /// A segment would not fit the 16-bit length fields of IP or UDP.
    #[error("a segment's {field} would be {len}, more than the maximum {max}")]
    SegmentTooLong {
        /// The length field (`IPv4 total length`, `IPv6 payload length`, `UDP length`).
        field: &'static str,
        /// The length it would need.
        len: usize,
        /// The largest value the field holds.
        max: usize,
    },
    /// The frame is already an IP fragment; it cannot be segmented again.
    #[error("expected an unfragmented IP packet, found a fragment")]
    AlreadyFragmented,
    /// The IPv6 extension-header chain does not end at the transport header.
    #[error("IPv6 extension headers must end at the transport header (offset {l4_offset}), they end at {end}")]
    Ipv6ChainInconsistent {
        /// Where the chain ends when walked.
        end: usize,
        /// Where the layout says the transport header is.
        l4_offset: usize,
    },
    /// The first IPv6 fragment cannot hold the headers that must be in it.
    #[error("the first fragment must hold {headers} bytes of headers, it holds {size}")]
    FirstFragmentTooSmall {
        /// Fragment payload bytes.
        size: usize,
        /// Bytes of extension and UDP headers that must be in the first fragment.
        headers: usize,
    },
    /// The MTU leaves no room for payload after the headers.
    #[error("MTU {mtu} leaves no payload room after {headers} bytes of IP and transport headers")]
    MtuTooSmall {
        /// The egress MTU.
        mtu: usize,
        /// IP plus transport header bytes (plus a fragment header for IPv6 UFO).
        headers: usize,
    },
    /// A USO datagram is larger than the MTU: datagram boundaries belong to the
    /// application and cannot be moved.
    #[error("UDP datagrams of {l3_len} bytes (IP length) exceed the MTU {mtu}")]
    DatagramOverMtu {
        /// IP length of a full-size datagram.
        l3_len: usize,
        /// The egress MTU.
        mtu: usize,
    },
    /// The sink had no room for another segment.
    #[error("the output sink has no room for another segment")]
    SinkFull,
    /// The sink returned a buffer of the wrong length.
    #[error("the output sink returned a {found}-byte buffer, expected {expected}")]
    SinkBufferLength {
        /// The length asked for.
        expected: usize,
        /// The length returned.
        found: usize,
    },
}

impl SegmentError {
    /// A stable name for the drop counter of this error.
    pub fn counter(&self) -> &'static str {
        match self {
            SegmentError::NotGso => "segment_not_gso",
            SegmentError::LayoutMismatch { .. } => "segment_layout_mismatch",
            SegmentError::HeadersBeyondFrame { .. } => "segment_headers_beyond_frame",
            SegmentError::HeaderLength { .. } => "segment_header_length",
            SegmentError::FieldOutOfBounds { .. } => "segment_field_out_of_bounds",
            SegmentError::SegmentSizeTooSmall { .. } => "segment_size_too_small",
            SegmentError::SegmentTooLong { .. } => "segment_too_long",
            SegmentError::AlreadyFragmented => "segment_already_fragmented",
            SegmentError::Ipv6ChainInconsistent { .. } => "segment_ipv6_chain_inconsistent",
            SegmentError::FirstFragmentTooSmall { .. } => "segment_first_fragment_too_small",
            SegmentError::MtuTooSmall { .. } => "segment_mtu_too_small",
            SegmentError::DatagramOverMtu { .. } => "segment_datagram_over_mtu",
            SegmentError::SinkFull => "segment_sink_full",
            SegmentError::SinkBufferLength { .. } => "segment_sink_buffer_length",
        }
    }
}

/// The sink had no room for another segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the output sink has no room for another segment")]
pub struct SinkFull;

/// Where segments go. The caller owns it and reuses it across frames, so a
/// sink backed by a pool or a reused buffer allocates nothing per segment.
///
/// Segments arrive in order. If segmentation fails half-way, the segments
/// already delivered are incomplete output and should be discarded.
pub trait SegmentSink {
    /// A buffer of exactly `len` bytes for the next segment, written as one
    /// contiguous frame. The segmenter fills it completely (headers, payload
    /// and checksums) before it asks for anything else.
    fn contiguous(&mut self, len: usize) -> Result<&mut [u8], SinkFull>;

    /// The next segments all at once as contiguous frames back to back, for
    /// a sink that can keep them so: `payload_len` (non-zero) bytes of
    /// payload are cut into consecutive pieces of `size` bytes (the last one
    /// shorter if it must), and each piece follows `header_len` bytes of
    /// headers, as if [`contiguous`](Self::contiguous) had been called for
    /// each segment in order.
    ///
    /// Returns one buffer of `count * header_len + payload_len` bytes, where
    /// `count` is `payload_len.div_ceil(size)`: segment `i` starts at
    /// `i * (header_len + size)`. The segmenter fills it completely before it
    /// asks for anything else.
    ///
    /// The default returns `Ok(None)`: the segmenter asks for each segment
    /// with `contiguous` instead.
    fn contiguous_run(
        &mut self,
        header_len: usize,
        payload_len: usize,
        size: usize,
    ) -> Result<Option<&mut [u8]>, SinkFull> {
        let _ = (header_len, payload_len, size);
        Ok(None)
    }
}

/// The layout of the buffer [`SegmentSink::contiguous_run`] returns: its
/// length, and where each segment lies in it, in order. `size` must not be
/// zero.
///
/// ```
/// use vswitch_offload::segment::run_layout;
///
/// // 10 bytes of payload in pieces of 4, each behind 2 bytes of headers.
/// let (len, segments) = run_layout(2, 10, 4);
/// assert_eq!(len, 16);
/// assert_eq!(segments.collect::<Vec<_>>(), [0..6, 6..12, 12..16]);
/// ```
pub fn run_layout(
    header_len: usize,
    payload_len: usize,
    size: usize,
) -> (usize, impl Iterator<Item = Range<usize>>) {
    let count = payload_len.div_ceil(size);
    let len = count * header_len + payload_len;
    let stride = header_len + size;
    let segments = (0..count).map(move |i| {
        let first = i * stride;
        first..(first + stride).min(len)
    });
    (len, segments)
}

/// Per-switch choices that the frame does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SegmentParams {
    /// Keep the IPv4 identification of the large frame on every TSO/USO
    /// segment (Linux `SKB_GSO_TCP_FIXEDID`) instead of first id + i.
    pub fixed_ipv4_id: bool,
    /// The identification written into the fragment header of IPv6 UFO
    /// fragments. The caller picks it (for example from a per-destination
    /// counter); the segmenter has no state of its own.
    pub ipv6_fragment_id: u32,
}

/// What one call produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentSummary {
    /// Number of segments delivered to the sink.
    pub segments: usize,
    /// Total bytes of all segments (headers and payload).
    pub bytes: usize,
}

/// The segmentation engine. It holds scratch header buffers that are reused
/// from frame to frame; keep one per worker.
#[derive(Debug, Clone, Default)]
pub struct Segmenter {
    params: SegmentParams,
    headers: Vec<u8>,
    template: Vec<u8>,
    /// Where [`crate::adapt::adapt`] gathers a frame whose payload is
    /// still lent before cutting it: reused, so that a lent frame costs a
    /// copy, not an allocation and the page faults of fresh memory.
    pub(crate) whole: Vec<u8>,
}

impl Segmenter {
    /// A segmenter with the given parameters.
    pub fn new(params: SegmentParams) -> Self {
        Segmenter {
            params,
            headers: Vec::with_capacity(256),
            template: Vec::with_capacity(256),
            whole: Vec::new(),
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> SegmentParams {
        self.params
    }

    /// Changes the parameters (for example the next IPv6 fragment id).
    pub fn set_params(&mut self, params: SegmentParams) {
        self.params = params;
    }

    /// Segments `frame` as `gso` asks, writing every segment as a contiguous
    /// frame into `sink` (copy fused with checksum).
    ///
    /// `layout` should describe `frame` (as produced by the parser or by
    /// validation); offsets that do not fit the frame are reported as
    /// errors, never a panic (see the module documentation).
    pub fn segment_copy<S: SegmentSink + ?Sized>(
        &mut self,
        frame: &[u8],
        layout: &FrameLayout,
        gso: GsoKind,
        sink: &mut S,
    ) -> Result<SegmentSummary, SegmentError> {
        let offsets = Offsets::check(frame, layout)?;
        if layout.is_fragment {
            return Err(SegmentError::AlreadyFragmented);
        }
        match gso {
            GsoKind::None => Err(SegmentError::NotGso),
            GsoKind::Tcp { mss, .. } => {
                offsets.expect_l4(L4Kind::Tcp, "TCP")?;
                l4::segment(self, frame, &offsets, L4Kind::Tcp, usize::from(mss), sink)
            }
            GsoKind::UdpL4 { size } => {
                offsets.expect_l4(L4Kind::Udp, "UDP_L4")?;
                l4::segment(self, frame, &offsets, L4Kind::Udp, usize::from(size), sink)
            }
            GsoKind::Ufo { size } => {
                offsets.expect_l4(L4Kind::Udp, "UDP")?;
                ufo::fragment(
                    &mut self.headers,
                    &mut self.template,
                    self.params,
                    frame,
                    &offsets,
                    usize::from(size),
                    sink,
                )
            }
        }
    }
}

impl GsoKind {
    /// The segmentation to apply so that every segment fits an egress `mtu`
    /// (largest IP packet): TCP gets a smaller MSS, UFO smaller fragments
    /// (a multiple of 8, after room for an IPv6 fragment header). USO
    /// datagrams cannot shrink (their boundaries belong to the application),
    /// so a USO frame whose datagrams exceed the MTU is an error.
    pub fn fit_mtu(self, layout: &FrameLayout, mtu: u16) -> Result<GsoKind, SegmentError> {
        let mtu = usize::from(mtu);
        let out_of_order = || SegmentError::HeadersBeyondFrame {
            l3_offset: layout.l3_offset,
            l4_offset: layout.l4_offset,
            payload_offset: layout.payload_offset,
            frame_len: 0,
        };
        let l3_len = layout
            .l4_offset
            .checked_sub(layout.l3_offset)
            .ok_or_else(out_of_order)?;
        let l4_len = layout
            .payload_offset
            .checked_sub(layout.l4_offset)
            .ok_or_else(out_of_order)?;
        match self {
            GsoKind::None => Ok(GsoKind::None),
            GsoKind::Tcp { mss, ecn } => {
                let headers = l3_len + l4_len;
                let room = mtu
                    .checked_sub(headers)
                    .filter(|room| *room > 0)
                    .ok_or(SegmentError::MtuTooSmall { mtu, headers })?;
                let mss = usize::from(mss).min(room);
                Ok(GsoKind::Tcp {
                    mss: u16::try_from(mss).unwrap_or(u16::MAX),
                    ecn,
                })
            }
            GsoKind::UdpL4 { size } => {
                let datagram = l3_len + 8 + usize::from(size);
                if datagram > mtu {
                    Err(SegmentError::DatagramOverMtu {
                        l3_len: datagram,
                        mtu,
                    })
                } else {
                    Ok(self)
                }
            }
            GsoKind::Ufo { size } => {
                let headers = match layout.l3 {
                    L3Kind::Ipv4 => l3_len,
                    L3Kind::Ipv6 => l3_len + 8,
                };
                let room = mtu.saturating_sub(headers) & !7;
                if room < 8 {
                    return Err(SegmentError::MtuTooSmall { mtu, headers });
                }
                let size = usize::from(size).min(room);
                Ok(GsoKind::Ufo {
                    size: u16::try_from(size).unwrap_or(u16::MAX),
                })
            }
        }
    }
}

/// The layout's offsets, checked once against the frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offsets {
    pub(crate) l3: usize,
    pub(crate) l4: usize,
    pub(crate) payload: usize,
    pub(crate) l3_kind: L3Kind,
    pub(crate) l4_kind: Option<L4Kind>,
}

impl Offsets {
    pub(crate) fn check(frame: &[u8], layout: &FrameLayout) -> Result<Self, SegmentError> {
        let minimal_ip = match layout.l3 {
            L3Kind::Ipv4 => 20,
            L3Kind::Ipv6 => 40,
        };
        let in_order = layout.l3_offset.checked_add(minimal_ip) <= Some(layout.l4_offset)
            && layout.l4_offset <= layout.payload_offset
            && layout.payload_offset <= frame.len();
        if !in_order {
            return Err(SegmentError::HeadersBeyondFrame {
                l3_offset: layout.l3_offset,
                l4_offset: layout.l4_offset,
                payload_offset: layout.payload_offset,
                frame_len: frame.len(),
            });
        }
        // Header sums are added as 16-bit words, so every header must have
        // the even length its protocol guarantees.
        let l3_len = layout.l4_offset - layout.l3_offset;
        let (header, max, step) = match layout.l3 {
            L3Kind::Ipv4 => ("IPv4", 60, 4),
            L3Kind::Ipv6 => ("IPv6 with extensions", usize::MAX, 8),
        };
        check_header_len(header, l3_len, minimal_ip, max, step)?;
        let l4_len = layout.payload_offset - layout.l4_offset;
        match layout.l4 {
            Some(L4Kind::Tcp) => check_header_len("TCP", l4_len, 20, 60, 4)?,
            Some(L4Kind::Udp) => check_header_len("UDP", l4_len, 8, 8, 8)?,
            None => {}
        }
        Ok(Offsets {
            l3: layout.l3_offset,
            l4: layout.l4_offset,
            payload: layout.payload_offset,
            l3_kind: layout.l3,
            l4_kind: layout.l4,
        })
    }

    fn expect_l4(&self, kind: L4Kind, gso: &'static str) -> Result<(), SegmentError> {
        if self.l4_kind == Some(kind) {
            return Ok(());
        }
        let name = |k: Option<L4Kind>| match k {
            Some(L4Kind::Tcp) => "TCP",
            Some(L4Kind::Udp) => "UDP",
            None => "no TCP or UDP header",
        };
        Err(SegmentError::LayoutMismatch {
            gso,
            expected: name(Some(kind)),
            found: name(self.l4_kind),
        })
    }

    /// Length of the IP header with options or extension headers.
    pub(crate) fn l3_len(&self) -> usize {
        self.l4 - self.l3
    }

    /// Length of the transport header.
    pub(crate) fn l4_len(&self) -> usize {
        self.payload - self.l4
    }
}

fn check_header_len(
    header: &'static str,
    len: usize,
    min: usize,
    max: usize,
    step: usize,
) -> Result<(), SegmentError> {
    if len < min || len > max || !len.is_multiple_of(step) {
        return Err(SegmentError::HeaderLength {
            header,
            len,
            min,
            max,
            step,
        });
    }
    Ok(())
}

/// The value to store for a transport checksum.
pub(crate) fn finish_l4(sum: Checksum, zero_as_ffff: bool) -> u16 {
    let value = sum.finish();
    if value == 0 && zero_as_ffff {
        0xffff
    } else {
        value
    }
}

/// Whether [`emit`] sums a segment's payload for its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadSum {
    /// The headers do not depend on the payload (IP fragments).
    Unused,
    /// Summed while the payload is copied.
    Compute,
}

/// Writes one segment into `sink`: `template` copied into the sink's
/// buffer, then `frame[payload]` follows, and `patch` writes this segment's
/// fields into the copied headers, given the folded sum of the payload (0
/// for [`PayloadSum::Unused`]). Returns the segment's length.
///
/// The fields are written into the destination, never into a scratch
/// buffer that is then copied: reading back bytes just written with narrow
/// stores stalls the wide loads of the copy.
pub(crate) fn emit<S: SegmentSink + ?Sized>(
    sink: &mut S,
    frame: &[u8],
    template: &[u8],
    payload: Range<usize>,
    sum: PayloadSum,
    patch: impl FnOnce(&mut [u8], u16) -> Result<(), SegmentError>,
) -> Result<usize, SegmentError> {
    let src = frame
        .get(payload.clone())
        .ok_or(SegmentError::FieldOutOfBounds {
            offset: payload.start,
            width: payload.end.saturating_sub(payload.start),
            len: frame.len(),
        })?;
    let header_len = template.len();
    let total = header_len + src.len();
    let buf = sink
        .contiguous(total)
        .map_err(|SinkFull| SegmentError::SinkFull)?;
    if buf.len() != total {
        return Err(SegmentError::SinkBufferLength {
            expected: total,
            found: buf.len(),
        });
    }
    let (head, body) = buf.split_at_mut(header_len);
    copy_headers(head, template);
    let payload_sum = match sum {
        PayloadSum::Compute => Checksum::new().copy_and_add(body, src).sum(),
        PayloadSum::Unused => {
            body.copy_from_slice(src);
            0
        }
    };
    patch(head, payload_sum)?;
    Ok(total)
}

/// One buffer from `sink` for all the segments cut from `payload_len` bytes
/// of payload in pieces of `size` bytes, each after `header_len` bytes of
/// headers, if the sink takes runs ([`SegmentSink::contiguous_run`]),
/// checked to have the length the run needs. `None` for an empty payload or
/// a sink without runs.
pub(crate) fn contiguous_run<S: SegmentSink + ?Sized>(
    sink: &mut S,
    header_len: usize,
    payload_len: usize,
    size: usize,
) -> Result<Option<&mut [u8]>, SegmentError> {
    if payload_len == 0 || size == 0 {
        return Ok(None);
    }
    let expected = payload_len.div_ceil(size) * header_len + payload_len;
    match sink.contiguous_run(header_len, payload_len, size) {
        Ok(Some(buf)) if buf.len() != expected => Err(SegmentError::SinkBufferLength {
            expected,
            found: buf.len(),
        }),
        Ok(buf) => Ok(buf),
        Err(SinkFull) => Err(SegmentError::SinkFull),
    }
}

/// Copies a header block (tens of bytes) with fixed-size moves the compiler
/// inlines, instead of a call to the general `memcpy`: two overlapping
/// copies cover any length in a power-of-two band.
///
/// # Panics
/// If `dst` and `src` differ in length (as `copy_from_slice` does).
#[inline]
pub(crate) fn copy_headers(dst: &mut [u8], src: &[u8]) {
    let len = src.len();
    if dst.len() != len {
        dst.copy_from_slice(src);
        return;
    }
    macro_rules! overlapping {
        ($width:literal) => {{
            dst[..$width].copy_from_slice(&src[..$width]);
            dst[len - $width..].copy_from_slice(&src[len - $width..]);
        }};
    }
    match len {
        16..=32 => overlapping!(16),
        33..=64 => overlapping!(32),
        65..=128 => overlapping!(64),
        _ => dst.copy_from_slice(src),
    }
}

/// Checks that a length fits its 16-bit field.
pub(crate) fn fits_u16(field: &'static str, len: usize) -> Result<u16, SegmentError> {
    u16::try_from(len).map_err(|_| SegmentError::SegmentTooLong {
        field,
        len,
        max: usize::from(u16::MAX),
    })
}
