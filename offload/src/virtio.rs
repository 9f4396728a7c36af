//! The virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.2 section
//! 5.1.6) that travels before every frame between a guest and the host.
//!
//! Field values here are in host order; the wire format is little-endian.
//!
//! Copy once, validate the copy: a guest can rewrite its memory while the
//! host reads it, so a header checked in guest memory and read again when
//! used can pass the check with one value and be used with another.
//! [`VirtioNetHdr::parse`] copies the fields out of the guest's bytes in one
//! pass into a host-owned value; [`VirtioNetHdr::validate`] takes that copy
//! (`&self`, never guest memory) with the frame and returns an
//! [`OffloadPlan`] built only from the two. The frame too must be in host
//! memory before it is validated.
//!
//! Validation refuses, each with its own [`HdrError`] and [`DropReason`],
//! every header the engine cannot act on safely: the full list is on
//! [`VirtioNetHdr::validate`]. Beyond bounds and protocol agreement, two
//! rules keep a guest from asking for work that no TCP sender asks for: a
//! TCP GSO frame's MSS must be at least Linux's minimum ([`MIN_TCP_MSS`],
//! 88 bytes), so one 64 kB descriptor cannot become tens of thousands of
//! segments; and its TCP header must not carry SYN or RST, which the
//! segmenter would copy onto every segment (FIN and PSH are fine: they go
//! on the last segment only, CWR on the first only).
//!
//! ```
//! use vswitch_offload::virtio::{HdrFormat, GSO_TCPV4, FLAG_NEEDS_CSUM};
//! use vswitch_offload::{GsoKind, VirtioNetHdr};
//!
//! // A guest's TCP/IPv4 TSO frame: MSS 1448, checksum left partial.
//! let guest_bytes = [FLAG_NEEDS_CSUM, GSO_TCPV4, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0];
//! let mut frame = vec![0u8; 54 + 4000];
//! frame[12..14].copy_from_slice(&[0x08, 0x00]); // IPv4
//! frame[14] = 0x45;
//! frame[14 + 9] = 6; // TCP
//! frame[34 + 12] = 5 << 4;
//!
//! let (hdr, used) = VirtioNetHdr::parse(&guest_bytes, HdrFormat::V1).unwrap();
//! assert_eq!(used, 12);
//! let plan = hdr.validate(&frame).unwrap();
//! assert_eq!(plan.gso, GsoKind::Tcp { mss: 1448, ecn: false });
//! assert_eq!(plan.layout.unwrap().payload_offset, 54);
//!
//! // gso_size 0 would divide by zero in a segmenter: it is rejected.
//! let mut bad = hdr;
//! bad.gso_size = 0;
//! assert_eq!(bad.validate(&frame).unwrap_err().reason().name(), "bad_gso_size");
//! ```

/// `flags`: the checksum is partial (start at `csum_start`, store at
/// `csum_start + csum_offset`).
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `flags`: receive only, the checksum was already verified.
pub const FLAG_DATA_VALID: u8 = 2;
/// `flags`: receive only, RSC information in `csum_*` fields.
pub const FLAG_RSC_INFO: u8 = 4;

/// `gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 (TSO).
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (UFO).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 (TSO).
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation offload (USO), one datagram per segment.
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP frame has ECN (CWR must go on the first segment only).
pub const GSO_ECN: u8 = 0x80;

/// Size of `virtio_net_hdr_v1` (with `num_buffers`).
pub const HDR_LEN_V1: usize = 12;
/// Size of the legacy `virtio_net_hdr` (without `num_buffers`).
pub const HDR_LEN_LEGACY: usize = 10;

/// A virtio-net header, copied out of guest memory into host memory.
///
/// Copy it once and validate the copy: guest memory can change under the
/// host between two reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VirtioNetHdr {
    /// `FLAG_*` bits.
    pub flags: u8,
    /// `GSO_*` value, possibly with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of all headers: a hint from the guest, never trusted.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    /// Where checksumming starts, from the start of the frame.
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum is stored.
    pub csum_offset: u16,
    /// Number of merged receive buffers (receive side with
    /// `VIRTIO_NET_F_MRG_RXBUF` only).
    pub num_buffers: u16,
}

// ---------------------------------------------------------------------------
// Parsing, emitting and validating the header (copy once, validate the copy:
// see the module documentation). Nothing after `parse` reads the guest's
// header bytes again.
// ---------------------------------------------------------------------------

use thiserror::Error;

use crate::layout::{FrameLayout, L3Kind, L4Kind};
use crate::plan::{GsoKind, OffloadPlan, PartialChecksum};
use crate::wire::ethernet::L2Header;
use crate::wire::{tcp, udp, ParseError};

