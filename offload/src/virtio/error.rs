//! Why a header is refused: one error per reject rule, and the stable
//! drop counter each one counts under.

use thiserror::Error;

use super::header::{GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4};
use crate::layout::{L3Kind, L4Kind};
use crate::wire::ParseError;

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
/// [`VirtioNetHdr::validate`](super::VirtioNetHdr::validate), plus a header shorter than its format. New
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
/// list of [`VirtioNetHdr::validate`](super::VirtioNetHdr::validate), each mapping to a [`DropReason`].
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
    /// [`MIN_TCP_MSS`](super::MIN_TCP_MSS) on a TCP one.
    #[error("gso_size: expected {min} to 65534 with gso_type {}, found {gso_size}", gso_type_name(*gso_type))]
    BadGsoSize {
        /// The `gso_type` found.
        gso_type: u8,
        /// The `gso_size` found.
        gso_size: u16,
        /// The smallest `gso_size` this `gso_type` takes: [`MIN_TCP_MSS`](super::MIN_TCP_MSS)
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