/// Largest IP packet a GSO frame may carry; the frame may add its link-layer
/// headers on top (reject rule 10).
pub const MAX_L3_LEN: usize = 65535;
/// Most datagrams one `GSO_UDP_L4` frame may be cut into (Linux
/// `UDP_MAX_SEGMENTS`, reject rule 9).
pub const MAX_UDP_L4_SEGMENTS: usize = 128;
/// Smallest `gso_size` accepted for `GSO_TCPV4` and `GSO_TCPV6`: Linux's
/// `TCP_MIN_MSS` (88, in `include/net/tcp.h`), below which no Linux sender
/// goes. Without it `gso_size` 1 would cut one 20 kB frame into 20,000
/// segments (reject rule 2).
pub const MIN_TCP_MSS: u16 = 88;

/// Which layout of the header is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HdrFormat {
    /// `virtio_net_hdr_v1` (12 bytes, with `num_buffers`): virtio 1.0 and
    /// later, or legacy devices with `VIRTIO_NET_F_MRG_RXBUF`.
    V1,
    /// The legacy `virtio_net_hdr` (10 bytes, no `num_buffers`).
    Legacy,
}

impl HdrFormat {
    /// Size of the header in this format.
    pub const fn size(self) -> usize {
        match self {
            HdrFormat::V1 => HDR_LEN_V1,
            HdrFormat::Legacy => HDR_LEN_LEGACY,
        }
    }
}

/// A buffer too short to write a header into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[error("virtio-net header: expected a buffer of {required_len} bytes, found {len}")]
pub struct BufferTooShort {
    /// Bytes the header needs.
    pub required_len: usize,
    /// Bytes in the buffer.
    pub len: usize,
}

/// The short, stable name of a reason to drop a frame, for per-port drop
/// counters. One or more per rule of the reject list of
/// [`VirtioNetHdr::validate`], plus a header shorter than its format. New
/// reasons are added at the end, so existing indices do not move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The virtio-net header itself is cut short.
    ShortVirtioHdr,
    /// Rule 1: unknown `gso_type`.
    UnknownGsoType,
    /// Rule 2: `gso_size` 0 or 0xFFFF with GSO, or a TCP MSS below 88.
    BadGsoSize,
    /// Rule 3: `csum_start` beyond the frame.
    CsumStartBeyondFrame,
    /// Rule 3: the checksum field beyond the frame.
    CsumFieldBeyondFrame,
    /// Rule 4: `csum_offset` not the transport's checksum field.
    BadCsumOffset,
    /// Rule 4: `GSO_UDP_L4` without `NEEDS_CSUM`.
    UdpL4WithoutCsum,
    /// Rule 5: the frame's IP version does not match `gso_type`.
    L3Mismatch,
    /// Rule 5: the frame's transport protocol does not match `gso_type`.
    L4Mismatch,
    /// Rule 6: `csum_start` is not the parsed transport offset.
    CsumStartMismatch,
    /// Rule 7: `csum_start` inside the minimal IP header.
    TransportOffsetTooSmall,
    /// Rule 8: truncated or malformed headers.
    MalformedHeaders,
    /// Rule 9: a `GSO_UDP_L4` frame of more than 128 datagrams.
    TooManySegments,
    /// Rule 9: the ECN bit on a UDP `gso_type`.
    EcnWithUdp,
    /// Rule 10: a frame longer than 65535 bytes plus its link-layer headers.
    FrameTooLong,
    /// Rule 10: an IP fragment with GSO.
    FragmentWithGso,
    /// Rule 12: a TCP GSO frame with SYN or RST.
    SynOrRstWithGso,
}

impl DropReason {
    /// Every reason, in counter order (`ALL[r.index()] == r`).
    pub const ALL: [DropReason; 17] = [
        DropReason::ShortVirtioHdr,
        DropReason::UnknownGsoType,
        DropReason::BadGsoSize,
        DropReason::CsumStartBeyondFrame,
        DropReason::CsumFieldBeyondFrame,
        DropReason::BadCsumOffset,
        DropReason::UdpL4WithoutCsum,
        DropReason::L3Mismatch,
        DropReason::L4Mismatch,
        DropReason::CsumStartMismatch,
        DropReason::TransportOffsetTooSmall,
        DropReason::MalformedHeaders,
        DropReason::TooManySegments,
        DropReason::EcnWithUdp,
        DropReason::FrameTooLong,
        DropReason::FragmentWithGso,
        DropReason::SynOrRstWithGso,
    ];

    /// Number of reasons: the size of a per-port counter array.
    pub const COUNT: usize = Self::ALL.len();

    /// Position in [`DropReason::ALL`], to index a counter array.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The counter name: short, lower case, stable across releases.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::ShortVirtioHdr => "short_virtio_hdr",
            DropReason::UnknownGsoType => "unknown_gso_type",
            DropReason::BadGsoSize => "bad_gso_size",
            DropReason::CsumStartBeyondFrame => "csum_start_beyond_frame",
            DropReason::CsumFieldBeyondFrame => "csum_field_beyond_frame",
            DropReason::BadCsumOffset => "bad_csum_offset",
            DropReason::UdpL4WithoutCsum => "udp_l4_without_csum",
            DropReason::L3Mismatch => "gso_l3_mismatch",
            DropReason::L4Mismatch => "gso_l4_mismatch",
            DropReason::CsumStartMismatch => "csum_start_mismatch",
            DropReason::TransportOffsetTooSmall => "transport_offset_too_small",
            DropReason::MalformedHeaders => "malformed_headers",
            DropReason::TooManySegments => "too_many_segments",
            DropReason::EcnWithUdp => "ecn_with_udp",
            DropReason::FrameTooLong => "frame_too_long",
            DropReason::FragmentWithGso => "fragment_with_gso",
            DropReason::SynOrRstWithGso => "syn_or_rst_with_gso",
        }
    }
}

impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of a `gso_type` value (ECN bit included), for messages.
pub fn gso_type_name(gso_type: u8) -> &'static str {
    match gso_type {
        GSO_NONE => "NONE",
        GSO_TCPV4 => "TCPV4",
        GSO_UDP => "UDP",
        GSO_TCPV6 => "TCPV6",
        GSO_UDP_L4 => "UDP_L4",
        x if x == GSO_NONE | GSO_ECN => "NONE|ECN",
        x if x == GSO_TCPV4 | GSO_ECN => "TCPV4|ECN",
        x if x == GSO_UDP | GSO_ECN => "UDP|ECN",
        x if x == GSO_TCPV6 | GSO_ECN => "TCPV6|ECN",
        x if x == GSO_UDP_L4 | GSO_ECN => "UDP_L4|ECN",
        _ => "unknown",
    }
}

fn expected_l3(gso_type: u8) -> &'static str {
    match gso_type & !GSO_ECN {
        GSO_TCPV4 => "IPv4",
        GSO_TCPV6 => "IPv6",
        _ => "IPv4 or IPv6",
    }
}

/// TCP flag bits by name, `|`-separated, lowest bit first ("none" for 0).
struct TcpFlagNames(u8);

impl core::fmt::Display for TcpFlagNames {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        if self.0 == 0 {
            return f.write_str("none");
        }
        let mut sep = "";
        for (bit, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                write!(f, "{sep}{name}")?;
                sep = "|";
            }
        }
        Ok(())
    }
}

fn l4_name(l4: L4Kind) -> &'static str {
    match l4 {
        L4Kind::Tcp => "TCP",
        L4Kind::Udp => "UDP",
    }
}

/// Why a virtio-net header was rejected: one variant per rule of the reject
/// list of [`VirtioNetHdr::validate`], each mapping to a [`DropReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum HdrError {
    /// The bytes are shorter than the header format.
    #[error("virtio-net header: expected {required_len} bytes, found {len}")]
    ShortHeader {
        /// Bytes the format needs (12 or 10).
        required_len: usize,
        /// Bytes available.
        len: usize,
    },
    /// Rule 1: `gso_type`, ECN bit masked, is not NONE, TCPV4, TCPV6, UDP
    /// or UDP_L4 (NONE with the ECN bit is rejected here too).
    #[error(
        "gso_type: expected NONE, TCPV4 (1), UDP (3), TCPV6 (4) or UDP_L4 (5), optionally with ECN (0x80) on a GSO type, found {gso_type:#04x}"
    )]
    UnknownGsoType {
        /// The `gso_type` found.
        gso_type: u8,
    },
    /// Rule 2: `gso_size` is 0 or 0xFFFF on a GSO frame, or below
    /// [`MIN_TCP_MSS`] on a TCP one.
    #[error("gso_size: expected {min} to 65534 with gso_type {}, found {gso_size}", gso_type_name(*gso_type))]
    BadGsoSize {
        /// The `gso_type` found.
        gso_type: u8,
        /// The `gso_size` found.
        gso_size: u16,
        /// The smallest `gso_size` this `gso_type` takes: [`MIN_TCP_MSS`]
        /// for TCP, 1 for UDP.
        min: u16,
    },
    /// Rule 3: `csum_start` lies beyond the frame.
    #[error("csum_start: expected at most the frame length {frame_len}, found {csum_start}")]
    CsumStartBeyondFrame {
        /// The `csum_start` found.
        csum_start: u16,
        /// Length of the frame.
        frame_len: usize,
    },
    /// Rule 3: the 2-byte checksum field at `csum_start + csum_offset` does
    /// not fit the frame.
    #[error(
        "checksum field at csum_start {csum_start} + csum_offset {csum_offset}: expected its 2 bytes within the frame of {frame_len} bytes"
    )]
    CsumFieldBeyondFrame {
        /// The `csum_start` found.
        csum_start: u16,
        /// The `csum_offset` found.
        csum_offset: u16,
        /// Length of the frame.
        frame_len: usize,
    },
    /// Rule 4: a partial TCP checksum with `csum_offset` other than 16, or a
    /// partial UDP checksum (`GSO_UDP_L4`, `GSO_UDP`, or a non-GSO frame
    /// whose `csum_start` is its UDP header) with `csum_offset` other than 6.
    #[error("csum_offset for {}: expected {expected}, found {found}", l4_name(*l4))]
    BadCsumOffset {
        /// The transport protocol the checksum belongs to.
        l4: L4Kind,
        /// Offset of its checksum field (16 or 6).
        expected: u16,
        /// The `csum_offset` found.
        found: u16,
    },
    /// Rule 4: `GSO_UDP_L4` without `NEEDS_CSUM`.
    #[error("gso_type UDP_L4: expected flags with NEEDS_CSUM (1), found {flags:#04x}")]
    UdpL4WithoutCsum {
        /// The `flags` found.
        flags: u8,
    },
    /// Rule 5: the frame's network protocol does not match `gso_type`
    /// (TCPV4 on IPv6, TCPV6 on IPv4, any GSO type on a non-IP frame).
    #[error(
        "gso_type {}: expected an {} frame, found EtherType {ethertype:#06x}",
        gso_type_name(*gso_type),
        expected_l3(*gso_type)
    )]
    L3Mismatch {
        /// The `gso_type` found.
        gso_type: u8,
        /// The EtherType of the frame (after VLAN tags).
        ethertype: u16,
    },
    /// Rule 5: the frame's transport protocol is not the one `gso_type`
    /// asks for (TCP for TCPV4/TCPV6, UDP for UDP/UDP_L4).
    #[error(
        "gso_type {}: expected {} (protocol {}), found protocol {protocol}",
        gso_type_name(*gso_type),
        l4_name(*expected),
        match expected { L4Kind::Tcp => 6, L4Kind::Udp => 17 }
    )]
    L4Mismatch {
        /// The `gso_type` found.
        gso_type: u8,
        /// The transport protocol `gso_type` asks for.
        expected: L4Kind,
        /// The IP protocol number the frame carries.
        protocol: u8,
    },
    /// Rule 6: on a GSO frame, `csum_start` is not where the transport
    /// header was parsed.
    #[error("csum_start: expected the transport header offset {l4_offset}, found {csum_start}")]
    CsumStartMismatch {
        /// The `csum_start` found.
        csum_start: u16,
        /// Where the parser found the transport header.
        l4_offset: usize,
    },
    /// Rule 7: `csum_start` falls inside the minimal IP header.
    #[error(
        "csum_start: expected at least {min} (IP header at {l3_offset} plus {min_l3_len} bytes), found {csum_start}",
        min = l3_offset + min_l3_len
    )]
    TransportOffsetTooSmall {
        /// The `csum_start` found.
        csum_start: u16,
        /// Where the IP header starts.
        l3_offset: usize,
        /// Minimal IP header length (20 for IPv4, 40 for IPv6).
        min_l3_len: usize,
    },
    /// Rule 8: a header is cut short or malformed (Ethernet, VLAN, IPv4 IHL,
    /// IPv6 extension chain, TCP data offset, UDP).
    #[error("malformed headers: {source}")]
    MalformedHeaders {
        /// What the parser found.
        source: ParseError,
    },
    /// Rule 9: a `GSO_UDP_L4` frame would be cut into more than 128 datagrams.
    #[error(
        "gso_type UDP_L4: expected at most {max_segments} segments of {gso_size} bytes, found a payload of {payload_len} bytes"
    )]
    TooManySegments {
        /// UDP payload length.
        payload_len: usize,
        /// The `gso_size` found.
        gso_size: u16,
        /// The limit (128).
        max_segments: usize,
    },
    /// Rule 9: the ECN bit on `GSO_UDP_L4` (or `GSO_UDP`): ECN/CWR handling
    /// is TCP-only.
    #[error("gso_type: expected no ECN bit with a UDP type, found {gso_type:#04x}")]
    EcnWithUdp {
        /// The `gso_type` found.
        gso_type: u8,
    },
    /// Rule 10: the frame is longer than 65535 bytes plus its link-layer headers.
    #[error("frame length: expected at most {max_len} bytes, found {len}")]
    FrameTooLong {
        /// Length of the frame.
        len: usize,
        /// 65535 plus the Ethernet header and VLAN tags.
        max_len: usize,
    },
    /// Rule 10: GSO on an IP fragment (IPv4 MF or offset set, or an IPv6
    /// fragment header).
    #[error("gso_type {}: expected an unfragmented {l3:?} packet, found a fragment", gso_type_name(*gso_type))]
    FragmentWithGso {
        /// The `gso_type` found.
        gso_type: u8,
        /// The network protocol.
        l3: L3Kind,
    },
    /// Rule 12: a TCP GSO frame whose TCP header has SYN or RST set. The
    /// segmenter copies every flag but FIN, PSH and CWR onto each segment,
    /// so each would open or reset the connection again.
    #[error(
        "gso_type {}: expected a TCP header without SYN or RST, found flags {tcp_flags:#04x} ({})",
        gso_type_name(*gso_type),
        TcpFlagNames(*tcp_flags)
    )]
    SynOrRstWithGso {
        /// The `gso_type` found.
        gso_type: u8,
        /// The TCP flags byte found (byte 13 of the TCP header).
        tcp_flags: u8,
    },
}

impl HdrError {
    /// The drop counter this error counts against.
    pub const fn reason(&self) -> DropReason {
        match self {
            HdrError::ShortHeader { .. } => DropReason::ShortVirtioHdr,
            HdrError::UnknownGsoType { .. } => DropReason::UnknownGsoType,
            HdrError::BadGsoSize { .. } => DropReason::BadGsoSize,
            HdrError::CsumStartBeyondFrame { .. } => DropReason::CsumStartBeyondFrame,
            HdrError::CsumFieldBeyondFrame { .. } => DropReason::CsumFieldBeyondFrame,
            HdrError::BadCsumOffset { .. } => DropReason::BadCsumOffset,
            HdrError::UdpL4WithoutCsum { .. } => DropReason::UdpL4WithoutCsum,
            HdrError::L3Mismatch { .. } => DropReason::L3Mismatch,
            HdrError::L4Mismatch { .. } => DropReason::L4Mismatch,
            HdrError::CsumStartMismatch { .. } => DropReason::CsumStartMismatch,
            HdrError::TransportOffsetTooSmall { .. } => DropReason::TransportOffsetTooSmall,
            HdrError::MalformedHeaders { .. } => DropReason::MalformedHeaders,
            HdrError::TooManySegments { .. } => DropReason::TooManySegments,
            HdrError::EcnWithUdp { .. } => DropReason::EcnWithUdp,
            HdrError::FrameTooLong { .. } => DropReason::FrameTooLong,
            HdrError::FragmentWithGso { .. } => DropReason::FragmentWithGso,
            HdrError::SynOrRstWithGso { .. } => DropReason::SynOrRstWithGso,
        }
    }
}

impl From<ParseError> for HdrError {
    fn from(source: ParseError) -> Self {
        HdrError::MalformedHeaders { source }
    }
}

impl VirtioNetHdr {
    /// Copies a header out of the first bytes of `bytes` (little-endian) and
    /// returns it with the number of bytes it took. Each field is read
    /// exactly once; the returned value is the host's copy, which
    /// [`VirtioNetHdr::validate`] checks and everything after it uses.
    /// `num_buffers` is 0 for [`HdrFormat::Legacy`].
    pub fn parse(bytes: &[u8], format: HdrFormat) -> Result<(VirtioNetHdr, usize), HdrError> {
        let n = format.size();
        let b = bytes.get(..n).ok_or(HdrError::ShortHeader {
            required_len: n,
            len: bytes.len(),
        })?;
        let le = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let hdr = VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: if n == HDR_LEN_V1 { le(10) } else { 0 },
        };
        Ok((hdr, n))
    }

    /// Writes the header (little-endian) at the start of `buf`; returns the
    /// number of bytes written. [`HdrFormat::Legacy`] leaves out `num_buffers`.
    pub fn emit(&self, buf: &mut [u8], format: HdrFormat) -> Result<usize, BufferTooShort> {
        let n = format.size();
        let len = buf.len();
        let out = buf.get_mut(..n).ok_or(BufferTooShort {
            required_len: n,
            len,
        })?;
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        if n == HDR_LEN_V1 {
            out[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        }
        Ok(n)
    }

    /// Whether `NEEDS_CSUM` is set.
    pub const fn needs_csum(&self) -> bool {
        self.flags & FLAG_NEEDS_CSUM != 0
    }

    /// Whether the header asks for segmentation (any GSO type, the ECN bit
    /// aside).
    pub const fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Whether the frame still has offload work: a partial checksum or
    /// segmentation. A header without either describes a finished frame.
    pub const fn has_offload_work(&self) -> bool {
        self.needs_csum() || self.is_gso()
    }

    /// Checks this header against the frame it came with, applying every
    /// rule of the reject list, and says what to do with the frame.
    ///
    /// Takes `&self`: a copy in host memory (see [`VirtioNetHdr::parse`]),
    /// never the guest's bytes, so the header cannot change between this
    /// check and its use. `frame` must likewise be host memory. `hdr_len` is
    /// ignored: every offset comes from parsing the frame.
    ///
    /// The reject list (each rule a typed [`HdrError`], counted under its
    /// [`DropReason`]):
    /// 1. `gso_type`, ECN bit masked, not NONE, TCPV4, TCPV6, UDP or UDP_L4;
    ///    NONE with the ECN bit.
    /// 2. With GSO, `gso_size` 0 or 0xFFFF; with TCPV4/TCPV6, `gso_size`
    ///    below [`MIN_TCP_MSS`] (88, Linux's `TCP_MIN_MSS`).
    /// 3. With `NEEDS_CSUM`, `csum_start` beyond the frame, or the 2-byte
    ///    field at `csum_start + csum_offset` not within it.
    /// 4. A partial TCP checksum with `csum_offset` other than 16, a partial
    ///    UDP checksum with `csum_offset` other than 6; UDP_L4 without
    ///    `NEEDS_CSUM`.
    /// 5. The frame's IP version not the one `gso_type` names (or not IP at
    ///    all), or its transport not TCP for TCPV4/TCPV6, UDP for
    ///    UDP/UDP_L4.
    /// 6. With GSO and `NEEDS_CSUM`, `csum_start` not the parsed transport
    ///    header offset.
    /// 7. `csum_start` inside the minimal IP header (20 bytes for IPv4, 40
    ///    for IPv6).
    /// 8. Truncated or malformed headers: Ethernet, VLAN tags, IPv4 IHL
    ///    below 5 or beyond the frame, IPv6 extension chain beyond the frame,
    ///    TCP data offset below 5 or beyond the frame.
    /// 9. UDP_L4 with a payload of more than 128 segments
    ///    ([`MAX_UDP_L4_SEGMENTS`]); the ECN bit with UDP or UDP_L4.
    /// 10. A frame longer than 65535 bytes plus its link-layer headers; GSO
    ///     on an IP fragment (IPv4 MF or fragment offset, IPv6 fragment
    ///     header).
    /// 11. (Not an error: a GSO frame whose payload fits one segment, see
    ///     below.)
    /// 12. TCPV4/TCPV6 with SYN or RST in the TCP header, in any
    ///     combination with other flags: every segment would carry it. FIN
    ///     and PSH are accepted (the segmenter puts them on the last segment
    ///     only), as is CWR (first segment only).
    ///
    /// What is accepted:
    /// - No GSO, no `NEEDS_CSUM`: nothing to do. `layout` is the parsed
    ///   layout for a well-formed IP frame, else `None` (non-IP, or headers
    ///   the parser rejects: the frame is passed on as the guest sent it).
    /// - No GSO with `NEEDS_CSUM`: `partial_checksum` from the header, bounds
    ///   checked. An IP frame must parse (`layout` is `Some`); a non-IP
    ///   frame gets `layout: None`.
    /// - GSO: the frame must parse as the IP version and transport that
    ///   `gso_type` names. A GSO frame whose payload fits in one segment is
    ///   valid (rule 11) and keeps its [`GsoKind`], so the segmenter emits
    ///   it as one segment with lengths and checksums recomputed.
    ///   `csum_start` and `csum_offset` are only checked with `NEEDS_CSUM`
    ///   (without it they carry no meaning and the segmenter computes full
    ///   checksums).
    pub fn validate(&self, frame: &[u8]) -> Result<OffloadPlan, HdrError> {
        let ecn = self.gso_type & GSO_ECN != 0;
        let gso = match self.gso_type & !GSO_ECN {
            GSO_NONE if !ecn => None,
            t @ (GSO_TCPV4 | GSO_TCPV6 | GSO_UDP | GSO_UDP_L4) => Some(t),
            _ => {
                return Err(HdrError::UnknownGsoType {
                    gso_type: self.gso_type,
                })
            }
        };
        let needs_csum = self.needs_csum();

        if let Some(t) = gso {
            let min = match t {
                GSO_TCPV4 | GSO_TCPV6 => MIN_TCP_MSS,
                _ => 1,
            };
            if self.gso_size < min || self.gso_size == 0xffff {
                return Err(HdrError::BadGsoSize {
                    gso_type: self.gso_type,
                    gso_size: self.gso_size,
                    min,
                });
            }
            if ecn && (t == GSO_UDP || t == GSO_UDP_L4) {
                return Err(HdrError::EcnWithUdp {
                    gso_type: self.gso_type,
                });
            }
            if t == GSO_UDP_L4 && !needs_csum {
                return Err(HdrError::UdpL4WithoutCsum { flags: self.flags });
            }
        }

        let partial = if needs_csum {
            Some(self.partial_checksum(frame)?)
        } else {
            None
        };
        // Rule 4. With GSO, rule 6 pins csum_start to the transport header,
        // so the field must be that header's checksum; this holds for UFO
        // too (Linux leaves UFO unchecked, but its guests always send 6).
        if let (Some(p), Some(t)) = (partial, gso) {
            let (l4, expected) = match t {
                GSO_TCPV4 | GSO_TCPV6 => (L4Kind::Tcp, tcp::CHECKSUM_OFFSET),
                _ => (L4Kind::Udp, udp::CHECKSUM_OFFSET),
            };
            if p.offset != expected {
                return Err(HdrError::BadCsumOffset {
                    l4,
                    expected: expected as u16,
                    found: self.csum_offset,
                });
            }
        }

        let work = gso.is_some() || needs_csum;
        let l2 = match L2Header::parse(frame) {
            Ok(l2) => l2,
            Err(e) if work => return Err(e.into()),
            Err(_) => return Ok(Self::plan(None, GsoKind::None, None)),
        };
        let max_len = MAX_L3_LEN + l2.l3_offset;
        if frame.len() > max_len {
            return Err(HdrError::FrameTooLong {
                len: frame.len(),
                max_len,
            });
        }

        let (layout, protocol) = match FrameLayout::parse_with_protocol(frame) {
            Ok(parsed) => parsed,
            Err(ParseError::NotIp { ethertype, .. }) => {
                if gso.is_some() {
                    return Err(HdrError::L3Mismatch {
                        gso_type: self.gso_type,
                        ethertype,
                    });
                }
                return Ok(Self::plan(None, GsoKind::None, partial));
            }
            Err(e) if work => return Err(e.into()),
            Err(_) => return Ok(Self::plan(None, GsoKind::None, None)),
        };

        if let Some(p) = partial {
            let min_l3_len = match layout.l3 {
                L3Kind::Ipv4 => crate::wire::ipv4::MIN_HEADER_LEN,
                L3Kind::Ipv6 => crate::wire::ipv6::HEADER_LEN,
            };
            if p.start < layout.l3_offset + min_l3_len {
                return Err(HdrError::TransportOffsetTooSmall {
                    csum_start: self.csum_start,
                    l3_offset: layout.l3_offset,
                    min_l3_len,
                });
            }
        }

        let Some(t) = gso else {
            // A partial checksum that starts at the parsed TCP or UDP header
            // must end at that header's checksum field.
            if let (Some(p), Some(l4)) = (partial, layout.l4) {
                let expected = match l4 {
                    L4Kind::Tcp => tcp::CHECKSUM_OFFSET,
                    L4Kind::Udp => udp::CHECKSUM_OFFSET,
                };
                if p.start == layout.l4_offset && p.offset != expected {
                    return Err(HdrError::BadCsumOffset {
                        l4,
                        expected: expected as u16,
                        found: self.csum_offset,
                    });
                }
            }
            return Ok(Self::plan(Some(layout), GsoKind::None, partial));
        };

        match (t, layout.l3) {
            (GSO_TCPV4, L3Kind::Ipv6) | (GSO_TCPV6, L3Kind::Ipv4) => {
                return Err(HdrError::L3Mismatch {
                    gso_type: self.gso_type,
                    ethertype: match layout.l3 {
                        L3Kind::Ipv4 => crate::wire::ethertype::IPV4,
                        L3Kind::Ipv6 => crate::wire::ethertype::IPV6,
                    },
                })
            }
            _ => {}
        }
        if layout.is_fragment {
            return Err(HdrError::FragmentWithGso {
                gso_type: self.gso_type,
                l3: layout.l3,
            });
        }
        let expected_l4 = match t {
            GSO_TCPV4 | GSO_TCPV6 => L4Kind::Tcp,
            _ => L4Kind::Udp,
        };
        if layout.l4 != Some(expected_l4) {
            return Err(HdrError::L4Mismatch {
                gso_type: self.gso_type,
                expected: expected_l4,
                protocol,
            });
        }
        if let Some(p) = partial {
            if p.start != layout.l4_offset {
                return Err(HdrError::CsumStartMismatch {
                    csum_start: self.csum_start,
                    l4_offset: layout.l4_offset,
                });
            }
        }
        let size = self.gso_size;
        let kind = match t {
            GSO_TCPV4 | GSO_TCPV6 => {
                let tcp_flags =
                    tcp::TcpSegment::new_checked(frame.get(layout.l4_offset..).unwrap_or(&[]))
                        .map_err(ParseError::from)?
                        .flags();
                if tcp_flags & (tcp::flags::SYN | tcp::flags::RST) != 0 {
                    return Err(HdrError::SynOrRstWithGso {
                        gso_type: self.gso_type,
                        tcp_flags,
                    });
                }
                GsoKind::Tcp { mss: size, ecn }
            }
            GSO_UDP_L4 => {
                let payload_len = frame.len() - layout.payload_offset;
                if payload_len > usize::from(size) * MAX_UDP_L4_SEGMENTS {
                    return Err(HdrError::TooManySegments {
                        payload_len,
                        gso_size: size,
                        max_segments: MAX_UDP_L4_SEGMENTS,
                    });
                }
                GsoKind::UdpL4 { size }
            }
            _ => GsoKind::Ufo { size },
        };
        Ok(Self::plan(Some(layout), kind, partial))
    }

    /// Rule 3: `csum_start` and the 2-byte field at `csum_start +
    /// csum_offset` must lie within the frame.
    fn partial_checksum(&self, frame: &[u8]) -> Result<PartialChecksum, HdrError> {
        let start = usize::from(self.csum_start);
        let offset = usize::from(self.csum_offset);
        if start > frame.len() {
            return Err(HdrError::CsumStartBeyondFrame {
                csum_start: self.csum_start,
                frame_len: frame.len(),
            });
        }
        if start + offset + 2 > frame.len() {
            return Err(HdrError::CsumFieldBeyondFrame {
                csum_start: self.csum_start,
                csum_offset: self.csum_offset,
                frame_len: frame.len(),
            });
        }
        Ok(PartialChecksum { start, offset })
    }

    fn plan(
        layout: Option<FrameLayout>,
        gso: GsoKind,
        partial_checksum: Option<PartialChecksum>,
    ) -> OffloadPlan {
        OffloadPlan {
            layout,
            gso,
            partial_checksum,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testgen::{frame_spec, FrameSpec, IpSpec, L4Spec};
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
            plan.gso,
            GsoKind::Tcp {
                mss: 1448,
                ecn: false
            }
        );
        assert_eq!(plan.partial_checksum.unwrap().start, 34);
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
                plan.gso,
                GsoKind::Tcp {
                    mss: 1448,
                    ecn: false
                }
            );
            assert!(plan.partial_checksum.is_some());
        }
        let frame = udp4(10);
        let plan = csum_hdr(&frame, GSO_UDP_L4, 1400).validate(&frame).unwrap();
        assert_eq!(plan.gso, GsoKind::UdpL4 { size: 1400 });
        // The largest usable gso_size (bug class: huge gso_size values) is
        // accepted; it is the segmenter's job to cut to the egress MTU.
        let frame = tcp4(60000);
        let plan = csum_hdr(&frame, GSO_TCPV4, 65534).validate(&frame).unwrap();
        assert_eq!(
            plan.gso,
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
                plan.gso,
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
                assert_eq!(plain.validate(&frame).unwrap().gso, GsoKind::None);
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
            plan.gso,
            GsoKind::Tcp {
                mss: 1000,
                ecn: true
            }
        );
        let layout = plan.layout.unwrap();
        assert_eq!(layout.payload_offset, exp.payload_offset);
        assert_eq!(
            plan.partial_checksum,
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
        assert_eq!(plan.partial_checksum, None);
        // UFO over IPv6 with NEEDS_CSUM.
        let frame = FrameSpec::tcp6(4000).udp().build().0;
        let plan = csum_hdr(&frame, GSO_UDP, 1232).validate(&frame).unwrap();
        assert_eq!(plan.gso, GsoKind::Ufo { size: 1232 });
        // Non-GSO partial checksum on an IP frame.
        let frame = udp4(100);
        let plan = csum_hdr(&frame, GSO_NONE, 0).validate(&frame).unwrap();
        assert_eq!(plan.gso, GsoKind::None);
        assert!(plan.layout.is_some());
        assert_eq!(
            plan.partial_checksum,
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
        assert_eq!(plan.layout, None);
        assert_eq!(
            plan.partial_checksum,
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
        assert_eq!(plain.validate(&arp()).unwrap().layout, None);
        let mut broken = tcp4(10);
        broken[14] = 0x41;
        let plan = plain.validate(&broken).unwrap();
        assert_eq!(
            (plan.layout, plan.gso, plan.partial_checksum),
            (None, GsoKind::None, None)
        );
        assert!(plain.validate(&tcp4(10)).unwrap().layout.is_some());
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
        if let Some(p) = plan.partial_checksum {
            assert!(hdr.needs_csum());
            assert!(p.start + p.offset + 2 <= frame.len());
        } else {
            assert!(!hdr.needs_csum());
        }
        if let Some(l) = plan.layout {
            assert!(l.l3_offset < l.l4_offset);
            assert!(l.l4_offset <= l.payload_offset);
            assert!(l.payload_offset <= frame.len());
        }
        match plan.gso {
            GsoKind::None => {}
            GsoKind::Tcp { mss: size, .. } | GsoKind::UdpL4 { size } | GsoKind::Ufo { size } => {
                assert!(size != 0 && size != 0xffff);
                let l = plan.layout.expect("GSO plans have a layout");
                if let GsoKind::Tcp { mss, .. } = plan.gso {
                    assert!(mss >= MIN_TCP_MSS);
                    assert_eq!(frame[l.l4_offset + 13] & 0x06, 0, "no SYN or RST");
                }
                assert!(l.l4.is_some());
                assert!(!l.is_fragment);
                assert!(frame.len() <= MAX_L3_LEN + l.l3_offset);
                if let Some(p) = plan.partial_checksum {
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
                prop_assert_eq!(plan.layout.unwrap().payload_offset, exp.payload_offset);
                prop_assert_eq!(plan.layout.unwrap().l4_offset, exp.l4_offset);
                assert_plan_within(&frame, &hdr, &plan);
            }
            // The same frame as a plain partial-checksum frame is always fine.
            let plain = VirtioNetHdr { gso_type: GSO_NONE, gso_size: 0, ..hdr };
            let plan = plain.validate(&frame).unwrap();
            prop_assert_eq!(plan.gso, GsoKind::None);
            prop_assert_eq!(plan.layout.unwrap().l4_offset, exp.l4_offset);
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
}
